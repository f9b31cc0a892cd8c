//! Per-utterance inference in the running daemon.
//!
//! ```text
//!  transcripts (validated) --bounded mpsc--> [consumer task]
//!      policy: speaker role excluded by `infer_speakers`? dropped before any feature
//!      assembler: wait for the stream's descriptors to cover the segment's end (<= feature_wait)
//!  --sync_channel(queue)--> [model worker thread: owns libtorch]
//!      functionals of the span, text vectors, per-speaker normalisation, conversation window,
//!      one forward pass for every pending utterance of every stream (<= max_batch, <= max_wait)
//!  --> events publisher (emotion.<stream>)
//! ```
//!
//! The consumer never blocks the runtime: it hands work on with `try_send`, keeps what does
//! not fit in a backlog, and stops reading transcripts while the backlog is full (so the
//! bounded transcript channel, then the PULL socket's high-water mark, push back).

pub mod assembler;
pub mod engine;
pub mod replay;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::bus::{Heartbeat, PublisherHandle};
use crate::config::InferenceConfig;
use crate::daemon::Fatal;
use crate::ingest::Ingest;
use crate::ingest::features::{AudioFeatures, VisualFeatures};
use crate::metrics::Metrics;
use crate::transcripts::{Clock, StreamSet, Transcript};
use assembler::{Assembler, Offer, Ready};
use engine::{Engine, Utterance};

/// What the model worker receives.
pub enum WorkerMsg {
    /// Score an utterance (its audio span is read from `audio` first, its face pooled from
    /// `visual`).
    Job(
        Box<Utterance>,
        Option<Arc<AudioFeatures>>,
        Option<Arc<VisualFeatures>>,
    ),
    /// A stream was detached: free its conversation.
    Forget(String),
}

/// How the model worker batches and when it gives up.
pub struct WorkerPolicy {
    /// Most utterances in one forward pass.
    pub max_batch: usize,
    /// Longest wait for a batch to fill.
    pub max_wait: Duration,
    /// Failed forward passes in a row before the worker raises `fatal` and stops.
    pub max_failed_batches: u32,
    /// Raised on a panic or on too many failures: the daemon drains and exits non-zero, and
    /// systemd restarts it (a half-working daemon that silently publishes nothing would be
    /// worse: its streams look healthy).
    pub fatal: Fatal,
}

/// Fault injection for the fault tests, from `SUMMERD_FAILPOINT`: `model-worker-panic` (the
/// first forward pass panics) or `model-worker-error` (every forward pass fails).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failpoint {
    None,
    Panic,
    Error,
}

impl Failpoint {
    fn from_env() -> Failpoint {
        match std::env::var("SUMMERD_FAILPOINT").as_deref() {
            Ok("model-worker-panic") => Failpoint::Panic,
            Ok("model-worker-error") => Failpoint::Error,
            _ => Failpoint::None,
        }
    }
}

/// Start the model worker thread. It ends when every sender is gone, after finishing what
/// was sent, or after raising `policy.fatal` (a panic, or too many failed passes in a row).
pub fn spawn_worker(
    engine: Engine,
    rx: Receiver<WorkerMsg>,
    events: PublisherHandle,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
    policy: WorkerPolicy,
) -> std::io::Result<JoinHandle<()>> {
    let failpoint = Failpoint::from_env();
    if failpoint != Failpoint::None {
        tracing::warn!("SUMMERD_FAILPOINT is set: the model worker will fail on purpose");
    }
    std::thread::Builder::new()
        .name("model-worker".into())
        .spawn(move || {
            let fatal = policy.fatal.clone();
            let run = std::panic::AssertUnwindSafe(|| {
                work(
                    engine, rx, &events, &metrics, &heartbeat, &policy, failpoint,
                )
            });
            let reason = match std::panic::catch_unwind(run) {
                Ok(None) => return,
                Ok(Some(reason)) => reason,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("no message");
                    format!("the model worker panicked: {msg}")
                }
            };
            tracing::error!(reason = %reason, "The model worker stopped");
            fatal.raise(reason);
        })
}

