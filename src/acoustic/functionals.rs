//! The 88 eGeMAPS v02 functionals of a span of LLD frames, named as openSMILE names them.

use super::frame::DB_FLOOR;

/// LLD indices within [`Lld::v`].
pub mod idx {
    /// Loudness.
    pub const LOUDNESS: usize = 0;
    /// alphaRatio.
    pub const ALPHA: usize = 1;
    /// spectralFlux.
    pub const FLUX: usize = 5;
    /// MFCC 1 (2-4 follow).
    pub const MFCC1: usize = 6;
    /// F0 in semitones from 27.5 Hz; 0 = unvoiced.
    pub const F0: usize = 10;
    /// jitterLocal (the 14 voice LLDs start here).
    pub const JITTER: usize = 11;
    /// F1 frequency (bandwidth and amplitude follow; then F2, F3).
    pub const F1: usize = 16;
}

/// The 25 LLDs, as openSMILE's eGeMAPSv02 LLD output names them.
pub const LLD_NAMES: [&str; 25] = [
    "Loudness_sma3",
    "alphaRatio_sma3",
    "hammarbergIndex_sma3",
    "slope0-500_sma3",
    "slope500-1500_sma3",
    "spectralFlux_sma3",
    "mfcc1_sma3",
    "mfcc2_sma3",
    "mfcc3_sma3",
    "mfcc4_sma3",
    "F0semitoneFrom27.5Hz_sma3nz",
    "jitterLocal_sma3nz",
    "shimmerLocaldB_sma3nz",
    "HNRdBACF_sma3nz",
    "logRelF0-H1-H2_sma3nz",
    "logRelF0-H1-A3_sma3nz",
    "F1frequency_sma3nz",
    "F1bandwidth_sma3nz",
    "F1amplitudeLogRelF0_sma3nz",
    "F2frequency_sma3nz",
    "F2bandwidth_sma3nz",
    "F2amplitudeLogRelF0_sma3nz",
    "F3frequency_sma3nz",
    "F3bandwidth_sma3nz",
    "F3amplitudeLogRelF0_sma3nz",
];

