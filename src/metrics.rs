//! Prometheus metrics: one registry, named counters, and a small HTTP endpoint on loopback.
//!
//! Metric names (counters get the `_total` suffix from the encoder; label sets handed in as
//! [`LabelSets`] are registered at 0 up front):
//! - `summerd_build_info{version,libtorch,gstreamer,libzmq}` = 1
//! - `summerd_ready` (1 once initialised, 0 while starting or draining)
//! - transcripts: `summerd_transcripts_accepted_total`,
//!   `summerd_transcripts_rejected_total{reason}`
//! - sockets: `summerd_messages_published_total{socket}`,
//!   `summerd_messages_dropped_total{socket}`, `summerd_socket_errors_total{socket}`,
//!   `summerd_curve_auth_denied_total`, `summerd_curve_handshakes_failed_total{socket,reason}`
//! - streams: `summerd_ingest_audio_seconds_total{stream}`,
//!   `summerd_ingest_video_frames_total{stream}`, `summerd_ingest_dropped_total{stream,kind}`,
//!   `summerd_stream_up{stream}`, `summerd_stream_restarts_total{stream}`
//! - inference: `summerd_utterances_total{outcome}`, `summerd_inference_batch_size`,
//!   `summerd_inference_seconds`, `summerd_inference_queue`, `summerd_event_latency_seconds`
//! - vision: `summerd_vision_frame_seconds`, `summerd_vision_faces_total`,
//!   `summerd_vision_errors_total`
//! - call signals and the live page: `summerd_signals_total{kind}` (escalation,
//!   deescalation), `summerd_page_feeds` (event feeds open), `summerd_page_feed_lagged_total`
//!   (times a feed fell behind and caught up from the kept events)
//!
//! The HTTP listener ([`crate::web`]) serves them at `GET /metrics` (text format 0.0.4), and
//! `GET /healthz` from the heartbeats ([`stale`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use serde::{Deserialize, Serialize};

use crate::health::Heartbeat;
use crate::settings::Checker;

/// `[metrics]`: Prometheus text exposition over HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    pub enabled: bool,
    /// `IP:PORT` to listen on (`GET /metrics`).
    pub listen: String,
    /// Allow a non-loopback listen address without a `[web]` token (metrics carry no secrets
    /// but reveal stream ids). The live page is never served off loopback without a token.
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

impl MetricsConfig {
    /// Check the table; the address to listen on when enabled and usable. `token`: whether
    /// `[web]` sets a bearer token (then every path but `/healthz` needs it).
    pub fn check(&self, c: &mut Checker, token: bool) -> Option<SocketAddr> {
        if !self.enabled {
            return None;
        }
        match self.listen.parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() && !self.insecure && !token {
                    c.bad(
                        "metrics.listen",
                        format!("'{addr}' is reachable from other hosts"),
                        "a loopback address, a bearer token (web.token), or metrics.insecure = true",
                    );
                }
                Some(addr)
            }
            Err(_) => {
                c.bad(
                    "metrics.listen",
                    format!("'{}' is not an IP:PORT address", self.listen),
                    "IP:PORT such as 127.0.0.1:9187",
                );
                None
            }
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// The daemon's metrics. Cheap to share (`Arc`), lock-free to update.
pub struct Metrics {
    registry: Registry,
    accepted: Counter,
    rejected: Family<Labels, Counter>,
    published: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    socket_errors: Family<Labels, Counter>,
    auth_denied: Counter,
    handshakes_failed: Family<Labels, Counter>,
    ready: Gauge<i64, AtomicI64>,
    audio_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    video_frames: Family<Labels, Counter>,
    ingest_dropped: Family<Labels, Counter>,
    stream_up: Family<Labels, Gauge<i64, AtomicI64>>,
    restarts: Family<Labels, Counter>,
    utterances: Family<Labels, Counter>,
    batch_size: Histogram,
    latency: Histogram,
    inference_seconds: Histogram,
    inference_queue: Gauge<i64, AtomicI64>,
    vision_seconds: Histogram,
    signals: Family<Labels, Counter>,
    page_feeds: Gauge<i64, AtomicI64>,
    page_lagged: Counter,
    vision_faces: Counter,
    vision_errors: Counter,
    // Handles into the families above, created once, so that counting on a hot path neither
    // allocates label sets nor takes the family's lock.
    by_reason: HashMap<&'static str, Counter>,
    by_outcome: HashMap<&'static str, Counter>,
    by_socket: HashMap<(&'static str, Kind), Counter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Published,
    Dropped,
    Error,
}

const SOCKETS: [&str; 3] = ["transcripts", "events", "audio_tap"];

/// The label values registered up front (at 0), so that every series exists from the start.
/// They belong to the stages that count them; the metrics module is handed them.
#[derive(Debug, Clone, Copy)]
pub struct LabelSets {
    /// Why a transcript was rejected (`summerd_transcripts_rejected_total{reason}`).
    pub reject_reasons: &'static [&'static str],
    /// What became of an utterance (`summerd_utterances_total{outcome}`).
    pub utterance_outcomes: &'static [&'static str],
    /// Call-level signal kinds (`summerd_signals_total{kind}`).
    pub signal_kinds: &'static [&'static str],
}

