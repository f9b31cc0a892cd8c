//! Configuration: TOML parsed by serde into [`RawConfig`], whose tables are the components'
//! own settings types (`[transcripts]` is [`TranscriptsConfig`] in `transcripts.rs`,
//! `[ingest]` is [`IngestConfig`] in `ingest/settings.rs`, ...; every table
//! `deny_unknown_fields`), then checked by each component's own `check` into a [`Config`]
//! whose invariants the rest of the daemon relies on. Config aggregates; components never
//! import it.
//!
//! Two kinds of error, both naming the key, each reporting every problem at once:
//! - parse errors (unknown key, wrong type, bad TOML) carry the dotted path of the key and the
//!   line/column, from `serde_path_to_error` and the TOML parser;
//! - validation errors (bad endpoint, duplicate stream id, missing file, insecure exposure,
//!   out-of-range or NaN values, ...) say what is wrong and what is allowed.
//!
//! `summerd validate` and start-up run the same checks, and then the same
//! [`crate::daemon::preflight`] of the model and vision weights.
//!
//! Relative paths in the file are resolved against the directory of the config file, so that
//! the same file works from a checkout and from `/etc/summerd` under systemd.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::bus::{AudioTapConfig, CurveConfig, CurveKeys, Endpoint, EventsConfig, SocketSpec};
pub use crate::cluster::ClusterConfig;
pub use crate::control::ControlConfig;
pub use crate::infer::InferenceConfig;
pub use crate::infer::engine::{DeviceChoice, ModelSource};
pub use crate::ingest::settings::{IngestConfig, PipelinesConfig};
pub use crate::metrics::MetricsConfig;
pub use crate::settings::{Checker, HumanDuration, Problem};
pub use crate::signals::EscalationConfig;
pub use crate::streams::StreamSpec;
pub use crate::text::TextEncoderConfig;
pub use crate::transcripts::TranscriptsConfig;
use crate::vision::stage::VisionSettings;
pub use crate::web::{WebConfig, WebSettings};

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
    pub model: ModelSource,
    /// The sentence encoder that turns transcript text into vectors for the model.
    pub text_encoder: TextEncoderConfig,
    /// Per-utterance inference: waiting for features, batching, provisional estimates.
    pub inference: InferenceConfig,
    /// Call-level signals: each speaker's smoothed state and escalation events.
    pub escalation: EscalationConfig,
    /// The live web page on the metrics listener.
    pub web: WebConfig,
    /// Where GStreamer launch templates (`<name>.gst`) are looked up.
    pub pipelines: PipelinesConfig,
    /// How streams are ingested and supervised.
    pub ingest: IngestConfig,
    /// The local control endpoint (attach, detach, list).
    pub control: ControlConfig,
    /// The vision stage: faces, tracks and expression on streams with video.
    pub vision: VisionSettings,
    /// Streams attached at start: the same fields as an attach request on the control socket.
    pub streams: Vec<StreamSpec>,
    /// Cluster mode on NATS JetStream; absent: a single box on ZeroMQ.
    pub cluster: Option<ClusterConfig>,
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

