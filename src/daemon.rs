//! The daemon's topology: bind every socket, start the socket threads and tokio tasks, tell
//! systemd, wait for the shutdown signal, then drain downstream within the drain limit.
//!
//! ```text
//!  ASR workers --PUSH--> [zmq-transcripts thread: validate, count] --bounded mpsc (block)-->
//!      [transcript consumer task: policy, assembler] --sync_channel--> [model-worker thread]
//!  [events publisher thread] <--sync_channel (drop newest, counted)-- lifecycle / emotion events
//!  [audio_tap publisher thread] <--sync_channel (drop newest, counted)-- stream audio threads
//!  [metrics HTTP task]  [watchdog task: feeds systemd only while every thread beats]
//! ```
//!
//! Shutdown flows one way: the token stops the only source (the transcript receiver); it drops
//! its sender; the consumer sees the channel close, releases what it holds to the model worker
//! and ends; the worker ends when it has published that; the streams are detached; the
//! `daemon.stopping` event is queued, last; the last publisher handles are dropped, each publisher
//! drains its queue and exits; the libzmq context is terminated, which flushes what libzmq
//! still holds (linger).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, BusError, Heartbeat, PublisherHandle};
use crate::config::Config;
use crate::events::{Lifecycle, LifecycleEvent};
use crate::infer::{self, engine::Engine};
use crate::ingest::{Ingest, IngestSettings};
use crate::metrics::{self, HEARTBEAT_MAX_AGE, Metrics};
use crate::transcripts::{self, Limits, StreamSet, Transcript};
use crate::version::VersionInfo;

