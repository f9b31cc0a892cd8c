//! Per-frame analysis at 16 kHz: everything that one 10 ms hop needs, computed with FFTs
//! planned once and buffers allocated once (nothing is allocated per frame).
//!
//! Two frames start at every hop, both left-aligned at the hop (as openSMILE's
//! `frameCenterSpecial = left`): a 20 ms Hamming frame for the energy/spectral/cepstral
//! descriptors and the formants, and a 60 ms Gaussian frame (sigma 0.4) for pitch, the
//! harmonics and the autocorrelation.

use std::f32::consts::PI;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// The analysis rate.
pub const RATE: f32 = 16_000.0;
/// Samples per hop (10 ms).
pub const HOP: usize = 160;
/// Samples in a short frame (20 ms).
pub const SHORT: usize = 320;
/// Samples in a long frame (60 ms).
pub const LONG: usize = 960;
const FFT_SHORT: usize = 512;
/// FFT size of the long frame.
pub const FFT_LONG: usize = 1024;
/// Bins of the long frame's magnitude spectrum.
pub const LONG_BINS: usize = FFT_LONG / 2 + 1;
/// Autocorrelation lags kept per long frame (enough for 50 Hz).
pub const ACF_LAGS: usize = 322;
const SHORT_BINS: usize = FFT_SHORT / 2 + 1;
const MEL_BANDS: usize = 26;
const LPC_ORDER: usize = 11;
const LPC_RATE: f32 = 11_000.0;
/// The short frame's offset in its FFT buffer (centred).
const LPC_PAD: usize = (FFT_SHORT - SHORT) / 2;
/// The inverse transform's size: the FFT buffer's length at 11 kHz.
const LPC_FFT: usize = FFT_SHORT * 11 / 16;
/// Samples of the 11 kHz frame the LPC sees: the short frame's length at 11 kHz.
const LPC_OUT: usize = SHORT * 11 / 16;
/// Spectrum bins that reach the 11 kHz frame.
const LPC_BINS: usize = LPC_OUT / 2;
/// Pitch candidates per frame.
pub const CANDIDATES: usize = 6;
const SHS_HARMONICS: usize = 15;
const SHS_COMPRESSION: f32 = 0.85;
const SHS_MIN_F: f32 = 25.0;
const PITCH_MIN: f32 = 55.0;
const PITCH_MAX: f32 = 1000.0;
/// log10 floor: -201 dB, as openSMILE writes for a zero magnitude.
pub const DB_FLOOR: f32 = -201.0;

/// Dot product of two equally long slices, in 8 interleaved partial sums (so that it
/// vectorises; the order of the additions is fixed, so results are deterministic).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// What one hop yields before pitch is decided.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameOut {
    /// Loudness, alphaRatio, hammarbergIndex, slope0-500, slope500-1500, spectralFlux, MFCC 1-4.
    pub spectral: [f32; 10],
    /// F1-F3 frequency and bandwidth (Hz); 0 where the LPC found fewer.
    pub formants: [(f32, f32); 3],
    /// Mean square of the unwindowed 20 ms frame.
    pub energy2: f32,
    /// RMS of the Gaussian-windowed 60 ms frame (the voicing gate).
    pub rms60: f32,
    /// Pitch candidates (Hz, voicing 0-1), best first; `n_cand` of them are valid.
    pub cand: [(f32, f32); CANDIDATES],
    /// Valid candidates.
    pub n_cand: usize,
    /// Voicing of the best candidate, 0-1 (0 without a candidate).
    pub voicing: f32,
}

struct Mel {
    /// (first bin, weights) per band.
    bands: Vec<(usize, Vec<f32>)>,
    centers: Vec<f32>,
}

fn mel(f: f32) -> f32 {
    1127.0 * (1.0 + f / 700.0).ln()
}

fn mel_inv(m: f32) -> f32 {
    700.0 * ((m / 1127.0).exp() - 1.0)
}

impl Mel {
    fn new(bins: usize, df: f32, lo: f32, hi: f32, n: usize) -> Mel {
        let (mlo, mhi) = (mel(lo), mel(hi));
        let edge = |i: usize| mel_inv(mlo + (mhi - mlo) * i as f32 / (n + 1) as f32);
        let mut bands = Vec::with_capacity(n);
        let mut centers = Vec::with_capacity(n);
        for b in 0..n {
            let (l, c, r) = (edge(b), edge(b + 1), edge(b + 2));
            centers.push(c);
            // No bin below lo + 1.5 bins counts (HTK's lowest channel; openSMILE's first band
            // leaves out the 31 Hz bin, checked by regression on its band energies).
            let first = ((l / df).ceil() as usize).max((lo / df + 1.5) as usize);
            let mut w = Vec::new();
            let mut k = first;
            // Triangles in the mel domain (as openSMILE's filter bank).
            let (ml, mc, mr) = (mel(l), mel(c), mel(r));
            while k < bins && (k as f32) * df <= r {
                let m = mel(k as f32 * df);
                w.push(if m <= mc {
                    (m - ml) / (mc - ml)
                } else {
                    (mr - m) / (mr - mc)
                });
                k += 1;
            }
            bands.push((first, w));
        }
        Mel { bands, centers }
    }

