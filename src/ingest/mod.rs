//! Ingest: one supervised GStreamer pipeline per stream, attached and detached at run time.
//!
//! Per stream:
//! - a **supervisor thread** builds the pipeline from its template and URI, plays it, watches
//!   its bus, and on an error, an unexpected end or a stall (a live source that delivers
//!   nothing for `stall_timeout`) tears it down and rebuilds it after an exponential backoff.
//!   It publishes `stream.up` (first media after a (re)connect, with the gap if any),
//!   `stream.down` and `stream.error` with reasons.
//! - **appsink callbacks** (GStreamer's streaming threads) place each buffer on the stream's
//!   media timeline and hand it on with `try_send`: audio into a bounded channel (full: the
//!   chunk is dropped, counted and logged, never silently), video into a drop-oldest queue
//!   (the oldest frame is dropped and counted).
//! - an **audio thread** resamples to 16 kHz (rubato) and publishes the audio tap in
//!   `chunk_ms` pieces on the same timeline.
//! - a **video thread** takes the newest frames for the vision stage (which arrives with the
//!   vision issue; until then frames are counted and released).
//!
//! A failing stream never touches another: each has its own pipeline, threads and queues.
//! Detaching cancels the supervisor, which stops its pipeline; the audio and video threads end
//! when their inputs close, and every buffer and queue of the stream is freed.

pub mod features;
pub mod template;
pub mod timeline;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bus::PublisherHandle;
use crate::events::{Lifecycle, LifecycleEvent, tap_message};
use crate::metrics::{Metrics, StreamMetrics};
use crate::resample::{TARGET_RATE, To16k, to_i16};
use crate::transcripts::StreamSet;
use features::{AudioFeatures, VisualFeatures};
use template::{Template, TemplateError};
use timeline::Timeline;

/// Settings shared by every stream (from `[ingest]` and `[audio_tap]`).
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Where templates are.
    pub pipelines_dir: PathBuf,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// A live source that delivers nothing for this long is restarted.
    pub stall_timeout: Duration,
    /// Video frames per second handed to the vision stage.
    pub video_fps: u32,
    /// Largest video width handed on (scaled inside GStreamer).
    pub video_max_width: u32,
    /// Largest video height handed on.
    pub video_max_height: u32,
    /// Audio chunks queued per stream.
    pub audio_queue: usize,
    /// Video frames queued per stream (oldest dropped).
    pub video_queue: usize,
    /// `max-threads` of every libav video decoder (0: libav's choice).
    pub decoder_threads: u32,
    /// Nice value of the media threads.
    pub nice: i32,
    /// Milliseconds of audio per tap message; None: no tap.
    pub tap_chunk_ms: Option<u32>,
    /// Acoustic descriptors per stream (for the model); None: not computed.
    pub acoustic: Option<crate::acoustic::Settings>,
    /// The vision stage per stream with video; None: frames are only counted.
    pub vision: Option<VisionIngest>,
}

/// The vision stage as every stream runs it: shared networks, per-stream settings.
#[derive(Clone)]
pub struct VisionIngest {
    /// The networks (one copy for all streams).
    pub models: Arc<crate::vision::stage::VisionModels>,
    /// Its settings.
    pub settings: crate::vision::stage::VisionSettings,
}

impl std::fmt::Debug for VisionIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionIngest")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What to attach: a `[[streams]]` table of the config, or an attach request.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Stream id: 1-128 characters of `A-Z a-z 0-9 . _ : -`; the `stream` of transcripts and
    /// the suffix of event topics (`emotion.<id>`).
    pub id: String,
    /// Source URI handed to the template (`file:///...`, `rtsp://...`, `udp://...`, ...).
    pub uri: String,
    /// Pipeline template name: `<pipelines.dir>/<template>.gst`.
    pub template: String,
    /// Speaker label in transcripts -> role (e.g. `"spk0" = "agent"`). Unmapped labels are
    /// their own role.
    #[serde(default)]
    pub speakers: BTreeMap<String, String>,
    /// Roles whose emotions may be inferred at all. Empty: every role. Set it to exclude
    /// agents where EU AI Act art. 5(1)(f) applies.
    #[serde(default)]
    pub infer_speakers: Vec<String>,
    /// Overrides `events.publish_text` for this stream.
    #[serde(default)]
    pub publish_text: Option<bool>,
    /// Extra template values: `{name}` in the template (e.g. `sync = "false"` to read a file
    /// as fast as possible instead of in real time).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Ingest errors, for attach and detach.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad stream id.
    #[error("stream id '{0}' is not valid (1-128 characters of A-Z a-z 0-9 . _ : -)")]
    BadId(String),
    /// Already attached.
    #[error("stream '{0}' is already attached")]
    Duplicate(String),
    /// Not attached.
    #[error("stream '{0}' is not attached")]
    Unknown(String),
    /// Template problem.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Could not start a thread.
    #[error("cannot start a thread for stream '{0}': {1}")]
    Thread(String, std::io::Error),
}

