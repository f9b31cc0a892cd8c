//! Configuration: TOML parsed by serde into [`RawConfig`] (every table `deny_unknown_fields`),
//! then validated into a [`Config`] whose invariants the rest of the daemon relies on.
//!
//! Two kinds of error, both naming the key:
//! - parse errors (unknown key, wrong type, bad TOML) carry the dotted path of the key and the
//!   line/column, from `serde_path_to_error` and the TOML parser;
//! - validation errors (bad endpoint, duplicate stream id, missing file, insecure exposure, ...)
//!   say what is wrong and what is allowed. All of them are reported at once, not just the first.
//!
//! Relative paths in the file are resolved against the directory of the config file, so that
//! the same file works from a checkout and from `/etc/summerd` under systemd.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default config file name, looked for in `config/` of a checkout.
pub const DEFAULT_CONFIG_PATH: &str = "config/summerd.toml";

/// The whole configuration file, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Process-wide settings: logging, shutdown.
    pub daemon: DaemonConfig,
    /// Where ASR workers PUSH transcript segments (this daemon binds a PULL socket).
    pub transcripts: TranscriptsConfig,
    /// Where emotion and lifecycle events are published (PUB socket).
    pub events: EventsConfig,
    /// Where 16 kHz PCM of every stream is published for ASR workers (PUB socket).
    pub audio_tap: AudioTapConfig,
    /// CURVE keys shared by every socket that sets `curve = true`.
    pub curve: CurveConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// The emotion model.
    pub model: ModelConfig,
    /// The sentence encoder that turns transcript text into vectors for the model.
    pub text_encoder: TextEncoderConfig,
    /// Per-utterance inference: waiting for features, batching, provisional estimates.
    pub inference: InferenceConfig,
    /// Where GStreamer launch templates (`<name>.gst`) are looked up.
    pub pipelines: PipelinesConfig,
    /// How streams are ingested and supervised.
    pub ingest: IngestConfig,
    /// The local control endpoint (attach, detach, list).
    pub control: ControlConfig,
    /// The vision stage: faces, tracks and expression on streams with video.
    pub vision: crate::vision::stage::VisionSettings,
    /// Streams attached at start.
    pub streams: Vec<StreamConfig>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Log filter in `tracing` syntax (`info`, `summerd=debug,warn`, ...). `RUST_LOG` overrides it.
    pub log_level: String,
    /// Log line format: `text` (human-readable) or `json` (one object a line).
    pub log_format: LogFormat,
    /// How long SIGTERM/SIGINT may take to drain queued work before the process gives up.
    pub shutdown_timeout: HumanDuration,
    /// glibc malloc arenas (0: glibc's default, 8 per core). Dozens of media and vision threads
    /// each get an arena of their own by default, and each keeps what it freed: with 8 720p
    /// calls, 1 arena held 28 MiB less per stream than the default at the same CPU. The
    /// environment's `MALLOC_ARENA_MAX`, when set, wins.
    pub malloc_arenas: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            shutdown_timeout: HumanDuration(Duration::from_secs(10)),
            malloc_arenas: 1,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-28T10:15:02Z  INFO summerd: Message key=value`
    Text,
    /// One JSON object per line.
    Json,
}

/// `[transcripts]`: the PULL socket that ASR workers push to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscriptsConfig {
    /// ZeroMQ endpoint to bind: `tcp://HOST:PORT` or `ipc:///path`.
    pub endpoint: String,
    /// Encrypt and authenticate with the `[curve]` keys.
    pub curve: bool,
    /// Allow a non-loopback TCP endpoint without CURVE (plain text on the network).
    pub insecure: bool,
    /// Messages larger than this many bytes are rejected unread (`oversized`).
    pub max_message_bytes: usize,
    /// Transcript text longer than this many characters is rejected (`text_too_long`).
    pub max_text_chars: usize,
    /// Longest accepted `embedding` array.
    pub max_embedding_dim: usize,
    /// Segments on the `unix` clock whose end is older than this are rejected (`stale`).
    pub max_segment_age: HumanDuration,
    /// At most one log line per rejection reason per this interval (the rest are counted).
    pub reject_log_interval: HumanDuration,
    /// ZeroMQ receive high-water mark (messages queued inside libzmq).
    pub rcvhwm: i32,
    /// Capacity of the channel from the socket thread to the pipeline (full: the socket
    /// thread waits, and libzmq's queue and then the pushers absorb the burst).
    pub queue: usize,
}

