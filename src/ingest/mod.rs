//! Ingest: one supervised GStreamer pipeline per stream, attached and detached at run time.
//! It only runs GStreamer; what a stream is (spec, state, timeline, descriptors, faces) lives
//! in the [`crate::streams::Registry`], which ingest writes and inference reads.
//!
//! Per stream:
//! - a **supervisor thread** (`supervisor.rs`) builds the pipeline from its template, plays
//!   it, watches its bus and rebuilds it after an error, an unexpected end or a stall;
//! - **appsink callbacks** (`appsink.rs`, on GStreamer's streaming threads) place each buffer
//!   on the stream's media timeline and hand it on without blocking;
//! - an **audio thread** (`audio.rs`) resamples to 16 kHz, feeds the acoustic descriptors and
//!   publishes the audio tap;
//! - a **video thread** (`video.rs`) runs the newest frames through the vision stage.
//!
//! A failing stream never touches another: each has its own pipeline, threads and queues.
//! Detaching cancels the supervisor, which stops its pipeline; the audio and video threads end
//! when their inputs close, and every buffer and queue of the stream is freed.

mod appsink;
mod audio;
pub mod queue;
pub mod settings;
mod supervisor;
pub mod template;
mod video;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::bus::PublisherHandle;
use crate::events::{Lifecycle, LifecycleEvent};
use crate::metrics::{Metrics, StreamMetrics};
use crate::settings::Checker;
use crate::streams::timeline::Gap;
use crate::streams::{Registry, Stream, StreamInfo, StreamSpec, StreamState};
use settings::{IngestConfig, Launch};
use supervisor::Supervisor;
pub use supervisor::set_nice;

/// Settings shared by every stream (from `[ingest]`, `[pipelines]` and `[audio_tap]`).
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Where templates are.
    pub pipelines_dir: PathBuf,
    /// `[ingest]` as checked.
    pub config: IngestConfig,
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
    pub models: crate::vision::stage::SharedModels,
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

/// Ingest errors, for attach and detach.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The spec does not pass the checks every stream passes (each problem named).
    #[error("{0}")]
    Invalid(String),
    /// Already attached.
    #[error(transparent)]
    Duplicate(#[from] crate::streams::Duplicate),
    /// Not attached.
    #[error("stream '{0}' is not attached")]
    Unknown(String),
    /// Could not start a thread.
    #[error("cannot start a thread for stream '{0}': {1}")]
    Thread(String, std::io::Error),
}

/// What one stream's ingest threads share: the registry's stream, the current attempt's
/// flags, the stream's metrics and the events publisher.
struct Shared {
    stream: Arc<Stream>,
    attempt_up: AtomicBool,
    // End of stream per branch, for non-live sources whose other branch never links (an
    // audio-only file through a template with a video branch never gets a pipeline EOS).
    audio_eos: AtomicBool,
    video_seen: AtomicBool,
    video_eos: AtomicBool,
    /// Whether any attempt ever delivered media.
    ever_up: AtomicBool,
    last_buffer_ms: AtomicU64,
    epoch: Instant,
    metrics: StreamMetrics,
    events: PublisherHandle,
}

impl Shared {
    fn id(&self) -> &str {
        self.stream.id()
    }

    fn touch(&self) {
        self.last_buffer_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_buffer(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_buffer_ms.load(Ordering::Relaxed)))
    }

    fn set_state(&self, s: StreamState) {
        self.stream.set_state(s);
        self.metrics.set_up(s == StreamState::Up);
    }

    fn lifecycle(&self, kind: Lifecycle, reason: Option<String>, gap: Option<Gap>) {
        let media_time = self.stream.timeline().end();
        let mut e = LifecycleEvent::stream(kind, self.id(), reason);
        e.media_time = Some(media_time);
        e.gap = gap.map(|g| [g.start, g.end]);
        self.events.publish(e.to_message());
    }
}

struct Running {
    cancel: CancellationToken,
    supervisor: JoinHandle<()>,
}

