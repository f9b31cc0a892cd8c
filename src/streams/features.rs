//! A stream's acoustic descriptors on its media timeline, shared between the stream's audio
//! thread (which pushes the samples at the media's own rate, so that the extractor's band
//! front end sees them as `summerd dataset` and `eval --wavs` do) and the model worker (which
//! asks for the functionals of an utterance's span).
//!
//! The extractor's own clock starts at 0 with its first sample; `origin` is the media time of
//! that sample. A new connection whose audio does not continue the timeline (a reconnect
//! after a gap) starts a fresh extractor at its first chunk: spans that reach back across the
//! gap are then refused (`Evicted`) and the utterance goes on without audio.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::acoustic::{AcousticStream, Functionals, Settings, SpanError};

/// The acoustic state of one stream.
pub struct AudioFeatures {
    settings: Settings,
    inner: Mutex<Option<Timed>>,
    grown: Option<Arc<Notify>>,
}

struct Timed {
    origin: f64,
    stream: AcousticStream,
    /// The rate of the samples pushed.
    rate: u32,
    /// Samples pushed, for continuity checks.
    pushed: u64,
}

impl AudioFeatures {
    /// Empty: nothing covered yet.
    pub fn new(settings: Settings) -> AudioFeatures {
        AudioFeatures {
            settings,
            inner: Mutex::new(None),
            grown: None,
        }
    }

    /// Empty; `grown` is notified whenever more of the stream is described (or flushed).
    pub fn notifying(settings: Settings, grown: Arc<Notify>) -> AudioFeatures {
        AudioFeatures {
            grown: Some(grown),
            ..AudioFeatures::new(settings)
        }
    }

    fn grew(&self) {
        if let Some(n) = &self.grown {
            n.notify_one();
        }
    }

    /// Mono samples at `rate` Hz whose first is at media time `t`. Samples that do not continue
    /// the last push (another rate, or a gap) start a fresh extractor.
    pub fn push(&self, t: f64, rate: u32, samples: &[f32]) {
        let mut g = self.inner.lock().expect("features lock");
        let continues = g.as_ref().is_some_and(|s| {
            let end = s.origin + s.pushed as f64 / f64::from(s.rate);
            s.rate == rate && (t - end).abs() < 0.05
        });
        if !continues {
            match AcousticStream::new(rate, self.settings) {
                Ok(stream) => {
                    *g = Some(Timed {
                        origin: t,
                        stream,
                        rate,
                        pushed: 0,
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "Cannot start the acoustic extractor");
                    return;
                }
            }
        }
        let s = g.as_mut().expect("set above");
        s.stream.push(samples);
        s.pushed += samples.len() as u64;
        drop(g);
        self.grew();
    }

    /// The connection ended: decide the frames still pending.
    pub fn flush(&self) {
        if let Some(s) = self.inner.lock().expect("features lock").as_mut() {
            s.stream.flush();
        }
        self.grew();
    }

    /// Media time up to which descriptors are final (None: no audio yet).
    pub fn covered_until(&self) -> Option<f64> {
        let g = self.inner.lock().expect("features lock");
        g.as_ref().map(|s| s.origin + s.stream.ready_until())
    }

    /// The 88 functionals of the media span [t0, t1]. A span that ends beyond what is
    /// decided is cut there when at least `MIN_SPAN` of it is decided (an utterance released
    /// after `feature_wait` keeps most of its voice).
    pub fn functionals(&self, t0: f64, t1: f64) -> Result<Functionals, SpanError> {
        let g = self.inner.lock().expect("features lock");
        let Some(s) = g.as_ref() else {
            return Err(SpanError::NotReady {
                t1,
                ready: f64::NEG_INFINITY,
            });
        };
        let (a, b) = (t0 - s.origin, t1 - s.origin);
        let ready = s.stream.ready_until();
        let b = if b > ready && ready - a >= MIN_SPAN {
            ready
        } else {
            b
        };
        s.stream.functionals(a, b)
    }
}

/// Shortest decided part of a span worth describing, seconds.
pub const MIN_SPAN: f64 = 0.25;

/// A stream's per-frame face results on its media timeline, shared between the stream's video
/// thread (which runs the vision stage) and the model worker (which pools an utterance's span).
pub struct VisualFeatures {
    inner: Mutex<crate::vision::stage::VisualTimeline>,
}

impl VisualFeatures {
    /// Keep `history_s` seconds of frames.
    pub fn new(history_s: f64) -> Self {
        VisualFeatures {
            inner: Mutex::new(crate::vision::stage::VisualTimeline::new(history_s)),
        }
    }

