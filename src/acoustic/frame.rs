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
    /// Pitch candidates (Hz, voicing 0-1), best-scoring first; `n_cand` of them are valid.
    pub cand: [(f32, f32); CANDIDATES],
    /// Valid candidates.
    pub n_cand: usize,
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
/// The steps follow openSMILE's `cSpecScale` + `cPitchShs` as eGeMAPS v02 configures them,
/// measured against its intermediate levels (read back through a probe configuration, frame by
/// frame; its octave-scale spectrum is then reproduced to 1e-6 of its peak from its own
/// magnitude spectrum): on the linear magnitude spectrum, zero every bin 3 or more bins away
/// from both local maxima around it (peak enhancement; the ends count as maxima when higher
/// than their neighbour, and what lies outside the first and last maximum is kept) and smooth
/// with [1/4, 1/2, 1/4] in place from the low end (the first bin sees 0 below it, the last is
/// left as is); interpolate onto an octave scale of as many points (25 Hz to Nyquist) with a
/// natural cubic spline whose knots are the bins' log2 frequencies (the DC bin placed one step
/// below the first); weight by the raised arc-tangent of the point's position; sum 15 harmonics
/// with weights 0.85^(h-1) at whole-point offsets.
struct Shs {
    /// The spline's knots (log2 Hz of each linear bin) and its fixed solver factors.
    knots: KnotSpline,
    /// Auditory weight per point.
    weight: Vec<f32>,
    /// Point offsets of harmonics 1..=15 (whole points: `floor(log2(h) * n / octaves)`).
    shift: [usize; SHS_HARMONICS],
    /// Harmonic weights 0.85^(n-1).
    hw: [f32; SHS_HARMONICS],
    lf0: f32,
    step: f32,
    lin: Vec<f64>,
    maxima: Vec<usize>,
    peaks: Vec<usize>,
    d2: Vec<f64>,
    u: Vec<f64>,
    spec: Vec<f32>,
    sum: Vec<f32>,
}

impl Shs {
    fn new(df: f32) -> Shs {
        let n = LONG_BINS;
        let lf0 = SHS_MIN_F.log2();
        let lf1 = (RATE / 2.0).log2();
        let step = (lf1 - lf0) / (n - 1) as f32;
        let octaves = (lf1 - lf0) as f64;
        // openSMILE's points per octave: the points over the octaves, n / octaves (not the
        // scale's own step); with it its candidates follow from its octave spectrum to 1e-7.
        let per_octave = n as f64 / octaves;
        let mut knots: Vec<f64> = (0..n).map(|i| (i as f64 * df as f64).log2()).collect();
        knots[0] = 2.0 * knots[1] - knots[2];
        let points: Vec<f64> = (0..n)
            .map(|j| lf0 as f64 + j as f64 * octaves / (n - 1) as f64)
            .collect();
        let centre = per_octave * (65.0f64 / 50.0).log2() - 1.0;
        let weight = (0..n)
            .map(|j| {
                (0.5 + (3.0 * (j as f64 + 1.0 - centre) / per_octave).atan() / std::f64::consts::PI)
                    as f32
            })
            .collect();
        let mut shift = [0; SHS_HARMONICS];
        let mut hw = [0.0; SHS_HARMONICS];
        for h in 0..SHS_HARMONICS {
            shift[h] = (per_octave * ((h + 1) as f64).log2()).floor() as usize;
            hw[h] = SHS_COMPRESSION.powi(h as i32);
        }
        Shs {
            knots: KnotSpline::new(&knots, &points),
            weight,
            shift,
            hw,
            lf0,
            step,
            lin: vec![0.0; n],
            maxima: Vec::with_capacity(n + 2),
            peaks: Vec::with_capacity(n),
            d2: vec![0.0; n],
            u: vec![0.0; n],
            spec: vec![0.0; n],
            sum: vec![0.0; n],
        }
    }

