//! Cluster mode: many summerd nodes on NATS JetStream (`[cluster]`).
//!
//! - **Desired state**: the key-value bucket `summerd_streams` holds every stream that should
//!   be watched (the attach request as the control socket takes it), keyed by stream id.
//! - **Ownership by lease** ([`node`]): each node claims unowned streams with an atomic create
//!   in `summerd_leases` (a bucket whose entries expire after `lease`), renews its leases with
//!   a compare-and-set on their revision, and deletes them when it stops; `summerd_nodes`
//!   holds each live node's capacity and load the same way.
//! - **Transcripts** ([`pump`]): ASR workers publish segments on `summerd.transcripts.<stream>`
//!   into the stream `SUMMERD_TRANSCRIPTS`; the owner reads them through a durable consumer per
//!   stream and acknowledges a final segment once its event is stored, so a segment that arrives
//!   during a handover is delivered to the next owner.
//! - **Events** ([`pump`]): every published message also goes to `summerd.events.<stream>` in
//!   `SUMMERD_EVENTS`, emotion events with `Nats-Msg-Id` = `<stream>:<seq>`, so a segment scored
//!   twice around a handover is stored once.
//! - **Conversation state**: after each utterance the model worker's state of the stream is
//!   written to `summerd_state` and restored by the next owner
//!   ([`crate::infer::engine::Checkpoint`]).
//!
//! Without `[cluster]` none of this runs and the daemon is the single-box ZeroMQ daemon.

pub mod admin;
pub mod node;
pub mod pump;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Checker, HumanDuration};

/// The bucket of desired streams.
pub const STREAMS_BUCKET: &str = "summerd_streams";
/// The bucket of stream leases (entries expire after `cluster.lease`).
pub const LEASES_BUCKET: &str = "summerd_leases";
/// The bucket of live nodes (entries expire after `cluster.lease`).
pub const NODES_BUCKET: &str = "summerd_nodes";
/// The bucket of conversation checkpoints.
pub const STATE_BUCKET: &str = "summerd_state";
/// The JetStream stream of transcript segments.
pub const TRANSCRIPTS_STREAM: &str = "SUMMERD_TRANSCRIPTS";
/// The JetStream stream of events.
pub const EVENTS_STREAM: &str = "SUMMERD_EVENTS";
/// Subject prefix of transcript segments: `summerd.transcripts.<stream>`.
pub const TRANSCRIPTS_SUBJECT: &str = "summerd.transcripts";
/// Subject prefix of events: `summerd.events.<stream>`; the daemon's own lifecycle goes to
/// `summerd.events.daemon.<node>` (no stream id starts with `daemon`).
pub const EVENTS_SUBJECT: &str = "summerd.events";
/// Subject prefix of the optional audio tap over core NATS: `summerd.audio.<stream>`.
pub const AUDIO_SUBJECT: &str = "summerd.audio";

/// Why cluster mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Connecting to NATS failed.
    #[error("cannot connect to NATS at {urls}: {detail}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// What went wrong.
        detail: String,
    },
    /// A JetStream or key-value request failed.
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    /// A request made through `summerd cluster` was refused.
    #[error("{0}")]
    Refused(String),
}

/// A JetStream error as a [`ClusterError`].
pub fn js_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(e.to_string())
}