/// Check a stream's spec as an attach request is checked (id, template inside
/// `pipelines_dir`, URI, roles, placeholders); its launch description.
pub fn check_spec(
    pipelines_dir: &std::path::Path,
    config: &IngestConfig,
    spec: &StreamSpec,
) -> Result<Launch, IngestError> {
    let mut c = Checker::new(pipelines_dir.to_path_buf());
    let vars = config.template_vars(spec);
    let launch = settings::check_stream(&mut c, "attach", spec, pipelines_dir, &vars);
    match launch {
        Some(l) if c.is_clean() => Ok(l),
        _ => Err(IngestError::Invalid(
            c.into_problems()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

/// Runs the pipelines of the registry's streams.
pub struct Ingest {
    settings: IngestSettings,
    registry: Arc<Registry>,
    events: PublisherHandle,
    tap: Option<PublisherHandle>,
    metrics: Arc<Metrics>,
    running: Mutex<HashMap<String, Running>>,
}

impl Ingest {
    /// An ingest with no streams yet; it registers the streams it attaches in `registry`.
    pub fn new(
        settings: IngestSettings,
        registry: Arc<Registry>,
        events: PublisherHandle,
        tap: Option<PublisherHandle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ingest {
            settings,
            registry,
            events,
            tap,
            metrics,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Check a stream's spec as `[[streams]]` is checked: id, template (a name inside
    /// `pipelines.dir`), URI, roles and placeholders. Its launch description.
    pub fn check(&self, spec: &StreamSpec) -> Result<Launch, IngestError> {
        check_spec(&self.settings.pipelines_dir, &self.settings.config, spec)
    }

    /// Attach a stream: it starts at once and keeps retrying until detached (or, never having
    /// produced media, until `ingest.max_attempts`).
    pub fn attach(&self, spec: StreamSpec) -> Result<(), IngestError> {
        let launch = self.check(&spec)?;
        let mut running = self.running.lock().expect("running lock");
        let id = spec.id.clone();
        let stream = Arc::new(self.registry.new_stream(
            spec,
            self.settings.acoustic,
            self.settings.vision.as_ref().map(|v| v.settings.history_s),
        ));
        let shared = Arc::new(Shared {
            stream: stream.clone(),
            attempt_up: AtomicBool::new(false),
            audio_eos: AtomicBool::new(false),
            video_seen: AtomicBool::new(false),
            video_eos: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            last_buffer_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics: self.metrics.stream(&id),
            events: self.events.clone(),
        });
        self.registry.insert(stream.clone())?;
        let cancel = CancellationToken::new();
        let sup = Supervisor {
            launch,
            settings: self.settings.clone(),
            shared,
            tap: self.tap.clone(),
            cancel: cancel.clone(),
        };
        let supervisor = match std::thread::Builder::new()
            .name(format!("ingest-{id}"))
            .spawn(move || sup.run())
        {
            Ok(h) => h,
            Err(e) => {
                self.registry.remove(&id);
                self.metrics.forget_stream(&id);
                return Err(IngestError::Thread(id, e));
            }
        };
        let spec = stream.spec();
        tracing::info!(stream = %id, uri = %spec.uri, template = %spec.template, "Attached stream");
        running.insert(id, Running { cancel, supervisor });
        Ok(())
    }

    /// Detach a stream: stop its pipeline and free everything it holds.
    pub fn detach(&self, id: &str) -> Result<(), IngestError> {
        let r = self
            .running
            .lock()
            .expect("running lock")
            .remove(id)
            .ok_or_else(|| IngestError::Unknown(id.to_string()))?;
        self.registry.remove(id);
        r.cancel.cancel();
        let _ = r.supervisor.join();
        self.metrics.forget_stream(id);
        tracing::info!(stream = %id, "Detached stream");
        Ok(())
    }

    /// Every attached stream.
    pub fn list(&self) -> Vec<StreamInfo> {
        self.registry.list()
    }

    /// Detach everything (at shutdown, once the utterances in flight are scored).
    pub fn stop_all(&self) {
        let ids: Vec<String> = self
            .running
            .lock()
            .expect("running lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.detach(&id);
        }
    }
}