    fn apply(&self, power: &[f32], out: &mut [f32]) {
        for (o, (first, w)) in out.iter_mut().zip(&self.bands) {
            *o = w
                .iter()
                .zip(&power[*first..])
                .map(|(a, b)| a * b)
                .sum::<f32>();
        }
    }
}

/// Weight of a band centred at `f` Hz in the auditory spectrum: PLP's equal-loudness curve
/// (Hermansky 1990) scaled by 1 / 0.17, with a 7th-order roll-off above 4.6 kHz. Both were
/// measured on openSMILE 2.6.0 as a black box (the ratio of its auditory to its mel spectrum,
/// band by band, on white noise and on sines: flat 5.882 below 2 kHz, then falling as
/// 1 / (1 + (f / 4608)^7) to within 0.1 %), so that Loudness has eGeMAPS' scale.
fn equal_loudness(f: f32) -> f32 {
    let w2 = (2.0 * std::f64::consts::PI * f as f64).powi(2);
    let v = ((w2 + 56.8e6) * w2 * w2) / ((w2 + 6.3e6).powi(2) * (w2 + 0.38e9));
    let rolloff = 1.0 / (1.0 + (f as f64 / 4608.0).powi(7));
    (v / 0.17 * rolloff) as f32
}

/// The subharmonic-summation pitch detector's fixed tables and scratch space.
///
/// The steps and their order follow openSMILE's `cSpecScale` + `cPitchShs` as configured by
/// eGeMAPS v02, checked against its intermediate levels (read back through a probe
/// configuration, frame by frame, as `tests/acoustic_probe.py` does for the formants): on the
/// linear magnitude spectrum,
/// keep only the bins within 2 of a local maximum (peak enhancement) and smooth with
/// [1/4, 1/2, 1/4]; interpolate onto an octave scale of as many points (25 Hz to Nyquist) with
/// a natural cubic spline; weight by the raised arc-tangent `1/2 + atan(3 (log2 f - 5)) / pi`;
/// sum 15 harmonics with weights 0.85^(h-1). The octave-scale spectrum then matches openSMILE's
/// to 0.6 % (median over frames of the largest difference relative to the frame's peak).
struct Shs {
    /// For each octave-scale point: the linear bin at or below it and the fraction.
    pos: Vec<(usize, f32)>,
    /// Auditory weight per point.
    weight: Vec<f32>,
    /// The natural spline's solver (uniform knots, fixed).
    spline: Spline,
    /// Point offsets of harmonics 1..=15: whole points and the fraction to the next.
    shift: [(usize, f32); SHS_HARMONICS],
    /// Harmonic weights 0.85^(n-1).
    hw: [f32; SHS_HARMONICS],
    /// First and last candidate point (55-1000 Hz).
    lo: usize,
    hi: usize,
    lf0: f32,
    step: f32,
    lin: Vec<f32>,
    rhs: Vec<f32>,
    d2: Vec<f32>,
    spec: Vec<f32>,
    sum: Vec<f32>,
}

impl Shs {
    fn new(df: f32) -> Shs {
        let n = LONG_BINS;
        let lf0 = SHS_MIN_F.log2();
        let lf1 = (RATE / 2.0).log2();
        let step = (lf1 - lf0) / (n - 1) as f32;
        let pos = (0..n)
            .map(|j| {
                let p = ((lf0 + step * j as f32).exp2() / df).min((n - 1) as f32);
                let i = (p.floor() as usize).min(n - 2);
                (i, p - i as f32)
            })
            .collect();
        let weight = (0..n)
            .map(|j| 0.5 + ((lf0 + step * j as f32 - 5.0) * 3.0).atan() / PI)
            .collect();
        let mut shift = [(0, 0.0); SHS_HARMONICS];
        let mut hw = [0.0; SHS_HARMONICS];
        for h in 0..SHS_HARMONICS {
            let at = ((h + 1) as f32).log2() / step;
            shift[h] = (at.floor() as usize, at - at.floor());
            hw[h] = SHS_COMPRESSION.powi(h as i32);
        }
        let lo = ((PITCH_MIN.log2() - lf0) / step).ceil() as usize;
        let hi = ((PITCH_MAX.log2() - lf0) / step).floor() as usize;
        Shs {
            pos,
            weight,
            spline: Spline::new(n),
            shift,
            hw,
            lo,
            hi,
            lf0,
            step,
            lin: vec![0.0; n],
            rhs: vec![0.0; n],
            d2: vec![0.0; n],
            spec: vec![0.0; n],
            sum: vec![0.0; n],
        }
    }

