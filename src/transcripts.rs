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
//! 4. `seq`: an integer >= 0; `start`, `end`: finite numbers, `end >= start`
//!    (and `start >= 0` on the media clock);
//! 5. `text`: a string of at most `max_text_chars` characters;
//! 6. optional: `speaker` (string, <= 128 chars; default "unknown"), `final` (bool; default
//!    true), `lang` (string, <= 35 chars), `clock` ("media" default, or "unix"), `embedding`
//!    (1..=`max_embedding_dim` finite numbers); `null` counts as absent;
//! 7. on the unix clock, `end` no older than `max_segment_age` (else `stale`).
//!
//! Unknown extra fields are ignored, for forward compatibility.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Heartbeat};
use crate::metrics::Metrics;

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
    /// At most one log line per reject reason per this interval (not used by `validate`).
    pub reject_log_interval: Duration,
}

impl From<&crate::config::TranscriptsConfig> for Limits {
    fn from(c: &crate::config::TranscriptsConfig) -> Self {
        Limits {
            max_message_bytes: c.max_message_bytes,
            max_text_chars: c.max_text_chars,
            max_embedding_dim: c.max_embedding_dim,
            max_segment_age: c.max_segment_age.0,
            reject_log_interval: c.reject_log_interval.0,
        }
    }
}

/// Validate one single-frame message. `known` says whether a stream id is served;
/// `now_unix` is the wall clock (seconds since the epoch) for the staleness rule.
pub fn validate(
    msg: &[u8],
    limits: &Limits,
    known: &dyn Fn(&str) -> bool,
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
    if !known(stream) {
        let shown: String = stream.chars().take(128).collect();
        return Err(Reject::UnknownStream(shown));
    }

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

/// Which stream ids are served; shared with the control plane, which attaches and detaches.
pub type StreamSet = Arc<std::sync::RwLock<std::collections::HashSet<String>>>;

/// Start the receiver thread on an already bound PULL socket. It stops when `cancel` fires
/// (checked at least every `POLL_MS`) or when the receiving side of `tx` is dropped; it drops
/// `tx` on exit, which tells the next stage that input has ended.
pub fn spawn_receiver(
    socket: zmq::Socket,
    limits: Limits,
    streams: StreamSet,
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
                match socket.poll(zmq::POLLIN, crate::bus::POLL_MS) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        metrics.socket_error("transcripts");
                        tracing::error!(error = %e, "Polling the transcript socket failed");
                        std::thread::sleep(Duration::from_millis(crate::bus::POLL_MS as u64));
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
                        let known =
                            |s: &str| streams.read().map(|set| set.contains(s)).unwrap_or(false);
                        validate(&frames[0], &limits, &known, now_unix)
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
            reject_log_interval: Duration::from_secs(1),
        }
    }

    fn check(msg: &str) -> Result<Transcript, Reject> {
        validate(msg.as_bytes(), &limits(), &|s| s == "call-42", 1_000_000.0)
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
        let r = validate(&junk, &limits(), &|_| true, 0.0).unwrap_err();
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
}