    /// Candidates (Hz, voicing) from a linear magnitude spectrum, the best-scoring first;
    /// returns their count. As openSMILE's SHS picks them: the six highest
    /// local maxima of the subharmonic sum over the whole octave scale, those outside
    /// 55-1000 Hz then dropped (so a strong peak outside the range still takes a place);
    /// voicing 1 - (mean of the sum over the scale) / (the peak's interpolated sum), 0 when
    /// the peak is not above the mean (such a candidate still counts).
    fn run(&mut self, mag: &[f32], cand: &mut [(f32, f32); CANDIDATES]) -> usize {
        let n = self.lin.len();
        // Peak enhancement on the linear spectrum: the local maxima (the ends included when
        // higher than their neighbour), then every bin at least 3 bins from both maxima around
        // it zeroed. openSMILE, given a single maximum, zeroes from bin 3 on; so does this.
        let y = &mut self.lin;
        for (o, m) in y.iter_mut().zip(mag) {
            *o = *m as f64;
        }
        self.maxima.clear();
        if mag[0] > mag[1] {
            self.maxima.push(0);
        }
        interior_peaks(&mag[..n], |a, b, c| b > a && b >= c, &mut self.maxima);
        if mag[n - 1] > mag[n - 2] {
            self.maxima.push(n - 1);
        }
        if self.maxima.len() == 1 {
            y[3..].iter_mut().for_each(|v| *v = 0.0);
        } else {
            for w in self.maxima.windows(2) {
                if w[1] >= w[0] + 6 {
                    y[w[0] + 3..=w[1] - 3].iter_mut().for_each(|v| *v = 0.0);
                }
            }
        }
        // Smoothing in place from the low end: each bin from its (already smoothed) lower
        // neighbour's original value, itself twice and its upper neighbour; the last bin kept.
        let mut below = 0.0;
        for j in 0..n - 1 {
            let here = y[j];
            y[j] = (below + 2.0 * here + y[j + 1]) / 4.0;
            below = here;
        }
        // Onto the octave scale, weighted; negative spline values are 0.
        self.knots
            .second_derivatives(&self.lin, &mut self.u, &mut self.d2);
        for ((o, v), w) in self
            .spec
            .iter_mut()
            .zip(self.knots.eval(&self.lin, &self.d2))
            .zip(&self.weight)
        {
            *o = if v > 0.0 { (v as f32) * w } else { 0.0 };
        }
        // The subharmonic sum: each point plus the points a whole number of octave-scale steps
        // above it (harmonics 2..=15, weights 0.85^(h-1)), over 15.
        self.sum.copy_from_slice(&self.spec);
        for h in 1..SHS_HARMONICS {
            let (off, w) = (self.shift[h], self.hw[h]);
            if off >= n {
                break;
            }
            for (s, x) in self.sum[..n - off].iter_mut().zip(&self.spec[off..]) {
                *s += w * x;
            }
        }
        let scale = 1.0 / SHS_HARMONICS as f32;
        self.sum.iter_mut().for_each(|v| *v = (*v * scale).max(0.0));
        let mut lanes = [0.0f64; 4];
        let quads = self.sum.chunks_exact(4);
        let rest: f64 = quads.remainder().iter().map(|v| *v as f64).sum();
        for q in quads {
            for (l, v) in lanes.iter_mut().zip(q) {
                *l += *v as f64;
            }
        }
        let mean = (lanes.iter().sum::<f64>() + rest) / n as f64;
        // The six highest strict local maxima over the whole scale (a later one displaces only a
        // strictly lower one), then interpolated, then those outside 55-1000 Hz dropped.
        let mut top = [(0usize, 0.0f32); CANDIDATES];
        let mut found = 0;
        // The peaks first, then ranked in order.
        self.peaks.clear();
        interior_peaks(&self.sum, |a, b, c| a < b && b > c, &mut self.peaks);
        for &j in &self.peaks {
            let b = self.sum[j];
            // Full: only a peak above the lowest kept one gets in (the scores are positive).
            if b > top[CANDIDATES - 1].1
                && let Some(at) = top.iter().position(|t| t.1 == 0.0 || t.1 < b)
            {
                top.copy_within(at..CANDIDATES - 1, at + 1);
                top[at] = (j, b);
                found = (found + 1).min(CANDIDATES);
            }
        }
        let mut count = 0;
        let mut scores = [0.0f32; CANDIDATES];
        for &(j, _) in &top[..found] {
            let (a, b, c) = (self.sum[j - 1], self.sum[j], self.sum[j + 1]);
            let den = a - 2.0 * b + c;
            let d = if den != 0.0 { 0.5 * (a - c) / den } else { 0.0 };
            let f = (self.lf0 + self.step * (j as f32 + d)).exp2();
            let score = b - 0.25 * (a - c) * d;
            if !(PITCH_MIN..=PITCH_MAX).contains(&f) {
                continue;
            }
            let voicing = if score > 0.0 && score as f64 > mean {
                (1.0 - mean / score as f64) as f32
            } else {
                0.0
            };
            cand[count] = (f, voicing);
            scores[count] = score;
            count += 1;
        }
        // The best-scoring candidate (the first of equals) first; the others keep their order.
        let best = (1..count).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        cand.swap(0, best);
        count
    }
}