/// `[cluster]`: the NATS servers, credentials, this node's name and capacity, lease times.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS servers: `nats://host:port` or `tls://host:port` (the client fails over).
    pub urls: Vec<String>,
    /// This node's name: 1-64 of `A-Z a-z 0-9 _ -`; empty: the host name.
    pub node: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// A token.
    pub token: Option<String>,
    /// A file holding an NKey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// CA certificates to verify the servers with; requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key.
    pub tls_key: Option<PathBuf>,
    /// Allow connecting off loopback without authentication.
    pub insecure: bool,
    /// Streams with video this node takes at most.
    pub video_streams: usize,
    /// Audio-only streams this node takes at most.
    pub audio_streams: usize,
    /// How long a lease (and a node's presence) lasts without renewal.
    pub lease: HumanDuration,
    /// How often a node renews its leases, claims streams and announces itself.
    pub heartbeat: HumanDuration,
    /// JetStream replicas of the buckets and streams this node creates (1 to 5).
    pub replicas: usize,
    /// How long a delivered segment may stay unacknowledged before it is delivered again.
    pub ack_wait: HumanDuration,
    /// How long the events stream keeps events.
    pub events_max_age: HumanDuration,
    /// Window within which an event published twice (same `Nats-Msg-Id`) is stored once.
    pub duplicate_window: HumanDuration,
    /// Also publish each stream's 16 kHz audio on core NATS (`summerd.audio.<stream>`), for
    /// ASR workers on other hosts (small clusters: 32 kB/s a stream).
    pub audio_subjects: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            node: String::new(),
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            insecure: false,
            video_streams: 16,
            audio_streams: 150,
            lease: HumanDuration(Duration::from_secs(6)),
            heartbeat: HumanDuration(Duration::from_secs(2)),
            replicas: 1,
            ack_wait: HumanDuration(Duration::from_secs(10)),
            events_max_age: HumanDuration(Duration::from_secs(24 * 3600)),
            duplicate_window: HumanDuration(Duration::from_secs(120)),
            audio_subjects: false,
        }
    }
}

/// A NATS server address from `cluster.urls`: its host and whether it asks for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `tls://`.
    pub tls: bool,
}

impl ServerUrl {
    /// Parse `nats://host:port`, `tls://host:port` or `host:port`.
    pub fn parse(s: &str) -> Result<ServerUrl, String> {
        let (tls, rest) = match s.split_once("://") {
            Some(("nats", r)) => (false, r),
            Some(("tls", r)) => (true, r),
            Some((scheme, _)) => return Err(format!("scheme '{scheme}' is not nats or tls")),
            None => (false, s),
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}' has no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{port}' is not a port number"))?;
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(format!("'{host}' is not a host"));
        }
        Ok(ServerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// Only this host can reach it.
    pub fn is_loopback(&self) -> bool {
        crate::settings::is_loopback_host(&self.host)
    }
}

/// Whether `name` names a node: 1-64 of `A-Z a-z 0-9 _ -`.
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The host name as a node name (characters outside the allowed set become `-`).
pub fn default_node_name() -> String {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "summerd".into());
    let name: String = raw
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "summerd".into()
    } else {
        name
    }
}

