//! Per-utterance inference in the running daemon: two thin drivers of the utterance
//! [`core`].
//!
//! ```text
//!  transcripts (validated) --bounded mpsc--> [consumer task]   Core::offer, Core::poll
//!      policy: speaker role excluded by `infer_speakers`? dropped before any feature
//!      assembler: wait for the stream's descriptors to cover the segment's end (<= feature_wait)
//!  --sync_channel(queue)--> [model worker thread: owns libtorch]   Job::resolve, score
//!      functionals of the span, text vectors, per-speaker normalisation, conversation window,
//!      one forward pass for every pending utterance of every stream (<= max_batch, <= max_wait)
//!  --> events publisher (emotion.<stream>)
//! ```
//!
//! The consumer never blocks the runtime: it hands work on with `try_send`, keeps what does
//! not fit in a backlog, and stops reading transcripts while the backlog is full (so the
//! bounded transcript channel, then the PULL socket's high-water mark, push back). It sleeps
//! until a transcript arrives, a stream's descriptors grow, or the next segment's wait runs out.

pub mod assembler;
pub mod core;
pub mod engine;
pub mod replay;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use self::core::{Core, Job, Outcome};
use crate::bus::PublisherHandle;
use crate::events::{EmotionEvent, SignalEvent};
use crate::health::{Fatal, Heartbeat};
use crate::metrics::Metrics;
use crate::settings::{Checker, HumanDuration};
use crate::signals::Tracker;
use crate::streams::Registry;
use crate::transcripts::Transcript;
use engine::{Engine, Utterance};

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
    /// Utterances queued for the model worker; beyond it ready ones wait in the consumer's
    /// backlog, and while that is as long, no transcript is read (never dropped silently).
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

impl InferenceConfig {
    /// Check the table.
    pub fn check(&self, c: &mut Checker) {
        c.duration(
            "inference.feature_wait",
            self.feature_wait.0,
            Duration::ZERO,
            Duration::from_secs(30),
        );
        c.range("inference.max_batch", self.max_batch, 1, 1024);
        c.duration(
            "inference.max_wait",
            self.max_wait.0,
            Duration::ZERO,
            Duration::from_secs(1),
        );
        c.range("inference.queue", self.queue, 1, 1_000_000);
        c.duration(
            "inference.audio_history",
            self.audio_history.0,
            Duration::from_secs(10),
            Duration::from_secs(3600),
        );
        c.range("inference.threads", self.threads, 1, 256);
        c.range(
            "inference.max_failed_batches",
            self.max_failed_batches,
            1,
            1_000_000,
        );
    }
}

/// What the model worker receives.
pub enum WorkerMsg {
    /// Score an utterance (its audio span and face are read when it is taken).
    Job(Box<Job>),
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
    /// Cluster mode: conversations to continue, and where each stream's state goes after a
    /// forward pass.
    pub checkpoints: Option<CheckpointLink>,
}

/// How the model worker continues conversations begun on another node and hands its own on
/// (cluster mode).
#[derive(Clone)]
pub struct CheckpointLink {
    /// Checkpoints of streams this node has just claimed, taken when the stream's first
    /// utterance reaches a worker that has no conversation for it.
    pub restores: Arc<std::sync::Mutex<std::collections::HashMap<String, engine::Checkpoint>>>,
    /// Each stream's state after a forward pass that added final utterances to it (dropped
    /// when the writer is behind: a later state replaces it).
    pub out: mpsc::Sender<(String, engine::Checkpoint)>,
}

/// Fault injection for the fault tests, from `SUMMERD_FAILPOINT`: `model-worker-panic` (the
/// first forward pass panics) or `model-worker-error` (every forward pass fails). Compiled in
/// only with the `failpoints` feature, which the test command enables; a release build
/// ignores the variable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failpoint {
    None,
    Panic,
    Error,
}

impl Failpoint {
    #[cfg(feature = "failpoints")]
    fn from_env() -> Failpoint {
        match std::env::var("SUMMERD_FAILPOINT").as_deref() {
            Ok("model-worker-panic") => Failpoint::Panic,
            Ok("model-worker-error") => Failpoint::Error,
            _ => Failpoint::None,
        }
    }

    #[cfg(not(feature = "failpoints"))]
    fn from_env() -> Failpoint {
        Failpoint::None
    }
}

