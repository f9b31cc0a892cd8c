//! The daemon's topology: bind every socket, start the socket threads and tokio tasks, tell
//! systemd, wait for the shutdown signal, then drain downstream within the drain limit.
//!
//! ```text
//!  ASR workers --PUSH--> [zmq-transcripts thread: validate, count] --bounded mpsc (block)-->
//!      [transcript consumer task: policy, assembler] --sync_channel--> [model-worker thread]
//!  [events publisher thread] <--sync_channel (drop newest, counted)-- lifecycle / emotion events
//!  [audio_tap publisher thread] <--sync_channel (drop newest, counted)-- stream audio threads
//!  [events publisher thread] --feed (never blocks)--> [HTTP task: metrics, page, event feed]
//!  [watchdog task: feeds systemd only while every thread beats]
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

use crate::bus::{self, BusError, PublisherHandle, PublisherSettings, SocketSpec};
use crate::config::Config;
use crate::events::{Lifecycle, LifecycleEvent};
use crate::feed::Feed;
use crate::health::{Fatal, Heartbeat};
use crate::infer::{self, engine::Engine};
use crate::ingest::{Ingest, IngestSettings};
use crate::metrics::{self, HEARTBEAT_MAX_AGE, Metrics};
use crate::signals::Tracker;
use crate::streams::Registry;
use crate::transcripts::{self, Limits, Transcript};
use crate::version::VersionInfo;
use crate::web;

/// Why the daemon could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A ZeroMQ socket could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The HTTP listener (metrics, page) could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The socket error.
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
    /// `escalation.negative` names classes the model does not have.
    #[error("escalation.negative: the model has no class {0} (it has {1})")]
    Signals(String, String),
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
    /// Cluster mode could not start (NATS unreachable, JetStream refused).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// What a running daemon exposes to its embedder (tests use it; `run` drives it).
pub struct Running {
    cancel: CancellationToken,
    /// Stops the HTTP listener, after the events publisher (whose last messages the page's
    /// feeds still send).
    web_stopped: CancellationToken,
    fatal: Fatal,
    metrics: Arc<Metrics>,
    events: PublisherHandle,
    tap: Option<PublisherHandle>,
    consumer: tokio::task::JoinHandle<()>,
    ingest: Arc<Ingest>,
    threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
    ctx: zmq::Context,
    shutdown_timeout: Duration,
    cluster: Option<Member>,
}

/// A cluster node's parts that outlive the drain: its loop (leases), the writers of events
/// and checkpoints into JetStream, and the sweeper of held segments.
struct Member {
    node: crate::cluster::node::Node,
    events: tokio::task::JoinHandle<()>,
    checkpoints: Option<tokio::task::JoinHandle<()>>,
    give_up: CancellationToken,
    sweeper: tokio::task::JoinHandle<()>,
}

