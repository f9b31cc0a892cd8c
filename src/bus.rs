//! ZeroMQ plumbing through libzmq: binding sockets with optional CURVE security, the ZAP
//! handler that admits only authorised client keys, and the publisher threads.
//!
//! libzmq sockets are not thread-safe, so each socket lives on one thread of its own and talks
//! to the tokio side through a bounded channel:
//! - publishers (events, audio tap) take messages from a `std::sync::mpsc::sync_channel`;
//!   producers use `try_send`, and when the channel is full the newest message is dropped and
//!   counted (a slow or absent subscriber never blocks inference or ingest). A PUB socket
//!   itself never blocks either: beyond `sndhwm` libzmq drops for that subscriber.
//! - the transcript receiver lives in `transcripts.rs`.
//!
//! Every such thread beats a [`Heartbeat`] at least every [`POLL_MS`]; the systemd watchdog
//! is only fed while all of them are fresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{CurveKeys, SocketSpec};
use crate::metrics::Metrics;

/// How long a socket thread blocks at most before it looks at its stop condition again.
pub const POLL_MS: i64 = 100;
/// The ZAP endpoint libzmq asks for authentication (fixed by RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// ZAP domain set on CURVE sockets.
const ZAP_DOMAIN: &str = "summerd";

/// Errors of the bus layer. Each names the socket and endpoint concerned.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A socket could not be created or configured.
    #[error("cannot set up the {socket} socket: {source}")]
    Setup {
        /// Which socket.
        socket: &'static str,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// Binding failed (address in use, no such interface, permission, ...).
    #[error("cannot bind the {socket} socket to {endpoint}: {source}")]
    Bind {
        /// Which socket.
        socket: &'static str,
        /// Where.
        endpoint: String,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// CURVE was asked for but this libzmq lacks it.
    #[error("the {socket} socket needs CURVE, but this libzmq was built without it")]
    NoCurve {
        /// Which socket.
        socket: &'static str,
    },
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A liveness stamp: the owning thread beats it; the watchdog reads its age.
#[derive(Clone)]
pub struct Heartbeat {
    name: &'static str,
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A new heartbeat, fresh now.
    pub fn new(name: &'static str) -> Self {
        Heartbeat {
            name,
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Record that the owner is alive.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// The owner's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

// libzmq's own derivation of a public key (zmq.h); zmq-sys links libzmq but does not
// re-export this one.
unsafe extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::os::raw::c_char,
        z85_secret_key: *const std::os::raw::c_char,
    ) -> std::os::raw::c_int;
}

/// The Z85 public key of a Z85 secret key (None if libzmq has no CURVE).
pub fn curve_public(secret_z85: &str) -> Option<String> {
    let secret = std::ffi::CString::new(secret_z85).ok()?;
    let mut public = [0 as std::os::raw::c_char; 41];
    // SAFETY: libzmq writes 40 characters and a NUL into `public` (41 bytes) and reads the
    // NUL-terminated 40-character `secret`.
    let rc = unsafe { zmq_curve_public(public.as_mut_ptr(), secret.as_ptr()) };
    if rc != 0 {
        return None;
    }
    let bytes: Vec<u8> = public[..40].iter().map(|c| *c as u8).collect();
    String::from_utf8(bytes).ok()
}

/// Create a socket of `kind`, apply `configure`, secure it as `spec` says and bind it.
pub fn bind(
    ctx: &zmq::Context,
    spec: &SocketSpec,
    kind: zmq::SocketType,
    configure: impl FnOnce(&zmq::Socket) -> zmq::Result<()>,
) -> Result<zmq::Socket, BusError> {
    let setup = |source| BusError::Setup {
        socket: spec.name,
        source,
    };
    let socket = ctx.socket(kind).map_err(setup)?;
    socket.set_linger(0).map_err(setup)?;
    configure(&socket).map_err(setup)?;
    if let Some(keys) = &spec.curve {
        if zmq::has("curve") != Some(true) {
            return Err(BusError::NoCurve { socket: spec.name });
        }
        secure(&socket, keys).map_err(setup)?;
    }
    let endpoint = spec.endpoint.to_zmq();
    socket.bind(&endpoint).map_err(|source| BusError::Bind {
        socket: spec.name,
        endpoint,
        source,
    })?;
    Ok(socket)
}

fn secure(socket: &zmq::Socket, keys: &CurveKeys) -> zmq::Result<()> {
    socket.set_curve_server(true)?;
    let secret = zmq::z85_decode(&keys.secret).map_err(|_| zmq::Error::EINVAL)?;
    socket.set_curve_secretkey(&secret)?;
    // A ZAP domain makes libzmq ask the ZAP handler about every client, and refuse all of
    // them when no handler runs; so it is set only where an authorised-keys list is in force.
    if keys.authorized.is_some() {
        socket.set_zap_domain(ZAP_DOMAIN)?;
    }
    Ok(())
}

/// Start the ZAP handler that admits CURVE clients whose public key is in `authorized`
/// (and every NULL-mechanism peer: those sockets are plain by configuration). It must run
/// before any CURVE socket is bound; it stops when the context is terminated.
pub fn spawn_zap(
    ctx: &zmq::Context,
    authorized: Vec<[u8; 32]>,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, BusError> {
    let setup = |source| BusError::Setup {
        socket: "zap",
        source,
    };
    let rep = ctx.socket(zmq::REP).map_err(setup)?;
    rep.set_linger(0).map_err(setup)?;
    rep.bind(ZAP_ENDPOINT).map_err(|source| BusError::Bind {
        socket: "zap",
        endpoint: ZAP_ENDPOINT.into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("zmq-zap".into())
        .spawn(move || {
            loop {
                let req = match rep.recv_multipart(0) {
                    Ok(r) => r,
                    Err(zmq::Error::EINTR) => continue,
                    // ETERM: the context is being terminated.
                    Err(_) => return,
                };
                // RFC 27: version, request id, domain, address, identity, mechanism, credentials.
                if req.len() < 6 {
                    continue;
                }
                let mechanism = req[5].as_slice();
                let ok = match mechanism {
                    b"CURVE" => req
                        .get(6)
                        .is_some_and(|key| authorized.iter().any(|a| a.as_slice() == key)),
                    _ => true,
                };
                if !ok {
                    metrics.auth_denied();
                    let addr = String::from_utf8_lossy(&req[3]).into_owned();
                    tracing::warn!(peer = %addr, "Refused a CURVE client whose key is not authorised");
                }
                let (code, text): (&[u8], &[u8]) = if ok {
                    (b"200", b"OK")
                } else {
                    (b"400", b"key not authorised")
                };
                let reply: [&[u8]; 6] = [b"1.0", &req[1], code, text, b"", b""];
                if rep.send_multipart(reply, 0).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| BusError::Thread {
            name: "zmq-zap",
            source: e,
        })
}

/// A multipart message for a publisher: topic frame first.
pub type Multipart = Vec<Vec<u8>>;

/// The producing end of a publisher thread. Cloneable; never blocks.
#[derive(Clone)]
pub struct PublisherHandle {
    name: &'static str,
    tx: SyncSender<Multipart>,
    metrics: Arc<Metrics>,
}

impl PublisherHandle {
    /// Queue a message. Returns false (and counts a drop) when the queue is full or the
    /// publisher has stopped.
    pub fn publish(&self, msg: Multipart) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped(self.name);
                false
            }
        }
    }
}

/// Start a publisher thread that owns the bound PUB `socket`. It ends once every
/// [`PublisherHandle`] is dropped and the queue is drained; on the way out it keeps the socket
/// open for at most `linger` so that queued messages reach connected subscribers.
pub fn spawn_publisher(
    name: &'static str,
    socket: zmq::Socket,
    queue: usize,
    linger: Duration,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
) -> Result<(PublisherHandle, JoinHandle<()>), BusError> {
    let (tx, rx) = sync_channel::<Multipart>(queue);
    let m = metrics.clone();
    let join = std::thread::Builder::new()
        .name(format!("zmq-{name}"))
        .spawn(move || publish_loop(name, socket, rx, linger, m, heartbeat))
        .map_err(|e| BusError::Thread { name, source: e })?;
    Ok((PublisherHandle { name, tx, metrics }, join))
}

fn publish_loop(
    name: &'static str,
    socket: zmq::Socket,
    rx: Receiver<Multipart>,
    linger: Duration,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
) {
    loop {
        heartbeat.beat();
        match rx.recv_timeout(Duration::from_millis(POLL_MS as u64)) {
            Ok(msg) => match socket.send_multipart(msg, zmq::DONTWAIT) {
                Ok(()) => metrics.published(name),
                // PUB drops rather than blocking; EAGAIN only appears in odd states.
                Err(zmq::Error::EAGAIN) => metrics.dropped(name),
                Err(e) => {
                    metrics.socket_error(name);
                    tracing::error!(socket = name, error = %e, "Publishing failed");
                }
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let ms = linger.as_millis().min(i32::MAX as u128) as i32;
    if let Err(e) = socket.set_linger(ms) {
        tracing::warn!(socket = name, error = %e, "Could not set linger for the drain");
    }
    tracing::debug!(socket = name, "Publisher stopped");
    // Dropping the socket hands its queued messages to libzmq's I/O thread, which keeps
    // sending for up to `linger` while the context is terminated.
}