/// A stream's state, as `list` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Building or waiting for first media.
    Starting,
    /// Media is flowing.
    Up,
    /// Down, waiting to retry.
    Retrying,
    /// A non-live source reached its end.
    Ended,
}

/// One attached stream as `list` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// Its spec.
    #[serde(flatten)]
    pub spec: StreamSpec,
    /// Its state.
    pub state: StreamState,
    /// Media seconds received so far (end of the timeline).
    pub media_time: f64,
    /// Restarts so far.
    pub restarts: u64,
}

struct Shared {
    id: String,
    state: Mutex<StreamState>,
    timeline: Mutex<Timeline>,
    attempt_up: AtomicBool,
    // End of stream per branch, for non-live sources whose other branch never links (an
    // audio-only file through a template with a video branch never gets a pipeline EOS).
    audio_eos: AtomicBool,
    video_seen: AtomicBool,
    video_eos: AtomicBool,
    last_buffer_ms: AtomicU64,
    epoch: Instant,
    restarts: AtomicU64,
    metrics: StreamMetrics,
    events: PublisherHandle,
    features: Option<Arc<AudioFeatures>>,
    visual: Option<Arc<VisualFeatures>>,
}

impl Shared {
    fn touch(&self) {
        self.last_buffer_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_buffer(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_buffer_ms.load(Ordering::Relaxed)))
    }

    fn set_state(&self, s: StreamState) {
        *self.state.lock().expect("state lock") = s;
        self.metrics.set_up(s == StreamState::Up);
    }

    fn lifecycle(&self, kind: Lifecycle, reason: Option<String>, gap: Option<timeline::Gap>) {
        let media_time = self.timeline.lock().expect("timeline lock").end();
        let mut e = LifecycleEvent::stream(kind, &self.id, reason);
        e.media_time = Some(media_time);
        e.gap = gap.map(|g| [g.start, g.end]);
        self.events.publish(e.to_message());
    }
}

struct Attached {
    spec: StreamSpec,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    supervisor: JoinHandle<()>,
}

/// An attached stream as the inference stages see it.
pub struct StreamView {
    /// Its spec (speaker roles, `infer_speakers`, `publish_text`).
    pub spec: StreamSpec,
    /// Its acoustic descriptors, when computed.
    pub features: Option<Arc<AudioFeatures>>,
    /// What its vision stage saw, when it runs.
    pub visual: Option<Arc<VisualFeatures>>,
    /// End of its media timeline so far, seconds.
    pub media_end: f64,
}

/// The set of attached streams.
pub struct Ingest {
    settings: IngestSettings,
    events: PublisherHandle,
    tap: Option<PublisherHandle>,
    metrics: Arc<Metrics>,
    known: StreamSet,
    streams: Mutex<HashMap<String, Attached>>,
}

/// What the audio thread receives.
enum AudioMsg {
    /// A buffer.
    Chunk(AudioChunk),
    /// The connection ended: push out what the resampler still holds.
    Flush,
}

/// An audio buffer placed on the timeline.
struct AudioChunk {
    t: f64,
    rate: u32,
    samples: Vec<f32>,
    /// First chunk of a new connection: the resampler starts afresh.
    fresh: bool,
}