/// What cluster mode adds before the sockets and threads start.
struct Joining {
    js: crate::cluster::Js,
    cfg: crate::cluster::ClusterConfig,
    acks: Arc<crate::cluster::pump::Acks>,
    events_rx: mpsc::Receiver<crate::wire::Multipart>,
    tap_rx: Option<mpsc::Receiver<crate::wire::Multipart>>,
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

/// What start-up loads before binding anything: the model (with its text encoder) and the
/// vision networks. `summerd validate` loads them the same way, so it refuses what start-up
/// would refuse (a weights file that fails its sha256, a model that reads features the daemon
/// does not make, a CUDA device that is not there).
pub struct Loaded {
    /// The engine, when a model is configured.
    pub engine: Option<Engine>,
    /// The vision stage as every stream runs it, when it runs.
    pub vision: Option<crate::ingest::VisionIngest>,
}

/// Load and check the model and the vision networks on the configured device (blocking).
pub fn preflight(cfg: &Config) -> Result<Loaded, DaemonError> {
    let Some(dir) = &cfg.model_path else {
        return Ok(Loaded {
            engine: None,
            vision: None,
        });
    };
    let device = cfg.device.resolve()?;
    tch::set_num_threads(cfg.inference.threads as i32);
    let te = &cfg.text_encoder;
    let engine = Engine::load(dir, &te.dir, te.max_tokens, te.precision, device)?;
    tracing::info!(model = engine.name(), device = ?device, text_matmul = ?engine.text_matmul(), "Loaded the model");
    let unknown = cfg.escalation.unknown_classes(engine.classes());
    if cfg.escalation.enabled && !unknown.is_empty() {
        return Err(DaemonError::Signals(
            unknown.join(", "),
            engine.classes().join(", "),
        ));
    }
    // The vision stage serves the events, so it runs only with a model; its networks are
    // loaded once and shared by every stream.
    let vision = match &cfg.vision {
        Some(v) => {
            let models = crate::vision::stage::VisionModels::load(v, device)?;
            tracing::info!(device = ?device, min_face = v.mtcnn.min_face, detect_every = v.detect_every, "Loaded the vision stage");
            Some(crate::ingest::VisionIngest {
                models: crate::vision::stage::SharedModels::new(models),
                settings: v.clone(),
            })
        }
        None => None,
    };
    if engine.uses_visual() && vision.is_none() {
        tracing::warn!(
            model = engine.name(),
            "The model reads faces but the vision stage is off ([vision] enabled = false): \
             every utterance is scored with its face absent"
        );
    }
    Ok(Loaded {
        engine: Some(engine),
        vision,
    })
}

/// Events that may wait for NATS in cluster mode (about 600 bytes each: at most ~160 MB, some
/// two hours of 150 calls' events).
const EVENTS_WAITING_FOR_NATS: usize = 1 << 18;

/// How far a page's event feed may fall behind before it is told it lost events.
const FEED_LAG: usize = 4096;

/// The bound sockets and the threads started so far.
struct Wiring {
    ctx: zmq::Context,
    metrics: Arc<Metrics>,
    /// The live page's event feed, when it is served.
    feed: Option<Arc<Feed>>,
    threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
    beats: Vec<Heartbeat>,
    cancel: CancellationToken,
}

impl Wiring {
    fn thread(&mut self, name: &'static str, join: std::thread::JoinHandle<()>, hb: Heartbeat) {
        self.threads.push((name, join));
        self.beats.push(hb);
    }
}

/// Bind everything and start serving. Returns once initialised (sockets bound, threads
/// running); errors name the socket or address that failed.
pub async fn start(cfg: &Config) -> Result<Running, DaemonError> {
    // The model first: a missing or mismatched model fails before any socket is bound.
    let loaded = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || preflight(&cfg))
            .await
            .expect("loading the models does not panic")?
    };
    let info = VersionInfo::libraries();
    let labels = metrics::LabelSets {
        reject_reasons: &transcripts::Reject::REASONS,
        utterance_outcomes: infer::core::Outcome::LABELS,
        signal_kinds: &crate::events::Signal::NAMES,
    };
    let mut w = Wiring {
        ctx: zmq::Context::new(),
        metrics: Arc::new(Metrics::new(&info, labels)),
        feed: cfg
            .web
            .as_ref()
            .filter(|w| w.page)
            .map(|w| Arc::new(Feed::new(w.history, FEED_LAG))),
        threads: Vec::new(),
        beats: Vec::new(),
        cancel: CancellationToken::new(),
    };
    let mut mirrors = None;
    let mut joining = match &cfg.cluster {
        Some(cl) => {
            let client = cl.connect().await?;
            let js = crate::cluster::Js::open_patiently(
                client,
                crate::cluster::Layout::of(cl),
                Duration::from_secs(30),
            )
            .await?;
            tracing::info!(node = %cl.node, urls = %cl.urls.join(","), "Joined the cluster");
            // Events wait here while NATS is away (their segments stay unacknowledged): a
            // bounded channel allocates as it fills, so the bound is only the worst case.
            let (etx, erx) = mpsc::channel(cfg.events.queue.max(EVENTS_WAITING_FOR_NATS));
            let (ttx, trx) = if cl.audio_subjects {
                let (a, b) = mpsc::channel(cfg.audio_tap.queue);
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            mirrors = Some((etx, ttx));
            Some(Joining {
                js,
                cfg: cl.clone(),
                acks: Arc::new(crate::cluster::pump::Acks::new(cfg.model_path.is_some())),
                events_rx: erx,
                tap_rx: trx,
            })
        }
        None => None,
    };
    let (pull, events, tap, listener) = bind_sockets(cfg, &mut w, mirrors).await?;
    let registry = Arc::new(Registry::new());
    let ingest = Arc::new(Ingest::new(
        IngestSettings {
            pipelines_dir: cfg.pipelines_dir.clone(),
            config: cfg.ingest.clone(),
            tap_chunk_ms: tap.as_ref().map(|_| cfg.audio_tap.chunk_ms),
            acoustic: loaded.engine.as_ref().map(|e| crate::acoustic::Settings {
                history_frames: (cfg.inference.audio_history.0.as_secs_f64() * 100.0) as usize,
                band: e.audio_band(),
                ..Default::default()
            }),
            vision: loaded.vision,
        },
        registry.clone(),
        events.clone(),
        tap.clone(),
        w.metrics.clone(),
    ));
    if let Some(ep) = &cfg.control {
        let spec = SocketSpec {
            name: "control",
            endpoint: ep.clone(),
            curve: None,
        };
        let sock = bus::bind(&w.ctx, &spec, zmq::REP, |_| Ok(()))?;
        let hb = Heartbeat::new("zmq-control");
        let join = crate::control::spawn(sock, ingest.clone(), hb.clone(), w.cancel.clone())?;
        w.thread("zmq-control", join, hb);
    }
    for s in &cfg.streams {
        ingest.attach(s.clone())?;
    }
    let fatal = Fatal::default();
    let restores = joining
        .as_ref()
        .map(|_| Arc::new(std::sync::Mutex::new(Default::default())));
    let (ckpt_tx, ckpt_rx) = mpsc::channel(1024);
    let link = restores.clone().map(|restores| infer::CheckpointLink {
        restores,
        out: ckpt_tx,
    });
    let (consumer, tx) = start_inference(
        cfg,
        &mut w,
        pull,
        loaded.engine,
        &events,
        registry.clone(),
        &fatal,
        link,
    )?;
    let cluster = joining.take().map(|j| {
        join_cluster(
            cfg,
            j,
            ckpt_rx,
            tx,
            restores.filter(|_| cfg.model_path.is_some()),
            ingest.clone(),
            registry.clone(),
            w.metrics.clone(),
        )
    });
    let beats = Arc::new(std::mem::take(&mut w.beats));
    let web_stopped = CancellationToken::new();
    if let (Some(listener), Some(settings)) = (listener, &cfg.web) {
        let server = web::Server::new(
            w.metrics.clone(),
            beats.clone(),
            registry,
            w.feed.clone(),
            settings.clone(),
            web_stopped.clone(),
        );
        tokio::spawn(web::serve(listener, Arc::new(server)));
    }
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(period, beats, w.cancel.clone()));
    }
    events.publish(LifecycleEvent::daemon(Lifecycle::DaemonUp, None).to_message());
    w.metrics.set_ready(true);
    Ok(Running {
        cancel: w.cancel,
        web_stopped,
        fatal,
        metrics: w.metrics,
        events,
        tap,
        consumer,
        ingest,
        threads: w.threads,
        ctx: w.ctx,
        shutdown_timeout: cfg.shutdown_timeout(),
        cluster,
    })
}