impl Metrics {
    /// A registry with every metric registered; `build` labels the build-info metric.
    pub fn new(build: &crate::version::VersionInfo, labels: LabelSets) -> Self {
        let mut registry = Registry::with_prefix("summerd");
        let info = Info::new(vec![
            ("version", build.summerd.clone()),
            ("libtorch", build.libtorch.clone()),
            ("gstreamer", build.gstreamer.clone()),
            ("libzmq", build.libzmq.clone()),
        ]);
        registry.register(
            "build",
            "Versions of summerd and its native libraries",
            info,
        );
        let m = Metrics {
            accepted: Counter::default(),
            rejected: Family::default(),
            published: Family::default(),
            dropped: Family::default(),
            socket_errors: Family::default(),
            auth_denied: Counter::default(),
            handshakes_failed: Family::default(),
            ready: Gauge::default(),
            audio_seconds: Family::default(),
            video_frames: Family::default(),
            ingest_dropped: Family::default(),
            stream_up: Family::default(),
            restarts: Family::default(),
            utterances: Family::default(),
            batch_size: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            inference_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            inference_queue: Gauge::default(),
            vision_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            vision_faces: Counter::default(),
            vision_errors: Counter::default(),
            signals: Family::default(),
            page_feeds: Gauge::default(),
            page_lagged: Counter::default(),
            by_reason: HashMap::new(),
            by_outcome: HashMap::new(),
            by_socket: HashMap::new(),
            registry,
        };
        let mut m = m;
        m.register();
        for &reason in labels.reject_reasons {
            let c = m
                .rejected
                .get_or_create(&vec![("reason", reason.to_string())])
                .clone();
            m.by_reason.insert(reason, c);
        }
        for &outcome in labels.utterance_outcomes {
            let c = m
                .utterances
                .get_or_create(&vec![("outcome", outcome.to_string())])
                .clone();
            m.by_outcome.insert(outcome, c);
        }
        for &kind in labels.signal_kinds {
            let _ = m.signals.get_or_create(&vec![("kind", kind.to_string())]);
        }
        for socket in SOCKETS {
            let l = vec![("socket", socket.to_string())];
            let c = m.socket_errors.get_or_create(&l).clone();
            m.by_socket.insert((socket, Kind::Error), c);
            if socket != "transcripts" {
                let c = m.published.get_or_create(&l).clone();
                m.by_socket.insert((socket, Kind::Published), c);
                let c = m.dropped.get_or_create(&l).clone();
                m.by_socket.insert((socket, Kind::Dropped), c);
            }
        }
        m
    }

