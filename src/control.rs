//! The local control endpoint: a ZeroMQ REP socket taking one JSON request per message and
//! answering one JSON reply. Loopback or ipc:// only (validated): it has no authentication.
//!
//! ```text
//! {"cmd": "attach", "id": "call-42", "uri": "rtsp://...", "template": "rtsp",
//!  "speakers": {"spk0": "agent"}, "infer_speakers": ["customer"], "options": {}}
//! {"cmd": "detach", "id": "call-42"}
//! {"cmd": "list"}
//! -> {"ok": true} | {"ok": true, "streams": [...]} | {"ok": false, "error": "..."}
//! ```

use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Endpoint};
use crate::health::{Heartbeat, POLL_MS};
use crate::ingest::Ingest;
use crate::settings::Checker;
use crate::streams::StreamSpec;

/// `[control]`: a ZeroMQ REP socket taking JSON commands (attach, detach, list).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control endpoint at all.
    pub enabled: bool,
    /// Endpoint to bind; only loopback TCP or ipc:// (it has no authentication).
    pub endpoint: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: "tcp://127.0.0.1:5558".into(),
        }
    }
}

impl ControlConfig {
    /// Check the table; the endpoint when enabled and usable (loopback or ipc:// only).
    pub fn check(&self, c: &mut Checker) -> Option<Endpoint> {
        if !self.enabled {
            return None;
        }
        match Endpoint::parse(&self.endpoint) {
            Ok(ep) if ep.is_local() => Some(ep),
            Ok(_) => {
                c.bad(
                    "control.endpoint",
                    format!("'{}' is reachable from other hosts", self.endpoint),
                    "a loopback tcp:// or an ipc:// endpoint (the control socket has no authentication)",
                );
                None
            }
            Err(e) => {
                c.bad("control.endpoint", e, "tcp://127.0.0.1:PORT or ipc:///path");
                None
            }
        }
    }
}

/// A control request.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Attach a stream.
    Attach(StreamSpec),
    /// Detach a stream.
    Detach {
        /// Its id.
        id: String,
    },
    /// List the attached streams.
    List,
}

/// Answer one request (the pure part: JSON in, JSON out).
pub fn handle(ingest: &Ingest, msg: &[u8]) -> serde_json::Value {
    let req: Request = match serde_json::from_slice(msg) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let result = match req {
        Request::Attach(spec) => ingest
            .attach(spec)
            .map(|()| serde_json::json!({"ok": true})),
        Request::Detach { id } => ingest.detach(&id).map(|()| serde_json::json!({"ok": true})),
        Request::List => Ok(serde_json::json!({"ok": true, "streams": ingest.list()})),
    };
    result.unwrap_or_else(|e| serde_json::json!({"ok": false, "error": e.to_string()}))
}

/// Serve requests on a bound REP socket until `cancel` fires.
pub fn spawn(
    socket: zmq::Socket,
    ingest: Arc<Ingest>,
    heartbeat: Heartbeat,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    std::thread::Builder::new()
        .name("zmq-control".into())
        .spawn(move || {
            while !cancel.is_cancelled() {
                heartbeat.beat();
                match socket.poll(zmq::POLLIN, POLL_MS) {
                    Ok(n) if n > 0 => {}
                    _ => continue,
                }
                let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) else {
                    continue;
                };
                let reply = match frames.as_slice() {
                    [one] => handle(&ingest, one),
                    _ => serde_json::json!({"ok": false, "error": "one JSON frame expected"}),
                };
                if let Err(e) = socket.send(reply.to_string().as_bytes(), 0) {
                    tracing::warn!(error = %e, "Could not answer a control request");
                }
            }
        })
        .map_err(|e| BusError::Thread {
            name: "zmq-control",
            source: e,
        })
}