/// Start the node's loop and the JetStream writers.
#[allow(clippy::too_many_arguments)]
fn join_cluster(
    cfg: &Config,
    j: Joining,
    checkpoints: mpsc::Receiver<(String, crate::infer::engine::Checkpoint)>,
    tx: mpsc::Sender<Transcript>,
    restores: Option<
        Arc<std::sync::Mutex<std::collections::HashMap<String, crate::infer::engine::Checkpoint>>>,
    >,
    ingest: Arc<Ingest>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> Member {
    use crate::cluster::{node, pump};
    let give_up = CancellationToken::new();
    let events = tokio::spawn(pump::publish_events(
        j.js.js.clone(),
        j.events_rx,
        j.acks.clone(),
        j.cfg.node.clone(),
        metrics.clone(),
        give_up.clone(),
    ));
    if let Some(rx) = j.tap_rx {
        tokio::spawn(pump::publish_tap(j.js.client.clone(), rx));
    }
    let held: pump::HeldStreams = Default::default();
    let checkpoints = restores.as_ref().map(|_| {
        tokio::spawn(pump::write_checkpoints(
            j.js.clone(),
            checkpoints,
            j.cfg.node.clone(),
            held.clone(),
            j.acks.clone(),
        ))
    });
    let sweeper = {
        let acks = j.acks.clone();
        let stop = give_up.clone();
        // Held segments are touched well within ack_wait, so none is delivered again while
        // this node works on it.
        let progress = j.cfg.ack_wait.0 / 2;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((progress / 2).max(Duration::from_millis(100)));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => acks.sweep(pump::HOLD, progress).await,
                }
            }
        })
    };
    let pump_ctx = pump::PumpCtx {
        js: j.js.js.clone(),
        limits: Limits::from(&cfg.transcripts),
        registry,
        metrics,
        tx,
        acks: j.acks.clone(),
        ack_wait: j.cfg.ack_wait.0,
    };
    let node = node::Node::start(node::NodeCtx {
        js: j.js,
        cfg: j.cfg,
        ingest: Arc::new(std::sync::Mutex::new(Some(ingest))),
        pump: Arc::new(std::sync::Mutex::new(Some(pump_ctx))),
        acks: j.acks,
        restores,
        held,
    });
    Member {
        node,
        events,
        checkpoints,
        give_up,
        sweeper,
    }
}

