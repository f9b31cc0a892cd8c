//! Transcript segments in: the wire contract of INTERFACES.md ("Transcripts in").
//!
//! [`validate`] is the pure core: bytes in, a [`Transcript`] or a [`Reject`] with its reason
//! out. [`spawn_receiver`] is the thin shell: a thread that owns the libzmq PULL socket,
//! validates every message, counts and rate-limit-logs rejects, and hands valid segments to
//! tokio through a bounded channel (policy when full: the thread waits, so libzmq's own queue
//! and then the pushers absorb a burst; no valid segment is dropped).
//!
//! Rules, in the order they are checked (the first failing one is the reason):
//! 1. at most `max_message_bytes`, one frame, UTF-8, a JSON object;
//! 2. `v` = 1;
//! 3. `stream`: a string naming a stream the daemon serves;
//! 4. `seq`: an integer >= 0; `start`, `end`: finite numbers; `clock` ("media" default, or
//!    "unix");
//! 5. the span (`bad_span`): `end >= start`, `start >= 0` on the media clock, at most
//!    `max_segment` long, starting at most `max_ahead` beyond the stream's newest media (on
//!    the unix clock: beyond now);
//! 6. `text`: a string of at most `max_text_chars` characters;
//! 7. optional: `speaker` (string, <= 128 chars; default "unknown"), `final` (bool; default
//!    true), `lang` (string, <= 35 chars), `embedding` (1..=`max_embedding_dim` finite
//!    numbers); `null` counts as absent;
//! 8. on the unix clock, `end` no older than `max_segment_age` (else `stale`).
//!
//! Unknown extra fields are ignored, for forward compatibility.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::BusError;
use crate::health::{Heartbeat, POLL_MS};
use crate::metrics::Metrics;
use crate::settings::{Checker, HumanDuration};
use crate::streams::Registry;

/// The protocol version this daemon speaks.
pub const WIRE_VERSION: u64 = 1;
const MAX_SPEAKER_CHARS: usize = 128;
const MAX_LANG_CHARS: usize = 35;

/// Which clock a segment's times are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Seconds on the stream's media timeline (0 at its first sample), as on the audio tap.
    Media,
    /// Wall-clock seconds since the Unix epoch.
    Unix,
}

/// A validated transcript segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// Stream id (known to the daemon when validated).
    pub stream: String,
    /// The ASR worker's sequence number; events carry it back.
    pub seq: u64,
    /// Start, seconds on `clock`.
    pub start: f64,
    /// End, seconds on `clock`.
    pub end: f64,
    /// Speaker label as the ASR worker gave it.
    pub speaker: String,
    /// What was said.
    pub text: String,
    /// False for a provisional (partial) segment.
    pub is_final: bool,
    /// Language tag, if given.
    pub lang: Option<String>,
    /// The clock of `start`/`end`.
    pub clock: Clock,
    /// A text vector supplied by the ASR worker, if any.
    pub embedding: Option<Vec<f32>>,
}

/// Why a message was rejected. [`Reject::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    /// Larger than `max_message_bytes`.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Bytes received.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// More than one frame.
    #[error("message has {0} frames; one JSON frame expected")]
    Multipart(usize),
    /// Not UTF-8.
    #[error("message is not UTF-8")]
    InvalidUtf8,
    /// Not JSON at all.
    #[error("message is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("message is JSON but not an object")]
    NotObject,
    /// A required field is absent.
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A field has the right type but an unacceptable value.
    #[error("field `{field}`: {problem}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// `v` is not a version this daemon speaks.
    #[error("protocol version {0} is not supported (this daemon speaks v=1)")]
    UnsupportedVersion(String),
    /// `stream` names no stream the daemon serves.
    #[error("stream '{0}' is not served by this daemon")]
    UnknownStream(String),
    /// `end < start`, or a negative media time.
    #[error("span [{start}, {end}] is not valid: {problem}")]
    BadSpan {
        /// Start.
        start: f64,
        /// End.
        end: f64,
        /// What is wrong.
        problem: &'static str,
    },
    /// Text over `max_text_chars`.
    #[error("text of {chars} characters exceeds the limit of {limit}")]
    TextTooLong {
        /// Characters.
        chars: usize,
        /// The limit.
        limit: usize,
    },
    /// A bad `embedding` array.
    #[error("embedding: {0}")]
    BadEmbedding(String),
    /// A unix-clock segment older than `max_segment_age`.
    #[error("segment ended {age_s:.1} s ago, older than the limit of {limit_s:.1} s")]
    Stale {
        /// Age of its end, seconds.
        age_s: f64,
        /// The limit, seconds.
        limit_s: f64,
    },
}