/// An RGB video frame placed on the stream's timeline, for the vision stage.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// Media time, seconds.
    pub t: f64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Packed RGB, `width * 3` bytes a row.
    pub rgb: Vec<u8>,
}

/// A bounded queue that drops its oldest item when full (video: the newest frame matters).
pub struct DropOldest<T> {
    inner: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
    cap: usize,
}

impl<T> DropOldest<T> {
    /// A queue holding at most `cap` items.
    pub fn new(cap: usize) -> Self {
        DropOldest {
            inner: Mutex::new((VecDeque::with_capacity(cap), false)),
            ready: Condvar::new(),
            cap: cap.max(1),
        }
    }

    /// Add an item; returns true if the oldest was dropped to make room.
    pub fn push(&self, item: T) -> bool {
        let mut g = self.inner.lock().expect("queue lock");
        let dropped = g.0.len() >= self.cap;
        if dropped {
            g.0.pop_front();
        }
        g.0.push_back(item);
        self.ready.notify_one();
        dropped
    }

    /// No more items will come.
    pub fn close(&self) {
        self.inner.lock().expect("queue lock").1 = true;
        self.ready.notify_all();
    }

    /// The next item, waiting up to `timeout`.
    pub fn pop(&self, timeout: Duration) -> Pop<T> {
        let mut g = self.inner.lock().expect("queue lock");
        if g.0.is_empty() && !g.1 {
            g = self.ready.wait_timeout(g, timeout).expect("queue lock").0;
        }
        match g.0.pop_front() {
            Some(x) => Pop::Item(x),
            None if g.1 => Pop::Closed,
            None => Pop::Empty,
        }
    }
}

/// What [`DropOldest::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// An item.
    Item(T),
    /// Nothing within the timeout.
    Empty,
    /// Closed and drained.
    Closed,
}