/// The 88 functionals, in openSMILE's order and with its names.
pub const NAMES: [&str; 88] = [
    "F0semitoneFrom27.5Hz_sma3nz_amean",
    "F0semitoneFrom27.5Hz_sma3nz_stddevNorm",
    "F0semitoneFrom27.5Hz_sma3nz_percentile20.0",
    "F0semitoneFrom27.5Hz_sma3nz_percentile50.0",
    "F0semitoneFrom27.5Hz_sma3nz_percentile80.0",
    "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2",
    "F0semitoneFrom27.5Hz_sma3nz_meanRisingSlope",
    "F0semitoneFrom27.5Hz_sma3nz_stddevRisingSlope",
    "F0semitoneFrom27.5Hz_sma3nz_meanFallingSlope",
    "F0semitoneFrom27.5Hz_sma3nz_stddevFallingSlope",
    "loudness_sma3_amean",
    "loudness_sma3_stddevNorm",
    "loudness_sma3_percentile20.0",
    "loudness_sma3_percentile50.0",
    "loudness_sma3_percentile80.0",
    "loudness_sma3_pctlrange0-2",
    "loudness_sma3_meanRisingSlope",
    "loudness_sma3_stddevRisingSlope",
    "loudness_sma3_meanFallingSlope",
    "loudness_sma3_stddevFallingSlope",
    "spectralFlux_sma3_amean",
    "spectralFlux_sma3_stddevNorm",
    "mfcc1_sma3_amean",
    "mfcc1_sma3_stddevNorm",
    "mfcc2_sma3_amean",
    "mfcc2_sma3_stddevNorm",
    "mfcc3_sma3_amean",
    "mfcc3_sma3_stddevNorm",
    "mfcc4_sma3_amean",
    "mfcc4_sma3_stddevNorm",
    "jitterLocal_sma3nz_amean",
    "jitterLocal_sma3nz_stddevNorm",
    "shimmerLocaldB_sma3nz_amean",
    "shimmerLocaldB_sma3nz_stddevNorm",
    "HNRdBACF_sma3nz_amean",
    "HNRdBACF_sma3nz_stddevNorm",
    "logRelF0-H1-H2_sma3nz_amean",
    "logRelF0-H1-H2_sma3nz_stddevNorm",
    "logRelF0-H1-A3_sma3nz_amean",
    "logRelF0-H1-A3_sma3nz_stddevNorm",
    "F1frequency_sma3nz_amean",
    "F1frequency_sma3nz_stddevNorm",
    "F1bandwidth_sma3nz_amean",
    "F1bandwidth_sma3nz_stddevNorm",
    "F1amplitudeLogRelF0_sma3nz_amean",
    "F1amplitudeLogRelF0_sma3nz_stddevNorm",
    "F2frequency_sma3nz_amean",
    "F2frequency_sma3nz_stddevNorm",
    "F2bandwidth_sma3nz_amean",
    "F2bandwidth_sma3nz_stddevNorm",
    "F2amplitudeLogRelF0_sma3nz_amean",
    "F2amplitudeLogRelF0_sma3nz_stddevNorm",
    "F3frequency_sma3nz_amean",
    "F3frequency_sma3nz_stddevNorm",
    "F3bandwidth_sma3nz_amean",
    "F3bandwidth_sma3nz_stddevNorm",
    "F3amplitudeLogRelF0_sma3nz_amean",
    "F3amplitudeLogRelF0_sma3nz_stddevNorm",
    "alphaRatioV_sma3nz_amean",
    "alphaRatioV_sma3nz_stddevNorm",
    "hammarbergIndexV_sma3nz_amean",
    "hammarbergIndexV_sma3nz_stddevNorm",
    "slopeV0-500_sma3nz_amean",
    "slopeV0-500_sma3nz_stddevNorm",
    "slopeV500-1500_sma3nz_amean",
    "slopeV500-1500_sma3nz_stddevNorm",
    "spectralFluxV_sma3nz_amean",
    "spectralFluxV_sma3nz_stddevNorm",
    "mfcc1V_sma3nz_amean",
    "mfcc1V_sma3nz_stddevNorm",
    "mfcc2V_sma3nz_amean",
    "mfcc2V_sma3nz_stddevNorm",
    "mfcc3V_sma3nz_amean",
    "mfcc3V_sma3nz_stddevNorm",
    "mfcc4V_sma3nz_amean",
    "mfcc4V_sma3nz_stddevNorm",
    "alphaRatioUV_sma3nz_amean",
    "hammarbergIndexUV_sma3nz_amean",
    "slopeUV0-500_sma3nz_amean",
    "slopeUV500-1500_sma3nz_amean",
    "spectralFluxUV_sma3nz_amean",
    "loudnessPeaksPerSec",
    "VoicedSegmentsPerSec",
    "MeanVoicedSegmentLengthSec",
    "StddevVoicedSegmentLengthSec",
    "MeanUnvoicedSegmentLength",
    "StddevUnvoicedSegmentLength",
    "equivalentSoundLevel_dBp",
];

/// Fewest voiced frames for the voice functionals to mean anything.
pub const MIN_VOICED_FRAMES: usize = 3;
const FRAME_S: f32 = 0.01;

/// One 10 ms frame's descriptors, unsmoothed. Voice LLDs are 0 on unvoiced frames, the formant
/// amplitudes -201 dB there (as openSMILE writes them); formant frequencies and bandwidths are
/// kept for every frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lld {
    /// The 25 LLDs in [`LLD_NAMES`] order.
    pub v: [f32; 25],
    /// Mean square of the frame (for the equivalent sound level).
    pub energy2: f32,
    /// Where the frame stands at the end of a stream (see [`Edge`]).
    pub edge: Edge,
}

/// Frames at the very end of a stream, which openSMILE's functionals of a whole recording
/// treat apart (measured on its intermediate levels; see `AcousticStream::flush`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Edge {
    /// An ordinary frame.
    #[default]
    Inner,
    /// Its pitch was decided only by the end of input: openSMILE's voice functionals (read
    /// through its jitter stage, which stops at the end of input) never see it.
    Unsettled,
    /// A last 20 ms frame with no 60 ms frame behind it (the final 40 ms of a stream): it has
    /// only the energy/spectral LLDs, and only the functionals over all frames count it.
    Short,
}

impl Lld {
    /// Whether the frame is voiced.
    pub fn voiced(&self) -> bool {
        self.v[idx::F0] > 0.0
    }
}

/// The functionals of one span.
#[derive(Debug, Clone, PartialEq)]
pub struct Functionals {
    /// The 88 values in [`NAMES`] order; always finite. Voice functionals are 0 when the span
    /// has fewer than [`MIN_VOICED_FRAMES`] voiced frames.
    pub values: [f32; 88],
    /// Frames in the span.
    pub frames: usize,
    /// Voiced frames in the span.
    pub voiced_frames: usize,
}