/// Why the daemon could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A ZeroMQ socket could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A configured stream could not be attached.
    #[error("cannot attach stream: {0}")]
    Attach(#[from] crate::ingest::IngestError),
    /// The model or the text encoder could not be loaded.
    #[error("cannot load the model: {0}")]
    Model(#[from] crate::infer::engine::EngineError),
    /// The vision networks could not be loaded.
    #[error("cannot load the vision stage: {0}")]
    Vision(#[from] crate::vision::VisionError),
    /// A thread could not be started.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    /// A part the daemon cannot serve without failed (the model worker); it drained and
    /// exits non-zero so that its supervisor restarts it.
    #[error("stopped after a fatal fault: {0}")]
    Fatal(String),
    /// Draining took longer than `daemon.shutdown_timeout`.
    #[error("draining did not finish within {0:?}; {1} was still running")]
    DrainTimeout(Duration, &'static str),
}

/// A fault the daemon cannot serve through (the model worker died or keeps failing): the
/// first reason raised wins, and `run` drains and exits non-zero on it.
#[derive(Clone, Default)]
pub struct Fatal {
    token: CancellationToken,
    reason: Arc<std::sync::OnceLock<String>>,
}

impl Fatal {
    /// Raise it (from any thread); later reasons are ignored.
    pub fn raise(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Wait until it is raised; the first reason.
    pub async fn raised(&self) -> String {
        self.token.cancelled().await;
        self.reason.get().cloned().unwrap_or_default()
    }
}

/// What a running daemon exposes to its embedder (tests use it; `run` drives it).
pub struct Running {
    cancel: CancellationToken,
    fatal: Fatal,
    metrics: Arc<Metrics>,
    events: PublisherHandle,
    tap: Option<PublisherHandle>,
    consumer: tokio::task::JoinHandle<()>,
    ingest: Arc<Ingest>,
    threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
    ctx: zmq::Context,
    shutdown_timeout: Duration,
}

/// Cap glibc's malloc arenas at `arenas` (0: leave glibc's default) unless the environment's
/// `MALLOC_ARENA_MAX` is set. Returns the cap in force, if any. Call before threads start.
pub fn limit_malloc_arenas(arenas: u32) -> Option<u32> {
    if let Some(v) = std::env::var_os("MALLOC_ARENA_MAX") {
        return v.to_str().and_then(|v| v.parse().ok());
    }
    if arenas == 0 {
        return None;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers; glibc applies M_ARENA_MAX to arenas made later.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas.min(i32::MAX as u32) as i32) };
        (ok == 1).then_some(arenas)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Bind everything and start serving. Returns once initialised (sockets bound, threads
/// running); errors name the socket or address that failed.
pub async fn start(cfg: &Config) -> Result<Running, DaemonError> {
    // The model first: a missing or mismatched model fails before any socket is bound.
    let engine = match &cfg.model_path {
        Some(dir) => {
            let device = model_device(&cfg.raw.model.device);
            tch::set_num_threads(cfg.raw.inference.threads as i32);
            let dir = dir.clone();
            let enc = cfg.text_encoder_dir.clone();
            let max_tokens = cfg.raw.text_encoder.max_tokens;
            let precision = cfg.raw.text_encoder.precision;
            let e = tokio::task::spawn_blocking(move || {
                Engine::load(&dir, &enc, max_tokens, precision, device)
            })
            .await
            .expect("model loading does not panic")?;
            tracing::info!(model = e.name(), device = ?device, text_matmul = ?e.text_matmul(), "Loaded the model");
            Some(e)
        }
        None => None,
    };
    // The vision stage serves the events, so it runs only with a model; its networks are
    // loaded once and shared by every stream.
    let vision = match (&engine, &cfg.vision) {
        (Some(_), Some(v)) => {
            let device = model_device(&cfg.raw.model.device);
            let settings = v.clone();
            let models = tokio::task::spawn_blocking(move || {
                crate::vision::stage::VisionModels::load(&settings, device)
            })
            .await
            .expect("vision loading does not panic")?;
            tracing::info!(device = ?device, min_face = v.mtcnn.min_face, detect_every = v.detect_every, "Loaded the vision stage");
            Some(crate::ingest::VisionIngest {
                models: Arc::new(models),
                settings: v.clone(),
            })
        }
        _ => None,
    };
    let info = VersionInfo::libraries();
    let metrics = Arc::new(Metrics::new(&info));
    let ctx = zmq::Context::new();
    let mut threads = Vec::new();
    let fatal = Fatal::default();

    // The ZAP handler must exist before the first CURVE socket is bound.
    let authorized = [
        Some(&cfg.transcripts),
        Some(&cfg.events),
        cfg.audio_tap.as_ref(),
    ]
    .into_iter()
    .flatten()
    .find_map(|s| s.curve.as_ref()?.authorized.clone());
    if let Some(keys) = authorized {
        threads.push(("zmq-zap", bus::spawn_zap(&ctx, keys, metrics.clone())?));
    }

    let t = &cfg.raw.transcripts;
    // libzmq refuses (and disconnects) anything larger than this at the transport level;
    // between max_message_bytes and this, messages are received and counted as oversized.
    let transport_limit = (t.max_message_bytes as i64 * 4).max(1 << 20);
    let pull = bus::bind(&ctx, &cfg.transcripts, zmq::PULL, |s| {
        s.set_rcvhwm(t.rcvhwm)?;
        s.set_maxmsgsize(transport_limit)
    })?;
    let e = &cfg.raw.events;
    let events_sock = bus::bind(&ctx, &cfg.events, zmq::PUB, |s| s.set_sndhwm(e.sndhwm))?;
    let tap_sock = match &cfg.audio_tap {
        Some(spec) => {
            let hwm = cfg.raw.audio_tap.sndhwm;
            Some(bus::bind(&ctx, spec, zmq::PUB, |s| s.set_sndhwm(hwm))?)
        }
        None => None,
    };
    let listener = match cfg.metrics {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| DaemonError::MetricsBind { addr, source })?,
        ),
        None => None,
    };

    let cancel = CancellationToken::new();
    let linger = cfg.shutdown_timeout();
    let mut beats = Vec::new();

    let hb = Heartbeat::new("zmq-events");
    let (events, join) = bus::spawn_publisher(
        "events",
        events_sock,
        e.queue,
        linger,
        metrics.clone(),
        hb.clone(),
    )?;
    beats.push(hb);
    threads.push(("zmq-events", join));

    let tap = match tap_sock {
        Some(sock) => {
            let hb = Heartbeat::new("zmq-audio_tap");
            let q = cfg.raw.audio_tap.queue;
            let (h, join) =
                bus::spawn_publisher("audio_tap", sock, q, linger, metrics.clone(), hb.clone())?;
            beats.push(hb);
            threads.push(("zmq-audio_tap", join));
            Some(h)
        }
        None => None,
    };

    // Transcripts are accepted for attached streams only; ingest keeps this set.
    let streams: StreamSet = Arc::new(std::sync::RwLock::new(Default::default()));
    let ig = &cfg.raw.ingest;
    let ingest = Arc::new(Ingest::new(
        IngestSettings {
            pipelines_dir: cfg.pipelines_dir.clone(),
            backoff_initial: ig.backoff_initial.0,
            backoff_max: ig.backoff_max.0,
            stall_timeout: ig.stall_timeout.0,
            video_fps: ig.video_fps,
            video_max_width: ig.video_max_width,
            video_max_height: ig.video_max_height,
            audio_queue: ig.audio_queue,
            video_queue: ig.video_queue,
            decoder_threads: ig.decoder_threads,
            nice: ig.nice,
            tap_chunk_ms: cfg.audio_tap.as_ref().map(|_| cfg.raw.audio_tap.chunk_ms),
            acoustic: engine.as_ref().map(|_| crate::acoustic::Settings {
                history_frames: (cfg.raw.inference.audio_history.0.as_secs_f64() * 100.0) as usize,
                ..Default::default()
            }),
            vision,
        },
        events.clone(),
        tap.clone(),
        metrics.clone(),
        streams.clone(),
    ));
    if let Some(ep) = &cfg.control {
        let spec = crate::config::SocketSpec {
            name: "control",
            endpoint: ep.clone(),
            curve: None,
        };
        let sock = bus::bind(&ctx, &spec, zmq::REP, |_| Ok(()))?;
        let hb = Heartbeat::new("zmq-control");
        threads.push((
            "zmq-control",
            crate::control::spawn(sock, ingest.clone(), hb.clone(), cancel.clone())?,
        ));
        beats.push(hb);
    }
    for s in &cfg.raw.streams {
        ingest.attach(s.clone())?;
    }
    let (tx, rx) = mpsc::channel(t.queue);
    let hb = Heartbeat::new("zmq-transcripts");
    let join = transcripts::spawn_receiver(
        pull,
        Limits::from(t),
        streams.clone(),
        metrics.clone(),
        hb.clone(),
        tx,
        cancel.clone(),
    )?;
    beats.push(hb);
    threads.push(("zmq-transcripts", join));

    let consumer = match engine {
        Some(engine) => {
            let inf = &cfg.raw.inference;
            let (wtx, wrx) = std::sync::mpsc::sync_channel(inf.queue);
            let hb = Heartbeat::new("model-worker");
            let join = infer::spawn_worker(
                engine,
                wrx,
                events.clone(),
                metrics.clone(),
                hb.clone(),
                infer::WorkerPolicy {
                    max_batch: inf.max_batch,
                    max_wait: inf.max_wait.0,
                    max_failed_batches: inf.max_failed_batches,
                    fatal: fatal.clone(),
                },
            )
            .map_err(|e| DaemonError::Thread("model-worker", e))?;
            beats.push(hb);
            threads.push(("model-worker", join));
            let ctx = infer::ConsumerCtx {
                cfg: inf.clone(),
                publish_text: cfg.raw.events.publish_text,
                ingest: ingest.clone(),
                known: streams,
                metrics: metrics.clone(),
            };
            tokio::spawn(infer::consume(rx, wtx, ctx))
        }
        None => tokio::spawn(consume(rx)),
    };

    let beats = Arc::new(beats);
    if let Some(listener) = listener {
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            beats.clone(),
            cancel.clone(),
        ));
    }
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(period, beats, cancel.clone()));
    }

    events.publish(LifecycleEvent::daemon(Lifecycle::DaemonUp, None).to_message());
    metrics.set_ready(true);
    Ok(Running {
        cancel,
        fatal,
        metrics,
        events,
        tap,
        consumer,
        ingest,
        threads,
        ctx,
        shutdown_timeout: cfg.shutdown_timeout(),
    })
}

