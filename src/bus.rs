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

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::feed::Feed;
use crate::health::{Heartbeat, POLL_MS};
use crate::metrics::Metrics;
use crate::settings::Checker;
use crate::wire::Multipart;

/// The ZAP endpoint libzmq asks for authentication (fixed by RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// ZAP domain set on CURVE sockets.
const ZAP_DOMAIN: &str = "summerd";

/// A bind endpoint, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp://HOST:PORT`; `host` is an IP address, `localhost` or `*`.
    Tcp {
        /// As written.
        host: String,
        /// 1-65535.
        port: u16,
    },
    /// `ipc:///path` (a Unix socket path).
    Ipc(PathBuf),
}

impl Endpoint {
    /// Parse a bind endpoint. Errors say what is allowed.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("'{s}' has no port"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{s}' has port '{port}', not 1-65535"))?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if host != "*" && host != "localhost" && bare.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "'{s}' has host '{host}', not an IP address, 'localhost' or '*'"
                ));
            }
            Ok(Endpoint::Tcp {
                host: host.to_string(),
                port,
            })
        } else if let Some(path) = s.strip_prefix("ipc://") {
            if path.is_empty() || path.contains('*') {
                return Err(format!("'{s}' has no usable socket path"));
            }
            Ok(Endpoint::Ipc(PathBuf::from(path)))
        } else {
            Err(format!("'{s}' is neither tcp:// nor ipc://"))
        }
    }

    /// True where only this host can connect: loopback TCP or an ipc socket.
    pub fn is_local(&self) -> bool {
        match self {
            Endpoint::Tcp { host, .. } => crate::settings::is_loopback_host(host),
            Endpoint::Ipc(_) => true,
        }
    }

    /// The endpoint string libzmq binds (`localhost` becomes 127.0.0.1: libzmq's bind does
    /// not resolve names).
    pub fn to_zmq(&self) -> String {
        match self {
            Endpoint::Tcp { host, port } if host == "localhost" => {
                format!("tcp://127.0.0.1:{port}")
            }
            Endpoint::Tcp { host, port } => format!("tcp://{host}:{port}"),
            Endpoint::Ipc(p) => format!("ipc://{}", p.display()),
        }
    }
}

/// Security of one bound socket, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketSpec {
    /// Which socket (`transcripts`, `events`, `audio_tap`): used in logs and metrics.
    pub name: &'static str,
    /// Where to bind.
    pub endpoint: Endpoint,
    /// CURVE server keys, when `curve = true`.
    pub curve: Option<CurveKeys>,
}

/// A CURVE server keypair (Z85 text) and the accepted client keys (None: any client).
#[derive(Debug, Clone, PartialEq)]
pub struct CurveKeys {
    /// 40-character Z85 secret key.
    pub secret: String,
    /// 40-character Z85 public key.
    pub public: String,
    /// Accepted client public keys (32 raw bytes each); None: any client.
    pub authorized: Option<Vec<[u8; 32]>>,
}

/// `[events]`: the PUB socket for emotion and lifecycle events.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// ZeroMQ endpoint to bind.
    pub endpoint: String,
    /// Encrypt and authenticate with the `[curve]` keys.
    pub curve: bool,
    /// Allow a non-loopback TCP endpoint without CURVE.
    pub insecure: bool,
    /// ZeroMQ send high-water mark per subscriber; beyond it a slow subscriber loses messages.
    pub sndhwm: i32,
    /// Capacity of the channel into the publisher thread (full: the newest event is dropped
    /// and counted, so a stalled publisher never blocks inference).
    pub queue: usize,
    /// Default for every stream: whether transcript text rides in events.
    pub publish_text: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            endpoint: "tcp://127.0.0.1:5556".into(),
            curve: false,
            insecure: false,
            sndhwm: 10_000,
            queue: 4096,
            publish_text: false,
        }
    }
}

/// `[audio_tap]`: the PUB socket carrying 16 kHz S16LE PCM per stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioTapConfig {
    /// Publish the tap at all.
    pub enabled: bool,
    /// ZeroMQ endpoint to bind.
    pub endpoint: String,
    /// Encrypt and authenticate with the `[curve]` keys.
    pub curve: bool,
    /// Allow a non-loopback TCP endpoint without CURVE.
    pub insecure: bool,
    /// ZeroMQ send high-water mark per subscriber.
    pub sndhwm: i32,
    /// Capacity of the channel into the tap's publisher thread (full: newest dropped, counted).
    pub queue: usize,
    /// Milliseconds of audio per message (20-100).
    pub chunk_ms: u32,
}

