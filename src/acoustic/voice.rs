//! The descriptors that need the frame's F0: jitter and shimmer from the waveform's periods,
//! the harmonics-to-noise ratio from the autocorrelation, and harmonic levels (H1-H2, H1-A3,
//! formant amplitudes relative to H1) from the 60 ms magnitude spectrum.

use super::frame::{ACF_LAGS, DB_FLOOR, FFT_LONG, RATE, dot};

const MAX_PERIODS: usize = 8;
const MIN_CC: f32 = 0.5;
const SEARCH_REL: f32 = 0.1;

fn db20(ratio: f32) -> f32 {
    if ratio > 0.0 && ratio.is_finite() {
        (20.0 * ratio.log10()).max(DB_FLOOR)
    } else {
        DB_FLOOR
    }
}

/// Local jitter (mean absolute difference of consecutive periods over the mean period) and
/// local shimmer in dB (mean absolute level difference of consecutive periods), from up to 8
/// periods found in `x` by cross-correlation within +-10 % of 1/`f0`, each with a correlation of
/// at least 0.5. `None` when fewer than two periods are found.
pub fn jitter_shimmer(x: &[f32], f0: f32) -> Option<(f32, f32)> {
    if f0 <= 0.0 {
        return None;
    }
    let t0 = RATE / f0;
    let len = t0.round() as usize;
    let lo = ((1.0 - SEARCH_REL) * t0).floor().max(2.0) as usize;
    let hi = ((1.0 + SEARCH_REL) * t0).ceil() as usize;
    if len < 2 || x.len() < len + hi + 1 {
        return None;
    }
    let mut p = (0..len)
        .max_by(|a, b| x[*a].abs().total_cmp(&x[*b].abs()))
        .unwrap_or(0);
    let polarity = if x[p] < 0.0 { -1.0 } else { 1.0 };
    let mut periods = [0.0f32; MAX_PERIODS];
    let mut amps = [0.0f32; MAX_PERIODS];
    let mut n = 0;
    while n < MAX_PERIODS && p + hi + 1 + len <= x.len() {
        let a = &x[p..p + len];
        let ea = dot(a, a);
        // Normalised cross-correlation at each candidate period (and one past the range, for
        // the refinement); at most 0.2 * 320 + 3 lags.
        let mut corr = [0.0f32; 72];
        let span = (hi + 2 - lo).min(corr.len());
        let first = &x[p + lo..p + lo + len];
        let mut eb = dot(first, first);
        for (i, c) in corr[..span].iter_mut().enumerate() {
            let b = &x[p + lo + i..p + lo + i + len];
            if i > 0 {
                // slide the energy window by one sample
                eb += b[len - 1] * b[len - 1] - x[p + lo + i - 1] * x[p + lo + i - 1];
            }
            let ab = dot(a, b);
            *c = if ea > 0.0 && eb > 1e-12 {
                ab / (ea * eb).sqrt()
            } else {
                0.0
            };
        }
        let last = (hi - lo).min(span - 1);
        let bi = (0..=last)
            .max_by(|i, j| corr[*i].total_cmp(&corr[*j]))
            .unwrap_or(0);
        if corr[bi] < MIN_CC {
            break;
        }
        let step = lo + bi;
        // Parabolic refinement of the period.
        let mut period = step as f32;
        if bi > 0 && bi + 1 < span {
            let (c0, c1, c2) = (corr[bi - 1], corr[bi], corr[bi + 1]);
            let den = c0 - 2.0 * c1 + c2;
            if den < 0.0 {
                period += (0.5 * (c0 - c2) / den).clamp(-0.5, 0.5);
            }
        }
        periods[n] = period;
        // The period's level: its peak of the polarity of the first period's largest sample
        // (the period starts at that phase), searched half a period either side.
        let a0 = p.saturating_sub(step / 2);
        amps[n] = x[a0..p + step / 2]
            .iter()
            .fold(0.0f32, |m, v| m.max(v * polarity));
        n += 1;
        p += step;
    }
    if n < 2 {
        return None;
    }

    let mean_t = periods[..n].iter().sum::<f32>() / n as f32;
    let jitter = periods[..n]
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .sum::<f32>()
        / (n - 1) as f32
        / mean_t;
    let shimmer = amps[..n]
        .windows(2)
        .map(|w| {
            if w[0] > 0.0 && w[1] > 0.0 {
                (20.0 * (w[1] / w[0]).log10()).abs()
            } else {
                0.0
            }
        })
        .sum::<f32>()
        / (n - 1) as f32;
    Some((jitter, shimmer))
}

