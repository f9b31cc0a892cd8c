//! A stream's supervisor thread: builds the pipeline from its template and URI, plays it,
//! watches its bus, and on an error, an unexpected end or a stall (a live source that delivers
//! nothing for `stall_timeout`) tears it down and rebuilds it after an exponential backoff. It
//! publishes `stream.up` (first media after a (re)connect, with the gap if any), `stream.down`
//! and `stream.error` with reasons, and gives a source that never produced media a terminal
//! `failed` state after `ingest.max_attempts` tries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio_util::sync::CancellationToken;

use super::appsink::{audio_callbacks, video_callbacks};
use super::audio::{AudioMsg, audio_loop};
use super::queue::DropOldest;
use super::settings::Launch;
use super::video::video_loop;
use super::{IngestSettings, Shared};
use crate::bus::PublisherHandle;
use crate::events::Lifecycle;
use crate::streams::StreamState;
use crate::vision::Frame;

pub(super) struct Supervisor {
    pub(super) launch: Launch,
    pub(super) settings: IngestSettings,
    pub(super) shared: Arc<Shared>,
    pub(super) tap: Option<PublisherHandle>,
    pub(super) cancel: CancellationToken,
}

/// How an attempt ended.
enum Outcome {
    /// Detached or shutting down.
    Cancelled,
    /// A non-live source ended: nothing more will come.
    Ended,
    /// Failed or ended unexpectedly (why): retry.
    Retry(String),
}

