//! Acoustic descriptors: eGeMAPS v02 (Eyben et al. 2016), computed per stream as audio
//! arrives. `../shared/docs/EGEMAPS.md` (and `docs/architecture.md`) say what is computed; the
//! readings that are ours (pitch costs, peak picking, period search) are documented where they
//! are implemented.
//!
//! The pure core is [`AcousticStream`]: [`push`](AcousticStream::push) samples at the stream's
//! rate (resampled to 16 kHz with rubato, through the telephone band first unless the settings
//! say [`Band::Wide`]), [`flush`](AcousticStream::flush) at the end, and ask
//! for the [`functionals`](AcousticStream::functionals) of any span of the recent history (a
//! bounded ring of LLD frames). Chunking does not change the result.

pub mod frame;
pub mod functionals;
pub mod noise;
pub mod pitch;
pub mod voice;

use std::collections::VecDeque;

pub use functionals::{Edge, Functionals, LLD_NAMES, Lld, NAMES};

use crate::model::{AUDIO_EXTRACTOR, AUDIO_EXTRACTOR_WIDE, Features};
use crate::resample::{Resample, ResampleError, TARGET_RATE};
use frame::{ACF_LAGS, FrameAnalyzer, FrameOut, HOP, LONG, LONG_BINS, SHORT};
use pitch::PitchTracker;

/// Seconds per LLD frame.
pub const FRAME_SECONDS: f64 = 0.01;
/// Voicing gate: a frame whose 60 ms RMS is at or under this is unvoiced whatever its pitch.
pub const VOICING_RMS: f32 = 0.001;

/// The rate the telephone band is heard at.
pub const TELEPHONE_RATE: u32 = 8_000;

/// What part of the spectrum the descriptors hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Band {
    /// The telephone band: every input is resampled to 8 kHz (rubato's anti-aliasing filter
    /// leaves nothing above 4 kHz) and then to 16 kHz, so that a wide-band recording and the
    /// same speech through an 8 kHz codec give the same kind of functionals. What the models
    /// read by default (the manifest's `egemaps-v02/summerd/4`).
    #[default]
    Telephone,
    /// Everything up to 8 kHz, as openSMILE hears a 16 kHz recording (the manifest's
    /// `egemaps-v02/summerd/3`).
    Wide,
}

impl Band {
    /// The name of summerd's audio vectors heard through this band, as model manifests and
    /// datasets carry it.
    pub fn extractor(self) -> &'static str {
        match self {
            Band::Telephone => AUDIO_EXTRACTOR,
            Band::Wide => AUDIO_EXTRACTOR_WIDE,
        }
    }

    /// The band summerd's audio vectors named `extractor` are heard through; None for vectors
    /// summerd does not make.
    pub fn of_extractor(extractor: &str) -> Option<Band> {
        [Band::Telephone, Band::Wide]
            .into_iter()
            .find(|b| b.extractor() == extractor)
    }

    /// The band a model's audio input (its manifest's `features`) is heard through: the
    /// telephone band where it reads no audio or audio summerd does not make (the manifest's
    /// check against what the daemon makes then names it).
    pub fn of_model(features: &Features) -> Band {
        features
            .audio
            .as_ref()
            .and_then(|a| Band::of_extractor(&a.extractor))
            .unwrap_or_default()
    }
}

/// Settings of one stream's extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// LLD frames kept for spans (10 ms each).
    pub history_frames: usize,
    /// Frames the pitch smoother waits before deciding (openSMILE: 40).
    pub pitch_lag_frames: usize,
    /// The band heard.
    pub band: Band,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history_frames: 12_000,
            pitch_lag_frames: 40,
            band: Band::default(),
        }
    }
}

/// The input's path to 16 kHz: straight, or through 8 kHz first ([`Band::Telephone`]).
struct FrontEnd {
    narrow: Option<(Resample, Vec<f32>)>,
    to16: Resample,
}