    /// Candidates (Hz, voicing) from a linear magnitude spectrum, best first; returns
    /// (count, voicing of the best). A candidate is a local maximum of the subharmonic sum
    /// between 55 and 1000 Hz; its voicing is 1 - (mean of the sum over the whole scale) /
    /// (its sum), and only candidates with a positive voicing are kept.
    fn run(&mut self, mag: &[f32], cand: &mut [(f32, f32); CANDIDATES]) -> (usize, f32) {
        let n = self.pos.len();
        // Peak enhancement, then smoothing, on the linear spectrum.
        self.spec.iter_mut().for_each(|v| *v = 0.0);
        for j in 1..n - 1 {
            if mag[j] > mag[j - 1] && mag[j] >= mag[j + 1] {
                let (a, b) = (j.saturating_sub(2), (j + 3).min(n));
                self.spec[a..b].copy_from_slice(&mag[a..b]);
            }
        }
        self.lin[0] = self.spec[0];
        self.lin[n - 1] = self.spec[n - 1];
        for j in 1..n - 1 {
            self.lin[j] = 0.25 * self.spec[j - 1] + 0.5 * self.spec[j] + 0.25 * self.spec[j + 1];
        }
        // Natural cubic spline through the smoothed bins (second derivatives in d2).
        self.spline
            .second_derivatives(&self.lin, &mut self.rhs, &mut self.d2);
        let (y, d2) = (&self.lin, &self.d2);
        for j in 0..n {
            let (i, t) = self.pos[j];
            let u = 1.0 - t;
            let v = d2[i] * u * u * u / 6.0
                + d2[i + 1] * t * t * t / 6.0
                + (y[i] - d2[i] / 6.0) * u
                + (y[i + 1] - d2[i + 1] / 6.0) * t;
            self.spec[j] = v.max(0.0) * self.weight[j];
        }
        // The mean of the subharmonic sum over the whole scale (the voicing's reference), from
        // the spectrum's total: each harmonic adds its weights times the sum of the points it
        // reads, so the sum itself is needed only where candidates are looked for.
        let total: f32 = self.spec.iter().sum();
        let (mut whole, mut head, mut upto) = (0.0f32, 0.0f32, 0usize);
        for h in 0..SHS_HARMONICS {
            let (off, t) = self.shift[h];
            if off + 1 >= n {
                break;
            }
            // Points j = 0..n-off-1 read spec[j+off] (weight 1-t) and spec[j+off+1] (weight t);
            // `head` is the sum of spec[..off] (the offsets grow with h).
            head += self.spec[upto..off].iter().sum::<f32>();
            upto = off;
            let a = total - head - self.spec[n - 1];
            let b = total - head - self.spec[off];
            whole += self.hw[h] * ((1.0 - t) * a + t * b);
        }
        let mean = whole / n as f32;
        if mean <= 0.0 {
            return (0, 0.0);
        }
        let (lo, hi) = (self.lo, self.hi);
        self.sum[lo - 1..=hi + 1].iter_mut().for_each(|v| *v = 0.0);
        for h in 0..SHS_HARMONICS {
            let (off, t) = self.shift[h];
            if off + 1 >= n {
                break;
            }
            // The harmonic's point, linearly interpolated between the two around it.
            let (w0, w1) = (self.hw[h] * (1.0 - t), self.hw[h] * t);
            let end = (hi + 1).min(n - off - 2);
            if end < lo - 1 {
                continue;
            }
            let a = &self.spec[lo - 1 + off..=end + off];
            let b = &self.spec[lo + off..=end + off + 1];
            for ((s, x), y) in self.sum[lo - 1..=end].iter_mut().zip(a).zip(b) {
                *s += w0 * x + w1 * y;
            }
        }
        // Local maxima above the mean, best first.
        let mut count = 0;
        for j in lo + 1..hi {
            let (a, b, c) = (self.sum[j - 1], self.sum[j], self.sum[j + 1]);
            if b > a && b >= c && b > mean {
                let den = a - 2.0 * b + c;
                let d = if den < 0.0 { 0.5 * (a - c) / den } else { 0.0 };
                let f = (self.lf0 + self.step * (j as f32 + d)).exp2();
                let score = b - 0.25 * (a - c) * d;
                let voicing = 1.0 - mean / score;
                // insert sorted (descending voicing) into the fixed array
                let mut at = count.min(CANDIDATES);
                while at > 0 && cand[at - 1].1 < voicing {
                    if at < CANDIDATES {
                        cand[at] = cand[at - 1];
                    }
                    at -= 1;
                }
                if at < CANDIDATES {
                    cand[at] = (f, voicing);
                    count = (count + 1).min(CANDIDATES);
                }
            }
        }
        let voicing = if count > 0 { cand[0].1 } else { 0.0 };
        (count, voicing)
    }
}