impl Functionals {
    /// The explicit marker: false when the span has too few voiced frames for the F0 and
    /// voice-quality functionals (they are then 0).
    pub fn enough_voiced(&self) -> bool {
        self.voiced_frames >= MIN_VOICED_FRAMES
    }

    /// (name, value) pairs in order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f32)> + '_ {
        NAMES.iter().copied().zip(self.values.iter().copied())
    }
}

/// 3-frame moving average (openSMILE's `sma3`); the first and last frames count twice in their
/// own average (the contour is extended by repeating its ends, as openSMILE's smoother does:
/// its first smoothed value is (2 x0 + x1) / 3).
fn sma3(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    let n = x.len();
    for i in 0..n {
        let prev = x[i.saturating_sub(1)];
        let next = x[(i + 1).min(n - 1)];
        out.push((prev + x[i] + next) / 3.0);
    }
}

/// Moving average over non-zero neighbours; zeros stay zero (`sma3nz`). Ends as [`sma3`].
fn sma3nz(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    let n = x.len();
    for i in 0..n {
        if x[i] == 0.0 {
            out.push(0.0);
            continue;
        }
        let prev = x[i.saturating_sub(1)];
        let next = x[(i + 1).min(n - 1)];
        let (s, c) = [prev, x[i], next]
            .iter()
            .filter(|v| **v != 0.0)
            .fold((0.0f32, 0usize), |(s, c), v| (s + v, c + 1));
        out.push(s / c as f32);
    }
}

fn mean_cov(x: &[f32]) -> (f32, f32) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    let cov = if mean != 0.0 { var.sqrt() / mean } else { 0.0 };
    (mean as f32, cov as f32)
}

fn mean_std(x: &[f32]) -> (f32, f32) {
    let (m, c) = mean_cov(x);
    (m, c * m)
}

/// Percentile with linear interpolation between order statistics (`sorted` ascending).
fn percentile(sorted: &[f32], p: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = p * (sorted.len() - 1) as f32;
    let i = pos.floor() as usize;
    let t = pos - i as f32;
    if i + 1 < sorted.len() {
        sorted[i] * (1.0 - t) + sorted[i + 1] * t
    } else {
        sorted[i]
    }
}

/// Peaks and the slopes between alternating extrema, found with a hysteresis of 10 % of the
/// contour's range. Returns (number of peaks, rising slopes, falling slopes), slopes per second
/// and both positive.
fn peaks(x: &[f32]) -> (usize, Vec<f32>, Vec<f32>) {
    let (mut rising, mut falling) = (Vec::new(), Vec::new());
    if x.len() < 3 {
        return (0, rising, falling);
    }
    let (lo, hi) = x
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let th = 0.1 * (hi - lo);
    if th <= 0.0 {
        return (0, rising, falling);
    }
    // Looking for: None (either), Some(true) a maximum, Some(false) a minimum.
    let mut want: Option<bool> = None;
    let (mut mx, mut mn) = ((0usize, x[0]), (0usize, x[0]));
    let mut last: Option<(usize, f32)> = None;
    let mut n_peaks = 0;
    let mut record = |at: (usize, f32), is_max: bool, last: &mut Option<(usize, f32)>| {
        if let Some((i, v)) = *last {
            let dt = (at.0 - i) as f32 * FRAME_S;
            if dt > 0.0 {
                let s = (at.1 - v).abs() / dt;
                if is_max {
                    rising.push(s);
                } else {
                    falling.push(s);
                }
            }
        }
        *last = Some(at);
    };
    for (i, v) in x.iter().copied().enumerate().skip(1) {
        if v > mx.1 {
            mx = (i, v);
        }
        if v < mn.1 {
            mn = (i, v);
        }
        match want {
            None => {
                if mx.1 - mn.1 >= th {
                    if mx.0 > mn.0 {
                        record(mn, false, &mut last);
                        want = Some(true);
                    } else {
                        record(mx, true, &mut last);
                        n_peaks += 1;
                        want = Some(false);
                        mn = (i, v);
                    }
                }
            }
            Some(true) => {
                if v < mx.1 - th {
                    record(mx, true, &mut last);
                    n_peaks += 1;
                    want = Some(false);
                    mn = (i, v);
                }
            }
            Some(false) => {
                if v > mn.1 + th {
                    record(mn, false, &mut last);
                    want = Some(true);
                    mx = (i, v);
                }
            }
        }
    }
    (n_peaks, rising, falling)
}