impl Reject {
    /// Every reason label, for pre-registering metrics so that zeros are visible.
    pub const REASONS: [&'static str; 14] = [
        "oversized",
        "multipart",
        "invalid_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "bad_value",
        "unsupported_version",
        "unknown_stream",
        "bad_span",
        "text_too_long",
        "bad_embedding",
        "stale",
    ];

    /// The metric label of this reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Oversized { .. } => "oversized",
            Reject::Multipart(_) => "multipart",
            Reject::InvalidUtf8 => "invalid_utf8",
            Reject::NotJson(_) => "not_json",
            Reject::NotObject => "not_object",
            Reject::MissingField(_) => "missing_field",
            Reject::WrongType { .. } => "wrong_type",
            Reject::BadValue { .. } => "bad_value",
            Reject::UnsupportedVersion(_) => "unsupported_version",
            Reject::UnknownStream(_) => "unknown_stream",
            Reject::BadSpan { .. } => "bad_span",
            Reject::TextTooLong { .. } => "text_too_long",
            Reject::BadEmbedding(_) => "bad_embedding",
            Reject::Stale { .. } => "stale",
        }
    }

    fn index(&self) -> usize {
        Self::REASONS
            .iter()
            .position(|r| *r == self.reason())
            .expect("every reason is listed in REASONS")
    }
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
    /// Longest segment accepted (`bad_span` beyond it).
    pub max_segment: HumanDuration,
    /// How far a segment may start beyond the newest media of its stream (media clock) or
    /// beyond now (unix clock): an ASR worker reads media the daemon has seen, so a segment
    /// further ahead is a bad timestamp (`bad_span`), which would otherwise make every later
    /// segment of the stream look overlapping.
    pub max_ahead: HumanDuration,
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
            max_segment: HumanDuration(Duration::from_secs(300)),
            max_ahead: HumanDuration(Duration::from_secs(30)),
            reject_log_interval: HumanDuration(Duration::from_secs(1)),
            rcvhwm: 10_000,
            queue: 1024,
        }
    }
}

