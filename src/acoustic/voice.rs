//! The descriptors that need the frame's F0: jitter and shimmer from the waveform's periods,
//! the harmonics-to-noise ratio from the autocorrelation, and harmonic levels (H1-H2, H1-A3,
//! formant amplitudes relative to H1) from the 60 ms magnitude spectrum.

use super::frame::{ACF_LAGS, DB_FLOOR, FFT_LONG, RATE};

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
        let ea: f32 = a.iter().map(|v| v * v).sum();
        // Normalised cross-correlation at each candidate period (and one past the range, for
        // the refinement); at most 0.2 * 320 + 3 lags.
        let mut corr = [0.0f32; 72];
        let span = (hi + 2 - lo).min(corr.len());
        let mut eb: f32 = x[p + lo..p + lo + len].iter().map(|v| v * v).sum();
        for (i, c) in corr[..span].iter_mut().enumerate() {
            let b = &x[p + lo + i..p + lo + i + len];
            if i > 0 {
                // slide the energy window by one sample
                eb += b[len - 1] * b[len - 1] - x[p + lo + i - 1] * x[p + lo + i - 1];
            }
            let ab: f32 = a.iter().zip(b).map(|(u, v)| u * v).sum();
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Harmonics {
    /// H1-H2 (dB).
    pub h1_h2: f32,
    /// H1-A3 (dB): A3 is the harmonic nearest F3.
    pub h1_a3: f32,
    /// F1-F3 amplitude relative to H1 (dB): the strongest harmonic within the formant's
    /// bandwidth.
    pub formant_amp: [f32; 3],
}

/// Unvoiced frames: the floor openSMILE writes for the formant amplitudes.
pub const UNVOICED_HARMONICS: Harmonics = Harmonics {
    h1_h2: 0.0,
    h1_a3: 0.0,
    formant_amp: [DB_FLOOR; 3],
};

fn harmonic(mag: &[f32], f0: f32, k: usize) -> f32 {
    let df = RATE / FFT_LONG as f32;
    let centre = k as f32 * f0 / df;
    let half = (0.25 * f0 / df).max(1.0);
    let a = ((centre - half).round().max(0.0)) as usize;
    let b = ((centre + half).round() as usize).min(mag.len() - 1);
    if a > b {
        return 0.0;
    }
    mag[a..=b].iter().cloned().fold(0.0f32, f32::max)
}

/// Harmonic levels from the 60 ms magnitude spectrum, the frame's F0 and formants.
pub fn harmonics(mag: &[f32], f0: f32, formants: &[(f32, f32); 3]) -> Harmonics {
    if f0 <= 0.0 {
        return UNVOICED_HARMONICS;
    }
    let nyq = RATE / 2.0;
    let h1 = harmonic(mag, f0, 1);
    let h2 = harmonic(mag, f0, 2);
    let f3 = formants[2].0;
    let h1_a3 = if f3 > 0.0 {
        let k = ((f3 / f0).round() as usize).max(1);
        db20(h1 / harmonic(mag, f0, k))
    } else {
        0.0
    };
    let mut formant_amp = [DB_FLOOR; 3];
    for (amp, (f, bw)) in formant_amp.iter_mut().zip(formants) {
        if *f <= 0.0 {
            continue;
        }
        let lo = (f - bw / 2.0).max(f0 * 0.5);
        let hi = (f + bw / 2.0).min(nyq);
        let k0 = (lo / f0).ceil().max(1.0) as usize;
        let k1 = (hi / f0).floor() as usize;
        let mut best = 0.0f32;
        for k in k0..=k1.max(k0) {
            if k as f32 * f0 <= hi || k == k0 {
                best = best.max(harmonic(mag, f0, k));
            }
        }
        *amp = db20(best / h1);
    }
    Harmonics {
        h1_h2: db20(h1 / h2),
        h1_a3,
        formant_amp,
    }
}