impl Default for AudioTapConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: "tcp://127.0.0.1:5557".into(),
            curve: false,
            insecure: false,
            sndhwm: 10_000,
            queue: 4096,
            chunk_ms: 40,
        }
    }
}

/// `[curve]`: the server's CURVE keypair and, optionally, the client keys it accepts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurveConfig {
    /// File holding the server's secret key (40 Z85 characters; `summerd keygen` writes one).
    pub secret_key_file: Option<PathBuf>,
    /// File holding the server's public key (40 Z85 characters), given to clients.
    pub public_key_file: Option<PathBuf>,
    /// File listing the public keys of accepted clients, one Z85 key a line (`#` comments).
    /// Unset: any client that knows the server's public key may connect.
    pub authorized_keys_file: Option<PathBuf>,
}

impl EventsConfig {
    /// Check the table; the socket spec when it is usable. `max_batch` is the model worker's
    /// largest batch, whose events are published at once.
    pub fn check(
        &self,
        c: &mut Checker,
        keys: &Option<CurveKeys>,
        max_batch: usize,
    ) -> Option<SocketSpec> {
        c.range("events.sndhwm", self.sndhwm, 1, 10_000_000);
        c.range("events.queue", self.queue, 1, 1_000_000);
        // One forward pass publishes up to max_batch events at once: a smaller high-water mark
        // drops some of them even for a subscriber that keeps up.
        if self.sndhwm >= 1 && (self.sndhwm as usize) < max_batch {
            c.bad(
                "events.sndhwm",
                format!(
                    "{} is below inference.max_batch ({max_batch}): a batch's events would be dropped even for subscribers that keep up",
                    self.sndhwm
                ),
                "at least inference.max_batch",
            );
        }
        check_socket(c, "events", &self.endpoint, self.curve, self.insecure, keys)
    }
}

impl AudioTapConfig {
    /// Check the table; the socket spec when the tap is enabled and usable.
    pub fn check(&self, c: &mut Checker, keys: &Option<CurveKeys>) -> Option<SocketSpec> {
        if !self.enabled {
            return None;
        }
        c.range("audio_tap.sndhwm", self.sndhwm, 1, 10_000_000);
        c.range("audio_tap.queue", self.queue, 1, 1_000_000);
        c.range("audio_tap.chunk_ms", self.chunk_ms, 20, 100);
        check_socket(
            c,
            "audio_tap",
            &self.endpoint,
            self.curve,
            self.insecure,
            keys,
        )
    }
}

impl CurveConfig {
    /// Load the keypair and the authorised client keys (None: no keypair configured, or a
    /// problem, which is recorded).
    pub fn load(&self, c: &mut Checker) -> Option<CurveKeys> {
        let cv = self;
        match (&cv.secret_key_file, &cv.public_key_file) {
            (Some(s), Some(p)) => {
                let secret = read_key(c, "curve.secret_key_file", s);
                let public = read_key(c, "curve.public_key_file", p);
                let authorized = cv
                    .authorized_keys_file
                    .as_ref()
                    .and_then(|f| read_authorized(c, f));
                match (secret, public) {
                    (Some(secret), Some(public)) => {
                        if zmq::z85_decode(&secret)
                            .ok()
                            .and_then(|s| zmq::z85_encode(&public_from_secret(&s)?).ok())
                            .is_some_and(|derived| derived != public)
                        {
                            c.bad(
                                "curve.public_key_file",
                                "does not match curve.secret_key_file",
                                "the public key of the same keypair",
                            );
                        }
                        Some(CurveKeys {
                            secret,
                            public,
                            authorized: if cv.authorized_keys_file.is_some() {
                                Some(authorized.unwrap_or_default())
                            } else {
                                None
                            },
                        })
                    }
                    _ => None,
                }
            }
            (None, None) => {
                if cv.authorized_keys_file.is_some() {
                    c.bad(
                        "curve.authorized_keys_file",
                        "is set but the server keypair is not",
                        "set curve.secret_key_file and curve.public_key_file too",
                    );
                }
                None
            }
            (s, _) => {
                let missing = if s.is_none() {
                    "curve.secret_key_file"
                } else {
                    "curve.public_key_file"
                };
                c.bad(
                    missing,
                    "is missing while the other key file of the pair is set",
                    "both curve.secret_key_file and curve.public_key_file, or neither",
                );
                None
            }
        }
    }
}