impl Default for TranscriptsConfig {
    fn default() -> Self {
        Self {
            endpoint: "tcp://127.0.0.1:5555".into(),
            curve: false,
            insecure: false,
            max_message_bytes: 64 * 1024,
            max_text_chars: 5000,
            max_embedding_dim: 4096,
            max_segment_age: HumanDuration(Duration::from_secs(300)),
            reject_log_interval: HumanDuration(Duration::from_secs(1)),
            rcvhwm: 10_000,
            queue: 1024,
        }
    }
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

/// `[metrics]`: Prometheus text exposition over HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    pub enabled: bool,
    /// `IP:PORT` to listen on (`GET /metrics`).
    pub listen: String,
    /// Allow a non-loopback listen address (metrics carry no secrets but reveal stream ids).
    pub insecure: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9187".into(),
            insecure: false,
        }
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model directory holding `manifest.json` and its weights. Unset: no emotion inference
    /// (transcripts are still validated and counted, lifecycle events still published).
    pub path: Option<PathBuf>,
    /// `auto` (CUDA when usable, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: None,
            device: "auto".into(),
        }
    }
}

/// `[text_encoder]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextEncoderConfig {
    /// Directory with `config.json`, `tokenizer.json` and `model.safetensors` of a BERT
    /// sentence encoder (the set-up fetches all-MiniLM-L6-v2 here). Checked when a model is set.
    pub dir: PathBuf,
    /// Truncation length in tokens, special tokens included (2-512).
    pub max_tokens: usize,
    /// Precision of the encoder's matrix products: `f32`, `bf16` or `auto` (bf16 on a CPU
    /// with native bf16 dot products, f32 otherwise).
    pub precision: crate::text::Precision,
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("../").join(crate::text::DEFAULT_DIR),
            max_tokens: crate::text::DEFAULT_MAX_TOKENS,
            precision: crate::text::Precision::default(),
        }
    }
}

/// `[inference]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Longest wait, from a segment's arrival, for the acoustic descriptors to cover its end;
    /// then it goes on without what is missing (the event's `modalities` say so).
    pub feature_wait: HumanDuration,
    /// Most utterances (of all streams) in one forward pass.
    pub max_batch: usize,
    /// Longest wait for a batch to fill once one utterance is ready. 0: take what is queued
    /// and go (batches still form under load, from what arrives while a pass runs).
    pub max_wait: HumanDuration,
    /// Utterances queued for the model worker; beyond it the oldest ready ones wait in the
    /// assembler (never dropped silently).
    pub queue: usize,
    /// Estimate from partial (`final: false`) segments too, published with `provisional: true`.
    pub provisional: bool,
    /// Seconds of acoustic descriptors kept per stream (an utterance must end within it).
    pub audio_history: HumanDuration,
    /// libtorch CPU threads of the model worker.
    pub threads: usize,
    /// Forward passes that may fail in a row before the daemon gives up and exits non-zero
    /// (systemd restarts it); a panic in the model worker exits at once.
    pub max_failed_batches: u32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            feature_wait: HumanDuration(Duration::from_millis(500)),
            max_batch: 32,
            max_wait: HumanDuration(Duration::ZERO),
            queue: 1024,
            provisional: false,
            audio_history: HumanDuration(Duration::from_secs(120)),
            threads: 1,
            max_failed_batches: 3,
        }
    }
}

/// `[pipelines]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelinesConfig {
    /// Directory of `<template>.gst` launch templates.
    pub dir: PathBuf,
}