impl Ingest {
    /// An ingest with no streams yet.
    pub fn new(
        settings: IngestSettings,
        events: PublisherHandle,
        tap: Option<PublisherHandle>,
        metrics: Arc<Metrics>,
        known: StreamSet,
    ) -> Self {
        Ingest {
            settings,
            events,
            tap,
            metrics,
            known,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Check that a spec can be attached (id, template, URI scheme, placeholders) without
    /// attaching it.
    /// Check a stream's spec: its id, template and URI. Returns the launch description and
    /// whether the template declares its source live.
    pub fn check(&self, spec: &StreamSpec) -> Result<(String, Option<bool>), IngestError> {
        if !crate::config::valid_stream_id(&spec.id) {
            return Err(IngestError::BadId(spec.id.clone()));
        }
        let t = Template::load(&self.settings.pipelines_dir, &spec.template)?;
        t.check_uri(&spec.uri)?;
        Ok((t.render(&self.vars(spec))?, t.live))
    }

    fn vars(&self, spec: &StreamSpec) -> BTreeMap<String, String> {
        let s = &self.settings;
        template_vars(spec, s.video_fps, s.video_max_width, s.video_max_height)
    }

    /// Attach a stream: it starts at once and keeps retrying until detached.
    pub fn attach(&self, spec: StreamSpec) -> Result<(), IngestError> {
        let (desc, live) = self.check(&spec)?;
        let mut streams = self.streams.lock().expect("streams lock");
        if streams.contains_key(&spec.id) {
            return Err(IngestError::Duplicate(spec.id));
        }
        let shared = Arc::new(Shared {
            id: spec.id.clone(),
            state: Mutex::new(StreamState::Starting),
            timeline: Mutex::new(Timeline::new()),
            attempt_up: AtomicBool::new(false),
            audio_eos: AtomicBool::new(false),
            video_seen: AtomicBool::new(false),
            video_eos: AtomicBool::new(false),
            last_buffer_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            restarts: AtomicU64::new(0),
            metrics: self.metrics.stream(&spec.id),
            events: self.events.clone(),
            features: self
                .settings
                .acoustic
                .map(|a| Arc::new(AudioFeatures::new(a))),
            visual: self
                .settings
                .vision
                .as_ref()
                .map(|v| Arc::new(VisualFeatures::new(v.settings.history_s))),
        });
        let cancel = CancellationToken::new();
        let sup = Supervisor {
            desc,
            live,
            settings: self.settings.clone(),
            shared: shared.clone(),
            tap: self.tap.clone(),
            cancel: cancel.clone(),
        };
        let supervisor = std::thread::Builder::new()
            .name(format!("ingest-{}", spec.id))
            .spawn(move || sup.run())
            .map_err(|e| IngestError::Thread(spec.id.clone(), e))?;
        self.known
            .write()
            .expect("stream set lock")
            .insert(spec.id.clone());
        tracing::info!(stream = %spec.id, uri = %spec.uri, template = %spec.template, "Attached stream");
        streams.insert(
            spec.id.clone(),
            Attached {
                spec,
                shared,
                cancel,
                supervisor,
            },
        );
        Ok(())
    }

    /// Detach a stream: stop its pipeline and free everything it holds.
    pub fn detach(&self, id: &str) -> Result<(), IngestError> {
        let a = self
            .streams
            .lock()
            .expect("streams lock")
            .remove(id)
            .ok_or_else(|| IngestError::Unknown(id.to_string()))?;
        self.known.write().expect("stream set lock").remove(id);
        a.cancel.cancel();
        let _ = a.supervisor.join();
        self.metrics.forget_stream(id);
        tracing::info!(stream = %id, "Detached stream");
        Ok(())
    }

    /// An attached stream's acoustic descriptors (None: not attached, or none computed).
    pub fn features(&self, id: &str) -> Option<Arc<AudioFeatures>> {
        let streams = self.streams.lock().expect("streams lock");
        streams.get(id)?.shared.features.clone()
    }

    /// An attached stream as the inference stages see it.
    pub fn view(&self, id: &str) -> Option<StreamView> {
        let streams = self.streams.lock().expect("streams lock");
        let a = streams.get(id)?;
        Some(StreamView {
            spec: a.spec.clone(),
            features: a.shared.features.clone(),
            visual: a.shared.visual.clone(),
            media_end: a.shared.timeline.lock().expect("timeline lock").end(),
        })
    }

    /// Every attached stream.
    pub fn list(&self) -> Vec<StreamInfo> {
        let streams = self.streams.lock().expect("streams lock");
        let mut v: Vec<StreamInfo> = streams
            .values()
            .map(|a| StreamInfo {
                spec: a.spec.clone(),
                state: *a.shared.state.lock().expect("state lock"),
                media_time: a.shared.timeline.lock().expect("timeline lock").end(),
                restarts: a.shared.restarts.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }

    /// Detach everything (shutdown: sources stop first).
    pub fn stop_all(&self) {
        let ids: Vec<String> = self
            .streams
            .lock()
            .expect("streams lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.detach(&id);
        }
    }
}

/// The values a stream's template is rendered with: the built-in placeholders (`{uri}`,
/// `{fps}`, `{max_width}`, `{max_height}`, `{sync}`, `{video_caps}`), then the stream's
/// options, which may override them. Validation renders with the same values.
pub fn template_vars(
    spec: &StreamSpec,
    fps: u32,
    max_width: u32,
    max_height: u32,
) -> BTreeMap<String, String> {
    let video_caps = format!(
        "video/x-raw,format=RGB,width=(int)[16,{max_width}],height=(int)[16,{max_height}],pixel-aspect-ratio=(fraction)1/1"
    );
    let mut v: BTreeMap<String, String> = [
        ("uri", spec.uri.clone()),
        ("fps", fps.to_string()),
        ("max_width", max_width.to_string()),
        ("max_height", max_height.to_string()),
        ("sync", "true".to_string()),
        ("video_caps", video_caps),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    v.extend(spec.options.clone());
    v
}

struct Supervisor {
    desc: String,
    /// Declared by the template; None: inferred per connection.
    live: Option<bool>,
    settings: IngestSettings,
    shared: Arc<Shared>,
    tap: Option<PublisherHandle>,
    cancel: CancellationToken,
}

enum Outcome {
    /// Detached or shutting down.
    Cancelled,
    /// A non-live source ended: nothing more will come.
    Ended,
    /// Failed or ended unexpectedly: retry.
    Retry,
}

impl Supervisor {
    fn run(self) {
        // The audio and video consumers outlive single connections: the timeline and the tap
        // continue across reconnects.
        let (audio_tx, audio_rx) = sync_channel::<AudioMsg>(self.settings.audio_queue);
        let video = Arc::new(DropOldest::<VideoFrame>::new(self.settings.video_queue));
        let nice = self.settings.nice;
        let audio_thread = {
            let shared = self.shared.clone();
            let tap = self.tap.clone();
            let chunk_ms = self.settings.tap_chunk_ms;
            std::thread::Builder::new()
                .name(format!("audio-{}", self.shared.id))
                .spawn(move || {
                    set_nice(nice);
                    audio_loop(audio_rx, shared, tap, chunk_ms)
                })
        };
        let video_thread = {
            let shared = self.shared.clone();
            let q = video.clone();
            let vision = self.settings.vision.clone();
            std::thread::Builder::new()
                .name(format!("video-{}", self.shared.id))
                .spawn(move || {
                    set_nice(nice);
                    video_loop(q, shared, vision)
                })
        };

        let mut backoff = self.settings.backoff_initial;
        loop {
            for flag in [
                &self.shared.attempt_up,
                &self.shared.audio_eos,
                &self.shared.video_seen,
                &self.shared.video_eos,
            ] {
                flag.store(false, Ordering::Relaxed);
            }
            self.shared.set_state(StreamState::Starting);
            let started = Instant::now();
            let outcome = self.attempt(&audio_tx, &video);
            // The pipeline is stopped: no callback sends any more; the tap gets the tail.
            let _ = audio_tx.send(AudioMsg::Flush);
            self.shared
                .timeline
                .lock()
                .expect("timeline lock")
                .mark_down(Instant::now());
            match outcome {
                Outcome::Cancelled => break,
                Outcome::Ended => {
                    self.shared.set_state(StreamState::Ended);
                    // Wait for detach; the stream stays listed as ended.
                    while !self.cancel.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    break;
                }
                Outcome::Retry => {
                    self.shared.set_state(StreamState::Retrying);
                    self.shared.restarts.fetch_add(1, Ordering::Relaxed);
                    self.shared.metrics.restarted();
                    // A connection that lasted a while resets the backoff.
                    if started.elapsed() > self.settings.backoff_max * 4 {
                        backoff = self.settings.backoff_initial;
                    }
                    if self.sleep(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(self.settings.backoff_max);
                }
            }
        }
        drop(audio_tx);
        video.close();
        if let Ok(t) = audio_thread {
            let _ = t.join();
        }
        if let Ok(t) = video_thread {
            let _ = t.join();
        }
    }

    /// Sleep unless cancelled; true if cancelled.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.cancel.is_cancelled() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        }
        self.cancel.is_cancelled()
    }

    fn fail(&self, reason: String) -> Outcome {
        tracing::warn!(stream = %self.shared.id, %reason, "Stream failed; retrying");
        self.shared
            .lifecycle(Lifecycle::StreamError, Some(reason.clone()), None);
        if self.shared.attempt_up.load(Ordering::Relaxed) {
            self.shared
                .lifecycle(Lifecycle::StreamDown, Some(reason), None);
        }
        Outcome::Retry
    }

    fn attempt(
        &self,
        audio_tx: &SyncSender<AudioMsg>,
        video: &Arc<DropOldest<VideoFrame>>,
    ) -> Outcome {
        let pipeline = match gst::parse::launch(&self.desc) {
            Ok(p) => p,
            Err(e) => return self.fail(format!("cannot build the pipeline: {e}")),
        };
        let Ok(bin) = pipeline.clone().downcast::<gst::Bin>() else {
            return self.fail("the template is not a pipeline".into());
        };
        let Some(audio) = bin
            .by_name("audio")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        else {
            return self.fail("the template has no appsink named audio".into());
        };
        audio.set_callbacks(audio_callbacks(self.shared.clone(), audio_tx.clone()));
        tune(&bin, self.settings.decoder_threads, self.settings.nice);
        if let Some(v) = bin
            .by_name("video")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        {
            v.set_callbacks(video_callbacks(self.shared.clone(), video.clone()));
        }
        self.shared.touch();
        let live = match pipeline.set_state(gst::State::Playing) {
            Ok(s) => self.live.unwrap_or(s == gst::StateChangeSuccess::NoPreroll),
            Err(_) => {
                let reason =
                    first_error(&pipeline).unwrap_or_else(|| "the pipeline would not start".into());
                let _ = pipeline.set_state(gst::State::Null);
                return self.fail(reason);
            }
        };
        let outcome = self.watch(&pipeline, live);
        let _ = pipeline.set_state(gst::State::Null);
        outcome
    }

    fn watch(&self, pipeline: &gst::Element, mut live: bool) -> Outcome {
        let bus = pipeline.bus().expect("a pipeline has a bus");
        // An undeclared source that prerolled may still be live (a decodebin in front of a
        // network source returns ASYNC): ask the pipeline once media flows.
        let mut inferred = self.live.is_some() || live;
        let types = [
            gst::MessageType::Error,
            gst::MessageType::Eos,
            gst::MessageType::Warning,
        ];
        loop {
            if self.cancel.is_cancelled() {
                if self.shared.attempt_up.load(Ordering::Relaxed) {
                    self.shared
                        .lifecycle(Lifecycle::StreamDown, Some("detached".into()), None);
                }
                return Outcome::Cancelled;
            }
            let msg = bus.timed_pop_filtered(gst::ClockTime::from_mseconds(100), &types);
            let sh = &self.shared;
            if !inferred && sh.attempt_up.load(Ordering::Relaxed) {
                inferred = true;
                let mut q = gst::query::Latency::new();
                live = pipeline.query(&mut q) && q.result().0;
            }
            let branches_done = sh.audio_eos.load(Ordering::Relaxed)
                && (!sh.video_seen.load(Ordering::Relaxed) || sh.video_eos.load(Ordering::Relaxed));
            let eos = matches!(
                msg.as_ref().map(|m| m.view()),
                Some(gst::MessageView::Eos(_))
            ) || (!live && branches_done);
            if eos {
                if live {
                    return self.fail("the live source ended".into());
                }
                tracing::info!(stream = %self.shared.id, "Stream reached its end");
                self.shared
                    .lifecycle(Lifecycle::StreamDown, Some("end of stream".into()), None);
                return Outcome::Ended;
            }
            match msg.as_ref().map(|m| m.view()) {
                Some(gst::MessageView::Error(e)) => {
                    let src = e
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    return self.fail(format!("{} ({src})", e.error()));
                }
                Some(gst::MessageView::Warning(w)) => {
                    tracing::debug!(stream = %self.shared.id, warning = %w.error(), "GStreamer warning");
                }
                _ => {}
            }
            if live && self.shared.since_buffer() > self.settings.stall_timeout {
                return self.fail(format!(
                    "no media for {:?} (stalled)",
                    self.settings.stall_timeout
                ));
            }
        }
    }
}

/// Lower the calling thread's priority to `nice` (a no-op at 0). Raising a nice value needs
/// no privilege; failures are logged once per thread and otherwise ignored.
pub fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if r != 0 {
        tracing::debug!(nice, error = %std::io::Error::last_os_error(), "Cannot lower a media thread's priority");
    }
}

/// Per pipeline: every libav video decoder gets `decoder_threads`, and every streaming
/// thread runs at `nice` (set from the thread itself, when it announces that it starts).
fn tune(bin: &gst::Bin, decoder_threads: u32, nice: i32) {
    bin.connect_deep_element_added(move |_, _, el| {
        let is_libav_video = el
            .factory()
            .is_some_and(|f| f.name().starts_with("avdec_") && f.klass().contains("Video"));
        if is_libav_video && el.find_property("max-threads").is_some() {
            el.set_property("max-threads", decoder_threads as i32);
        }
    });
    if let Some(bus) = bin.bus() {
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::StreamStatus(s) = msg.view()
                && s.get().0 == gst::StreamStatusType::Enter
            {
                set_nice(nice);
            }
            gst::BusSyncReply::Pass
        });
    }
}

fn first_error(pipeline: &gst::Element) -> Option<String> {
    let bus = pipeline.bus()?;
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_mseconds(500),
        &[gst::MessageType::Error],
    )?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        _ => None,
    }
}