/// Check one socket's table: its endpoint parses, is not exposed without CURVE (unless
/// `insecure`), an ipc:// directory exists, and CURVE has keys when asked for.
pub fn check_socket(
    c: &mut Checker,
    name: &'static str,
    endpoint: &str,
    curve: bool,
    insecure: bool,
    keys: &Option<CurveKeys>,
) -> Option<SocketSpec> {
    let ep = match Endpoint::parse(endpoint) {
        Ok(ep) => ep,
        Err(e) => {
            c.bad(
                format!("{name}.endpoint"),
                e,
                "tcp://IP:PORT, tcp://localhost:PORT, tcp://*:PORT or ipc:///path",
            );
            return None;
        }
    };
    if !ep.is_local() && !curve && !insecure {
        c.bad(
            format!("{name}.endpoint"),
            format!("'{endpoint}' is reachable from other hosts but has no CURVE security"),
            &format!(
                "a loopback or ipc:// endpoint, or {name}.curve = true with [curve] keys, \
                 or {name}.insecure = true to accept plain text on the network"
            ),
        );
    }
    if let Endpoint::Ipc(p) = &ep
        && let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        c.bad(
            format!("{name}.endpoint"),
            format!("directory '{}' does not exist", dir.display()),
            "an ipc:// path in an existing directory",
        );
    }
    if curve && zmq::has("curve") != Some(true) {
        c.bad(
            format!("{name}.curve"),
            "is true but this libzmq was built without CURVE",
            "a libzmq with CURVE (Debian's libzmq5 has it), or curve = false",
        );
    }
    if curve && keys.is_none() {
        c.bad(
            format!("{name}.curve"),
            "is true but [curve] secret_key_file/public_key_file are not both usable",
            "set curve.secret_key_file and curve.public_key_file, or curve = false",
        );
    }
    Some(SocketSpec {
        name,
        endpoint: ep,
        curve: if curve { keys.clone() } else { None },
    })
}

fn read_key(c: &mut Checker, key: &str, p: &Path) -> Option<String> {
    let p = c.resolve(p);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let k = s.trim().to_string();
            if k.len() == 40 && zmq::z85_decode(&k).is_ok() {
                Some(k)
            } else {
                c.bad(
                    key,
                    format!("'{}' does not hold a Z85 CURVE key", p.display()),
                    "a file with one 40-character Z85 key (see `summerd keygen`)",
                );
                None
            }
        }
        Err(e) => {
            c.bad(
                key,
                format!("cannot read '{}': {e}", p.display()),
                "a readable key file",
            );
            None
        }
    }
}

fn read_authorized(c: &mut Checker, f: &Path) -> Option<Vec<[u8; 32]>> {
    let p = c.resolve(f);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) => {
            c.bad(
                "curve.authorized_keys_file",
                format!("cannot read '{}': {e}", p.display()),
                "a readable file of Z85 public keys, one a line",
            );
            return None;
        }
    };
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match zmq::z85_decode(line)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
        {
            Some(k) => keys.push(k),
            None => c.bad(
                "curve.authorized_keys_file",
                format!(
                    "line {} of '{}' is not a Z85 public key",
                    n + 1,
                    p.display()
                ),
                "one 40-character Z85 key a line; # starts a comment",
            ),
        }
    }
    Some(keys)
}

/// The CURVE public key of a secret key, through libzmq (None if libzmq lacks CURVE).
fn public_from_secret(secret: &[u8]) -> Option<Vec<u8>> {
    let secret_z85 = zmq::z85_encode(secret).ok()?;
    curve_public(&secret_z85).and_then(|p| zmq::z85_decode(&p).ok())
}

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
        /// The error spawning it.
        source: std::io::Error,
    },
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
        // Handshakes that fail before ZAP is asked (no CURVE, a wrong server key) are seen
        // only by a monitor: [`spawn_monitor`] counts and logs them.
        socket
            .monitor(&monitor_endpoint(spec.name), HANDSHAKE_FAILED)
            .map_err(setup)?;
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

/// The handshake failures a CURVE socket's monitor reports.
const HANDSHAKE_FAILED: i32 = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
    | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32
    | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32;

fn monitor_endpoint(socket: &str) -> String {
    format!("inproc://summerd-monitor-{socket}")
}