/// Where the events and tap publishers also hand every message in cluster mode.
type Mirrors = (
    mpsc::Sender<crate::wire::Multipart>,
    Option<mpsc::Sender<crate::wire::Multipart>>,
);

type Bound = (
    zmq::Socket,
    PublisherHandle,
    Option<PublisherHandle>,
    Option<tokio::net::TcpListener>,
);

/// Bind the transcript, events and tap sockets and the metrics listener; start the ZAP
/// handler and the publisher threads.
async fn bind_sockets(
    cfg: &Config,
    w: &mut Wiring,
    mirrors: Option<Mirrors>,
) -> Result<Bound, DaemonError> {
    let (events_mirror, tap_mirror) = match mirrors {
        Some((e, t)) => (Some(("events_nats", e)), t.map(|t| ("audio_tap_nats", t))),
        None => (None, None),
    };
    let s = &cfg.sockets;
    // The ZAP handler must exist before the first CURVE socket is bound.
    let authorized = [Some(&s.transcripts), Some(&s.events), s.audio_tap.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|s| s.curve.as_ref()?.authorized.clone());
    if let Some(keys) = authorized {
        let join = bus::spawn_zap(&w.ctx, keys, w.metrics.clone())?;
        w.threads.push(("zmq-zap", join));
    }
    let t = &cfg.transcripts;
    // libzmq refuses (and disconnects) anything larger than this at the transport level;
    // between max_message_bytes and this, messages are received and counted as oversized.
    let transport_limit = (t.max_message_bytes as i64 * 4).max(1 << 20);
    let pull = bus::bind(&w.ctx, &s.transcripts, zmq::PULL, |sock| {
        sock.set_rcvhwm(t.rcvhwm)?;
        sock.set_maxmsgsize(transport_limit)
    })?;
    let e = &cfg.events;
    let events_sock = bus::bind(&w.ctx, &s.events, zmq::PUB, |sock| {
        sock.set_sndhwm(e.sndhwm)
    })?;
    let tap_sock = match &s.audio_tap {
        Some(spec) => {
            let hwm = cfg.audio_tap.sndhwm;
            Some(bus::bind(&w.ctx, spec, zmq::PUB, |sock| {
                sock.set_sndhwm(hwm)
            })?)
        }
        None => None,
    };
    for spec in [Some(&s.transcripts), Some(&s.events), s.audio_tap.as_ref()]
        .into_iter()
        .flatten()
        .filter(|s| s.curve.is_some())
    {
        let join = bus::spawn_monitor(&w.ctx, spec.name, w.metrics.clone())?;
        w.threads.push(("zmq-monitor", join));
    }
    let listener = match cfg.metrics {
        Some(addr) => Some(
            web::bind(addr)
                .await
                .map_err(|source| DaemonError::MetricsBind { addr, source })?,
        ),
        None => None,
    };
    let linger = cfg.shutdown_timeout();
    let hb = Heartbeat::new("zmq-events");
    let settings = PublisherSettings {
        queue: e.queue,
        linger,
        feed: w.feed.clone(),
        mirror: events_mirror,
    };
    let (events, join) = bus::spawn_publisher(
        "events",
        events_sock,
        settings,
        w.metrics.clone(),
        hb.clone(),
    )?;
    w.thread("zmq-events", join, hb);
    let tap = match tap_sock {
        Some(sock) => {
            let hb = Heartbeat::new("zmq-audio_tap");
            let settings = PublisherSettings {
                queue: cfg.audio_tap.queue,
                linger,
                feed: None,
                mirror: tap_mirror,
            };
            let (h, join) =
                bus::spawn_publisher("audio_tap", sock, settings, w.metrics.clone(), hb.clone())?;
            w.thread("zmq-audio_tap", join, hb);
            Some(h)
        }
        None => None,
    };
    Ok((pull, events, tap, listener))
}