impl TranscriptsConfig {
    /// Check the values that are the transcripts' own (the socket is checked with the others).
    pub fn check(&self, c: &mut Checker) {
        c.range(
            "transcripts.max_message_bytes",
            self.max_message_bytes,
            256,
            16 << 20,
        );
        c.range(
            "transcripts.max_text_chars",
            self.max_text_chars,
            1,
            1_000_000,
        );
        c.range(
            "transcripts.max_embedding_dim",
            self.max_embedding_dim,
            1,
            65_536,
        );
        c.duration(
            "transcripts.max_segment_age",
            self.max_segment_age.0,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
        c.duration(
            "transcripts.max_segment",
            self.max_segment.0,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
        c.duration(
            "transcripts.max_ahead",
            self.max_ahead.0,
            Duration::ZERO,
            Duration::from_secs(86_400),
        );
        c.duration(
            "transcripts.reject_log_interval",
            self.reject_log_interval.0,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        c.range("transcripts.rcvhwm", self.rcvhwm, 1, 10_000_000);
        c.range("transcripts.queue", self.queue, 1, 1_000_000);
    }
}

/// Limits applied by [`validate`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message, bytes.
    pub max_message_bytes: usize,
    /// Longest text, characters.
    pub max_text_chars: usize,
    /// Longest embedding.
    pub max_embedding_dim: usize,
    /// Oldest acceptable end of a unix-clock segment.
    pub max_segment_age: Duration,
    /// Longest segment.
    pub max_segment: Duration,
    /// Furthest a segment may start beyond its stream's newest media (or, unix clock, now).
    pub max_ahead: Duration,
    /// At most one log line per reject reason per this interval (not used by `validate`).
    pub reject_log_interval: Duration,
}

impl From<&TranscriptsConfig> for Limits {
    fn from(c: &TranscriptsConfig) -> Self {
        Limits {
            max_message_bytes: c.max_message_bytes,
            max_text_chars: c.max_text_chars,
            max_embedding_dim: c.max_embedding_dim,
            max_segment_age: c.max_segment_age.0,
            max_segment: c.max_segment.0,
            max_ahead: c.max_ahead.0,
            reject_log_interval: c.reject_log_interval.0,
        }
    }
}

/// The span rules: ordered, not negative on the media clock, not longer than
/// `max_segment`, not starting beyond the newest media (or now) by more than `max_ahead`.
fn check_span(
    start: f64,
    end: f64,
    clock: Clock,
    media_end: f64,
    now_unix: f64,
    limits: &Limits,
) -> Result<(), Reject> {
    if end < start {
        return Err(Reject::BadSpan {
            start,
            end,
            problem: "end < start",
        });
    }
    if clock == Clock::Media && start < 0.0 {
        return Err(Reject::BadSpan {
            start,
            end,
            problem: "negative time on the media clock",
        });
    }
    if end - start > limits.max_segment.as_secs_f64() {
        return Err(Reject::BadSpan {
            start,
            end,
            problem: "longer than transcripts.max_segment",
        });
    }
    let newest = match clock {
        Clock::Media => media_end,
        Clock::Unix => now_unix,
    };
    if start > newest + limits.max_ahead.as_secs_f64() {
        return Err(Reject::BadSpan {
            start,
            end,
            problem: "starts beyond the stream's newest media (unix clock: now) by more than transcripts.max_ahead",
        });
    }
    Ok(())
}

/// Validate one single-frame message. `media_end` gives a served stream's newest media time
/// (None: the stream is not served); `now_unix` is the wall clock (seconds since the epoch)
/// for the staleness and look-ahead rules of `unix`-clock segments.
pub fn validate(
    msg: &[u8],
    limits: &Limits,
    media_end: &dyn Fn(&str) -> Option<f64>,
    now_unix: f64,
) -> Result<Transcript, Reject> {
    if msg.len() > limits.max_message_bytes {
        return Err(Reject::Oversized {
            size: msg.len(),
            limit: limits.max_message_bytes,
        });
    }
    let text = std::str::from_utf8(msg).map_err(|_| Reject::InvalidUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(|e| Reject::NotJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(Reject::NotObject);
    };
    let f = Fields(&obj);

    let v = f.required("v")?;
    match v.as_u64() {
        Some(WIRE_VERSION) => {}
        Some(_) => return Err(Reject::UnsupportedVersion(v.to_string())),
        None if v.is_number() => return Err(Reject::UnsupportedVersion(v.to_string())),
        None => {
            return Err(Reject::WrongType {
                field: "v",
                expected: "the integer 1",
            });
        }
    }

    let stream = f.string("stream")?.ok_or(Reject::MissingField("stream"))?;
    let Some(media_end) = media_end(stream) else {
        let shown: String = stream.chars().take(128).collect();
        return Err(Reject::UnknownStream(shown));
    };

    let seq = f.required("seq")?;
    let seq = seq.as_u64().ok_or(Reject::WrongType {
        field: "seq",
        expected: "an integer >= 0",
    })?;
    let start = f.number("start")?;
    let end = f.number("end")?;

    let clock = match f.string("clock")? {
        None | Some("media") => Clock::Media,
        Some("unix") => Clock::Unix,
        Some(other) => {
            return Err(Reject::BadValue {
                field: "clock",
                problem: format!("'{}' is neither \"media\" nor \"unix\"", truncate(other)),
            });
        }
    };
    check_span(start, end, clock, media_end, now_unix, limits)?;

    let text = f.string("text")?.ok_or(Reject::MissingField("text"))?;
    let chars = text.chars().count();
    if chars > limits.max_text_chars {
        return Err(Reject::TextTooLong {
            chars,
            limit: limits.max_text_chars,
        });
    }

    let speaker = f.string("speaker")?.unwrap_or("unknown");
    if speaker.is_empty() || speaker.chars().count() > MAX_SPEAKER_CHARS {
        return Err(Reject::BadValue {
            field: "speaker",
            problem: format!("must be 1-{MAX_SPEAKER_CHARS} characters"),
        });
    }
    let is_final = match f.optional("final") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Reject::WrongType {
                field: "final",
                expected: "a boolean",
            });
        }
    };
    let lang = f.string("lang")?;
    if lang.is_some_and(|l| l.chars().count() > MAX_LANG_CHARS) {
        return Err(Reject::BadValue {
            field: "lang",
            problem: format!("longer than {MAX_LANG_CHARS} characters"),
        });
    }
    let embedding = match f.optional("embedding") {
        None => None,
        Some(Value::Array(a)) => Some(embedding(a, limits.max_embedding_dim)?),
        Some(_) => {
            return Err(Reject::WrongType {
                field: "embedding",
                expected: "an array of numbers",
            });
        }
    };