impl DaemonConfig {
    /// Check the table.
    pub fn check(&self, c: &mut Checker) {
        if log_filter(&self.log_level).is_none() {
            c.bad(
                "daemon.log_level",
                format!("'{}' is not a log filter", self.log_level),
                "error, warn, info, debug, trace, or target=level directives like summerd=debug,warn (no span or field filters)",
            );
        }
        c.duration(
            "daemon.shutdown_timeout",
            self.shutdown_timeout.0,
            Duration::from_millis(100),
            Duration::from_secs(600),
        );
        c.range("daemon.malloc_arenas", self.malloc_arenas, 0, 1024);
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
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse into the schema (unknown keys, wrong types, syntax): every
    /// such key, not just the first.
    #[error("{path}: {}", show_parse(errors))]
    Parse {
        /// The file.
        path: PathBuf,
        /// Each problem: the dotted path of the offending key (when known) and the parser's
        /// message (with line and column).
        errors: Vec<ParseProblem>,
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

impl ConfigError {
    /// The problems of an `Invalid` error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
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

fn show_parse(errors: &[ParseProblem]) -> String {
    let one = |(key, message): &ParseProblem| match key {
        Some(k) => format!("key `{k}`: {message}"),
        None => message.clone(),
    };
    match errors {
        [e] => one(e),
        _ => format!(
            "{} problem(s):\n{}",
            errors.len(),
            errors
                .iter()
                .map(|e| format!("  - {}", one(e)))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// The bound sockets, parsed and secured.
#[derive(Debug, Clone)]
pub struct Sockets {
    /// `[transcripts]`: PULL.
    pub transcripts: SocketSpec,
    /// `[events]`: PUB.
    pub events: SocketSpec,
    /// `[audio_tap]`: PUB, when enabled.
    pub audio_tap: Option<SocketSpec>,
}

/// A checked configuration: every table as its component checked it, paths resolved,
/// endpoints parsed, keys loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// The bound sockets.
    pub sockets: Sockets,
    /// `[transcripts]`.
    pub transcripts: TranscriptsConfig,
    /// `[events]`.
    pub events: EventsConfig,
    /// `[audio_tap]`.
    pub audio_tap: AudioTapConfig,
    /// Metrics listen address, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Model directory, resolved, when set.
    pub model_path: Option<PathBuf>,
    /// Where the model runs.
    pub device: DeviceChoice,
    /// `[text_encoder]`, its directory resolved.
    pub text_encoder: TextEncoderConfig,
    /// `[inference]`.
    pub inference: InferenceConfig,
    /// `[escalation]`.
    pub escalation: EscalationConfig,
    /// The live web page, when served (on the metrics listener).
    pub web: Option<WebSettings>,
    /// `[ingest]`.
    pub ingest: IngestConfig,
    /// Pipelines directory, resolved.
    pub pipelines_dir: PathBuf,
    /// Control endpoint, when enabled.
    pub control: Option<Endpoint>,
    /// The vision stage's settings with paths resolved, when it runs (enabled, with a model).
    pub vision: Option<VisionSettings>,
    /// Streams attached at start.
    pub streams: Vec<StreamSpec>,
    /// `[cluster]`, checked (its node name filled in), when the daemon runs as a cluster node.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// Shutdown drain limit.
    pub fn shutdown_timeout(&self) -> Duration {
        self.daemon.shutdown_timeout.0
    }

    /// Read, parse and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse and check TOML text that came from `path` (used to resolve relative paths).
    /// Every problem is reported at once: keys that do not fit the schema, then values the
    /// components refuse.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let (raw, parsed) = parse_lenient(text, path)?;
        let checked = validate(raw, path);
        if parsed.is_empty() {
            return checked;
        }
        let mut problems: Vec<Problem> = parsed
            .into_iter()
            .map(|(key, message)| Problem {
                key: key.unwrap_or_else(|| "(file)".into()),
                problem: message,
                allowed: "what config/summerd.toml documents for this key".into(),
            })
            .collect();
        if let Err(e) = checked {
            problems.extend(e.problems().iter().cloned());
        }
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// A key that does not fit the schema (its dotted path, when known) and the parser's message.
pub type ParseProblem = (Option<String>, String);

/// Most parse problems reported at once.
const MAX_PARSE_ERRORS: usize = 64;

/// Parse TOML into the schema, naming the key on failure (the first problem; see
/// [`Config::from_toml`] for every problem at once).
pub fn parse_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let (raw, mut problems) = parse_lenient(text, path)?;
    match problems.is_empty() {
        true => Ok(raw),
        false => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            errors: vec![problems.swap_remove(0)],
        }),
    }
}

/// Parse TOML into the schema, going past what does not fit: each unknown key or value of
/// the wrong type is noted, taken out (its default applies), and the rest parsed again. The
/// schema's value and every such problem (dotted key, the parser's message). Only TOML that
/// does not parse at all is an error.
pub fn parse_lenient(
    text: &str,
    path: &Path,
) -> Result<(RawConfig, Vec<ParseProblem>), ConfigError> {
    let fail = |errors| ConfigError::Parse {
        path: path.to_path_buf(),
        errors,
    };
    let syntax = |e: toml::de::Error| fail(vec![(None, e.to_string().trim_end().to_string())]);
    // The first pass reads the text itself, so its message has the line and column; a file
    // that parses (the usual case) is read once.
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    let mut result = serde_path_to_error::deserialize::<_, RawConfig>(de);
    let mut doc: Option<toml::Table> = None;
    let mut problems = Vec::new();
    loop {
        let e = match result {
            Ok(raw) => return Ok((raw, problems)),
            Err(e) => e,
        };
        let p = e.path().clone();
        let key = p.to_string();
        let key = (key != "." && !key.is_empty()).then_some(key);
        problems.push((key, e.into_inner().to_string().trim_end().to_string()));
        let table = match &mut doc {
            Some(t) => t,
            None => doc.insert(text.parse().map_err(syntax)?),
        };
        if problems.len() >= MAX_PARSE_ERRORS || !remove_at(table, &p) {
            return Err(fail(problems));
        }
        result = serde_path_to_error::deserialize(toml::Value::Table(table.clone()));
    }
}

/// Remove the value at `p` from `doc`; false when there is nothing there to remove.
fn remove_at(doc: &mut toml::Table, p: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segs: Vec<&Segment> = p.iter().collect();
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur: &mut toml::Value = match parents.first() {
        None => {
            return match last {
                Segment::Map { key } => doc.remove(key).is_some(),
                _ => false,
            };
        }
        Some(Segment::Map { key }) => match doc.get_mut(key) {
            Some(v) => v,
            None => return false,
        },
        Some(_) => return false,
    };
    for s in &parents[1..] {
        let next = match (s, cur) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key),
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    // A whole element of an array (a `[[streams]]` table missing a required key) is not
    // taken out: the elements after it would be reported under the wrong index.
    match (last, cur) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key).is_some(),
        _ => false,
    }
}

/// Check every table of a parsed config with its component's checks; resolve paths against
/// `path`'s directory. Every problem is reported at once.
pub fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Checker::new(base);
    raw.daemon.check(&mut c);
    let keys = raw.curve.load(&mut c);
    let sockets = check_sockets(&raw, &keys, &mut c);
    let metrics = raw.metrics.check(&mut c, raw.web.has_token());
    let web = raw.web.check(&mut c, metrics);
    raw.escalation.check(&mut c);
    let model_path = raw.model.check(&mut c);
    let mut text_encoder = raw.text_encoder.clone();
    text_encoder.dir = raw.text_encoder.check(&mut c, model_path.is_some());
    raw.inference.check(&mut c);
    raw.ingest.check(&mut c);
    let control = raw.control.check(&mut c);
    raw.vision.check_into(&mut c, "vision");
    // Like the text encoder, the vision stage serves the model: without one it does not run.
    let vision = (raw.vision.enabled && model_path.is_some())
        .then(|| raw.vision.resolve_files(&mut c, "vision"));
    let pipelines_dir = raw.pipelines.check(&mut c, raw.streams.len());
    check_streams(&raw, &pipelines_dir, &mut c);
    let mut cluster = raw.cluster.clone();
    if let Some(cl) = &mut cluster {
        cl.check(&mut c);
    }
    let (Some(sockets), true) = (sockets, c.is_clean()) else {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: c.into_problems(),
        });
    };
    Ok(Config {
        source: path.to_path_buf(),
        daemon: raw.daemon,
        sockets,
        transcripts: raw.transcripts,
        events: raw.events,
        audio_tap: raw.audio_tap,
        metrics,
        model_path,
        device: raw.model.device,
        text_encoder,
        inference: raw.inference,
        escalation: raw.escalation,
        web,
        ingest: raw.ingest,
        pipelines_dir,
        control,
        vision,
        streams: raw.streams,
        cluster,
    })
}