impl Default for PipelinesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("../pipelines"),
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// First delay before a failed stream is rebuilt; doubles on each failure.
    pub backoff_initial: HumanDuration,
    /// Longest delay between rebuilds (keep it short: a returning source is picked up within
    /// about this long).
    pub backoff_max: HumanDuration,
    /// A live source that delivers no media for this long is rebuilt.
    pub stall_timeout: HumanDuration,
    /// Video frames per second handed to the vision stage (`{fps}` in templates).
    pub video_fps: u32,
    /// Largest width of those frames (`{max_width}`; scaled inside GStreamer).
    pub video_max_width: u32,
    /// Largest height of those frames (`{max_height}`).
    pub video_max_height: u32,
    /// Audio chunks queued per stream between GStreamer and the audio stage (full: a chunk
    /// is dropped, counted and logged).
    pub audio_queue: usize,
    /// Video frames queued per stream (full: the oldest is dropped and counted).
    pub video_queue: usize,
    /// Threads per libav video decoder (`max-threads` of `avdec_*`); 0: libav's choice (one
    /// per core). With many streams on few cores one each costs least.
    pub decoder_threads: u32,
    /// Nice value (0-19) of every media thread: GStreamer's streaming threads and the
    /// per-stream audio and vision threads. Above 0, the transcript -> event path (sockets,
    /// model worker) goes first when the cores are busy; media is buffered and catches up.
    pub nice: i32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            backoff_initial: HumanDuration(Duration::from_millis(250)),
            backoff_max: HumanDuration(Duration::from_secs(1)),
            stall_timeout: HumanDuration(Duration::from_secs(3)),
            video_fps: 5,
            video_max_width: 640,
            video_max_height: 480,
            audio_queue: 512,
            video_queue: 4,
            decoder_threads: 1,
            nice: 19,
        }
    }
}

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

/// `[[streams]]`: one live stream attached at start; the same fields as an attach request
/// on the control socket.
pub type StreamConfig = crate::ingest::StreamSpec;

/// A duration written as a human string: `"10s"`, `"250ms"`, `"5m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{e}: expected a duration such as \"10s\", \"250ms\" or \"5m\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A configuration error. `Display` is what `summerd validate` prints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse into the schema (unknown key, wrong type, syntax).
    #[error("{path}: {}{message}", key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Dotted path of the offending key, when known.
        key: Option<String>,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Parsed, but some values are not acceptable.
    #[error("{path}: {} invalid value(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// One invalid value: which key, what is wrong, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `streams[1].id` or `events.endpoint`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What would be accepted.
    pub allowed: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: {} (allowed: {})",
            self.key, self.problem, self.allowed
        )
    }
}

impl ConfigError {
    /// The problems of an `Invalid` error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

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
            Endpoint::Tcp { host, .. } => {
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
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

/// A log filter, or None if `s` is not one. Accepted: comma-separated `level` or
/// `target=level` directives (`info`, `summerd=debug,warn`): letters, digits and `_ : = , . -`
/// only. Span and field filters (`[span{field=regex}]`) are refused before tracing-subscriber
/// sees them: its directive parser panics on some multi-byte characters and takes seconds to
/// compile some field regexes (both found by fuzzing the config parser; the inputs are kept in
/// fuzz/regressions/config/).
pub fn log_filter(s: &str) -> Option<tracing_subscriber::EnvFilter> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_:=,.-".contains(c);
    if s.len() > 1024 || !s.chars().all(plain) {
        return None;
    }
    tracing_subscriber::EnvFilter::try_new(s).ok()
}

/// A validated configuration: paths resolved, endpoints parsed, keys loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    /// The file as written (with defaults filled in).
    pub raw: RawConfig,
    /// Parsed `[transcripts]` socket.
    pub transcripts: SocketSpec,
    /// Parsed `[events]` socket.
    pub events: SocketSpec,
    /// Parsed `[audio_tap]` socket, when enabled.
    pub audio_tap: Option<SocketSpec>,
    /// Parsed metrics listen address, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Model directory, resolved, when set.
    pub model_path: Option<PathBuf>,
    /// Text encoder directory, resolved.
    pub text_encoder_dir: PathBuf,
    /// Pipelines directory, resolved.
    pub pipelines_dir: PathBuf,
    /// Control endpoint, when enabled.
    pub control: Option<Endpoint>,
    /// The vision stage's settings with paths resolved, when enabled.
    pub vision: Option<crate::vision::stage::VisionSettings>,
}

impl Config {
    /// Shutdown drain limit.
    pub fn shutdown_timeout(&self) -> Duration {
        self.raw.daemon.shutdown_timeout.0
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate TOML text that came from `path` (used to resolve relative paths).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = parse_raw(text, path)?;
        validate(raw, path)
    }
}