    if clock == Clock::Unix {
        let age = now_unix - end;
        let limit = limits.max_segment_age.as_secs_f64();
        if age > limit {
            return Err(Reject::Stale {
                age_s: age,
                limit_s: limit,
            });
        }
    }

    Ok(Transcript {
        stream: stream.to_string(),
        seq,
        start,
        end,
        speaker: speaker.to_string(),
        text: text.to_string(),
        is_final,
        lang: lang.map(str::to_string),
        clock,
        embedding,
    })
}

fn embedding(a: &[Value], max: usize) -> Result<Vec<f32>, Reject> {
    if a.is_empty() || a.len() > max {
        return Err(Reject::BadEmbedding(format!(
            "{} values; 1 to {max} allowed",
            a.len()
        )));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .ok_or_else(|| Reject::BadEmbedding(format!("value {i} is not a finite number")))
        })
        .collect()
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Typed access to the fields of one message object.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// A field that is present and not null.
    fn optional(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &'static str) -> Result<&'a Value, Reject> {
        self.optional(name).ok_or(Reject::MissingField(name))
    }

    fn string(&self, name: &'static str) -> Result<Option<&'a str>, Reject> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Reject::WrongType {
                field: name,
                expected: "a string",
            }),
        }
    }

    fn number(&self, name: &'static str) -> Result<f64, Reject> {
        let v = self.required(name)?;
        // serde_json never yields NaN/inf, but huge literals overflow to f64 range limits.
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or(Reject::WrongType {
                field: name,
                expected: "a finite number of seconds",
            })
    }
}

/// At most one log line per reason per interval; the lines in between are counted and the
/// count is reported with the next line. (The metrics count every reject regardless.)
pub struct RejectLog {
    interval: Duration,
    last: Vec<Option<Instant>>,
    suppressed: Vec<u64>,
}

impl RejectLog {
    /// A limiter with this interval.
    pub fn new(interval: Duration) -> Self {
        let n = Reject::REASONS.len();
        RejectLog {
            interval,
            last: vec![None; n],
            suppressed: vec![0; n],
        }
    }