/// The transcript receiver, and with a model the consumer task and the model worker. Also
/// returns a sender onto the transcript channel (cluster mode's pumps).
#[allow(clippy::too_many_arguments)]
fn start_inference(
    cfg: &Config,
    w: &mut Wiring,
    pull: zmq::Socket,
    engine: Option<Engine>,
    events: &PublisherHandle,
    registry: Arc<Registry>,
    fatal: &Fatal,
    checkpoints: Option<infer::CheckpointLink>,
) -> Result<(tokio::task::JoinHandle<()>, mpsc::Sender<Transcript>), DaemonError> {
    let t = &cfg.transcripts;
    let (tx, rx) = mpsc::channel(t.queue);
    let hb = Heartbeat::new("zmq-transcripts");
    let join = transcripts::spawn_receiver(
        pull,
        Limits::from(t),
        registry.clone(),
        w.metrics.clone(),
        hb.clone(),
        tx.clone(),
        w.cancel.clone(),
    )?;
    w.thread("zmq-transcripts", join, hb);
    let Some(engine) = engine else {
        return Ok((tokio::spawn(consume(rx)), tx));
    };
    let inf = &cfg.inference;
    let (wtx, wrx) = std::sync::mpsc::sync_channel(inf.queue);
    let hb = Heartbeat::new("model-worker");
    let join = infer::spawn_worker(
        engine,
        wrx,
        events.clone(),
        w.metrics.clone(),
        hb.clone(),
        infer::WorkerPolicy {
            max_batch: inf.max_batch,
            max_wait: inf.max_wait.0,
            max_failed_batches: inf.max_failed_batches,
            fatal: fatal.clone(),
            checkpoints,
        },
        Tracker::new(cfg.escalation.clone()),
    )
    .map_err(|e| DaemonError::Thread("model-worker", e))?;
    w.thread("model-worker", join, hb);
    let ctx = infer::ConsumerCtx {
        cfg: inf.clone(),
        publish_text: cfg.events.publish_text,
        streams: registry,
        metrics: w.metrics.clone(),
        clock: infer::unix_now,
    };
    Ok((tokio::spawn(infer::consume(rx, wtx, ctx)), tx))
}

impl DaemonError {
    /// Whether the configuration is at fault (a model, stream or device it names that
    /// cannot be used): `summerd run` and `summerd validate` exit 2 on these.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DaemonError::Attach(_)
                | DaemonError::Model(_)
                | DaemonError::Vision(_)
                | DaemonError::Signals(..)
        )
    }
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
            web_stopped,
            fatal: _,
            metrics,
            events,
            tap,
            consumer,
            ingest,
            threads,
            mut ctx,
            shutdown_timeout,
            mut cluster,
        } = self;
        let deadline = Instant::now() + shutdown_timeout;
        metrics.set_ready(false);
        if let Some(m) = &cluster {
            // No more segments from NATS and no more claims; the leases are still renewed
            // until everything in flight is published.
            m.node.stop_input();
        }
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
        // The last conversation checkpoints, before another node may take the streams.
        if let Some(h) = cluster.as_mut().and_then(|m| m.checkpoints.take()) {
            let _ = tokio::time::timeout_at(deadline.into(), h).await;
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
        for (name, join) in threads
            .into_iter()
            .filter(|(n, _)| !bus::CONTEXT_THREADS.contains(n))
        {
            let joined = tokio::task::spawn_blocking(move || join.join());
            if tokio::time::timeout_at(deadline.into(), joined)
                .await
                .is_err()
            {
                return Err(DaemonError::DrainTimeout(shutdown_timeout, name));
            }
        }
        // Cluster mode: the events still on their way to JetStream are stored (and their
        // segments acknowledged), then every stream is handed back.
        if let Some(m) = cluster {
            let Member {
                node,
                events,
                checkpoints: _,
                give_up,
                sweeper,
            } = m;
            // Half a second before the limit, the events writer stops retrying what NATS
            // refuses, so that the leases can still be handed back in time.
            let stop_retrying = {
                let give_up = give_up.clone();
                let at = deadline
                    .checked_sub(Duration::from_millis(500))
                    .unwrap_or(deadline);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    give_up.cancel();
                })
            };
            let stored = tokio::time::timeout_at(deadline.into(), events).await;
            give_up.cancel();
            stop_retrying.abort();
            let _ = sweeper.await;
            let released = tokio::time::timeout_at(deadline.into(), node.release()).await;
            if released.is_err() {
                return Err(DaemonError::DrainTimeout(
                    shutdown_timeout,
                    "handing the streams back to the cluster",
                ));
            }
            if stored.is_err() {
                return Err(DaemonError::DrainTimeout(
                    shutdown_timeout,
                    "the events writer to JetStream",
                ));
            }
        }
        // The publishers have stopped: the page's feeds send what they still hold and end.
        web_stopped.cancel();
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
        transcripts = %cfg.sockets.transcripts.endpoint.to_zmq(),
        events = %cfg.sockets.events.endpoint.to_zmq(),
        audio_tap = %cfg.sockets.audio_tap.as_ref().map(|s| s.endpoint.to_zmq()).unwrap_or_else(|| "off".into()),
        metrics = %cfg.metrics.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        streams = cfg.streams.len(),
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