/// Taps of the spline recursions once their factor has settled (see [`Spline`]).
const SPLINE_TAPS: usize = 16;

/// The natural cubic spline's solver for `n` unit-spaced knots: the tridiagonal system
/// M[i-1] + 4 M[i] + M[i+1] = 6 (y[i+1] - 2 y[i] + y[i-1]), M at both ends 0, solved by the
/// Thomas algorithm, whose forward factors `c` depend only on `n` and settle to r = 2 - sqrt(3)
/// within 16 knots. From there each pass is a first-order recursion with the constant factor
/// r, computed as its impulse response truncated to 16 taps (the dropped part is r^16 = 7e-10
/// relative): the same numbers as the serial recursions to float precision, but vectorisable
/// instead of a chain of dependent multiply-subtracts.
struct Spline {
    /// The Thomas algorithm's forward factors.
    c: Vec<f32>,
    /// Impulse responses of the settled passes: forward r (-r)^k, backward (-r)^k.
    fwd: [f32; SPLINE_TAPS],
    back: [f32; SPLINE_TAPS],
}

impl Spline {
    fn new(n: usize) -> Spline {
        let mut c = vec![0.0f32; n];
        for i in 1..n - 1 {
            c[i] = 1.0 / (4.0 - c[i - 1]);
        }
        let r = c[n - 2];
        let (mut fwd, mut back) = ([0.0f32; SPLINE_TAPS], [0.0f32; SPLINE_TAPS]);
        let mut g = 1.0f32;
        for (f, b) in fwd.iter_mut().zip(back.iter_mut()) {
            *b = g;
            *f = r * g;
            g *= -r;
        }
        Spline { c, fwd, back }
    }

    /// The second derivatives `d2` of the spline through `y` (`rhs` is scratch).
    fn second_derivatives(&self, y: &[f32], rhs: &mut [f32], d2: &mut [f32]) {
        let (n, c) = (y.len(), &self.c);
        rhs[0] = 0.0;
        rhs[n - 1] = 0.0;
        for (o, w) in rhs[1..n - 1].iter_mut().zip(y.windows(3)) {
            *o = 6.0 * (w[2] - 2.0 * w[1] + w[0]);
        }
        let settled = 2 * SPLINE_TAPS;
        if n < 4 * settled {
            // Too short for the shortcut (not the case at 16 kHz): plain Thomas.
            d2[0] = 0.0;
            d2[n - 1] = 0.0;
            for i in 1..n - 1 {
                d2[i] = (rhs[i] - d2[i - 1]) * c[i];
            }
            for i in (1..n - 1).rev() {
                d2[i] -= c[i] * d2[i + 1];
            }
            return;
        }
        // Forward: z[i] = (rhs[i] - z[i-1]) c[i], serial until the factor has settled, then
        // z[i] = sum_k r (-r)^k rhs[i-k].
        d2[0] = 0.0;
        for i in 1..settled {
            d2[i] = (rhs[i] - d2[i - 1]) * c[i];
        }
        d2[settled..n - 1].iter_mut().for_each(|v| *v = 0.0);
        for (k, g) in self.fwd.iter().enumerate() {
            for (o, x) in d2[settled..n - 1]
                .iter_mut()
                .zip(&rhs[settled - k..n - 1 - k])
            {
                *o += g * x;
            }
        }
        // Backward: M[i] = z[i] - r M[i+1], exact (serial) near the end where M[n-1] = 0, then
        // M[i] = sum_k (-r)^k z[i+k], then serial again where the factors are still settling.
        rhs[..n].copy_from_slice(d2);
        d2[n - 1] = 0.0;
        let tail = n - 1 - settled;
        for i in (tail..n - 1).rev() {
            d2[i] -= c[i] * d2[i + 1];
        }
        d2[settled..tail].iter_mut().for_each(|v| *v = 0.0);
        for (k, g) in self.back.iter().enumerate() {
            for (o, x) in d2[settled..tail]
                .iter_mut()
                .zip(&rhs[settled + k..tail + k])
            {
                *o += g * x;
            }
        }
        for i in (1..settled).rev() {
            d2[i] -= c[i] * d2[i + 1];
        }
    }
}