impl FrontEnd {
    fn new(rate: u32, band: Band) -> Result<Self, ResampleError> {
        Ok(match band {
            Band::Wide => FrontEnd {
                narrow: None,
                to16: Resample::to_16k(rate)?,
            },
            // An 8 kHz input is already in the band: only the step up to 16 kHz runs. (The
            // daemon and replay hand the extractor the media's own rate, so a G.711 call is
            // heard exactly as `summerd dataset emodb --channel g711u` hears a clip.)
            Band::Telephone => FrontEnd {
                narrow: (rate != TELEPHONE_RATE)
                    .then(|| Resample::new(rate, TELEPHONE_RATE))
                    .transpose()?
                    .map(|r| (r, Vec::with_capacity(2048))),
                to16: Resample::new(TELEPHONE_RATE, TARGET_RATE)?,
            },
        })
    }

    fn push(&mut self, input: &[f32], output: &mut Vec<f32>) {
        match &mut self.narrow {
            None => self.to16.push(input, output),
            Some((r, buf)) => {
                buf.clear();
                r.push(input, buf);
                self.to16.push(buf, output);
            }
        }
    }

    fn flush(&mut self, output: &mut Vec<f32>) {
        if let Some((r, buf)) = &mut self.narrow {
            buf.clear();
            r.flush(buf);
            self.to16.push(buf, output);
        }
        self.to16.flush(output);
    }
}

/// Why a span's functionals cannot be given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpanError {
    /// The span holds no frame.
    #[error("span [{t0}, {t1}) s holds no 10 ms frame")]
    Empty {
        /// Start (s).
        t0: f64,
        /// End (s).
        t1: f64,
    },
    /// The span ends after the last decided frame: more audio (or a flush) is needed.
    #[error("span ends at {t1} s but frames are decided only up to {ready} s")]
    NotReady {
        /// End asked for (s).
        t1: f64,
        /// Decided up to (s).
        ready: f64,
    },
    /// The span starts before the oldest frame kept.
    #[error("span starts at {t0} s but the history starts at {oldest} s")]
    Evicted {
        /// Start asked for (s).
        t0: f64,
        /// Oldest frame kept (s).
        oldest: f64,
    },
}

struct Pending {
    out: FrameOut,
    mag: Vec<f32>,
    acf: Vec<f32>,
}

/// One stream's eGeMAPS extractor.
pub struct AcousticStream {
    resampler: FrontEnd,
    buf16: Vec<f32>,
    /// 16 kHz samples from sample index `wave_start`.
    wave: Vec<f32>,
    wave_start: u64,
    next_frame: u64,
    next_final: u64,
    analyzer: FrameAnalyzer,
    pitch: PitchTracker,
    pending: Vec<Pending>,
    decided: Vec<(f32, Edge)>,
    history: VecDeque<Lld>,
    history_frames: usize,
}

impl AcousticStream {
    /// An extractor for audio at `rate` Hz.
    pub fn new(rate: u32, settings: Settings) -> Result<Self, ResampleError> {
        let lag = settings.pitch_lag_frames.max(1);
        let pending = (0..lag + 2)
            .map(|_| Pending {
                out: FrameOut::default(),
                mag: vec![0.0; LONG_BINS],
                acf: vec![0.0; ACF_LAGS],
            })
            .collect();
        let history_frames = settings.history_frames.max(1);
        Ok(AcousticStream {
            resampler: FrontEnd::new(rate, settings.band)?,
            buf16: Vec::with_capacity(4096),
            wave: Vec::with_capacity(LONG * 4 + lag * HOP),
            wave_start: 0,
            next_frame: 0,
            next_final: 0,
            analyzer: FrameAnalyzer::new(),
            pitch: PitchTracker::new(lag),
            pending,
            decided: Vec::with_capacity(lag + 2),
            history: VecDeque::with_capacity(history_frames),
            history_frames,
        })
    }

