//! The utterance core: everything between a validated transcript segment and an emotion
//! event, synchronous and free of sockets, threads and GStreamer. The daemon's consumer task
//! and model worker, and `summerd replay`, are thin drivers of it, so one recorded call gives
//! the same events through either.
//!
//! 1. [`Core::offer`]: the stream's speaker policy (`infer_speakers`: an excluded speaker is
//!    dropped before anything is computed), a `unix`-clock segment placed on the stream's
//!    media timeline, then the [`Assembler`].
//! 2. [`Core::poll`]: segments whose descriptors cover them (or whose wait expired) become
//!    [`Job`]s, holding the stores their audio span and face are read from.
//! 3. [`Job::resolve`] (on the model worker) reads the span's functionals and pools its face;
//!    [`score`] runs the [`Engine`] over a batch; [`Outcome::of_event`] says how each event is
//!    counted.
//!
//! Every outcome an utterance can have is one [`Outcome`]; the metrics register them all up
//! front from [`Outcome::LABELS`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::assembler::{Assembler, Offer};
use super::engine::{Engine, EngineError, Utterance};
use crate::events::EmotionEvent;
use crate::streams::Registry;
use crate::streams::features::{AudioFeatures, VisualFeatures};
use crate::transcripts::{Clock, Transcript};

/// What became of an utterance (`summerd_utterances_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Its event was published.
    Published,
    /// Its provisional event (from a partial segment) was published.
    ProvisionalPublished,
    /// Its event went out without audio (counted besides `published`).
    AudioMissing,
    /// The forward pass failed: no event.
    Error,
    /// Its stream was detached before it was scored.
    Forgotten,
    /// Its speaker's role is not in the stream's `infer_speakers`.
    Excluded,
    /// Accepted with a seq lower than one already accepted.
    OutOfOrder,
    /// Accepted; it starts before the previous final segment ended.
    Overlapping,
    /// Dropped: its seq was already accepted as final.
    Duplicate,
    /// Dropped: a partial segment while provisional estimates are off, or for a final seq.
    PartialIgnored,
    /// Scored after `inference.feature_wait` without full descriptors.
    FeatureWaitExpired,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 11] = [
        Outcome::Published,
        Outcome::ProvisionalPublished,
        Outcome::AudioMissing,
        Outcome::Error,
        Outcome::Forgotten,
        Outcome::Excluded,
        Outcome::OutOfOrder,
        Outcome::Overlapping,
        Outcome::Duplicate,
        Outcome::PartialIgnored,
        Outcome::FeatureWaitExpired,
    ];

    /// Every outcome's label, in [`Outcome::ALL`]'s order.
    pub const LABELS: &'static [&'static str] = &[
        "published",
        "provisional_published",
        "audio_missing",
        "error",
        "forgotten",
        "excluded",
        "out_of_order",
        "overlapping",
        "duplicate",
        "partial_ignored",
        "feature_wait_expired",
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        // The variants are declared in the order of `ALL` and `LABELS`.
        Outcome::LABELS[self as usize]
    }

    /// How a published event is counted.
    pub fn of_event(e: &EmotionEvent) -> impl Iterator<Item = Outcome> {
        let missing = (!e.modalities.audio).then_some(Outcome::AudioMissing);
        let published = if e.provisional {
            Outcome::ProvisionalPublished
        } else {
            Outcome::Published
        };
        missing.into_iter().chain(std::iter::once(published))
    }
}

/// A segment ready to be scored, with the stores its audio span and face are read from.
pub struct Job {
    /// The utterance (without audio and face until [`Job::resolve`]).
    pub utterance: Utterance,
    /// The stream's acoustic descriptors, when computed.
    pub audio: Option<Arc<AudioFeatures>>,
    /// The stream's face store, when the vision stage runs.
    pub visual: Option<Arc<VisualFeatures>>,
}