/// The analyser of one stream: FFT plans, windows, filter banks and scratch space.
pub struct FrameAnalyzer {
    fft_s: Arc<dyn RealToComplex<f32>>,
    fft_l: Arc<dyn RealToComplex<f32>>,
    ifft_l: Arc<dyn ComplexToReal<f32>>,
    win_s: Vec<f32>,
    win_l: Vec<f32>,
    buf_s: Vec<f32>,
    spec_s: Vec<Complex<f32>>,
    scr_s: Vec<Complex<f32>>,
    buf_l: Vec<f32>,
    spec_l: Vec<Complex<f32>>,
    scr_l: Vec<Complex<f32>>,
    acf_full: Vec<f32>,
    scr_il: Vec<Complex<f32>>,
    pow_s: Vec<f32>,
    prev_mag: Vec<f32>,
    mel: Mel,
    bands: [f32; MEL_BANDS],
    loud_w: [f32; MEL_BANDS],
    dct: [[f32; MEL_BANDS]; 4],
    ifft_lpc: Arc<dyn ComplexToReal<f32>>,
    lpc_shift: Vec<Complex<f32>>,
    lpc_spec: Vec<Complex<f32>>,
    lpc_wave: Vec<f32>,
    lpc_scr: Vec<Complex<f32>>,
    roots: [Complex<f64>; LPC_ORDER],
    shs: Shs,
}

impl Default for FrameAnalyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAnalyzer {
    /// Plan everything once.
    pub fn new() -> FrameAnalyzer {
        let mut planner = RealFftPlanner::<f32>::new();
        let fft_s = planner.plan_fft_forward(FFT_SHORT);
        let fft_l = planner.plan_fft_forward(FFT_LONG);
        let ifft_l = planner.plan_fft_inverse(FFT_LONG);
        let win_s = (0..SHORT)
            .map(|n| 0.54 - 0.46 * (2.0 * PI * n as f32 / (SHORT - 1) as f32).cos())
            .collect();
        let half = (LONG - 1) as f32 / 2.0;
        let win_l = (0..LONG)
            .map(|n| (-0.5 * ((n as f32 - half) / (0.4 * half)).powi(2)).exp())
            .collect();
        let df_s = RATE / FFT_SHORT as f32;
        let mel = Mel::new(SHORT_BINS, df_s, 20.0, 8000.0, MEL_BANDS);
        let mut loud_w = [0.0; MEL_BANDS];
        for (w, c) in loud_w.iter_mut().zip(&mel.centers) {
            *w = equal_loudness(*c);
        }
        let mut dct = [[0.0; MEL_BANDS]; 4];
        for (k, row) in dct.iter_mut().enumerate() {
            let c = k + 1;
            let lifter = 1.0 + 11.0 * (PI * c as f32 / 22.0).sin();
            for (j, v) in row.iter_mut().enumerate() {
                *v = (2.0 / MEL_BANDS as f32).sqrt()
                    * (PI * c as f32 * (j as f32 + 0.5) / MEL_BANDS as f32).cos()
                    * lifter;
            }
        }
        let ifft_lpc = planner.plan_fft_inverse(LPC_FFT);
        // The short frame sits in the middle of its FFT buffer (openSMILE pads symmetrically);
        // the spectrum computed with the frame at the start is rotated to that position.
        let lpc_shift = (0..LPC_BINS)
            .map(|k| {
                let phase = -2.0 * PI * k as f32 * LPC_PAD as f32 / FFT_SHORT as f32;
                Complex::new(phase.cos(), phase.sin())
            })
            .collect();
        FrameAnalyzer {
            buf_s: fft_s.make_input_vec(),
            spec_s: fft_s.make_output_vec(),
            scr_s: fft_s.make_scratch_vec(),
            buf_l: fft_l.make_input_vec(),
            spec_l: fft_l.make_output_vec(),
            scr_l: fft_l.make_scratch_vec(),
            acf_full: ifft_l.make_output_vec(),
            scr_il: ifft_l.make_scratch_vec(),
            fft_s,
            fft_l,
            ifft_l,
            win_s,
            win_l,
            pow_s: vec![0.0; SHORT_BINS],
            prev_mag: vec![0.0; SHORT_BINS],
            mel,
            bands: [0.0; MEL_BANDS],
            loud_w,
            dct,
            lpc_spec: ifft_lpc.make_input_vec(),
            lpc_wave: ifft_lpc.make_output_vec(),
            lpc_scr: ifft_lpc.make_scratch_vec(),
            ifft_lpc,
            lpc_shift,
            roots: initial_roots(),
            shs: Shs::new(RATE / FFT_LONG as f32),
        }
    }

    /// Forget the previous frame (spectral flux, root-finder warm start).
    pub fn reset(&mut self) {
        self.prev_mag.iter_mut().for_each(|v| *v = 0.0);
        self.roots = initial_roots();
    }