/// Parse TOML into the schema, naming the key on failure.
pub fn parse_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let parse_err = |key: Option<String>, message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| parse_err(None, e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != "." && !key.is_empty()).then_some(key);
        parse_err(key, e.into_inner().to_string().trim_end().to_string())
    })
}

const STREAM_ID_ALLOWED: &str = "1-128 characters of A-Z a-z 0-9 . _ : -";

/// True for a stream id the daemon accepts (also used on the wire).
pub fn valid_stream_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

struct Checker {
    problems: Vec<Problem>,
    base: PathBuf,
}

impl Checker {
    fn bad(&mut self, key: impl Into<String>, problem: impl Into<String>, allowed: &str) {
        self.problems.push(Problem {
            key: key.into(),
            problem: problem.into(),
            allowed: allowed.into(),
        });
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, key: &str, v: T, lo: T, hi: T) {
        if v < lo || v > hi {
            self.bad(
                key,
                format!("{v} is out of range"),
                &format!("{lo} to {hi}"),
            );
        }
    }

    fn duration(&mut self, key: &str, d: Duration, lo: Duration, hi: Duration) {
        if d < lo || d > hi {
            self.bad(
                key,
                format!("{} is out of range", humantime::format_duration(d)),
                &format!(
                    "{} to {}",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            );
        }
    }

    fn read_key(&mut self, key: &str, p: &Path) -> Option<String> {
        let p = self.resolve(p);
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                let k = s.trim().to_string();
                if k.len() == 40 && zmq::z85_decode(&k).is_ok() {
                    Some(k)
                } else {
                    self.bad(
                        key,
                        format!("'{}' does not hold a Z85 CURVE key", p.display()),
                        "a file with one 40-character Z85 key (see `summerd keygen`)",
                    );
                    None
                }
            }
            Err(e) => {
                self.bad(
                    key,
                    format!("cannot read '{}': {e}", p.display()),
                    "a readable key file",
                );
                None
            }
        }
    }

    fn socket(
        &mut self,
        name: &'static str,
        endpoint: &str,
        curve: bool,
        insecure: bool,
        keys: &Option<CurveKeys>,
    ) -> Option<SocketSpec> {
        let ep = match Endpoint::parse(endpoint) {
            Ok(ep) => ep,
            Err(e) => {
                self.bad(
                    format!("{name}.endpoint"),
                    e,
                    "tcp://IP:PORT, tcp://localhost:PORT, tcp://*:PORT or ipc:///path",
                );
                return None;
            }
        };
        if !ep.is_local() && !curve && !insecure {
            self.bad(
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
            self.bad(
                format!("{name}.endpoint"),
                format!("directory '{}' does not exist", dir.display()),
                "an ipc:// path in an existing directory",
            );
        }
        if curve && keys.is_none() {
            self.bad(
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
}

/// Check every value of a parsed config; resolve paths against `path`'s directory.
pub fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let mut c = Checker {
        problems: Vec::new(),
        base,
    };

    // [daemon]
    if log_filter(&raw.daemon.log_level).is_none() {
        c.bad(
            "daemon.log_level",
            format!("'{}' is not a log filter", raw.daemon.log_level),
            "error, warn, info, debug, trace, or target=level directives like summerd=debug,warn (no span or field filters)",
        );
    }
    c.duration(
        "daemon.shutdown_timeout",
        raw.daemon.shutdown_timeout.0,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    c.range("daemon.malloc_arenas", raw.daemon.malloc_arenas, 0, 1024);

    // [curve]
    let cv = &raw.curve;
    let keys = match (&cv.secret_key_file, &cv.public_key_file) {
        (Some(s), Some(p)) => {
            let secret = c.read_key("curve.secret_key_file", s);
            let public = c.read_key("curve.public_key_file", p);
            let authorized = cv
                .authorized_keys_file
                .as_ref()
                .and_then(|f| read_authorized(&mut c, f));
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
    };

    // Sockets
    let t = &raw.transcripts;
    let transcripts = c.socket("transcripts", &t.endpoint, t.curve, t.insecure, &keys);
    c.range(
        "transcripts.max_message_bytes",
        t.max_message_bytes,
        256,
        16 << 20,
    );
    c.range("transcripts.max_text_chars", t.max_text_chars, 1, 1_000_000);
    c.range(
        "transcripts.max_embedding_dim",
        t.max_embedding_dim,
        1,
        65_536,
    );
    c.duration(
        "transcripts.max_segment_age",
        t.max_segment_age.0,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    );
    c.duration(
        "transcripts.reject_log_interval",
        t.reject_log_interval.0,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    c.range("transcripts.rcvhwm", t.rcvhwm, 1, 10_000_000);
    c.range("transcripts.queue", t.queue, 1, 1_000_000);

    let e = &raw.events;
    let events = c.socket("events", &e.endpoint, e.curve, e.insecure, &keys);
    c.range("events.sndhwm", e.sndhwm, 1, 10_000_000);
    c.range("events.queue", e.queue, 1, 1_000_000);
    // One forward pass publishes up to max_batch events at once: a smaller high-water mark
    // drops some of them even for a subscriber that keeps up.
    if e.sndhwm >= 1 && (e.sndhwm as usize) < raw.inference.max_batch {
        c.bad(
            "events.sndhwm",
            format!(
                "{} is below inference.max_batch ({}): a batch's events would be dropped even for subscribers that keep up",
                e.sndhwm, raw.inference.max_batch
            ),
            "at least inference.max_batch",
        );
    }

    let a = &raw.audio_tap;
    let audio_tap = if a.enabled {
        c.range("audio_tap.sndhwm", a.sndhwm, 1, 10_000_000);
        c.range("audio_tap.queue", a.queue, 1, 1_000_000);
        c.range("audio_tap.chunk_ms", a.chunk_ms, 20, 100);
        c.socket("audio_tap", &a.endpoint, a.curve, a.insecure, &keys)
    } else {
        None
    };

    // No two sockets on one endpoint.
    let mut seen: Vec<(&str, String)> = Vec::new();
    for s in [&transcripts, &events, &audio_tap].into_iter().flatten() {
        let z = s.endpoint.to_zmq();
        if let Some((other, _)) = seen.iter().find(|(_, e)| *e == z) {
            c.bad(
                format!("{}.endpoint", s.name),
                format!("'{z}' is already used by {other}.endpoint"),
                "a distinct endpoint for every socket",
            );
        }
        seen.push((s.name, z));
    }

    // [metrics]
    let metrics = if raw.metrics.enabled {
        match raw.metrics.listen.parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() && !raw.metrics.insecure {
                    c.bad(
                        "metrics.listen",
                        format!("'{addr}' is reachable from other hosts"),
                        "a loopback address, or metrics.insecure = true",
                    );
                }
                Some(addr)
            }
            Err(_) => {
                c.bad(
                    "metrics.listen",
                    format!("'{}' is not an IP:PORT address", raw.metrics.listen),
                    "IP:PORT such as 127.0.0.1:9187",
                );
                None
            }
        }
    } else {
        None
    };

    // [model]
    let model_path = raw.model.path.as_ref().map(|p| c.resolve(p));
    if let Some(p) = &model_path {
        let manifest = p.join("manifest.json");
        if !manifest.is_file() {
            c.bad(
                "model.path",
                format!("'{}' does not exist", manifest.display()),
                "a model directory with manifest.json, or no model.path (no inference)",
            );
        }
    }
    let dev = raw.model.device.as_str();
    let dev_ok = matches!(dev, "auto" | "cpu" | "cuda")
        || dev
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok());
    if !dev_ok {
        c.bad(
            "model.device",
            format!("'{dev}' is not a device"),
            "auto, cpu, cuda or cuda:N",
        );
    }

    // [text_encoder]
    let text_encoder_dir = c.resolve(&raw.text_encoder.dir);
    c.range(
        "text_encoder.max_tokens",
        raw.text_encoder.max_tokens,
        2,
        512,
    );
    if model_path.is_some() {
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            if !text_encoder_dir.join(f).is_file() {
                c.bad(
                    "text_encoder.dir",
                    format!("'{}' does not exist", text_encoder_dir.join(f).display()),
                    "a directory with config.json, tokenizer.json and model.safetensors \
                     (tests/setup.sh fetches the default one)",
                );
            }
        }
    }

    // [inference]
    let inf = &raw.inference;
    c.duration(
        "inference.feature_wait",
        inf.feature_wait.0,
        Duration::ZERO,
        Duration::from_secs(30),
    );
    c.range("inference.max_batch", inf.max_batch, 1, 1024);
    c.duration(
        "inference.max_wait",
        inf.max_wait.0,
        Duration::ZERO,
        Duration::from_secs(1),
    );
    c.range("inference.queue", inf.queue, 1, 1_000_000);
    c.duration(
        "inference.audio_history",
        inf.audio_history.0,
        Duration::from_secs(10),
        Duration::from_secs(3600),
    );
    c.range("inference.threads", inf.threads, 1, 256);
    c.range(
        "inference.max_failed_batches",
        inf.max_failed_batches,
        1,
        1_000_000,
    );

    // [ingest]
    let ig = &raw.ingest;
    c.duration(
        "ingest.backoff_initial",
        ig.backoff_initial.0,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    c.duration(
        "ingest.backoff_max",
        ig.backoff_max.0,
        ig.backoff_initial.0,
        Duration::from_secs(600),
    );
    c.duration(
        "ingest.stall_timeout",
        ig.stall_timeout.0,
        Duration::from_millis(500),
        Duration::from_secs(600),
    );
    c.range("ingest.video_fps", ig.video_fps, 1, 60);
    c.range("ingest.video_max_width", ig.video_max_width, 16, 7680);
    c.range("ingest.video_max_height", ig.video_max_height, 16, 4320);
    c.range("ingest.audio_queue", ig.audio_queue, 1, 100_000);
    c.range("ingest.video_queue", ig.video_queue, 1, 1000);
    c.range("ingest.decoder_threads", ig.decoder_threads, 0, 64);
    c.range("ingest.nice", ig.nice, 0, 19);

    // [control]
    let control = if raw.control.enabled {
        match Endpoint::parse(&raw.control.endpoint) {
            Ok(ep) if ep.is_local() => Some(ep),
            Ok(_) => {
                c.bad(
                    "control.endpoint",
                    format!("'{}' is reachable from other hosts", raw.control.endpoint),
                    "a loopback tcp:// or an ipc:// endpoint (the control socket has no authentication)",
                );
                None
            }
            Err(e) => {
                c.bad("control.endpoint", e, "tcp://127.0.0.1:PORT or ipc:///path");
                None
            }
        }
    } else {
        None
    };

    // [vision]
    let vs = &raw.vision;
    c.range("vision.detect_every", vs.detect_every, 1, 100);
    c.range(
        "vision.detect_every_tracked",
        vs.detect_every_tracked,
        vs.detect_every.clamp(1, 100),
        100,
    );
    c.range("vision.history_s", vs.history_s, 1.0, 3600.0);
    c.range("vision.mtcnn.min_face", vs.mtcnn.min_face, 12.0, 4096.0);
    c.range("vision.mtcnn.factor", vs.mtcnn.factor, 0.1, 0.95);
    for t in vs.mtcnn.thresholds {
        c.range("vision.mtcnn.thresholds", t, 0.0, 0.999);
    }
    c.range("vision.mtcnn.max_levels", vs.mtcnn.max_levels, 1, 32);
    c.range(
        "vision.mtcnn.max_candidates",
        vs.mtcnn.max_candidates,
        1,
        100_000,
    );
    c.range(
        "vision.track.min_similarity",
        vs.track.min_similarity,
        0.0,
        1.0,
    );
    c.range("vision.track.max_missed", vs.track.max_missed, 0, 1000);
    c.range(
        "vision.track.persist_frames",
        vs.track.persist_frames,
        1,
        1000,
    );
    c.range(
        "vision.track.switch_margin",
        vs.track.switch_margin,
        1.0,
        10.0,
    );
    // Like the text encoder, the vision stage serves the model: without one it does not run.
    let vision = if vs.enabled && model_path.is_some() {
        let mut v = vs.clone();
        v.mtcnn_dir = c.resolve(&vs.mtcnn_dir);
        v.expression_file = c.resolve(&vs.expression_file);
        for f in ["pnet", "rnet", "onet"] {
            let p = v.mtcnn_dir.join(format!("{f}.safetensors"));
            if !p.is_file() {
                c.bad(
                    "vision.mtcnn_dir",
                    format!("'{}' does not exist", p.display()),
                    "the converted MTCNN weights (make setup), or vision.enabled = false",
                );
                break;
            }
        }
        if !v.expression_file.is_file() {
            c.bad(
                "vision.expression_file",
                format!("'{}' does not exist", v.expression_file.display()),
                "the converted expression network (make setup), or vision.enabled = false",
            );
        }
        Some(v)
    } else {
        None
    };

    // [pipelines] and [[streams]]
    let pipelines_dir = c.resolve(&raw.pipelines.dir);
    if !raw.streams.is_empty() && !pipelines_dir.is_dir() {
        c.bad(
            "pipelines.dir",
            format!("'{}' is not a directory", pipelines_dir.display()),
            "the directory holding <template>.gst files",
        );
    }
    let mut ids = HashSet::new();
    for (i, s) in raw.streams.iter().enumerate() {
        let k = |f: &str| format!("streams[{i}].{f}");
        if !valid_stream_id(&s.id) {
            c.bad(
                k("id"),
                format!("'{}' is not a valid stream id", s.id),
                STREAM_ID_ALLOWED,
            );
        } else if !ids.insert(s.id.as_str()) {
            c.bad(
                k("id"),
                format!("'{}' is a duplicate stream id", s.id),
                "ids unique across [[streams]]",
            );
        }
        if s.uri.is_empty() || !s.uri.contains(':') {
            c.bad(
                k("uri"),
                format!("'{}' is not a URI", s.uri),
                "a URI with a scheme, e.g. file:///calls/a.mp4 or rtsp://host/path",
            );
        }
        let ok_name = !s.template.is_empty()
            && s.template
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_name {
            c.bad(
                k("template"),
                format!("'{}' is not a template name", s.template),
                "the name of a .gst file in pipelines.dir (letters, digits, _ and -)",
            );
        } else if pipelines_dir.is_dir()
            && !pipelines_dir.join(format!("{}.gst", s.template)).is_file()
        {
            c.bad(
                k("template"),
                format!(
                    "'{}' has no file {}",
                    s.template,
                    pipelines_dir.join(format!("{}.gst", s.template)).display()
                ),
                &format!("one of: {}", list_templates(&pipelines_dir).join(", ")),
            );
        }
        for (label, role) in &s.speakers {
            if label.is_empty() || role.is_empty() {
                c.bad(
                    k("speakers"),
                    format!("'{label}' = '{role}' has an empty side"),
                    "non-empty speaker label = non-empty role",
                );
            }
        }
        if s.infer_speakers.iter().any(String::is_empty) {
            c.bad(k("infer_speakers"), "holds an empty role", "role names");
        }
        if ok_name && pipelines_dir.join(format!("{}.gst", s.template)).is_file() {
            match crate::ingest::template::Template::load(&pipelines_dir, &s.template) {
                Ok(t) => {
                    if let Err(e) = t.check_uri(&s.uri) {
                        c.bad(
                            k("uri"),
                            e.to_string(),
                            &format!("a URI of scheme {}", t.schemes.join(", ")),
                        );
                    }
                    let ig = &raw.ingest;
                    let vars = crate::ingest::template_vars(
                        s,
                        ig.video_fps,
                        ig.video_max_width,
                        ig.video_max_height,
                    );
                    if let Err(e) = t.render(&vars) {
                        c.bad(
                            k("options"),
                            e.to_string(),
                            "a value for every {placeholder} of the template",
                        );
                    }
                }
                Err(e) => c.bad(k("template"), e.to_string(), "a readable template"),
            }
        }
    }

    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: c.problems,
        });
    }
    Ok(Config {
        source: path.to_path_buf(),
        transcripts: transcripts.expect("checked above"),
        events: events.expect("checked above"),
        audio_tap,
        metrics,
        model_path,
        text_encoder_dir,
        pipelines_dir,
        control,
        vision,
        raw,
    })
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
    crate::bus::curve_public(&secret_z85).and_then(|p| zmq::z85_decode(&p).ok())
}

fn list_templates(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "gst" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}