/// Names of the threads that end when the libzmq context is terminated (not joined before).
pub const CONTEXT_THREADS: [&str; 2] = ["zmq-zap", "zmq-monitor"];

/// Start the thread that counts and logs every refused CURVE handshake of the socket `name`
/// (bound by [`bind`] with CURVE): `summerd_curve_handshakes_failed_total{socket,reason}`,
/// and a WARN line for the first refusal and then at every power of two. It ends when the
/// context is terminated.
pub fn spawn_monitor(
    ctx: &zmq::Context,
    name: &'static str,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, BusError> {
    let setup = |source| BusError::Setup {
        socket: "monitor",
        source,
    };
    let pair = ctx.socket(zmq::PAIR).map_err(setup)?;
    pair.set_linger(0).map_err(setup)?;
    pair.connect(&monitor_endpoint(name)).map_err(setup)?;
    std::thread::Builder::new()
        .name("zmq-monitor".into())
        .spawn(move || {
            let mut refused = 0u64;
            loop {
                let frames = match pair.recv_multipart(0) {
                    Ok(f) => f,
                    Err(zmq::Error::EINTR) => continue,
                    // ETERM: the context is being terminated.
                    Err(_) => return,
                };
                let Some(&[a, b, ..]) = frames.first().map(Vec::as_slice) else {
                    continue;
                };
                let reason = match zmq::SocketEvent::from_raw(u16::from_le_bytes([a, b])) {
                    zmq::SocketEvent::HANDSHAKE_FAILED_AUTH => "unauthorised",
                    zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL => "protocol",
                    _ => "no_detail",
                };
                metrics.handshake_failed(name, reason);
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(socket = name, reason, refused, "Refused a CURVE handshake");
                }
            }
        })
        .map_err(|e| BusError::Thread {
            name: "zmq-monitor",
            source: e,
        })
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
                    // Counted here; the socket's monitor logs it (rate-limited) with every
                    // other refused handshake.
                    metrics.auth_denied();
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

/// How a publisher thread runs.
pub struct PublisherSettings {
    /// Messages queued for the thread; beyond it they are dropped and counted.
    pub queue: usize,
    /// How long queued messages may still go out once the thread stops.
    pub linger: Duration,
    /// Where every message is also fed (the web page's feed), if anywhere.
    pub feed: Option<Arc<Feed>>,
    /// Where every message is also handed (cluster mode: NATS), if anywhere; it never
    /// blocks: a message that does not fit is dropped and counted under `mirror_name`.
    pub mirror: Option<(&'static str, tokio::sync::mpsc::Sender<Multipart>)>,
}

/// Start a publisher thread that owns the bound PUB `socket`. It ends once every
/// [`PublisherHandle`] is dropped and the queue is drained; on the way out it keeps the socket
/// open for at most `linger` so that queued messages reach connected subscribers.
pub fn spawn_publisher(
    name: &'static str,
    socket: zmq::Socket,
    settings: PublisherSettings,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
) -> Result<(PublisherHandle, JoinHandle<()>), BusError> {
    let (tx, rx) = sync_channel::<Multipart>(settings.queue);
    let m = metrics.clone();
    let join = std::thread::Builder::new()
        .name(format!("zmq-{name}"))
        .spawn(move || publish_loop(name, socket, rx, settings, m, heartbeat))
        .map_err(|e| BusError::Thread { name, source: e })?;
    Ok((PublisherHandle { name, tx, metrics }, join))
}

fn publish_loop(
    name: &'static str,
    socket: zmq::Socket,
    rx: Receiver<Multipart>,
    settings: PublisherSettings,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
) {
    let PublisherSettings {
        linger,
        feed,
        mirror,
        ..
    } = settings;
    loop {
        heartbeat.beat();
        match rx.recv_timeout(Duration::from_millis(POLL_MS as u64)) {
            Ok(msg) => {
                if let Some(f) = &feed {
                    f.push(&msg);
                }
                if let Some((mirror_name, m)) = &mirror
                    && m.try_send(msg.clone()).is_err()
                {
                    metrics.dropped(mirror_name);
                }
                match socket.send_multipart(msg, zmq::DONTWAIT) {
                    Ok(()) => metrics.published(name),
                    // PUB drops rather than blocking; EAGAIN only appears in odd states.
                    Err(zmq::Error::EAGAIN) => metrics.dropped(name),
                    Err(e) => {
                        metrics.socket_error(name);
                        tracing::error!(socket = name, error = %e, "Publishing failed");
                    }
                }
            }
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