    /// Analyse the frame starting at `wave[0]` (`wave` holds at least [`LONG`] samples). The
    /// long frame's magnitude spectrum goes to `mag60` ([`LONG_BINS`]) and its autocorrelation
    /// to `acf` ([`ACF_LAGS`]), for the pitch-dependent descriptors decided later.
    pub fn analyse(&mut self, wave: &[f32], mag60: &mut [f32], acf: &mut [f32]) -> FrameOut {
        let mut out = FrameOut::default();
        let x = &wave[..LONG];
        // --- short frame ---
        out.energy2 = dot(&x[..SHORT], &x[..SHORT]) / SHORT as f32;
        for ((b, s), w) in self.buf_s.iter_mut().zip(&x[..SHORT]).zip(&self.win_s) {
            *b = s * w;
        }
        self.buf_s[SHORT..].iter_mut().for_each(|v| *v = 0.0);
        self.fft_s
            .process_with_scratch(&mut self.buf_s, &mut self.spec_s, &mut self.scr_s)
            .expect("buffers made by the plan");
        for (p, c) in self.pow_s.iter_mut().zip(&self.spec_s) {
            *p = c.norm_sqr();
        }
        self.spectral(&mut out);
        out.formants = self.formants();
        // --- long frame (mean removed: a DC offset is neither pitch nor energy) ---
        let dc = x.iter().sum::<f32>() / LONG as f32;
        for ((b, s), w) in self.buf_l.iter_mut().zip(x).zip(&self.win_l) {
            *b = (s - dc) * w;
        }
        self.buf_l[LONG..].iter_mut().for_each(|v| *v = 0.0);
        out.rms60 = (dot(&self.buf_l[..LONG], &self.buf_l[..LONG]) / LONG as f32).sqrt();
        self.fft_l
            .process_with_scratch(&mut self.buf_l, &mut self.spec_l, &mut self.scr_l)
            .expect("buffers made by the plan");
        for (m, c) in mag60.iter_mut().zip(&self.spec_l) {
            *m = c.norm_sqr().sqrt();
        }
        let (n, v) = self.shs.run(mag60, &mut out.cand);
        out.n_cand = n;
        out.voicing = v;
        // Autocorrelation = inverse FFT of the power spectrum (circular, as the FFT size).
        for c in self.spec_l.iter_mut() {
            *c = Complex::new(c.norm_sqr(), 0.0);
        }
        self.ifft_l
            .process_with_scratch(&mut self.spec_l, &mut self.acf_full, &mut self.scr_il)
            .expect("buffers made by the plan");
        acf.copy_from_slice(&self.acf_full[..ACF_LAGS]);
        out
    }

    fn spectral(&mut self, out: &mut FrameOut) {
        let df = RATE / FFT_SHORT as f32;
        let p = &self.pow_s;
        // Loudness: mel bands of the power spectrum, equal-loudness weighted, cube-root-ish
        // compressed (0.33), averaged over the bands.
        self.mel.apply(p, &mut self.bands);
        out.spectral[0] = self
            .bands
            .iter()
            .zip(&self.loud_w)
            .map(|(b, w)| (b * w).max(0.0).powf(0.33))
            .sum::<f32>()
            / MEL_BANDS as f32;
        let bin = |f: f32| ((f / df).round() as usize).min(p.len() - 1);
        let maxp = |a: usize, b: usize| p[a..=b].iter().cloned().fold(0.0f32, f32::max);
        let db = |v: f32| {
            if v > 0.0 {
                (10.0 * v.log10()).max(DB_FLOOR)
            } else {
                DB_FLOOR
            }
        };
        // alpha ratio: energy 1-5 kHz over energy 0-1 kHz; Hammarberg: peak 0-2 kHz over peak
        // 2-5 kHz (both in dB; frame by frame these match openSMILE's at r > 0.99).
        let (b1k, b2k, b5k) = (bin(1000.0), bin(2000.0), bin(5000.0));
        let sum = |a: usize, b: usize| p[a..=b].iter().sum::<f32>();
        out.spectral[1] = db(sum(b1k, b5k)) - db(sum(0, b1k - 1));
        out.spectral[2] = db(maxp(0, b2k - 1)) - db(maxp(b2k, b5k));
        // Spectral slopes 0-500 and 500-1500 Hz as eGeMAPS v02 computes them. openSMILE
        // measured as a black box (its slope output on white noise at four levels and on
        // speech, fitted to within 5e-7): a least-squares slope of the dB spectrum whose level
        // sums run over the band's bins (0-16, 16-48) but whose frequency sums and count run
        // over 18 and 35 bins (0-17, 16-50), times 1.425 and 1.844. The result depends on the
        // spectrum's level (about -0.0008 per dB for 0-500 Hz); it is reproduced as measured so
        // that the column means what it means in published eGeMAPS figures.
        for (slot, (ya, yb, xa, xb, scale)) in [
            (3, (0usize, 16usize, 0usize, 17usize, 1.424_995_3f32)),
            (4, (16, 48, 16, 50, 1.844_004_2)),
        ] {
            let (mut sy, mut sxy) = (0.0f32, 0.0f32);
            for (k, v) in p.iter().enumerate().take(yb + 1).skip(ya) {
                let y = db(*v);
                sy += y;
                sxy += (xa + k - ya) as f32 * df * y;
            }
            let (mut sx, mut sxx) = (0.0f32, 0.0f32);
            for k in xa..=xb {
                let f = k as f32 * df;
                sx += f;
                sxx += f * f;
            }
            let n = (xb - xa + 1) as f32;
            let den = n * sxx - sx * sx;
            out.spectral[slot] = if den > 0.0 {
                scale * (n * sxy - sx * sy) / den
            } else {
                0.0
            };
        }
        // Spectral flux: the RMS difference between consecutive magnitude spectra, 0-5 kHz.
        let mut flux = 0.0;
        for (prev, v) in self.prev_mag.iter_mut().zip(&p[..=b5k]) {
            let m = v.sqrt();
            let d = m - *prev;
            flux += d * d;
            *prev = m;
        }
        // Normalised by the band's bins above DC (openSMILE's scale, checked frame by frame).
        let flux = (flux / b5k as f32).sqrt();
        out.spectral[5] = flux;
        // MFCC 1-4: HTK-style (16-bit sample scale, log mel power, DCT-II, lifter 22).
        let scale = 32768.0f32 * 32768.0;
        let mut logs = [0.0f32; MEL_BANDS];
        for (l, b) in logs.iter_mut().zip(&self.bands) {
            *l = (b * scale).max(1.0).ln();
        }
        for k in 0..4 {
            out.spectral[6 + k] = self.dct[k].iter().zip(&logs).map(|(a, b)| a * b).sum();
        }
    }