    /// Record a processed frame.
    pub fn push(&self, f: &crate::vision::stage::FrameFaces) {
        self.inner.lock().expect("visual lock").push(f);
    }

    /// Media time of the latest processed frame.
    pub fn covered_until(&self) -> Option<f64> {
        self.inner.lock().expect("visual lock").covered_until()
    }

    /// The pooled visual vector of `[t0, t1]`, over the frames processed so far.
    pub fn pool(&self, t0: f64, t1: f64) -> crate::vision::stage::VisualVector {
        self.inner.lock().expect("visual lock").pool(t0, t1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(secs: f64) -> Vec<f32> {
        (0..(secs * 16000.0) as usize)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 200.0 * i as f32 / 16000.0).sin())
            .collect()
    }

    /// What the daemon computes live, chunk by chunk at the media's rate, is what
    /// `summerd dataset emodb` and `eval --wavs` compute for the whole recording.
    #[test]
    fn live_chunks_at_the_media_rate_give_the_whole_recordings_functionals() {
        for rate in [8_000u32, 16_000, 48_000] {
            let x: Vec<f32> = (0..rate as usize * 2)
                .map(|i| {
                    let t = i as f32 / rate as f32;
                    0.3 * (std::f32::consts::TAU * 180.0 * t).sin()
                        + 0.1 * (std::f32::consts::TAU * 2500.0 * t).sin()
                })
                .collect();
            let f = AudioFeatures::new(Settings::default());
            for (k, c) in x.chunks(rate as usize / 50).enumerate() {
                f.push(k as f64 * 0.02, rate, c);
            }
            f.flush();
            let (whole, _) =
                crate::acoustic::file_functionals(rate, &x, crate::acoustic::Band::Telephone)
                    .unwrap();
            let live = f.functionals(0.0, f.covered_until().unwrap()).unwrap();
            assert_eq!(live, whole, "{rate} Hz");
        }
    }

    #[test]
    fn spans_are_on_the_media_timeline_and_a_gap_starts_afresh() {
        let f = AudioFeatures::new(Settings::default());
        assert_eq!(f.covered_until(), None);
        f.push(10.0, 16_000, &tone(2.0));
        f.flush();
        let until = f.covered_until().unwrap();
        assert!((11.9..=12.01).contains(&until), "{until}");
        assert!(f.functionals(10.5, 11.5).is_ok());
        assert!(matches!(
            f.functionals(12.5, 13.0),
            Err(SpanError::NotReady { .. })
        ));
        // Mostly decided: cut at the decided end.
        assert!(f.functionals(11.0, 12.6).is_ok());
        // A reconnect after a 5 s gap: the old span is gone, the new one works.
        f.push(17.0, 16_000, &tone(2.0));
        f.flush();
        assert!(f.functionals(10.5, 11.5).is_err());
        assert!(f.functionals(17.5, 18.5).is_ok());
        // Audio at another rate, continuing in time: a fresh extractor at that rate, on the
        // same timeline.
        let at8k: Vec<f32> = tone(2.0).iter().step_by(2).copied().collect();
        f.push(19.0, 8_000, &at8k);
        f.flush();
        assert!(f.functionals(17.5, 18.5).is_err());
        let until = f.covered_until().unwrap();
        assert!((20.9..=21.01).contains(&until), "{until}");
        assert!(f.functionals(19.5, 20.5).is_ok());
    }
}