    /// Add mono samples at the stream's rate.
    pub fn push(&mut self, samples: &[f32]) {
        let mut buf = std::mem::take(&mut self.buf16);
        buf.clear();
        self.resampler.push(samples, &mut buf);
        self.feed(&buf);
        self.buf16 = buf;
    }

    /// End of input: resample what is left, decide every pending frame, then analyse the last
    /// 20 ms frames that have no 60 ms frame behind them (energy/spectral LLDs only, marked
    /// [`Edge::Short`]); frames whose pitch only the end decided are marked
    /// [`Edge::Unsettled`]. A trailing part shorter than 20 ms makes no frame.
    pub fn flush(&mut self) {
        let mut buf = std::mem::take(&mut self.buf16);
        buf.clear();
        self.resampler.flush(&mut buf);
        self.feed(&buf);
        self.buf16 = buf;
        let mut decided = std::mem::take(&mut self.decided);
        decided.clear();
        self.pitch.flush(&mut |f0, settled| {
            decided.push((
                f0,
                if settled {
                    Edge::Inner
                } else {
                    Edge::Unsettled
                },
            ))
        });
        for (f0, edge) in decided.iter() {
            self.finalise(*f0, *edge);
        }
        self.decided = decided;
        self.short_frames();
        self.analyzer.reset();
    }

    /// The frames after the last 60 ms one whose 20 ms window still fits (openSMILE's energy
    /// and spectral levels run to the end of the input; its pitch level stops 40 ms earlier).
    fn short_frames(&mut self) {
        let mut mag = [0.0f32; LONG_BINS];
        let mut acf = [0.0f32; ACF_LAGS];
        let mut padded = [0.0f32; LONG];
        loop {
            let off = (self.next_frame * HOP as u64 - self.wave_start) as usize;
            if off + SHORT > self.wave.len() {
                break;
            }
            let have = (self.wave.len() - off).min(LONG);
            padded[..have].copy_from_slice(&self.wave[off..off + have]);
            padded[have..].iter_mut().for_each(|v| *v = 0.0);
            let out = self.analyzer.analyse(&padded, &mut mag, &mut acf);
            self.next_frame += 1;
            let mut lld = Lld {
                energy2: out.energy2,
                edge: Edge::Short,
                ..Lld::default()
            };
            lld.v[..10].copy_from_slice(&out.spectral);
            self.keep(lld);
        }
    }

    /// Time (s from the stream's first sample) up to which frames are decided: spans ending
    /// there or earlier can be asked for.
    pub fn ready_until(&self) -> f64 {
        self.next_final as f64 * FRAME_SECONDS
    }

    /// Start of the oldest frame kept (s).
    pub fn oldest(&self) -> f64 {
        (self.next_final - self.history.len() as u64) as f64 * FRAME_SECONDS
    }

    fn span(&self, t0: f64, t1: f64) -> Result<std::ops::Range<usize>, SpanError> {
        let first = (t0.max(0.0) / FRAME_SECONDS - 1e-6).ceil() as u64;
        let end = (t1 / FRAME_SECONDS - 1e-6).ceil().max(0.0) as u64;
        if t1 > self.ready_until() + 1e-9 {
            return Err(SpanError::NotReady {
                t1,
                ready: self.ready_until(),
            });
        }
        if end <= first {
            return Err(SpanError::Empty { t0, t1 });
        }
        let oldest = self.next_final - self.history.len() as u64;
        if first < oldest {
            return Err(SpanError::Evicted {
                t0,
                oldest: self.oldest(),
            });
        }
        Ok((first - oldest) as usize..(end - oldest) as usize)
    }

    /// The 88 functionals over the frames starting in [t0, t1) s.
    pub fn functionals(&self, t0: f64, t1: f64) -> Result<Functionals, SpanError> {
        let r = self.span(t0, t1)?;
        let (a, b) = self.history.as_slices();
        let frames: Vec<Lld> = if r.end <= a.len() {
            a[r].to_vec()
        } else if r.start >= a.len() {
            b[r.start - a.len()..r.end - a.len()].to_vec()
        } else {
            a[r.start..]
                .iter()
                .chain(&b[..r.end - a.len()])
                .copied()
                .collect()
        };
        Ok(functionals::compute(&frames))
    }