    /// F1-F3 as eGeMAPS v02 defines them. openSMILE measured as a black box (its own
    /// intermediate levels read back through a probe configuration, see
    /// `tests/acoustic_probe.py`) does three things a textbook LPC formant tracker does not, and
    /// they are reproduced here because the descriptor is defined by them:
    /// 1. the "11 kHz signal" the LPC sees is the inverse transform, on the 11 kHz grid, of only
    ///    the lowest `LPC_OUT / 2` bins of the short frame's spectrum (0-3.4 kHz at 16 kHz),
    ///    with the DC bin counted twice, and of that only the first `LPC_OUT` samples, with the
    ///    frame in the middle of its FFT buffer;
    /// 2. the order-11 autocorrelation LPC is then solved by Levinson-Durbin as usual;
    /// 3. the formants are the roots of the polynomial with the predictor's signs flipped,
    ///    1 - a1 z^-1 - ... - a11 z^-11, not of the prediction-error filter itself.
    ///
    /// Frequencies 50-5450 Hz are kept, sorted; the bandwidth of a root z is -ln|z| fs / pi.
    fn formants(&mut self) -> [(f32, f32); 3] {
        self.lpc_spec
            .iter_mut()
            .for_each(|v| *v = Complex::new(0.0, 0.0));
        for ((z, x), r) in self
            .lpc_spec
            .iter_mut()
            .zip(&self.spec_s)
            .zip(&self.lpc_shift)
        {
            *z = x * r;
        }
        self.lpc_spec[0] = Complex::new(2.0 * self.lpc_spec[0].re, 0.0);
        self.ifft_lpc
            .process_with_scratch(&mut self.lpc_spec, &mut self.lpc_wave, &mut self.lpc_scr)
            .expect("buffers made by the plan");
        let y = &self.lpc_wave[..LPC_OUT];
        let mut acc = [0.0f64; LPC_ORDER + 1];
        for (m, a) in acc.iter_mut().enumerate() {
            *a = f64::from(dot(&y[..LPC_OUT - m], &y[m..]));
        }
        let mut out = [(0.0, 0.0); 3];
        let Some(mut a) = levinson(&acc) else {
            return out;
        };
        a[1..].iter_mut().for_each(|v| *v = -*v);
        if !find_roots(&a, &mut self.roots) {
            self.roots = initial_roots();
            if !find_roots(&a, &mut self.roots) {
                return out;
            }
        }
        let mut found = [(0.0f32, 0.0f32); LPC_ORDER];
        let mut n = 0;
        for z in &self.roots {
            if z.im <= 0.0 {
                continue;
            }
            let f = (z.im.atan2(z.re) * LPC_RATE as f64 / (2.0 * std::f64::consts::PI)) as f32;
            let bw = (-z.norm().ln() * LPC_RATE as f64 / std::f64::consts::PI) as f32;
            if f > 50.0 && f < 5450.0 {
                found[n] = (f, bw);
                n += 1;
            }
        }
        found[..n].sort_by(|a, b| a.0.total_cmp(&b.0));
        for (o, f) in out.iter_mut().zip(&found[..n]) {
            *o = *f;
        }
        out
    }
}