/// Harmonics-to-noise ratio (dB) from the autocorrelation's peak near the period 1/`f0`.
pub fn hnr_db(acf: &[f32], f0: f32) -> f32 {
    if f0 <= 0.0 || acf[0] <= 0.0 {
        return 0.0;
    }
    let t0 = RATE / f0;
    let lo = ((1.0 - SEARCH_REL) * t0).floor().max(1.0) as usize;
    let hi = (((1.0 + SEARCH_REL) * t0).ceil() as usize).min(ACF_LAGS - 1);
    if lo > hi {
        return 0.0;
    }
    let r = acf[lo..=hi].iter().cloned().fold(f32::MIN, f32::max) / acf[0];
    let r = r.clamp(1e-3, 1.0 - 1e-6);
    10.0 * (r / (1.0 - r)).log10()
}

/// Harmonic levels of one voiced frame.
///
/// As eGeMAPS v02 computes them, measured on openSMILE 2.6.0 as a black box (frame by frame
/// on its own F0, formants and spectrum, and on synthetic harmonic signals whose harmonic
/// levels were set one by one):
/// - "H1-H2" is the level of the 2nd harmonic over the 3rd (openSMILE's harmonic index is one
///   off: raising the 2nd harmonic by 6 dB raises its "H1-H2" by 6 dB and leaves the 1st
///   harmonic's level irrelevant), and "H1-A3" is the 2nd harmonic over A3;
/// - A3 and the formant amplitudes are the strongest harmonic within +-20 % of the formant's
///   frequency (the first harmonic when none is), the amplitudes relative to the 1st harmonic;
/// - a harmonic's level is the spectrum's largest bin within +-10 % of F0 of its frequency.
///
/// summerd reproduces these so that its columns line up with published eGeMAPS figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Harmonics {
    /// "H1-H2" (dB), as openSMILE defines it (see above).
    pub h1_h2: f32,
    /// "H1-A3" (dB), as openSMILE defines it.
    pub h1_a3: f32,
    /// F1-F3 amplitude relative to H1 (dB).
    pub formant_amp: [f32; 3],
}

/// Unvoiced frames: the floor openSMILE writes for the formant amplitudes.
pub const UNVOICED_HARMONICS: Harmonics = Harmonics {
    h1_h2: 0.0,
    h1_a3: 0.0,
    formant_amp: [DB_FLOOR; 3],
};

/// The level of harmonic `k` of `f0`: the largest bin within +-10 % of F0 of k * f0.
fn harmonic(mag: &[f32], f0: f32, k: usize) -> f32 {
    let df = RATE / FFT_LONG as f32;
    let (f, w) = (k as f32 * f0, 0.1 * f0);
    let a = ((f - w) / df).floor().max(0.0) as usize;
    let b = (((f + w) / df).ceil() as usize).min(mag.len() - 1);
    if a > b {
        return 0.0;
    }
    mag[a..=b].iter().cloned().fold(0.0f32, f32::max)
}

/// The strongest harmonic within +-20 % of the formant frequency `f` (the first when none is).
fn formant_harmonic(mag: &[f32], f0: f32, f: f32) -> f32 {
    let nyq = RATE / 2.0;
    let k0 = ((0.8 * f / f0).ceil() as usize).max(1);
    let k1 = ((1.2 * f).min(nyq) / f0).floor() as usize;
    if k1 < k0 {
        return harmonic(mag, f0, 1);
    }
    (k0..=k1)
        .map(|k| harmonic(mag, f0, k))
        .fold(0.0f32, f32::max)
}

/// Harmonic levels from the 60 ms magnitude spectrum, the frame's F0 and formants.
pub fn harmonics(mag: &[f32], f0: f32, formants: &[(f32, f32); 3]) -> Harmonics {
    if f0 <= 0.0 {
        return UNVOICED_HARMONICS;
    }
    let h1 = harmonic(mag, f0, 1);
    let h2 = harmonic(mag, f0, 2);
    let h3 = harmonic(mag, f0, 3);
    let f3 = formants[2].0;
    let h1_a3 = if f3 > 0.0 {
        db20(h2 / formant_harmonic(mag, f0, f3))
    } else {
        0.0
    };
    let mut formant_amp = [DB_FLOOR; 3];
    for (amp, (f, _)) in formant_amp.iter_mut().zip(formants) {
        if *f > 0.0 {
            *amp = db20(formant_harmonic(mag, f0, *f) / h1);
        }
    }
    Harmonics {
        h1_h2: db20(h2 / h3),
        h1_a3,
        formant_amp,
    }
}