/// Appends to `out` the indices j (1..len-1) where `is_peak(x[j-1], x[j], x[j+1])`. Collected
/// without a branch per point (every index is written, the count advances only at a peak):
/// peaks are where a branch predictor cannot guess.
fn interior_peaks(x: &[f32], is_peak: impl Fn(f32, f32, f32) -> bool, out: &mut Vec<usize>) {
    let start = out.len();
    out.resize(start + x.len(), 0);
    let mut count = start;
    for (j, w) in x.windows(3).enumerate() {
        out[count] = j + 1;
        count += usize::from(is_peak(w[0], w[1], w[2]));
    }
    out.truncate(count);
}

/// A natural cubic spline on fixed, unevenly spaced knots, evaluated at fixed points: the
/// tridiagonal solver's factors and each point's interval and weights are computed once.
struct KnotSpline {
    /// Per knot: (x[i] - x[i-1]) / (x[i+1] - x[i-1]) times the forward factor, 6 times the
    /// forward factor, the backward coefficient, and 1 / ((x[i+1] - x[i]) (x[i+1] - x[i-1]))
    /// and 1 / ((x[i] - x[i-1]) (x[i+1] - x[i-1])).
    sp: Vec<f64>,
    p6: Vec<f64>,
    c: Vec<f64>,
    inv1: Vec<f64>,
    inv2: Vec<f64>,
    /// Per point: the knot below it and the weights of y[k], y2[k], y2[k+1] (y[k+1] gets
    /// 1 - the first).
    at: Vec<(usize, f64, f64, f64)>,
}

impl KnotSpline {
    fn new(x: &[f64], points: &[f64]) -> KnotSpline {
        let n = x.len();
        let (mut sp, mut p6, mut c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut inv1, mut inv2) = (vec![0.0; n], vec![0.0; n]);
        for i in 1..n - 1 {
            let sigma = (x[i] - x[i - 1]) / (x[i + 1] - x[i - 1]);
            let p = 1.0 / (sigma * c[i - 1] + 2.0);
            c[i] = (sigma - 1.0) * p;
            sp[i] = sigma * p;
            p6[i] = 6.0 * p;
            inv1[i] = 1.0 / ((x[i + 1] - x[i]) * (x[i + 1] - x[i - 1]));
            inv2[i] = 1.0 / ((x[i] - x[i - 1]) * (x[i + 1] - x[i - 1]));
        }
        let at = points
            .iter()
            .map(|&v| {
                let hi = x.partition_point(|k| *k < v).clamp(1, n - 1);
                let lo = hi - 1;
                let range = x[hi] - x[lo];
                let a = (x[hi] - v) / range;
                let b = 1.0 - a;
                let r2 = range * range / 6.0;
                (lo, a, (a * a * a - a) * r2, (b * b * b - b) * r2)
            })
            .collect();
        KnotSpline {
            sp,
            p6,
            c,
            inv1,
            inv2,
            at,
        }
    }