/// The lengths (s) of the runs of non-zero (`nonzero`) or zero values. A run of L frames
/// lasts from its first frame to its last, (L - 1) frames, as openSMILE's segment functionals
/// measure it (checked on its own F0 contours: mean and spread of both kinds agree to 1e-4 s).
fn runs(x: &[f32], nonzero: bool) -> Vec<f32> {
    let mut out = Vec::new();
    let mut len = 0usize;
    for v in x {
        if (*v != 0.0) == nonzero {
            len += 1;
        } else if len > 0 {
            out.push((len - 1) as f32 * FRAME_S);
            len = 0;
        }
    }
    if len > 0 {
        out.push((len - 1) as f32 * FRAME_S);
    }
    out
}

/// The smoothed LLD contours of a span, as openSMILE's LLD output shows them: `sma3` for the
/// energy/spectral ten, `sma3nz` for the rest.
pub fn smooth(frames: &[Lld]) -> Vec<[f32; 25]> {
    let mut out = vec![[0.0f32; 25]; frames.len()];
    let mut col = Vec::with_capacity(frames.len());
    let mut sm = Vec::with_capacity(frames.len());
    for d in 0..25 {
        col.clear();
        col.extend(frames.iter().map(|f| f.v[d]));
        if d < idx::F0 {
            sma3(&col, &mut sm);
        } else {
            sma3nz(&col, &mut sm);
        }
        for (o, v) in out.iter_mut().zip(&sm) {
            o[d] = *v;
        }
    }
    out
}