    /// Register every metric with its help text.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "transcripts_accepted",
            "Transcript segments that passed validation",
            self.accepted.clone(),
        );
        r.register(
            "transcripts_rejected",
            "Transcript messages dropped, by reason",
            self.rejected.clone(),
        );
        r.register(
            "messages_published",
            "Messages handed to libzmq, by socket",
            self.published.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped before libzmq because the publisher queue was full, by socket",
            self.dropped.clone(),
        );
        r.register(
            "socket_errors",
            "libzmq errors while sending or receiving, by socket",
            self.socket_errors.clone(),
        );
        r.register(
            "curve_auth_denied",
            "CURVE clients refused because their key is not authorised",
            self.auth_denied.clone(),
        );
        r.register(
            "curve_handshakes_failed",
            "CURVE handshakes refused, by socket and reason (no_detail: e.g. a client without CURVE or with the wrong server key; protocol; unauthorised)",
            self.handshakes_failed.clone(),
        );
        r.register(
            "ready",
            "1 once initialised and serving, 0 while starting or draining",
            self.ready.clone(),
        );
        r.register(
            "ingest_audio_seconds",
            "Seconds of audio received, by stream",
            self.audio_seconds.clone(),
        );
        r.register(
            "ingest_video_frames",
            "Video frames handed to the vision stage, by stream",
            self.video_frames.clone(),
        );
        r.register(
            "ingest_dropped",
            "Audio chunks or video frames dropped because a stage's queue was full, by stream and kind",
            self.ingest_dropped.clone(),
        );
        r.register(
            "stream_up",
            "1 while a stream's media flows",
            self.stream_up.clone(),
        );
        r.register(
            "stream_restarts",
            "Pipeline restarts after an error, end or stall, by stream",
            self.restarts.clone(),
        );
        r.register(
            "utterances",
            "Transcript segments through the assembler and the model, by outcome",
            self.utterances.clone(),
        );
        r.register(
            "inference_batch_size",
            "Utterances per forward pass of the model worker",
            self.batch_size.clone(),
        );
        r.register(
            "event_latency_seconds",
            "From a segment's arrival to its emotion event's publication",
            self.latency.clone(),
        );
        r.register(
            "inference_seconds",
            "Wall time of the engine per batch: text vectors, conversation windows, forward pass",
            self.inference_seconds.clone(),
        );
        r.register(
            "inference_queue",
            "Utterances ready and waiting for the model worker",
            self.inference_queue.clone(),
        );
        r.register(
            "vision_frame_seconds",
            "Wall time of the vision stage per frame: detection or refinement, tracking, expression",
            self.vision_seconds.clone(),
        );
        r.register(
            "vision_faces",
            "Faces found in processed frames",
            self.vision_faces.clone(),
        );
        r.register(
            "vision_errors",
            "Frames the vision stage could not process (dropped, the stream goes on)",
            self.vision_errors.clone(),
        );
        r.register(
            "signals",
            "Call-level signals published, by kind (escalation, deescalation)",
            self.signals.clone(),
        );
        r.register(
            "page_feeds",
            "Live page event feeds open now",
            self.page_feeds.clone(),
        );
        r.register(
            "page_feed_lagged",
            "Times a page's event feed fell behind the live channel and caught up from the kept events",
            self.page_lagged.clone(),
        );
    }

    /// A call-level signal was published (`escalation` or `deescalation`).
    pub fn signal(&self, kind: &str) {
        self.signals
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// A page's event feed opened (+1) or closed (-1).
    pub fn page_feed(&self, delta: i64) {
        self.page_feeds.inc_by(delta);
    }

    /// A page's event feed fell behind and caught up.
    pub fn page_feed_lagged(&self) {
        self.page_lagged.inc();
    }

    fn count(&self, socket: &'static str, kind: Kind) {
        match self.by_socket.get(&(socket, kind)) {
            Some(c) => {
                c.inc();
            }
            None => {
                let family = match kind {
                    Kind::Published => &self.published,
                    Kind::Dropped => &self.dropped,
                    Kind::Error => &self.socket_errors,
                };
                family
                    .get_or_create(&vec![("socket", socket.to_string())])
                    .inc();
            }
        }
    }

    /// Count an utterance outcome (`published`, `excluded`, `duplicate`, ...).
    pub fn utterance(&self, outcome: &'static str) {
        match self.by_outcome.get(outcome) {
            Some(c) => {
                c.inc();
            }
            None => {
                self.utterances
                    .get_or_create(&vec![("outcome", outcome.to_string())])
                    .inc();
            }
        }
    }

    /// Record a batch of `n` utterances that took `seconds` in the model worker.
    pub fn inference_batch(&self, n: usize, seconds: f64) {
        self.batch_size.observe(n as f64);
        self.inference_seconds.observe(seconds);
    }

    /// Record an event's latency.
    pub fn event_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// Utterances waiting for the model worker.
    pub fn set_inference_queue(&self, n: usize) {
        self.inference_queue.set(n as i64);
    }

    /// Count an accepted transcript.
    pub fn transcript_accepted(&self) {
        self.accepted.inc();
    }

    /// Count a rejected transcript.
    pub fn transcript_rejected(&self, reason: &'static str) {
        match self.by_reason.get(reason) {
            Some(c) => {
                c.inc();
            }
            None => {
                self.rejected
                    .get_or_create(&vec![("reason", reason.to_string())])
                    .inc();
            }
        }
    }

    /// Count a message handed to libzmq.
    pub fn published(&self, socket: &'static str) {
        self.count(socket, Kind::Published);
    }

    /// Count a message dropped before libzmq.
    pub fn dropped(&self, socket: &'static str) {
        self.count(socket, Kind::Dropped);
    }

    /// Count a socket error.
    pub fn socket_error(&self, socket: &'static str) {
        self.count(socket, Kind::Error);
    }

    /// Count a refused CURVE client.
    pub fn auth_denied(&self) {
        self.auth_denied.inc();
    }

    /// Count a refused CURVE handshake on `socket`.
    pub fn handshake_failed(&self, socket: &'static str, reason: &'static str) {
        self.handshakes_failed
            .get_or_create(&vec![
                ("socket", socket.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// Set the readiness gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Per-stream handles, created on attach.
    pub fn stream(&self, id: &str) -> StreamMetrics {
        let l = vec![("stream", id.to_string())];
        let kind = |k: &str| vec![("stream", id.to_string()), ("kind", k.to_string())];
        // One statement each: a family's guard lives to the end of its statement, and two
        // guards of one family in one expression deadlock.
        let audio_seconds = self.audio_seconds.get_or_create(&l).clone();
        let video_frames = self.video_frames.get_or_create(&l).clone();
        let dropped_audio = self.ingest_dropped.get_or_create(&kind("audio")).clone();
        let dropped_video = self.ingest_dropped.get_or_create(&kind("video")).clone();
        let up = self.stream_up.get_or_create(&l).clone();
        let restarts = self.restarts.get_or_create(&l).clone();
        StreamMetrics {
            vision_seconds: self.vision_seconds.clone(),
            vision_faces: self.vision_faces.clone(),
            vision_errors: self.vision_errors.clone(),
            audio_seconds,
            video_frames,
            dropped_audio,
            dropped_video,
            up,
            restarts,
        }
    }

    /// Remove a detached stream's series.
    pub fn forget_stream(&self, id: &str) {
        let l = vec![("stream", id.to_string())];
        self.audio_seconds.remove(&l);
        self.video_frames.remove(&l);
        self.stream_up.remove(&l);
        self.restarts.remove(&l);
        for k in ["audio", "video"] {
            self.ingest_dropped
                .remove(&vec![("stream", id.to_string()), ("kind", k.to_string())]);
        }
    }

    /// Accepted transcripts so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.get()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One stream's metric handles (lock-free to update from streaming threads).
#[derive(Clone)]
pub struct StreamMetrics {
    vision_seconds: Histogram,
    vision_faces: Counter,
    vision_errors: Counter,
    audio_seconds: Counter<f64, AtomicU64>,
    video_frames: Counter,
    dropped_audio: Counter,
    dropped_video: Counter,
    up: Gauge<i64, AtomicI64>,
    restarts: Counter,
}

impl StreamMetrics {
    /// Count seconds of audio received.
    pub fn audio_seconds(&self, s: f64) {
        self.audio_seconds.inc_by(s);
    }
    /// Count a video frame handed on.
    pub fn video_frame(&self) {
        self.video_frames.inc();
    }
    /// A frame through the vision stage: its wall time and the faces found.
    pub fn vision_frame(&self, seconds: f64, faces: usize) {
        self.vision_seconds.observe(seconds);
        self.vision_faces.inc_by(faces as u64);
    }
    /// Count a frame the vision stage failed on.
    pub fn vision_error(&self) {
        self.vision_errors.inc();
    }
    /// Count a dropped audio chunk.
    pub fn dropped_audio(&self) {
        self.dropped_audio.inc();
    }
    /// Count a dropped video frame.
    pub fn dropped_video(&self) {
        self.dropped_video.inc();
    }
    /// Set the up gauge.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }
    /// Count a restart.
    pub fn restarted(&self) {
        self.restarts.inc();
    }
}

/// The first heartbeat older than `max_age`, if any.
pub fn stale(beats: &[Heartbeat], max_age: Duration) -> Option<&Heartbeat> {
    beats.iter().find(|h| h.age() > max_age)
}

/// Longest a worker thread may go without a heartbeat before it counts as stuck.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(5);