/// The worker's loop. None: every sender is gone; Some: why it gave up.
fn work(
    mut engine: Engine,
    rx: Receiver<WorkerMsg>,
    events: &PublisherHandle,
    metrics: &Metrics,
    heartbeat: &Heartbeat,
    policy: &WorkerPolicy,
    failpoint: Failpoint,
) -> Option<String> {
    let (max_batch, max_wait) = (policy.max_batch, policy.max_wait);
    let mut failed = 0u32;
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        heartbeat.beat();
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        };
        take(&mut engine, &mut jobs, first);
        let mut open = true;
        let deadline = Instant::now() + max_wait;
        while jobs.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => take(&mut engine, &mut jobs, m),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !jobs.is_empty() {
            if failpoint == Failpoint::Panic {
                panic!("SUMMERD_FAILPOINT=model-worker-panic");
            }
            let ok = run_batch(&mut engine, &mut jobs, events, metrics, failpoint);
            failed = if ok { 0 } else { failed + 1 };
            if failed >= policy.max_failed_batches {
                return Some(format!(
                    "{failed} forward passes failed in a row (inference.max_failed_batches)"
                ));
            }
        }
        if !open {
            return None;
        }
    }
}

/// Queue a job (reading its audio span now), or apply a forget (dropping the stream's jobs
/// not yet run).
fn take(engine: &mut Engine, jobs: &mut Vec<Utterance>, msg: WorkerMsg) {
    match msg {
        WorkerMsg::Job(mut u, audio, visual) => {
            if let Some(f) = audio {
                u.audio = f
                    .functionals(u.start, u.end)
                    .ok()
                    .map(|f| f.values.to_vec());
            }
            // The frames processed so far: the face never holds an event back (at 5 frames
            // a second, the span's last frame may still be in the vision stage).
            // A stream that never showed a frame (audio only) gets no face field at all.
            u.face = visual
                .filter(|v| v.covered_until().is_some())
                .map(|v| v.pool(u.start, u.end));
            jobs.push(*u);
        }
        WorkerMsg::Forget(stream) => {
            jobs.retain(|u| u.stream != stream);
            engine.forget(&stream);
        }
    }
}

/// One forward pass over `jobs` (then cleared); false when it failed.
fn run_batch(
    engine: &mut Engine,
    jobs: &mut Vec<Utterance>,
    events: &PublisherHandle,
    metrics: &Metrics,
    failpoint: Failpoint,
) -> bool {
    let t0 = Instant::now();
    let result = if failpoint == Failpoint::Error {
        Err(engine::EngineError::Failpoint)
    } else {
        engine.infer(jobs)
    };
    let ok = result.is_ok();
    metrics.inference_batch(jobs.len(), t0.elapsed().as_secs_f64());
    match result {
        Ok(evs) => {
            for (mut e, u) in evs.into_iter().zip(jobs.iter()) {
                let latency = u.arrival.elapsed();
                e.latency_ms = latency.as_secs_f64() * 1e3;
                if !e.modalities.audio {
                    metrics.utterance("audio_missing");
                }
                metrics.event_latency(latency.as_secs_f64());
                metrics.utterance(if e.provisional {
                    "provisional_published"
                } else {
                    "published"
                });
                events.publish(e.to_message());
            }
        }
        Err(e) => {
            for _ in jobs.iter() {
                metrics.utterance("error");
            }
            tracing::error!(error = %e, utterances = jobs.len(), "Inference failed; these utterances get no event");
        }
    }
    jobs.clear();
    ok
}