    /// Returns `Some(suppressed_since_last_line)` when a line should be written now.
    pub fn admit(&mut self, r: &Reject, now: Instant) -> Option<u64> {
        let i = r.index();
        match self.last[i] {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

/// Start the receiver thread on an already bound PULL socket. It stops when `cancel` fires
/// (checked at least every `POLL_MS`) or when the receiving side of `tx` is dropped; it drops
/// `tx` on exit, which tells the next stage that input has ended.
pub fn spawn_receiver(
    socket: zmq::Socket,
    limits: Limits,
    streams: Arc<Registry>,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
    tx: mpsc::Sender<Transcript>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    std::thread::Builder::new()
        .name("zmq-transcripts".into())
        .spawn(move || {
            let mut rejects = RejectLog::new(limits.reject_log_interval);
            while !cancel.is_cancelled() {
                heartbeat.beat();
                match socket.poll(zmq::POLLIN, POLL_MS) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        metrics.socket_error("transcripts");
                        tracing::error!(error = %e, "Polling the transcript socket failed");
                        std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                        continue;
                    }
                }
                // Drain what is queued, then poll again (and look at the token).
                loop {
                    let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                        Ok(f) => f,
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(e) => {
                            metrics.socket_error("transcripts");
                            tracing::error!(error = %e, "Receiving a transcript failed");
                            break;
                        }
                    };
                    let now_unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    let result = if frames.len() != 1 {
                        Err(Reject::Multipart(frames.len()))
                    } else {
                        validate(&frames[0], &limits, &|s| streams.media_end(s), now_unix)
                    };
                    match result {
                        Ok(t) => {
                            metrics.transcript_accepted();
                            if tx.blocking_send(t).is_err() {
                                tracing::info!("Transcript consumer is gone; receiver stops");
                                return;
                            }
                        }
                        Err(r) => {
                            metrics.transcript_rejected(r.reason());
                            if let Some(suppressed) = rejects.admit(&r, Instant::now()) {
                                tracing::warn!(
                                    reason = r.reason(),
                                    detail = %r,
                                    suppressed_since_last = suppressed,
                                    "Rejected a transcript message"
                                );
                            }
                        }
                    }
                }
            }
            tracing::debug!("Transcript receiver stopped");
        })
        .map_err(|e| BusError::Thread {
            name: "zmq-transcripts",
            source: e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_message_bytes: 4096,
            max_text_chars: 100,
            max_embedding_dim: 8,
            max_segment_age: Duration::from_secs(60),
            max_segment: Duration::from_secs(300),
            max_ahead: Duration::from_secs(30),
            reject_log_interval: Duration::from_secs(1),
        }
    }

    fn check(msg: &str) -> Result<Transcript, Reject> {
        let media_end = |s: &str| (s == "call-42").then_some(100.0);
        validate(msg.as_bytes(), &limits(), &media_end, 1_000_000.0)
    }