fn secs(t: Option<gst::ClockTime>) -> Option<f64> {
    t.map(|t| t.nseconds() as f64 / 1e9)
}

/// Mark the attempt up on its first buffer and place the buffer on the timeline.
fn place(shared: &Shared, pts: Option<f64>, duration: f64) -> (f64, bool) {
    shared.touch();
    let (t, gap) =
        shared
            .timeline
            .lock()
            .expect("timeline lock")
            .place(pts, duration, Instant::now());
    let first = !shared.attempt_up.swap(true, Ordering::Relaxed);
    if first {
        shared.set_state(StreamState::Up);
        tracing::info!(stream = %shared.id, media_time = t, "Stream is up");
        shared.lifecycle(Lifecycle::StreamUp, None, gap);
    }
    (t, first)
}

fn audio_callbacks(shared: Arc<Shared>, tx: SyncSender<AudioMsg>) -> gst_app::AppSinkCallbacks {
    let eos = shared.clone();
    gst_app::AppSinkCallbacks::builder()
        .eos(move |_| eos.audio_eos.store(true, Ordering::Relaxed))
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let rate = sample
                .caps()
                .and_then(|c| c.structure(0)?.get::<i32>("rate").ok())
                .unwrap_or(0) as u32;
            let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let samples: Vec<f32> = map
                .as_slice()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if rate == 0 || samples.is_empty() {
                return Ok(gst::FlowSuccess::Ok);
            }
            let duration = samples.len() as f64 / f64::from(rate);
            let (t, fresh) = place(&shared, secs(buffer.pts()), duration);
            match tx.try_send(AudioMsg::Chunk(AudioChunk { t, rate, samples, fresh })) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    shared.metrics.dropped_audio();
                    tracing::warn!(stream = %shared.id, media_time = t, "Audio queue full; dropped a chunk");
                }
                Err(TrySendError::Disconnected(_)) => return Err(gst::FlowError::Flushing),
            }
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