impl Supervisor {
    pub(super) fn run(self) {
        // The audio and video consumers outlive single connections: the timeline and the tap
        // continue across reconnects.
        let (audio_tx, audio_rx) = sync_channel::<AudioMsg>(self.settings.config.audio_queue);
        let video = Arc::new(DropOldest::<Frame>::new(self.settings.config.video_queue));
        let nice = self.settings.config.nice;
        let audio_thread = {
            let shared = self.shared.clone();
            let tap = self.tap.clone();
            let chunk_ms = self.settings.tap_chunk_ms;
            std::thread::Builder::new()
                .name(format!("audio-{}", self.shared.id()))
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
                .name(format!("video-{}", self.shared.id()))
                .spawn(move || {
                    set_nice(nice);
                    video_loop(q, shared, vision)
                })
        };

        let cfg = &self.settings.config;
        let mut backoff = cfg.backoff_initial.0;
        let mut failures = 0u32;
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
            self.shared.stream.timeline().mark_down(Instant::now());
            match outcome {
                Outcome::Cancelled => break,
                Outcome::Ended => {
                    self.shared.set_state(StreamState::Ended);
                    self.wait_for_detach();
                    break;
                }
                Outcome::Retry(reason) => {
                    failures += 1;
                    if self.gives_up(failures) {
                        tracing::warn!(stream = %self.shared.id(), attempts = failures, %reason, "Stream never produced media; giving up");
                        self.shared.set_state(StreamState::Failed);
                        self.shared.lifecycle(
                            Lifecycle::StreamError,
                            Some(format!(
                                "failed: no media after {failures} attempt(s) (ingest.max_attempts); last: {reason}"
                            )),
                            None,
                        );
                        self.wait_for_detach();
                        break;
                    }
                    self.shared.set_state(StreamState::Retrying);
                    self.shared.stream.restarted();
                    self.shared.metrics.restarted();
                    // A connection that lasted a while resets the backoff.
                    if started.elapsed() > cfg.backoff_max.0 * 4 {
                        backoff = cfg.backoff_initial.0;
                    }
                    if self.sleep(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(cfg.backoff_max.0);
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

    /// Whether to stop retrying after `failures` failed attempts: only a source not declared
    /// live that never produced media gives up; a live one retries for as long as attached.
    fn gives_up(&self, failures: u32) -> bool {
        let max = self.settings.config.max_attempts;
        max > 0
            && failures >= max
            && self.launch.live != Some(true)
            && !self.shared.ever_up.load(Ordering::Relaxed)
    }

    /// The stream stays listed (ended or failed) until it is detached.
    fn wait_for_detach(&self) {
        while !self.cancel.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
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
        let up = self.shared.attempt_up.load(Ordering::Relaxed);
        // One line per failure after media flowed; while a source keeps failing without
        // media, the first failure and then every power of two (the events say every one).
        let n = self.shared.stream.restarts() + 1;
        if up || n.is_power_of_two() {
            tracing::warn!(stream = %self.shared.id(), %reason, failures = n, "Stream failed; retrying");
        }
        self.shared
            .lifecycle(Lifecycle::StreamError, Some(reason.clone()), None);
        if up {
            self.shared
                .lifecycle(Lifecycle::StreamDown, Some(reason.clone()), None);
        }
        Outcome::Retry(reason)
    }

    fn attempt(&self, audio_tx: &SyncSender<AudioMsg>, video: &Arc<DropOldest<Frame>>) -> Outcome {
        let pipeline = match gst::parse::launch(&self.launch.desc) {
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
        tune(
            &bin,
            self.settings.config.decoder_threads,
            self.settings.config.nice,
        );
        let video_sink = bin
            .by_name("video")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok());
        if let Some(v) = &video_sink {
            v.set_callbacks(video_callbacks(self.shared.clone(), video.clone()));
        }
        self.shared.touch();
        let live = match pipeline.set_state(gst::State::Playing) {
            Ok(s) => self
                .launch
                .live
                .unwrap_or(s == gst::StateChangeSuccess::NoPreroll),
            Err(_) => {
                let reason =
                    first_error(&pipeline).unwrap_or_else(|| "the pipeline would not start".into());
                let _ = pipeline.set_state(gst::State::Null);
                return self.fail(reason);
            }
        };
        let video_sink = video_sink.map(|v| v.upcast::<gst::Element>());
        let outcome = self.watch(&pipeline, live, video_sink.as_ref());
        let _ = pipeline.set_state(gst::State::Null);
        outcome
    }

    fn watch(
        &self,
        pipeline: &gst::Element,
        mut live: bool,
        video: Option<&gst::Element>,
    ) -> Outcome {
        let bus = pipeline.bus().expect("a pipeline has a bus");
        // An undeclared source that prerolled may still be live (a decodebin in front of a
        // network source returns ASYNC): ask the pipeline once media flows.
        let mut inferred = self.launch.live.is_some() || live;
        let types = [
            gst::MessageType::Error,
            gst::MessageType::Eos,
            gst::MessageType::Warning,
        ];
        let mut damage = Damage::default();
        let mut declared: Option<f64> = None;
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
            let duration = || {
                pipeline
                    .query_duration::<gst::ClockTime>()
                    .map(|d| d.nseconds() as f64 / 1e9)
            };
            if declared.is_none() && !live && sh.attempt_up.load(Ordering::Relaxed) {
                declared = duration();
            }
            // The video branch is done at its EOS, or when no frame came and nothing feeds it
            // (the media has no video stream: its decodebin linked no pad to the branch).
            // Not merely when no frame came yet: a file's audio can end before its first
            // decoded frame.
            let branches_done = sh.audio_eos.load(Ordering::Relaxed)
                && (sh.video_eos.load(Ordering::Relaxed)
                    || (!sh.video_seen.load(Ordering::Relaxed) && !video.is_some_and(fed)));
            let eos = matches!(
                msg.as_ref().map(|m| m.view()),
                Some(gst::MessageView::Eos(_))
            ) || (!live && branches_done);
            if eos {
                if live {
                    return self.fail("the live source ended".into());
                }
                if let Some(d) = declared.or_else(duration) {
                    damage.short(sh.stream.timeline().end(), d);
                }
                return self.ended(damage.reason());
            }
            match msg.as_ref().map(|m| m.view()) {
                Some(gst::MessageView::Error(e)) => {
                    let reason = describe(e.error(), e.src());
                    // A recording that delivered media and then broke (cut off, corrupt) ends
                    // there, saying why: played again it would only break again.
                    if !live && sh.attempt_up.load(Ordering::Relaxed) {
                        return self.ended(Some(reason));
                    }
                    return self.fail(reason);
                }
                Some(gst::MessageView::Warning(w)) => {
                    tracing::debug!(stream = %sh.id(), warning = %w.error(), "GStreamer warning");
                    // Damage to the media (decoding, demuxing, format); not, say, a branch
                    // of the template that the media has no stream for.
                    if w.error().kind::<gst::StreamError>().is_some() {
                        damage.note(describe(w.error(), w.src()));
                    }
                }
                _ => {}
            }
            let stall = self.settings.config.stall_timeout.0;
            if live && sh.since_buffer() > stall {
                return self.fail(format!("no media for {stall:?} (stalled)"));
            }
        }
    }

    /// A non-live source reached its end; with `damage`, what went wrong on the way (a
    /// `stream.error` says so before `stream.down`, so a cut-off recording does not look
    /// complete).
    fn ended(&self, damage: Option<String>) -> Outcome {
        let sh = &self.shared;
        let down = match damage {
            Some(why) => {
                tracing::warn!(stream = %sh.id(), reason = %why, "Stream ended with decoding errors");
                sh.lifecycle(Lifecycle::StreamError, Some(why.clone()), None);
                format!("end of stream, with decoding errors: {why}")
            }
            None => {
                tracing::info!(stream = %sh.id(), "Stream reached its end");
                "end of stream".to_string()
            }
        };
        sh.lifecycle(Lifecycle::StreamDown, Some(down), None);
        Outcome::Ended
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

/// Decoding problems GStreamer posted as warnings during one attempt.
#[derive(Default)]
struct Damage {
    first: Option<String>,
    count: u64,
}

/// Media short of the container's declared duration by more than this is a cut-off recording.
const SHORT_S: f64 = 1.0;

impl Damage {
    /// The recording ended at `end` seconds of the `declared` its container states.
    fn short(&mut self, end: f64, declared: f64) {
        if end + SHORT_S < declared {
            self.note(format!(
                "the media ends at {end:.1} s of the {declared:.1} s its container declares (cut off or corrupt)"
            ));
        }
    }

    fn note(&mut self, what: String) {
        self.count += 1;
        self.first.get_or_insert(what);
    }

    fn reason(&self) -> Option<String> {
        let first = self.first.as_ref()?;
        Some(if self.count == 1 {
            first.clone()
        } else {
            format!("{first} (and {} more warning(s))", self.count - 1)
        })
    }
}

/// A GStreamer error or warning with the element that posted it.
fn describe(error: gst::glib::Error, src: Option<&gst::Object>) -> String {
    match src {
        Some(s) => format!("{error} ({})", s.path_string()),
        None => error.to_string(),
    }
}

/// Whether a chain of linked sink pads leads from `element` up to a source (an element without
/// sink pads, such as a `uridecodebin`): false for a branch whose head was never linked.
fn fed(element: &gst::Element) -> bool {
    fn up(element: &gst::Element, depth: u32) -> bool {
        let sinks = element.sink_pads();
        sinks.is_empty()
            || (depth < 64
                && sinks.iter().any(|p| {
                    p.peer()
                        .and_then(|peer| peer.parent_element())
                        .is_some_and(|e| up(&e, depth + 1))
                }))
    }
    up(element, 0)
}