impl Running {
    /// Raised when the daemon cannot go on serving.
    pub fn fatal(&self) -> &Fatal {
        &self.fatal
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The stream ingest (attach, detach, list).
    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// A handle onto the audio-tap publisher (ingest feeds it).
    pub fn tap(&self) -> Option<&PublisherHandle> {
        self.tap.as_ref()
    }

    /// Drain and stop within the configured limit.
    pub async fn stop(self, reason: &str) -> Result<(), DaemonError> {
        let Running {
            cancel,
            fatal: _,
            metrics,
            events,
            tap,
            consumer,
            ingest,
            threads,
            mut ctx,
            shutdown_timeout,
        } = self;
        let deadline = Instant::now() + shutdown_timeout;
        metrics.set_ready(false);
        // Transcripts first: the receiver stops within one poll and drops its sender; the
        // consumer releases what it still holds (each segment waits at most feature_wait for
        // its descriptors, which keep coming while the media flows), hands it to the model
        // worker and ends, which ends the worker once it has published the rest.
        cancel.cancel();
        if tokio::time::timeout_at(deadline.into(), consumer)
            .await
            .is_err()
        {
            return Err(DaemonError::DrainTimeout(
                shutdown_timeout,
                "transcript consumer",
            ));
        }
        // The model worker ends once it has published what the consumer handed it; only
        // then is `daemon.stopping` the last event.
        let mut threads = threads;
        if let Some(i) = threads.iter().position(|(n, _)| *n == "model-worker") {
            let (name, join) = threads.remove(i);
            let joined = tokio::task::spawn_blocking(move || join.join());
            if tokio::time::timeout_at(deadline.into(), joined)
                .await
                .is_err()
            {
                return Err(DaemonError::DrainTimeout(shutdown_timeout, name));
            }
        }
        // Then the sources: the pipelines stop, their audio threads flush the tap.
        let stopping = tokio::task::spawn_blocking(move || ingest.stop_all());
        if tokio::time::timeout_at(deadline.into(), stopping)
            .await
            .is_err()
        {
            return Err(DaemonError::DrainTimeout(shutdown_timeout, "ingest"));
        }
        events.publish(
            LifecycleEvent::daemon(Lifecycle::DaemonStopping, Some(reason.to_string()))
                .to_message(),
        );
        drop(events);
        drop(tap);
        for (name, join) in threads.into_iter().filter(|(n, _)| *n != "zmq-zap") {
            let joined = tokio::task::spawn_blocking(move || join.join());
            if tokio::time::timeout_at(deadline.into(), joined)
                .await
                .is_err()
            {
                return Err(DaemonError::DrainTimeout(shutdown_timeout, name));
            }
        }
        // Terminating the context flushes queued messages (up to linger) and ends the ZAP
        // thread, whose socket then reports ETERM.
        let term = tokio::task::spawn_blocking(move || ctx.destroy());
        if tokio::time::timeout_at(deadline.into(), term)
            .await
            .is_err()
        {
            return Err(DaemonError::DrainTimeout(
                shutdown_timeout,
                "libzmq context",
            ));
        }
        Ok(())
    }
}

/// Run until `shutdown` resolves or a fatal fault is raised, then drain. Tells systemd READY,
/// STOPPING and feeds its watchdog (all no-ops outside systemd). A fatal fault returns
/// [`DaemonError::Fatal`] after the drain, for a non-zero exit.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = &'static str>,
) -> Result<(), DaemonError> {
    let running = start(&cfg).await?;
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    tracing::info!(
        transcripts = %cfg.transcripts.endpoint.to_zmq(),
        events = %cfg.events.endpoint.to_zmq(),
        audio_tap = %cfg.audio_tap.as_ref().map(|s| s.endpoint.to_zmq()).unwrap_or_else(|| "off".into()),
        metrics = %cfg.metrics.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        streams = cfg.raw.streams.len(),
        model = %cfg.model_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (no inference)".into()),
        "Summerd is ready"
    );
    let fatal = running.fatal().clone();
    let (reason, failed) = tokio::select! {
        r = shutdown => (r.to_string(), false),
        r = fatal.raised() => (r, true),
    };
    if failed {
        tracing::error!(reason = %reason, "Stopping on a fatal fault; draining what can still be published");
    } else {
        tracing::info!(reason = %reason, "Draining");
    }
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
    let accepted = running.metrics().accepted_count();
    running.stop(&reason).await?;
    if failed {
        return Err(DaemonError::Fatal(reason));
    }
    tracing::info!(transcripts_accepted = accepted, "Stopped cleanly");
    Ok(())
}

/// The transcript consumer without a model: segments are logged at debug level and dropped
/// after being counted.
async fn consume(mut rx: mpsc::Receiver<Transcript>) {
    while let Some(t) = rx.recv().await {
        tracing::debug!(
            stream = %t.stream,
            seq = t.seq,
            start = t.start,
            end = t.end,
            is_final = t.is_final,
            "Transcript segment received"
        );
    }
}

/// `model.device` as a libtorch device (`auto`: CUDA when usable).
pub fn model_device(name: &str) -> tch::Device {
    match name {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        "auto" => tch::Device::cuda_if_available(),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map_or(tch::Device::Cpu, tch::Device::Cuda),
    }
}

/// Feed systemd's watchdog at half its period, but only while every socket thread has beaten
/// recently: a thread stuck in libzmq or dead stops the feed, and systemd restarts us.
async fn watchdog(period: Duration, beats: Arc<Vec<Heartbeat>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match metrics::stale(&beats, HEARTBEAT_MAX_AGE.min(period)) {
            None => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Some(h) => {
                tracing::error!(thread = h.name(), age = ?h.age(), "Thread is not responding; withholding the watchdog");
            }
        }
    }
}