fn video_callbacks(
    shared: Arc<Shared>,
    q: Arc<DropOldest<VideoFrame>>,
) -> gst_app::AppSinkCallbacks {
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let Some(s) = sample
                .caps()
                .and_then(|c| c.structure(0).map(|s| s.to_owned()))
            else {
                return Ok(gst::FlowSuccess::Ok);
            };
            let (w, h) = (
                s.get::<i32>("width").unwrap_or(0) as u32,
                s.get::<i32>("height").unwrap_or(0) as u32,
            );
            let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let row = (w as usize * 3).next_multiple_of(4);
            if w == 0 || h == 0 || map.len() < row * h as usize {
                return Ok(gst::FlowSuccess::Ok);
            }
            // GStreamer pads RGB rows to 4 bytes; repack tightly.
            let mut rgb = Vec::with_capacity(w as usize * 3 * h as usize);
            for y in 0..h as usize {
                rgb.extend_from_slice(&map[y * row..y * row + w as usize * 3]);
            }
            shared.video_seen.store(true, Ordering::Relaxed);
            let (t, _) = place(&shared, secs(buffer.pts()), 0.0);
            if q.push(VideoFrame {
                t,
                width: w,
                height: h,
                rgb,
            }) {
                shared.metrics.dropped_video();
            }
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

fn audio_loop(
    rx: Receiver<AudioMsg>,
    shared: Arc<Shared>,
    tap: Option<PublisherHandle>,
    chunk_ms: Option<u32>,
) {
    let mut resampler: Option<(u32, To16k)> = None;
    let mut out16 = Vec::new();
    let mut pcm = Vec::new();
    // Media time of out16[0].
    let mut t16 = 0.0;
    let chunk = chunk_ms.map(|ms| (TARGET_RATE * ms / 1000) as usize);
    loop {
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let c = match msg {
            AudioMsg::Chunk(c) => c,
            AudioMsg::Flush => {
                if let Some((_, r)) = resampler.as_mut() {
                    let before = out16.len();
                    r.flush(&mut out16);
                    if let Some(f) = &shared.features {
                        f.push(t16 + secs16(before), &out16[before..]);
                        f.flush();
                    }
                    match (chunk, &tap) {
                        (Some(chunk), Some(tap)) => {
                            publish_tap(tap, &shared.id, &mut out16, t16, chunk, &mut pcm, true);
                        }
                        _ => out16.clear(),
                    }
                }
                resampler = None;
                continue;
            }
        };
        shared
            .metrics
            .audio_seconds(c.samples.len() as f64 / f64::from(c.rate));
        if shared.features.is_none() && (chunk.is_none() || tap.is_none()) {
            continue;
        }
        // A new connection or rate: start the resampler afresh at this chunk's time.
        if c.fresh || resampler.as_ref().is_none_or(|(r, _)| *r != c.rate) {
            match To16k::new(c.rate) {
                Ok(r) => resampler = Some((c.rate, r)),
                Err(e) => {
                    tracing::warn!(stream = %shared.id, error = %e, "Cannot resample this stream");
                    continue;
                }
            }
            out16.clear();
            t16 = c.t;
        }
        let (_, r) = resampler.as_mut().expect("set above");
        let before = out16.len();
        r.push(&c.samples, &mut out16);
        if let Some(f) = &shared.features {
            f.push(t16 + secs16(before), &out16[before..]);
        }
        match (chunk, &tap) {
            (Some(chunk), Some(tap)) => {
                t16 = publish_tap(tap, &shared.id, &mut out16, t16, chunk, &mut pcm, false);
            }
            _ => {
                t16 += secs16(out16.len());
                out16.clear();
            }
        }
    }
}

fn secs16(samples: usize) -> f64 {
    samples as f64 / f64::from(TARGET_RATE)
}

/// Publish the full `chunk`-sample pieces of `out16` (and, with `tail`, the rest as a last
/// shorter piece); returns the media time of what remains.
fn publish_tap(
    tap: &PublisherHandle,
    id: &str,
    out16: &mut Vec<f32>,
    mut t16: f64,
    chunk: usize,
    pcm: &mut Vec<i16>,
    tail: bool,
) -> f64 {
    let mut start = 0;
    while out16.len() - start >= chunk || (tail && start < out16.len()) {
        let end = (start + chunk).min(out16.len());
        pcm.clear();
        to_i16(&out16[start..end], pcm);
        tap.publish(tap_message(id, t16, pcm));
        t16 += (end - start) as f64 / f64::from(TARGET_RATE);
        start = end;
    }
    out16.drain(..start);
    t16
}

fn video_loop(q: Arc<DropOldest<VideoFrame>>, shared: Arc<Shared>, vision: Option<VisionIngest>) {
    let mut stage = vision.as_ref().map(|v| {
        crate::vision::stage::VisionStage::new(
            v.models.clone(),
            v.settings.cadence(),
            v.settings.track.clone(),
        )
    });
    let mut failures = 0u64;
    loop {
        let frame = match q.pop(Duration::from_millis(200)) {
            Pop::Item(f) => f,
            Pop::Empty => continue,
            Pop::Closed => return,
        };
        shared.metrics.video_frame();
        let (Some(stage), Some(visual)) = (stage.as_mut(), shared.visual.as_ref()) else {
            continue;
        };
        let t0 = Instant::now();
        let result = crate::vision::RgbImage::new(frame.width, frame.height, frame.rgb)
            .and_then(|img| stage.process(frame.t, &img));
        match result {
            Ok(f) => {
                shared
                    .metrics
                    .vision_frame(t0.elapsed().as_secs_f64(), f.faces.len());
                visual.push(&f);
            }
            Err(e) => {
                // A bad frame loses that frame only; the log is rate-limited.
                failures += 1;
                shared.metrics.vision_error();
                if failures.is_power_of_two() {
                    tracing::warn!(stream = %shared.id, error = %e, failures, "Vision stage failed on a frame");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let q = DropOldest::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(2));
        assert_eq!(q.pop(Duration::ZERO), Pop::Item(3));
        assert_eq!(q.pop(Duration::ZERO), Pop::Empty);
        q.close();
        assert_eq!(q.pop(Duration::ZERO), Pop::Closed);
    }
}