impl ClusterConfig {
    /// Check the table; paths resolved against the config file's directory.
    pub fn check(&mut self, c: &mut Checker) {
        if self.urls.is_empty() {
            c.bad(
                "cluster.urls",
                "is empty",
                "one or more nats://host:port or tls://host:port",
            );
        }
        let mut off_loopback = false;
        let mut any_tls = false;
        for (i, u) in self.urls.iter().enumerate() {
            match ServerUrl::parse(u) {
                Ok(s) => {
                    off_loopback |= !s.is_loopback();
                    any_tls |= s.tls;
                }
                Err(e) => c.bad(
                    format!("cluster.urls[{i}]"),
                    e,
                    "nats://host:port or tls://host:port",
                ),
            }
        }
        if self.node.is_empty() {
            self.node = default_node_name();
        } else if !valid_node_name(&self.node) {
            c.bad(
                "cluster.node",
                format!("'{}' is not a node name", self.node),
                "1-64 of A-Z a-z 0-9 _ - (empty: the host name)",
            );
        }
        if self.user.is_some() != self.password.is_some() {
            c.bad(
                "cluster.user",
                "a user needs a password and a password a user",
                "both user and password, or neither",
            );
        }
        let methods = usize::from(self.user.is_some())
            + usize::from(self.token.is_some())
            + usize::from(self.nkey_seed_file.is_some());
        if methods > 1 {
            c.bad(
                "cluster",
                "more than one of user/password, token and nkey_seed_file is set",
                "at most one way to authenticate",
            );
        }
        for (key, p) in [
            ("cluster.nkey_seed_file", &mut self.nkey_seed_file),
            ("cluster.tls_ca", &mut self.tls_ca),
            ("cluster.tls_cert", &mut self.tls_cert),
            ("cluster.tls_key", &mut self.tls_key),
        ] {
            if let Some(path) = p {
                let full = c.resolve(path);
                if !full.is_file() {
                    c.bad(
                        key,
                        format!("'{}' is not a readable file", full.display()),
                        "an existing file",
                    );
                }
                *p = Some(full);
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            c.bad(
                "cluster.tls_cert",
                "a client certificate needs its key and a key its certificate",
                "both tls_cert and tls_key, or neither",
            );
        }
        let authenticated = methods > 0 || self.tls_cert.is_some();
        if off_loopback && !authenticated && !self.insecure {
            c.bad(
                "cluster.urls",
                "a server off loopback is reached without authentication",
                "user/password, token, nkey_seed_file or a TLS client certificate; or \
                 `insecure = true` to accept it",
            );
        }
        if off_loopback && !any_tls && self.tls_ca.is_none() && !self.insecure {
            c.bad(
                "cluster.urls",
                "a server off loopback is reached without TLS: credentials and events would \
                 cross the network in the clear",
                "tls:// URLs or tls_ca; or `insecure = true` to accept it",
            );
        }
        c.range("cluster.video_streams", self.video_streams, 0, 10_000);
        c.range("cluster.audio_streams", self.audio_streams, 0, 100_000);
        c.range("cluster.replicas", self.replicas, 1, 5);
        let ms = Duration::from_millis;
        c.duration("cluster.heartbeat", self.heartbeat.0, ms(100), ms(60_000));
        c.duration("cluster.lease", self.lease.0, ms(500), ms(600_000));
        if self.lease.0 < self.heartbeat.0 * 2 {
            c.bad(
                "cluster.lease",
                format!(
                    "{} is less than twice the heartbeat ({})",
                    humantime::format_duration(self.lease.0),
                    humantime::format_duration(self.heartbeat.0)
                ),
                "at least two heartbeats, so one late renewal does not lose a stream",
            );
        }
        c.duration("cluster.ack_wait", self.ack_wait.0, ms(500), ms(3_600_000));
        c.duration(
            "cluster.duplicate_window",
            self.duplicate_window.0,
            ms(1000),
            ms(86_400_000),
        );
        c.duration(
            "cluster.events_max_age",
            self.events_max_age.0,
            ms(60_000),
            ms(365 * 86_400_000),
        );
    }

    /// Connect to NATS with the configured credentials. The client reconnects by itself for
    /// as long as the daemon runs.
    pub async fn connect(&self) -> Result<async_nats::Client, ClusterError> {
        let urls = self.urls.join(",");
        let fail = |detail: String| ClusterError::Connect {
            urls: urls.clone(),
            detail,
        };
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("summerd {}", self.node))
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(f) = &self.nkey_seed_file {
            let seed = std::fs::read_to_string(f)
                .map_err(|e| fail(format!("reading {}: {e}", f.display())))?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .urls
            .iter()
            .map(|u| {
                let full = if u.contains("://") {
                    u.clone()
                } else {
                    format!("nats://{u}")
                };
                full.parse().map_err(|e| fail(format!("{u}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // The first connection must come within the connect timeout; after that the client
        // reconnects on its own.
        let client = tokio::time::timeout(Duration::from_secs(10), opts.connect(servers))
            .await
            .map_err(|_| fail("no server answered within 10 s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        Ok(client)
    }
}

/// A key for a key-value bucket from a stream id: the bucket's key alphabet has no `:`, which
/// stream ids may hold, so `:` is written `=3A` (`=` is in no stream id, so this is one-to-one).
pub fn kv_key(stream: &str) -> String {
    stream.replace(':', "=3A")
}

/// The stream id a [`kv_key`] was made from.
pub fn stream_of_key(key: &str) -> String {
    key.replace("=3A", ":")
}

/// Whether a stream id makes whole NATS subjects and keys: no empty part between its dots
/// (`a..b`, `.a` and `a.` are stream ids, but not subject tokens).
pub fn subject_safe(stream: &str) -> bool {
    stream.split('.').all(|t| !t.is_empty())
}

/// The durable consumer that reads a stream's transcripts: `t-` and the first 32 hex digits of
/// the SHA-256 of its id (a consumer name may not hold `.`, which stream ids may).
pub fn consumer_name(stream: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(stream.as_bytes());
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("t-{hex}")
}

/// The JetStream context and the buckets and streams of a cluster, created where missing.
#[derive(Clone)]
pub struct Js {
    /// The client.
    pub client: async_nats::Client,
    /// Its JetStream context.
    pub js: async_nats::jetstream::Context,
    /// Desired streams.
    pub streams: async_nats::jetstream::kv::Store,
    /// Leases.
    pub leases: async_nats::jetstream::kv::Store,
    /// Live nodes.
    pub nodes: async_nats::jetstream::kv::Store,
    /// Conversation checkpoints.
    pub state: async_nats::jetstream::kv::Store,
}

/// The settings of the buckets and streams [`Js::open`] creates.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// JetStream replicas.
    pub replicas: usize,
    /// Lease (and node presence) time to live.
    pub lease: Duration,
    /// How long events are kept.
    pub events_max_age: Duration,
    /// De-duplication window of the events stream.
    pub duplicate_window: Duration,
}

impl Layout {
    /// The layout a `[cluster]` table asks for.
    pub fn of(cfg: &ClusterConfig) -> Layout {
        Layout {
            replicas: cfg.replicas,
            lease: cfg.lease.0,
            events_max_age: cfg.events_max_age.0,
            duplicate_window: cfg.duplicate_window.0,
        }
    }
}

/// A key-value bucket's stream in the shape NATS 2.9 gives one (`create_key_value` of
/// async-nats does not parse 2.9's answer, so the stream is made here and bound by name).
fn kv_stream(
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

impl Js {
    /// Bind the buckets and streams, creating those that are missing.
    pub async fn open(client: async_nats::Client, layout: Layout) -> Result<Js, ClusterError> {
        use async_nats::jetstream::stream;
        let js = async_nats::jetstream::new(client.clone());
        let day = Duration::from_secs(24 * 3600);
        for (bucket, age) in [
            (STREAMS_BUCKET, Duration::ZERO),
            (LEASES_BUCKET, layout.lease),
            (NODES_BUCKET, layout.lease),
            (STATE_BUCKET, day),
        ] {
            js.get_or_create_stream(kv_stream(bucket, age, layout.replicas))
                .await
                .map_err(js_err)?;
        }
        js.get_or_create_stream(stream::Config {
            name: TRANSCRIPTS_STREAM.into(),
            subjects: vec![format!("{TRANSCRIPTS_SUBJECT}.>")],
            max_age: Duration::from_secs(3600),
            num_replicas: layout.replicas,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(js_err)?;
        js.get_or_create_stream(stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![format!("{EVENTS_SUBJECT}.>")],
            max_age: layout.events_max_age,
            num_replicas: layout.replicas,
            storage: stream::StorageType::File,
            duplicate_window: layout.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(js_err)?;
        let bind = |b: &'static str| {
            let js = js.clone();
            async move { js.get_key_value(b).await.map_err(js_err) }
        };
        Ok(Js {
            streams: bind(STREAMS_BUCKET).await?,
            leases: bind(LEASES_BUCKET).await?,
            nodes: bind(NODES_BUCKET).await?,
            state: bind(STATE_BUCKET).await?,
            client,
            js,
        })
    }
}

impl Js {
    /// [`Js::open`], tried again for up to `patience` while JetStream is not ready yet (a
    /// cluster still electing its leaders answers "no suitable peers" for a few seconds).
    pub async fn open_patiently(
        client: async_nats::Client,
        layout: Layout,
        patience: Duration,
    ) -> Result<Js, ClusterError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(250);
        loop {
            match Js::open(client.clone(), layout).await {
                Ok(js) => return Ok(js),
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::info!(error = %e, "JetStream is not ready; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A value read from a bucket, treating a deleted or purged key as absent.
pub async fn live_entry(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
) -> Result<Option<async_nats::jetstream::kv::Entry>, ClusterError> {
    use async_nats::jetstream::kv::Operation;
    Ok(kv
        .entry(key)
        .await
        .map_err(js_err)?
        .filter(|e| e.operation == Operation::Put))
}

/// Every live key of a bucket.
pub async fn keys(kv: &async_nats::jetstream::kv::Store) -> Result<Vec<String>, ClusterError> {
    use futures_util::TryStreamExt;
    match kv.keys().await {
        Ok(k) => k.try_collect().await.map_err(js_err),
        Err(e) => Err(js_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(toml_text: &str) -> Result<ClusterConfig, Vec<String>> {
        let mut cfg: ClusterConfig = toml::from_str(toml_text).map_err(|e| vec![e.to_string()])?;
        let mut c = Checker::new(".".into());
        cfg.check(&mut c);
        if c.is_clean() {
            Ok(cfg)
        } else {
            Err(c.into_problems().iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn loopback_needs_no_credentials() {
        let cfg = checked("urls = [\"nats://127.0.0.1:4222\", \"localhost:4223\"]\nnode = \"a\"")
            .unwrap();
        assert_eq!(cfg.node, "a");
    }

    #[test]
    fn off_loopback_without_authentication_or_tls_is_refused() {
        let e = checked("urls = [\"nats://10.0.0.5:4222\"]").unwrap_err();
        assert!(
            e.iter().any(|p| p.contains("without authentication")),
            "{e:?}"
        );
        assert!(e.iter().any(|p| p.contains("without TLS")), "{e:?}");
        let e = checked("urls = [\"tls://10.0.0.5:4222\"]\nuser = \"u\"\npassword = \"p\"");
        assert!(e.is_ok(), "{e:?}");
        assert!(checked("urls = [\"nats://10.0.0.5:4222\"]\ninsecure = true").is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let e = checked(
            "urls = [\"http://x:1\", \"nohost\"]\nnode = \"a b\"\nuser = \"u\"\ntoken = \"t\"\n\
             replicas = 7\nlease = \"1s\"\nheartbeat = \"1s\"",
        )
        .unwrap_err();
        let all = e.join("\n");
        for key in [
            "cluster.urls[0]",
            "cluster.urls[1]",
            "cluster.node",
            "cluster.user",
            "more than one",
            "cluster.replicas",
            "cluster.lease",
        ] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
        assert!(toml::from_str::<ClusterConfig>("nodes = 3").is_err());
    }

    #[test]
    fn keys_and_consumer_names_round_trip() {
        for id in ["call-42", "a:b:c", "x.y_z", "A:1.2"] {
            let k = kv_key(id);
            assert!(!k.contains(':'));
            assert_eq!(stream_of_key(&k), id);
            let c = consumer_name(id);
            assert_eq!(c.len(), 34);
            assert!(!c.contains('.'));
        }
        assert_ne!(consumer_name("a.b"), consumer_name("a:b"));
        assert!(
            subject_safe("a.b:c")
                && !subject_safe("a..b")
                && !subject_safe(".a")
                && !subject_safe("a.")
        );
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("node-1_a"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a.b"));
        assert!(valid_node_name(&default_node_name()));
    }
}