/// Start the model worker thread. It ends when every sender is gone, after finishing what
/// was sent, or after raising `policy.fatal` (a panic, or too many failed passes in a row).
///
/// Every final event goes through `signals` (its speaker's smoothed state, escalation
/// signals) before it is published.
pub fn spawn_worker(
    engine: Engine,
    rx: Receiver<WorkerMsg>,
    events: PublisherHandle,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
    policy: WorkerPolicy,
    signals: Tracker,
) -> std::io::Result<JoinHandle<()>> {
    let failpoint = Failpoint::from_env();
    if failpoint != Failpoint::None {
        tracing::warn!("SUMMERD_FAILPOINT is set: the model worker will fail on purpose");
    }
    std::thread::Builder::new()
        .name("model-worker".into())
        .spawn(move || {
            let fatal = policy.fatal.clone();
            let mut out = Output {
                events,
                metrics,
                signals,
            };
            let run = std::panic::AssertUnwindSafe(|| {
                work(engine, rx, &mut out, &heartbeat, &policy, failpoint)
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

/// Where the model worker's results go.
struct Output {
    events: PublisherHandle,
    metrics: Arc<Metrics>,
    signals: Tracker,
}

impl Output {
    /// Publish a scored event, and the signal it decides.
    fn publish(&mut self, mut e: EmotionEvent) {
        for o in Outcome::of_event(&e) {
            self.metrics.utterance(o.label());
        }
        self.metrics.event_latency(e.latency_ms / 1e3);
        let signal = self.signals.observe(&mut e);
        self.events.publish(e.to_message());
        if let Some(s) = signal {
            self.signal(&s);
        }
    }

    /// Publish the event of an utterance already in its conversation again (after a
    /// handover), counted as a duplicate; the speaker's smoothed state has it already.
    fn publish_again(&mut self, e: EmotionEvent) {
        self.metrics.utterance(Outcome::Duplicate.label());
        self.events.publish(e.to_message());
    }

    fn signal(&self, s: &SignalEvent) {
        let kind = s.kind.name();
        tracing::info!(stream = %s.stream, speaker = %s.speaker, kind, level = s.level, "Call signal");
        self.metrics.signal(kind);
        self.events.publish(s.to_message());
    }

    /// A stream's conversation is gone: end its open episodes.
    fn forget(&mut self, stream: &str) {
        for s in self.signals.forget(stream) {
            self.signal(&s);
        }
    }
}

/// The worker's loop. None: every sender is gone; Some: why it gave up.
fn work(
    mut engine: Engine,
    rx: Receiver<WorkerMsg>,
    out: &mut Output,
    heartbeat: &Heartbeat,
    policy: &WorkerPolicy,
    failpoint: Failpoint,
) -> Option<String> {
    let (max_batch, max_wait) = (policy.max_batch, policy.max_wait);
    let mut failed = 0u32;
    let mut jobs = Vec::with_capacity(max_batch);
    // Final utterances already in their conversation, scored again without joining it.
    let mut again: Vec<(String, u64)> = Vec::new();
    loop {
        heartbeat.beat();
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        };
        let link = policy.checkpoints.as_ref();
        take(&mut engine, &mut jobs, first, out, link, &mut again);
        let mut open = true;
        let deadline = Instant::now() + max_wait;
        while jobs.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => take(&mut engine, &mut jobs, m, out, link, &mut again),
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
            // Streams whose state changed, and those with an utterance scored again (a new
            // checkpoint confirms that it is in the conversation).
            let mut finals: Vec<String> = jobs
                .iter()
                .filter(|u| {
                    !u.provisional || again.iter().any(|(s, q)| *s == u.stream && *q == u.seq)
                })
                .map(|u| u.stream.clone())
                .collect();
            finals.sort();
            finals.dedup();
            let ok = run_batch(&mut engine, &mut jobs, out, failpoint, &mut again);
            if let (true, Some(l)) = (ok, link) {
                for s in finals {
                    if let Some(cp) = engine.checkpoint(&s)
                        && l.out.try_send((s, cp)).is_err()
                    {
                        tracing::debug!(
                            "The checkpoint writer is behind; a later state replaces this one"
                        );
                    }
                }
            }
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

/// Queue a job (reading its audio span and face now), or apply a forget (dropping the
/// stream's jobs not yet run, counted as forgotten).
fn take(
    engine: &mut Engine,
    jobs: &mut Vec<Utterance>,
    msg: WorkerMsg,
    out: &mut Output,
    link: Option<&CheckpointLink>,
    again: &mut Vec<(String, u64)>,
) {
    match msg {
        WorkerMsg::Job(j) => {
            let u = j.resolve();
            if let Some(l) = link.filter(|_| !engine.has(&u.stream)) {
                let cp = l.restores.lock().expect("restores lock").remove(&u.stream);
                if let Some(cp) = cp {
                    match engine.restore(&u.stream, &cp) {
                        Ok(()) => {
                            tracing::info!(stream = %u.stream, utterances = cp.count, "Continuing the conversation from its checkpoint")
                        }
                        Err(e) => {
                            tracing::warn!(stream = %u.stream, error = %e, "Cannot continue the conversation; starting afresh")
                        }
                    }
                }
            }
            let mut u = u;
            if !u.provisional && engine.scored(&u.stream, u.seq) {
                if link.is_none() {
                    out.metrics.utterance(Outcome::Duplicate.label());
                    return;
                }
                // Delivered again after a handover, and already in the conversation the
                // checkpoint carried: the node that scored it may have died before its event
                // was stored. It is scored again without joining the conversation, and its
                // event goes out under the same message id (stored once).
                u.provisional = true;
                again.push((u.stream.clone(), u.seq));
            }
            jobs.push(u);
        }
        WorkerMsg::Forget(stream) => {
            let before = jobs.len();
            jobs.retain(|u| u.stream != stream);
            for _ in jobs.len()..before {
                out.metrics.utterance(Outcome::Forgotten.label());
            }
            again.retain(|(s, _)| *s != stream);
            engine.forget(&stream);
            out.forget(&stream);
        }
    }
}

/// One forward pass over `jobs` (then cleared); false when it failed.
fn run_batch(
    engine: &mut Engine,
    jobs: &mut Vec<Utterance>,
    out: &mut Output,
    failpoint: Failpoint,
    again: &mut Vec<(String, u64)>,
) -> bool {
    let metrics = out.metrics.clone();
    let t0 = Instant::now();
    let result = if failpoint == Failpoint::Error {
        Err(engine::EngineError::Failpoint)
    } else {
        core::score(engine, jobs)
    };
    let ok = result.is_ok();
    metrics.inference_batch(jobs.len(), t0.elapsed().as_secs_f64());
    match result {
        Ok(evs) => {
            for mut e in evs {
                let pos = again
                    .iter()
                    .position(|(s, q)| e.provisional && *s == e.stream && *q == e.seq);
                match pos {
                    Some(i) => {
                        again.swap_remove(i);
                        e.provisional = false;
                        out.publish_again(e);
                    }
                    None => out.publish(e),
                }
            }
        }
        Err(e) => {
            again.clear();
            for _ in jobs.iter() {
                metrics.utterance(Outcome::Error.label());
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
    /// The streams (specs, descriptors, faces).
    pub streams: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The wall clock, seconds since the Unix epoch ([`unix_now`] in the daemon).
    pub clock: fn() -> f64,
}

/// The wall clock, seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// While the model worker's queue is full, how often the consumer tries again.
const RETRY: Duration = Duration::from_millis(5);
/// How often detached streams are looked for.
const SWEEP: Duration = Duration::from_millis(500);

/// The transcript consumer: the core's policy and assembler, hand-off to the model worker.
/// Ends when the transcript channel closes, after releasing everything still pending.
pub async fn consume(
    mut rx: mpsc::Receiver<Transcript>,
    worker: SyncSender<WorkerMsg>,
    ctx: ConsumerCtx,
) {
    let cfg = &ctx.cfg;
    let mut core = Core::new(cfg.feature_wait.0, cfg.provisional, ctx.publish_text);
    let mut backlog: VecDeque<WorkerMsg> = VecDeque::new();
    let mut counted = Vec::new();
    let mut open = true;
    let mut last_sweep = Instant::now();
    let grown = ctx.streams.coverage();
    while open || core.pending() > 0 || !backlog.is_empty() {
        let room = backlog.len() < cfg.queue;
        // Sleep until the next segment's wait runs out, the next sweep, or (backlog) the next
        // try; a transcript or a stream's descriptors growing wakes it sooner.
        let mut until = last_sweep + SWEEP;
        if let Some(d) = core.next_deadline() {
            until = until.min(d);
        }
        if !backlog.is_empty() {
            until = until.min(Instant::now() + RETRY);
        }
        tokio::select! {
            m = rx.recv(), if open && room => match m {
                Some(t) => core.offer(t, &ctx.streams, Instant::now(), (ctx.clock)(), &mut counted),
                None => open = false,
            },
            _ = grown.notified(), if core.pending() > 0 => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        // A re-attached stream's conversation is forgotten before its first new utterance.
        backlog.extend(core.take_resets().into_iter().map(WorkerMsg::Forget));
        // Draining too: the media still flows, so each segment waits for its descriptors as
        // usual (at most feature_wait).
        let jobs = core.poll(&ctx.streams, Instant::now(), &mut counted);
        backlog.extend(jobs.into_iter().map(|j| WorkerMsg::Job(Box::new(j))));
        if last_sweep.elapsed() >= SWEEP {
            last_sweep = Instant::now();
            for s in core.forget_detached(&ctx.streams, &mut counted) {
                backlog.push_back(WorkerMsg::Forget(s));
            }
        }
        for o in counted.drain(..) {
            ctx.metrics.utterance(o.label());
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
            .set_inference_queue(backlog.len() + core.pending());
    }
}