/// The sockets' tables, and no two sockets on one endpoint.
fn check_sockets(raw: &RawConfig, keys: &Option<CurveKeys>, c: &mut Checker) -> Option<Sockets> {
    let t = &raw.transcripts;
    raw.transcripts.check(c);
    let transcripts =
        crate::bus::check_socket(c, "transcripts", &t.endpoint, t.curve, t.insecure, keys);
    let events = raw.events.check(c, keys, raw.inference.max_batch);
    let audio_tap = raw.audio_tap.check(c, keys);
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
    Some(Sockets {
        transcripts: transcripts?,
        events: events?,
        audio_tap,
    })
}

/// Every `[[streams]]` table, as an attach request is checked, and no id twice.
fn check_streams(raw: &RawConfig, pipelines_dir: &Path, c: &mut Checker) {
    let mut ids = HashSet::new();
    for (i, s) in raw.streams.iter().enumerate() {
        let key = format!("streams[{i}]");
        if !ids.insert(s.id.as_str()) {
            c.bad(
                format!("{key}.id"),
                format!("'{}' is a duplicate stream id", s.id),
                "ids unique across [[streams]]",
            );
        }
        let vars = raw.ingest.template_vars(s);
        crate::ingest::settings::check_stream(c, &key, s, pipelines_dir, &vars);
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stream(s); transcripts {}, events {}{}",
            self.streams.len(),
            self.sockets.transcripts.endpoint.to_zmq(),
            self.sockets.events.endpoint.to_zmq(),
            if self.model_path.is_none() {
                "; no model: no inference"
            } else {
                ""
            }
        )
    }
}