impl Job {
    /// The utterance with its span's functionals and face. The face is pooled over the frames
    /// processed so far (at 5 frames a second the span's last frame may still be in the
    /// vision stage: the face never holds an event back); a stream that never showed a frame
    /// gets no face at all.
    pub fn resolve(self) -> Utterance {
        let mut u = self.utterance;
        if let Some(f) = self.audio {
            u.audio = f
                .functionals(u.start, u.end)
                .ok()
                .map(|f| f.values.to_vec());
        }
        u.face = self
            .visual
            .filter(|v| v.covered_until().is_some())
            .map(|v| v.pool(u.start, u.end));
        u
    }
}

/// The policy and the assembler over every stream.
pub struct Core {
    asm: Assembler,
    publish_text: bool,
    /// The generation of each stream id seen (a re-attached id starts afresh).
    generations: HashMap<String, u64>,
    /// Streams whose conversation the engine must forget before their next utterance.
    resets: Vec<String>,
}

impl Core {
    /// Wait at most `feature_wait` for descriptors; estimate partials when `provisional`;
    /// `publish_text` is `events.publish_text` (a stream may override it).
    pub fn new(feature_wait: Duration, provisional: bool, publish_text: bool) -> Core {
        Core {
            asm: Assembler::new(feature_wait, provisional),
            publish_text,
            generations: HashMap::new(),
            resets: Vec::new(),
        }
    }

    /// Note the generation of stream `id`; when it differs from the one seen before (the id
    /// was detached and attached again), what was pending for the old one is dropped as
    /// forgotten and the engine is to forget its conversation ([`Core::take_resets`]).
    /// True when it differed.
    fn refresh(&mut self, id: &str, generation: u64, counted: &mut Vec<Outcome>) -> bool {
        match self.generations.insert(id.to_string(), generation) {
            Some(g) if g != generation => {
                let dropped = self.asm.forget(id);
                counted.extend(std::iter::repeat_n(Outcome::Forgotten, dropped));
                self.resets.push(id.to_string());
                true
            }
            _ => false,
        }
    }

    /// Streams re-attached since the last call, whose conversations the engine must forget
    /// before it scores their next utterance.
    pub fn take_resets(&mut self) -> Vec<String> {
        std::mem::take(&mut self.resets)
    }

    /// Take a validated segment that arrived at `now` (`unix_now`: the wall clock then);
    /// `counted` gets the outcomes to count (a queued segment is counted when it is scored).
    pub fn offer(
        &mut self,
        mut t: Transcript,
        streams: &Registry,
        now: Instant,
        unix_now: f64,
        counted: &mut Vec<Outcome>,
    ) {
        let Some(view) = streams.view(&t.stream) else {
            counted.push(Outcome::Forgotten);
            return;
        };
        self.refresh(&t.stream, view.generation, counted);
        if !view.spec.infers(&t.speaker) {
            // Nothing of this speaker is computed: no text vector, no functionals, no model.
            counted.push(Outcome::Excluded);
            return;
        }
        if t.clock == Clock::Unix {
            // Wall clock -> media time: the newest media is "now" on the stream's timeline.
            let lag = unix_now - view.media_end;
            t.start -= lag;
            t.end -= lag;
            t.clock = Clock::Media;
        }
        let outcome = match self.asm.offer(t, now) {
            Offer::Queued | Offer::Provisional | Offer::Replaced => return,
            Offer::OutOfOrder => Outcome::OutOfOrder,
            Offer::Overlapping => Outcome::Overlapping,
            Offer::Duplicate => Outcome::Duplicate,
            Offer::PartialIgnored => Outcome::PartialIgnored,
        };
        counted.push(outcome);
    }