    /// The raw (unsmoothed) LLD frames starting in [t0, t1) s.
    pub fn frames(&self, t0: f64, t1: f64) -> Result<Vec<Lld>, SpanError> {
        let r = self.span(t0, t1)?;
        Ok(self.history.range(r).copied().collect())
    }

    fn feed(&mut self, samples: &[f32]) {
        self.wave.extend_from_slice(samples);
        loop {
            let start = self.next_frame * HOP as u64;
            let off = (start - self.wave_start) as usize;
            if off + LONG > self.wave.len() {
                break;
            }
            let slot = (self.next_frame % self.pending.len() as u64) as usize;
            let p = &mut self.pending[slot];
            p.out = self
                .analyzer
                .analyse(&self.wave[off..off + LONG], &mut p.mag, &mut p.acf);
            self.next_frame += 1;
            if let Some(f0) = self.pitch.push(&p.out) {
                self.finalise(f0, Edge::Inner);
            }
        }
        // Keep the samples that undecided frames still need.
        let keep_from = self.next_final * HOP as u64;
        let drop = (keep_from - self.wave_start) as usize;
        if drop > 4 * LONG {
            self.wave.drain(..drop);
            self.wave_start = keep_from;
        }
    }

    fn finalise(&mut self, f0: f32, edge: Edge) {
        let k = self.next_final;
        let p = &self.pending[(k % self.pending.len() as u64) as usize];
        let voiced = f0 > 0.0 && p.out.rms60 > VOICING_RMS;
        let f0 = if voiced { f0 } else { 0.0 };
        let mut lld = Lld {
            energy2: p.out.energy2,
            edge,
            ..Lld::default()
        };
        lld.v[..10].copy_from_slice(&p.out.spectral);
        if voiced {
            let off = (k * HOP as u64 - self.wave_start) as usize;
            let x = &self.wave[off..(off + LONG).min(self.wave.len())];
            lld.v[10] = 12.0 * (f0 / 27.5).log2();
            if let Some((j, s)) = voice::jitter_shimmer(x, f0) {
                lld.v[11] = j;
                lld.v[12] = s;
            }
            lld.v[13] = voice::hnr_db(&p.acf, f0);
        }
        let h = voice::harmonics(&p.mag, f0, &p.out.formants);
        lld.v[14] = h.h1_h2;
        lld.v[15] = h.h1_a3;
        for i in 0..3 {
            lld.v[16 + 3 * i] = p.out.formants[i].0;
            lld.v[17 + 3 * i] = p.out.formants[i].1;
            lld.v[18 + 3 * i] = h.formant_amp[i];
        }
        self.keep(lld);
    }

    fn keep(&mut self, mut lld: Lld) {
        for v in lld.v.iter_mut() {
            if !v.is_finite() {
                *v = 0.0;
            }
        }
        if self.history.len() == self.history_frames {
            self.history.pop_front();
        }
        self.history.push_back(lld);
        self.next_final += 1;
    }
}

/// Functionals of a whole recording given as samples at `rate`, heard through `band` (the
/// `features audio` verb, the dataset writers).
pub fn file_functionals(
    rate: u32,
    samples: &[f32],
    band: Band,
) -> Result<(Functionals, Vec<Lld>), ResampleError> {
    let frames_needed = samples.len() as u64 * 16_000 / u64::from(rate.max(1)) / HOP as u64 + 8;
    let mut s = AcousticStream::new(
        rate,
        Settings {
            history_frames: frames_needed as usize,
            band,
            ..Settings::default()
        },
    )?;
    s.push(samples);
    s.flush();
    let end = s.ready_until();
    let frames = s.frames(0.0, end).unwrap_or_default();
    Ok((functionals::compute(&frames), frames))
}