    /// The second derivatives `d2` of the natural spline through `y` (`u` is scratch).
    fn second_derivatives(&self, y: &[f64], u: &mut [f64], d2: &mut [f64]) {
        let n = y.len();
        // The right-hand sides first (independent of each other), then the two recursions.
        for (i, o) in u.iter_mut().enumerate().take(n - 1).skip(1) {
            let t = (y[i + 1] - y[i]) * self.inv1[i] - (y[i] - y[i - 1]) * self.inv2[i];
            *o = self.p6[i] * t;
        }
        u[0] = 0.0;
        for i in 1..n - 1 {
            u[i] -= self.sp[i] * u[i - 1];
        }
        d2[n - 1] = 0.0;
        for j in (0..n - 1).rev() {
            d2[j] = self.c[j] * d2[j + 1] + u[j];
        }
    }

    /// The spline's values at the points.
    fn eval<'a>(&'a self, y: &'a [f64], d2: &'a [f64]) -> impl Iterator<Item = f64> + 'a {
        self.at
            .iter()
            .map(move |&(k, a, c, d)| a * y[k] + (1.0 - a) * y[k + 1] + c * d2[k] + d * d2[k + 1])
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
        // --- long frame (as openSMILE: its mean is not removed; measured, removing it moved
        // the magnitude spectrum's low bins by up to 87 % of the frame's peak) ---
        for ((b, s), w) in self.buf_l.iter_mut().zip(x).zip(&self.win_l) {
            *b = s * w;
        }
        self.buf_l[LONG..].iter_mut().for_each(|v| *v = 0.0);
        out.rms60 = (dot(&self.buf_l[..LONG], &self.buf_l[..LONG]) / LONG as f32).sqrt();
        self.fft_l
            .process_with_scratch(&mut self.buf_l, &mut self.spec_l, &mut self.scr_l)
            .expect("buffers made by the plan");
        for (m, c) in mag60.iter_mut().zip(&self.spec_l) {
            *m = c.norm_sqr().sqrt();
        }
        out.n_cand = self.shs.run(mag60, &mut out.cand);
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
    fn knot_spline_solves_the_natural_spline_equations() {
        // Uneven knots (log2 of bin frequencies, as the pitch detector uses).
        let n = 64;
        let mut x: Vec<f64> = (0..n).map(|i| (i as f64 * 15.625).log2()).collect();
        x[0] = 2.0 * x[1] - x[2];
        let mut seed = 1u32;
        let y: Vec<f64> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f64 / (1u32 << 24) as f64
            })
            .collect();
        let spline = KnotSpline::new(&x, &x[1..n - 1]);
        let (mut u, mut d2) = (vec![0.0; n], vec![0.0; n]);
        spline.second_derivatives(&y, &mut u, &mut d2);
        assert_eq!((d2[0], d2[n - 1]), (0.0, 0.0), "natural ends");
        for i in 1..n - 1 {
            let (h0, h1) = (x[i] - x[i - 1], x[i + 1] - x[i]);
            let lhs = h0 / 6.0 * d2[i - 1] + (h0 + h1) / 3.0 * d2[i] + h1 / 6.0 * d2[i + 1];
            let rhs = (y[i + 1] - y[i]) / h1 - (y[i] - y[i - 1]) / h0;
            assert!(
                (lhs - rhs).abs() < 1e-9 * rhs.abs().max(1.0),
                "knot {i}: {lhs} vs {rhs}"
            );
        }
        // It passes through the data at the knots.
        for (v, want) in spline.eval(&y, &d2).zip(&y[1..n - 1]) {
            assert!((v - want).abs() < 1e-12, "{v} vs {want}");
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