    /// Release what is ready at `now` as jobs, in arrival order; `counted` gets the outcomes
    /// to count on the way.
    pub fn poll(
        &mut self,
        streams: &Registry,
        now: Instant,
        counted: &mut Vec<Outcome>,
    ) -> Vec<Job> {
        let ready = self
            .asm
            .poll(now, |s, speaker| streams.covered_until(s, speaker));
        let mut jobs = Vec::with_capacity(ready.len());
        for r in ready {
            let Some(view) = streams.view(&r.segment.stream) else {
                counted.push(Outcome::Forgotten);
                continue;
            };
            if self.generations.get(&r.segment.stream) != Some(&view.generation) {
                // Its stream was detached and attached again while it waited.
                counted.push(Outcome::Forgotten);
                continue;
            }
            if !r.covered {
                counted.push(Outcome::FeatureWaitExpired);
            }
            let t = r.segment;
            let audio = view.features_for(&t.speaker);
            jobs.push(Job {
                utterance: Utterance {
                    publish_text: view.spec.publish_text.unwrap_or(self.publish_text),
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
                },
                audio,
                visual: view.visual,
            });
        }
        jobs
    }

    /// Segments waiting for their descriptors.
    pub fn pending(&self) -> usize {
        self.asm.pending()
    }

    /// When the next waiting segment's `feature_wait` runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.asm.next_deadline()
    }

    /// Forget the streams no longer in the registry; their ids (the model worker frees their
    /// conversations too). The segments they still had waiting go to `counted` as forgotten.
    pub fn forget_detached(
        &mut self,
        streams: &Registry,
        counted: &mut Vec<Outcome>,
    ) -> Vec<String> {
        let gone: Vec<String> = self
            .asm
            .streams()
            .filter(|s| !streams.contains(s))
            .map(str::to_string)
            .collect();
        for s in &gone {
            let dropped = self.asm.forget(s);
            counted.extend(std::iter::repeat_n(Outcome::Forgotten, dropped));
        }
        // Also the streams that never reached the assembler (every segment excluded).
        self.generations.retain(|s, _| streams.contains(s));
        gone
    }
}

/// Score a batch; each event's latency is measured from its segment's arrival.
pub fn score(engine: &mut Engine, batch: &[Utterance]) -> Result<Vec<EmotionEvent>, EngineError> {
    let mut events = engine.infer(batch)?;
    for (e, u) in events.iter_mut().zip(batch) {
        e.latency_ms = u.arrival.elapsed().as_secs_f64() * 1e3;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::streams::{Stream, StreamSpec};

    fn seg(seq: u64) -> Transcript {
        Transcript {
            stream: "s".into(),
            seq,
            start: 0.0,
            end: 1.0,
            speaker: "spk".into(),
            text: "hi".into(),
            is_final: true,
            lang: None,
            clock: Clock::Media,
            embedding: None,
        }
    }

    fn attach(r: &Registry) {
        let spec = StreamSpec::for_file("s".into(), std::path::Path::new("/a.wav"));
        r.insert(Arc::new(Stream::with_features(
            spec,
            Default::default(),
            None,
        )))
        .unwrap();
    }

    /// A stream detached and attached again under its id starts afresh: what waited for the
    /// old one is forgotten, its seqs are not duplicates, and the engine is told to forget.
    #[test]
    fn a_reattached_stream_starts_afresh() {
        let r = Registry::new();
        attach(&r);
        let mut core = Core::new(Duration::from_secs(10), false, false);
        let mut counted = Vec::new();
        let t0 = Instant::now();
        core.offer(seg(1), &r, t0, 0.0, &mut counted);
        assert!(counted.is_empty() && core.pending() == 1);
        r.remove("s");
        attach(&r);
        core.offer(seg(1), &r, t0, 0.0, &mut counted);
        assert_eq!(counted, [Outcome::Forgotten], "not a duplicate");
        assert_eq!(core.take_resets(), ["s"]);
        assert_eq!(core.pending(), 1);
        // Detached for good: forgotten at the sweep.
        r.remove("s");
        counted.clear();
        assert_eq!(core.forget_detached(&r, &mut counted), ["s"]);
        assert_eq!(counted, [Outcome::Forgotten]);
        assert!(
            core.generations.is_empty(),
            "nothing kept of a detached stream"
        );
    }

    #[test]
    fn every_outcome_has_one_label() {
        let mut labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, Outcome::LABELS);
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