/// LPC coefficients a[1..=p] (a[0] = 1) from the autocorrelation, by Levinson-Durbin.
fn levinson(r: &[f64; LPC_ORDER + 1]) -> Option<[f64; LPC_ORDER + 1]> {
    if r[0] <= 1e-20 {
        return None;
    }
    let mut a = [0.0f64; LPC_ORDER + 1];
    let mut tmp = [0.0f64; LPC_ORDER + 1];
    a[0] = 1.0;
    let mut err = r[0] * (1.0 + 1e-9);
    for i in 1..=LPC_ORDER {
        let mut acc = r[i];
        for j in 1..i {
            acc += a[j] * r[i - j];
        }
        let k = -acc / err;
        tmp[..=i].copy_from_slice(&a[..=i]);
        for j in 1..i {
            a[j] = tmp[j] + k * tmp[i - j];
        }
        a[i] = k;
        err *= 1.0 - k * k;
        if err <= 0.0 {
            return None;
        }
    }
    Some(a)
}

fn initial_roots() -> [Complex<f64>; LPC_ORDER] {
    let seed = Complex::new(0.4, 0.9);
    let mut z = [Complex::new(0.0, 0.0); LPC_ORDER];
    let mut p = Complex::new(1.0, 0.0);
    for v in z.iter_mut() {
        p *= seed;
        *v = p;
    }
    z
}

/// Roots of z^p + a1 z^(p-1) + ... + ap by Durand-Kerner iteration, warm-started from `z`.
fn find_roots(a: &[f64; LPC_ORDER + 1], z: &mut [Complex<f64>; LPC_ORDER]) -> bool {
    let eval = |x: Complex<f64>| {
        let mut v = Complex::new(1.0, 0.0);
        for c in &a[1..] {
            v = v * x + c;
        }
        v
    };
    for _ in 0..200 {
        let mut delta = 0.0f64;
        for i in 0..LPC_ORDER {
            let mut den = Complex::new(1.0, 0.0);
            for j in 0..LPC_ORDER {
                if i != j {
                    den *= z[i] - z[j];
                }
            }
            if den.norm_sqr() < 1e-300 {
                den = Complex::new(1e-12, 1e-12);
            }
            let step = eval(z[i]) / den;
            z[i] -= step;
            delta = delta.max(step.norm_sqr());
        }
        if !delta.is_finite() {
            return false;
        }
        if delta < 1e-14 {
            return true;
        }
    }
    z.iter().all(|v| v.re.is_finite() && v.im.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spline_shortcut_equals_the_thomas_algorithm() {
        let n = LONG_BINS;
        let spline = Spline::new(n);
        let c = &spline.c;
        let mut seed = 1u32;
        let y: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect();
        let mut want = vec![0.0f32; n];
        for i in 1..n - 1 {
            let rhs = 6.0 * (y[i + 1] - 2.0 * y[i] + y[i - 1]);
            want[i] = (rhs - want[i - 1]) * c[i];
        }
        for i in (1..n - 1).rev() {
            want[i] -= c[i] * want[i + 1];
        }
        let (mut rhs, mut got) = (vec![0.0f32; n], vec![0.0f32; n]);
        spline.second_derivatives(&y, &mut rhs, &mut got);
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn roots_of_a_known_polynomial() {
        // (z - 0.9 e^{+-i0.5}) ... built from chosen roots, then recovered.
        let chosen: Vec<Complex<f64>> = (0..LPC_ORDER)
            .map(|k| {
                if k == LPC_ORDER - 1 {
                    Complex::new(0.5, 0.0)
                } else {
                    let ang = 0.3 + 0.5 * (k / 2) as f64;
                    let s = if k % 2 == 0 { 1.0 } else { -1.0 };
                    Complex::from_polar(0.9, s * ang)
                }
            })
            .collect();
        let mut poly = vec![Complex::new(1.0, 0.0)];
        for r in &chosen {
            let mut next = vec![Complex::new(0.0, 0.0); poly.len() + 1];
            for (i, c) in poly.iter().enumerate() {
                next[i] += c;
                next[i + 1] -= c * r;
            }
            poly = next;
        }
        let mut a = [0.0; LPC_ORDER + 1];
        for (v, c) in a.iter_mut().zip(&poly) {
            *v = c.re;
        }
        let mut z = initial_roots();
        assert!(find_roots(&a, &mut z));
        for r in &chosen {
            let best = z.iter().map(|x| (x - r).norm()).fold(f64::MAX, f64::min);
            assert!(best < 1e-6, "root {r} not found: {z:?}");
        }
    }

    #[test]
    fn mel_bank_covers_the_band() {
        let m = Mel::new(SHORT_BINS, RATE / FFT_SHORT as f32, 20.0, 8000.0, MEL_BANDS);
        assert_eq!(m.bands.len(), MEL_BANDS);
        assert!(m.bands.iter().all(|(_, w)| !w.is_empty()));
        assert!(m.centers.windows(2).all(|c| c[1] > c[0]));
    }
}