    const GOOD: &str = r#"{"v":1,"stream":"call-42","seq":17,"start":12.34,"end":15.1,
        "speaker":"customer","text":"I have been waiting","final":true,"lang":"en","clock":"media"}"#;

    #[test]
    fn accepts_the_documented_example() {
        let t = check(GOOD).unwrap();
        assert_eq!(t.stream, "call-42");
        assert_eq!(t.seq, 17);
        assert_eq!((t.start, t.end), (12.34, 15.1));
        assert_eq!(t.speaker, "customer");
        assert!(t.is_final);
        assert_eq!(t.clock, Clock::Media);
        assert_eq!(t.lang.as_deref(), Some("en"));
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let t = check(r#"{"v":1,"stream":"call-42","seq":0,"start":0,"end":0,"text":"","future":{"x":1},"speaker":null}"#)
            .unwrap();
        assert_eq!(t.speaker, "unknown");
        assert!(t.is_final);
        assert_eq!(t.clock, Clock::Media);
        assert_eq!(t.embedding, None);
    }

    #[test]
    fn each_rule_has_its_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not_json"),
            ("[1,2]", "not_object"),
            (r#"{"stream":"call-42"}"#, "missing_field"),
            (r#"{"v":"1","stream":"call-42"}"#, "wrong_type"),
            (r#"{"v":2,"stream":"call-42"}"#, "unsupported_version"),
            (r#"{"v":1.5,"stream":"call-42"}"#, "unsupported_version"),
            (
                r#"{"v":1,"stream":"nope","seq":1,"start":0,"end":1,"text":"x"}"#,
                "unknown_stream",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":-1,"start":0,"end":1,"text":"x"}"#,
                "wrong_type",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":"0","end":1,"text":"x"}"#,
                "wrong_type",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":2,"end":1,"text":"x"}"#,
                "bad_span",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":-1,"end":1,"text":"x"}"#,
                "bad_span",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1}"#,
                "missing_field",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":5}"#,
                "wrong_type",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","final":"yes"}"#,
                "wrong_type",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","clock":"gps"}"#,
                "bad_value",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","speaker":""}"#,
                "bad_value",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","embedding":[]}"#,
                "bad_embedding",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","embedding":[1,"a"]}"#,
                "bad_embedding",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","embedding":[1,2,3,4,5,6,7,8,9]}"#,
                "bad_embedding",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","embedding":{}}"#,
                "wrong_type",
            ),
            (
                r#"{"v":1,"stream":"call-42","seq":1,"start":10,"end":20,"text":"x","clock":"unix"}"#,
                "stale",
            ),
        ];
        for (msg, reason) in cases {
            let r = check(msg).expect_err(msg);
            assert_eq!(r.reason(), *reason, "{msg}: {r}");
        }
        let long = format!(
            r#"{{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"{}"}}"#,
            "é".repeat(101)
        );
        assert_eq!(check(&long).unwrap_err().reason(), "text_too_long");
        let huge = "x".repeat(5000);
        assert_eq!(check(&huge).unwrap_err().reason(), "oversized");
        let junk = [0xff, 0xfe, 0x00, 0x80];
        let r = validate(&junk, &limits(), &|_| Some(0.0), 0.0).unwrap_err();
        assert_eq!(r.reason(), "invalid_utf8");
    }

    #[test]
    fn unix_clock_within_age_is_accepted() {
        let t = check(r#"{"v":1,"stream":"call-42","seq":1,"start":999990,"end":999999,"text":"x","clock":"unix"}"#)
            .unwrap();
        assert_eq!(t.clock, Clock::Unix);
    }

    #[test]
    fn embedding_is_read_as_f32() {
        let t = check(r#"{"v":1,"stream":"call-42","seq":1,"start":0,"end":1,"text":"x","embedding":[0.5,-1,2e-3]}"#)
            .unwrap();
        assert_eq!(t.embedding, Some(vec![0.5, -1.0, 0.002]));
    }

    #[test]
    fn reject_log_admits_one_line_per_interval_and_reports_the_rest() {
        let mut log = RejectLog::new(Duration::from_secs(1));
        let r = Reject::NotObject;
        let other = Reject::InvalidUtf8;
        let t0 = Instant::now();
        assert_eq!(log.admit(&r, t0), Some(0));
        assert_eq!(log.admit(&r, t0 + Duration::from_millis(10)), None);
        assert_eq!(log.admit(&r, t0 + Duration::from_millis(20)), None);
        assert_eq!(log.admit(&other, t0 + Duration::from_millis(30)), Some(0));
        assert_eq!(log.admit(&r, t0 + Duration::from_millis(1001)), Some(2));
    }

    #[test]
    fn every_reason_label_is_registered() {
        let all = [
            Reject::Oversized { size: 1, limit: 0 },
            Reject::Multipart(2),
            Reject::InvalidUtf8,
            Reject::NotJson(String::new()),
            Reject::NotObject,
            Reject::MissingField("v"),
            Reject::WrongType {
                field: "v",
                expected: "",
            },
            Reject::BadValue {
                field: "v",
                problem: String::new(),
            },
            Reject::UnsupportedVersion(String::new()),
            Reject::UnknownStream(String::new()),
            Reject::BadSpan {
                start: 0.0,
                end: 0.0,
                problem: "",
            },
            Reject::TextTooLong { chars: 0, limit: 0 },
            Reject::BadEmbedding(String::new()),
            Reject::Stale {
                age_s: 0.0,
                limit_s: 0.0,
            },
        ];
        let labels: Vec<_> = all.iter().map(Reject::reason).collect();
        assert_eq!(labels, Reject::REASONS);
    }

    #[test]
    fn spans_are_bounded_by_the_media_and_a_longest_segment() {
        let seg = |start: f64, end: f64, clock: &str| {
            check(&format!(
                r#"{{"v":1,"stream":"call-42","seq":1,"start":{start},"end":{end},"clock":"{clock}","speaker":"a","text":"hi","final":true}}"#
            ))
        };
        // The stream's newest media is at 100 s; 30 s ahead is the limit.
        assert!(seg(120.0, 125.0, "media").is_ok());
        for (s, e) in [(1e300, 1e301), (131.0, 132.0), (0.0, 301.0)] {
            let r = seg(s, e, "media").unwrap_err();
            assert_eq!(r.reason(), "bad_span", "{s}..{e}: {r}");
        }
        // Unix clock: now is 1e6.
        assert!(seg(1_000_010.0, 1_000_011.0, "unix").is_ok());
        assert_eq!(
            seg(1_000_031.0, 1_000_032.0, "unix").unwrap_err().reason(),
            "bad_span"
        );
    }
}