/// What the consumer needs besides its channels.
pub struct ConsumerCtx {
    /// Settings.
    pub cfg: InferenceConfig,
    /// `events.publish_text` (a stream may override it).
    pub publish_text: bool,
    /// The streams (specs, descriptors).
    pub ingest: Arc<Ingest>,
    /// The attached stream ids.
    pub known: StreamSet,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The transcript consumer: policy, assembler, hand-off to the model worker. Ends when the
/// transcript channel closes, after releasing everything still pending.
pub async fn consume(
    mut rx: mpsc::Receiver<Transcript>,
    worker: SyncSender<WorkerMsg>,
    ctx: ConsumerCtx,
) {
    let cfg = &ctx.cfg;
    let mut asm = Assembler::new(cfg.feature_wait.0, cfg.provisional);
    let mut backlog: VecDeque<WorkerMsg> = VecDeque::new();
    let mut open = true;
    let mut last_sweep = Instant::now();
    let tick = Duration::from_millis(5);
    while open || asm.pending() > 0 || !backlog.is_empty() {
        let room = backlog.len() < cfg.queue;
        let wait = if asm.pending() > 0 || !backlog.is_empty() {
            tick
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            m = rx.recv(), if open && room => match m {
                Some(t) => offer(&mut asm, t, &ctx),
                None => open = false,
            },
            _ = tokio::time::sleep(wait) => {}
        }
        // Draining too: the media still flows, so each segment waits for its descriptors as
        // usual (at most feature_wait).
        let ready = asm.poll(Instant::now(), |s| {
            ctx.ingest.features(s).and_then(|f| f.covered_until())
        });
        for r in ready {
            match job(r, &ctx) {
                Some(j) => backlog.push_back(j),
                None => ctx.metrics.utterance("forgotten"),
            }
        }
        // Detached streams: free their state here and in the worker.
        if last_sweep.elapsed() > Duration::from_millis(500) {
            last_sweep = Instant::now();
            let gone: Vec<String> = {
                let known = ctx.known.read().expect("stream set lock");
                asm.streams()
                    .filter(|s| !known.contains(*s))
                    .map(str::to_string)
                    .collect()
            };
            for s in gone {
                asm.forget(&s);
                backlog.push_back(WorkerMsg::Forget(s));
            }
        }
        while let Some(m) = backlog.pop_front() {
            match worker.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    backlog.push_front(m);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!("The model worker has stopped; utterances get no events");
                    backlog.clear();
                    break;
                }
            }
        }
        ctx.metrics
            .set_inference_queue(backlog.len() + asm.pending());
    }
}

/// Apply the stream's policy and offer a segment to the assembler.
fn offer(asm: &mut Assembler, mut t: Transcript, ctx: &ConsumerCtx) {
    let Some(view) = ctx.ingest.view(&t.stream) else {
        ctx.metrics.utterance("forgotten");
        return;
    };
    let role = view.spec.speakers.get(&t.speaker).unwrap_or(&t.speaker);
    if !view.spec.infer_speakers.is_empty() && !view.spec.infer_speakers.contains(role) {
        // Nothing of this speaker is computed: no text vector, no functionals, no inference.
        ctx.metrics.utterance("excluded");
        return;
    }
    if t.clock == Clock::Unix {
        // Wall clock -> media time: the newest media is "now" on the stream's timeline.
        let lag = unix_now() - view.media_end;
        t.start -= lag;
        t.end -= lag;
        t.clock = Clock::Media;
    }
    let outcome = asm.offer(t, Instant::now());
    let label = match outcome {
        Offer::Queued | Offer::Provisional | Offer::Replaced => return,
        Offer::OutOfOrder => "out_of_order",
        Offer::Overlapping => "overlapping",
        Offer::Duplicate => "duplicate",
        Offer::PartialIgnored => "partial_ignored",
    };
    ctx.metrics.utterance(label);
}

fn job(r: Ready, ctx: &ConsumerCtx) -> Option<WorkerMsg> {
    let view = ctx.ingest.view(&r.segment.stream)?;
    if !r.covered {
        ctx.metrics.utterance("feature_wait_expired");
    }
    let t = r.segment;
    Some(WorkerMsg::Job(
        Box::new(Utterance {
            publish_text: view.spec.publish_text.unwrap_or(ctx.publish_text),
            stream: t.stream,
            seq: t.seq,
            speaker: t.speaker,
            start: t.start,
            end: t.end,
            text: t.text,
            embedding: t.embedding,
            audio: None,
            face: None,
            provisional: r.provisional,
            arrival: r.arrival,
        }),
        view.features,
        view.visual,
    ))
}