/// The 88 functionals of `frames` (consecutive 10 ms frames).
///
/// Inside a stream every frame counts for every functional. At the end of a stream (frames
/// marked by [`Edge`]) the sets differ as openSMILE's do for a whole recording: the functionals
/// over all frames (loudness, flux, MFCC, the equivalent sound level) take every frame, the
/// short final ones included; F0, the unvoiced means and the voiced-segment statistics take the
/// frames with a pitch analysis; the voice-quality and voiced spectral functionals stop before
/// the frames whose pitch only the end of input decided (the voiced spectral contours are
/// smoothed first and cut after, the voice-quality ones cut first, as openSMILE's levels are).
pub fn compute(frames: &[Lld]) -> Functionals {
    let n = frames.len();
    let mut values = [0.0f32; 88];
    // Short frames come last, unsettled ones just before them.
    let pitched = &frames[..frames
        .iter()
        .position(|f| f.edge == Edge::Short)
        .unwrap_or(n)];
    let settled = &frames[..pitched
        .iter()
        .position(|f| f.edge == Edge::Unsettled)
        .unwrap_or(pitched.len())];
    let voiced_frames = pitched.iter().filter(|f| f.voiced()).count();
    let mut out = Functionals {
        values,
        frames: n,
        voiced_frames,
    };
    if n == 0 {
        return out;
    }
    let enough = voiced_frames >= MIN_VOICED_FRAMES;
    let mut col = Vec::with_capacity(n);
    let mut sm = Vec::with_capacity(n);
    let column = |frames: &[Lld], d: usize, gate: Option<bool>, col: &mut Vec<f32>| {
        col.clear();
        col.extend(frames.iter().map(|f| match gate {
            Some(v) if f.voiced() != v => 0.0,
            _ => f.v[d],
        }));
    };
    let nonzero = |x: &[f32]| {
        x.iter()
            .copied()
            .filter(|v| *v != 0.0)
            .collect::<Vec<f32>>()
    };
    let mut put = |at: usize, x: &[f32; 10]| values[at..at + 10].copy_from_slice(x);

    // F0 (voiced, non-zero) and loudness (all frames): moments, percentiles, slopes; and the
    // number of peaks the slopes were found between.
    let ten = |x: &[f32]| {
        let mut r = [0.0f32; 10];
        if x.is_empty() {
            return (r, 0);
        }
        let (m, c) = mean_cov(x);
        let mut s = x.to_vec();
        s.sort_by(f32::total_cmp);
        let (p20, p50, p80) = (
            percentile(&s, 0.2),
            percentile(&s, 0.5),
            percentile(&s, 0.8),
        );
        let (n_peaks, rise, fall) = peaks(x);
        let (rm, rs) = mean_std(&rise);
        let (fm, fs) = mean_std(&fall);
        r.copy_from_slice(&[m, c, p20, p50, p80, p80 - p20, rm, rs, fm, fs]);
        (r, n_peaks)
    };
    column(pitched, idx::F0, None, &mut col);
    let mut f0_smooth = Vec::with_capacity(n);
    sma3nz(&col, &mut f0_smooth);
    if enough {
        put(0, &ten(&nonzero(&f0_smooth)).0);
    }
    column(frames, idx::LOUDNESS, None, &mut col);
    sma3(&col, &mut sm);
    let (loudness, loudness_peaks) = ten(&sm);
    put(10, &loudness);

    // spectralFlux, MFCC 1-4 over all frames.
    for (k, d) in [
        idx::FLUX,
        idx::MFCC1,
        idx::MFCC1 + 1,
        idx::MFCC1 + 2,
        idx::MFCC1 + 3,
    ]
    .iter()
    .enumerate()
    {
        column(frames, *d, None, &mut col);
        sma3(&col, &mut sm);
        let (m, c) = mean_cov(&sm);
        values[20 + 2 * k] = m;
        values[21 + 2 * k] = c;
    }
    // 14 voice LLDs (formant frequencies/bandwidths gated to voiced frames) and 9 spectral
    // LLDs of voiced frames: mean and coefficient of variation of the non-zero values.
    if enough {
        for k in 0..14 {
            let d = idx::JITTER + k;
            let is_formant_fb = d >= idx::F1 && (d - idx::F1) % 3 != 2;
            column(settled, d, is_formant_fb.then_some(true), &mut col);
            sma3nz(&col, &mut sm);
            let (m, c) = mean_cov(&nonzero(&sm));
            values[30 + 2 * k] = m;
            values[31 + 2 * k] = c;
        }
        for (k, d) in (idx::ALPHA..idx::MFCC1 + 4).enumerate() {
            column(pitched, d, Some(true), &mut col);
            sma3nz(&col, &mut sm);
            sm.truncate(settled.len());
            let (m, c) = mean_cov(&nonzero(&sm));
            values[58 + 2 * k] = m;
            values[59 + 2 * k] = c;
        }
    }
    // Unvoiced means of alphaRatio, Hammarberg, the slopes and the flux.
    for (k, d) in (idx::ALPHA..=idx::FLUX).enumerate() {
        column(pitched, d, Some(false), &mut col);
        sma3nz(&col, &mut sm);
        values[76 + k] = mean_cov(&nonzero(&sm)).0;
    }
    // Temporal.
    values[81] = loudness_peaks as f32 / (n as f32 * FRAME_S);
    let voiced = runs(&f0_smooth, true);
    let unvoiced = runs(&f0_smooth, false);
    let (vm, vs) = mean_std(&voiced);
    let (um, us) = mean_std(&unvoiced);
    values[82] = voiced.len() as f32 / (pitched.len().max(1) as f32 * FRAME_S);
    values[83] = vm;
    values[84] = vs;
    values[85] = um;
    values[86] = us;
    let e = frames.iter().map(|f| f.energy2 as f64).sum::<f64>() / n as f64;
    values[87] = if e > 0.0 {
        ((10.0 * e.log10()) as f32).max(DB_FLOOR)
    } else {
        DB_FLOOR
    };
    for v in values.iter_mut() {
        if !v.is_finite() {
            *v = 0.0;
        }
    }
    out.values = values;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_keeps_zeros_and_averages_neighbours() {
        let mut out = Vec::new();
        sma3nz(&[0.0, 3.0, 6.0, 0.0, 9.0], &mut out);
        assert_eq!(out, vec![0.0, 4.5, 4.5, 0.0, 9.0]);
        sma3nz(&[3.0, 6.0, 0.0], &mut out);
        assert_eq!(out, vec![4.0, 4.5, 0.0]);
        sma3(&[0.0, 3.0, 6.0], &mut out);
        assert_eq!(out, vec![1.0, 3.0, 5.0]);
    }

    #[test]
    fn peaks_of_a_triangle_wave() {
        // 0..10..0..10..0: two peaks, each rising/falling 10 units in 10 frames (0.1 s).
        let x: Vec<f32> = (0..=40)
            .map(|i| {
                let p = i % 20;
                if p <= 10 { p as f32 } else { (20 - p) as f32 }
            })
            .collect();
        let (n, rise, fall) = peaks(&x);
        assert_eq!(n, 2);
        assert!(rise.iter().all(|s| (s - 100.0).abs() < 1e-3), "{rise:?}");
        assert!(fall.iter().all(|s| (s - 100.0).abs() < 1e-3), "{fall:?}");
    }

    #[test]
    fn percentiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 0.5), 3.0);
        assert!((percentile(&s, 0.2) - 1.8).abs() < 1e-6);
    }

    #[test]
    fn empty_and_tiny_spans_are_finite() {
        let f = compute(&[]);
        assert_eq!(f.frames, 0);
        assert!(!f.enough_voiced());
        let one = compute(&[Lld::default()]);
        assert!(one.values.iter().all(|v| v.is_finite()));
    }
}
