//! Noise for measuring and training the voice model where calls live: pink noise, babble made
//! of other speakers' speech, and mixing at a chosen signal-to-noise ratio.
//!
//! The SNR is measured on the speech's *active* level (ITU-T P.56 in spirit, simplified): the
//! mean power of the 20 ms frames whose RMS is within 40 dB of the loudest frame, so the
//! silence a clip is padded with does not count as signal. The noise's level is its mean power
//! over the whole clip. Everything is seeded: the same clip, seed and SNR give the same samples.

use std::str::FromStr;

use crate::rng::Rng;

/// A kind of noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseKind {
    /// 1/f noise (Kellet's filter on white noise): the spectral tilt of room and line noise.
    Pink,
    /// Several other speakers talking at once, each at the same level.
    Babble,
}

/// Noise at a signal-to-noise ratio, as the command line writes it: `pink:10`, `babble:5`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Noise {
    /// The kind.
    pub kind: NoiseKind,
    /// Speech's active level over the noise's level, in dB.
    pub snr_db: f32,
}

/// Speakers summed into babble.
pub const BABBLE_TALKERS: usize = 6;

impl Noise {
    /// Its name in file and table names: `pink10`, `babble5`.
    pub fn name(&self) -> String {
        let kind = match self.kind {
            NoiseKind::Pink => "pink",
            NoiseKind::Babble => "babble",
        };
        format!("{kind}{}", self.snr_db)
    }
}

impl FromStr for Noise {
    type Err = String;

    fn from_str(s: &str) -> Result<Noise, String> {
        let (kind, snr) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}': expected KIND:SNR_DB, e.g. pink:10 or babble:5"))?;
        let kind = match kind {
            "pink" => NoiseKind::Pink,
            "babble" => NoiseKind::Babble,
            k => return Err(format!("'{k}': the noises are pink and babble")),
        };
        let snr_db: f32 = snr
            .parse()
            .map_err(|_| format!("'{snr}': the SNR is a number of dB"))?;
        if !snr_db.is_finite() || !(-20.0..=60.0).contains(&snr_db) {
            return Err(format!("{snr_db} dB: the SNR must be within -20..60 dB"));
        }
        Ok(Noise { kind, snr_db })
    }
}

/// `n` samples of pink noise (unit-ish level; [`mix_at_snr`] scales it), from `seed`.
pub fn pink(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut b = [0f64; 7];
    (0..n)
        .map(|_| {
            let white = rng.unit() * 2.0 - 1.0;
            b[0] = 0.99886 * b[0] + white * 0.0555179;
            b[1] = 0.99332 * b[1] + white * 0.0750759;
            b[2] = 0.96900 * b[2] + white * 0.1538520;
            b[3] = 0.86650 * b[3] + white * 0.3104856;
            b[4] = 0.55000 * b[4] + white * 0.5329522;
            b[5] = -0.7616 * b[5] - white * 0.0168980;
            let out = b[..6].iter().sum::<f64>() + b[6] + white * 0.5362;
            b[6] = white * 0.115926;
            (out * 0.11) as f32
        })
        .collect()
}

/// `n` samples of babble: [`BABBLE_TALKERS`] of `others` (clips with their
/// [`active_power`]; chosen from `seed`, each starting at a random point and looping), each
/// scaled to the same active level, summed. None when `others` has no clip with speech.
pub fn babble(others: &[(&[f32], f64)], n: usize, seed: u64) -> Option<Vec<f32>> {
    let voiced: Vec<(&[f32], f64)> = others
        .iter()
        .copied()
        .filter(|(c, p)| *p > 0.0 && !c.is_empty())
        .collect();
    if voiced.is_empty() || n == 0 {
        return None;
    }
    let mut rng = Rng::new(seed);
    let mut out = vec![0f32; n];
    for _ in 0..BABBLE_TALKERS {
        let (clip, power) = voiced[rng.below(voiced.len())];
        let gain = 1.0 / power.sqrt();
        let start = rng.below(clip.len());
        for (i, o) in out.iter_mut().enumerate() {
            *o += clip[(start + i) % clip.len()] * gain as f32;
        }
    }
    Some(out)
}

/// Mean power of the 20 ms frames within 40 dB of the loudest (0 for silence).
pub fn active_power(samples: &[f32], rate: u32) -> f64 {
    let frame = (rate as usize / 50).max(1);
    let powers: Vec<f64> = samples
        .chunks(frame)
        .map(|c| c.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / c.len() as f64)
        .collect();
    let loudest = powers.iter().copied().fold(0.0, f64::max);
    if loudest <= 0.0 {
        return 0.0;
    }
    let active: Vec<f64> = powers
        .into_iter()
        .filter(|p| *p >= loudest * 1e-4)
        .collect();
    active.iter().sum::<f64>() / active.len() as f64
}

/// `signal` with `noise` (at least as long) added at `snr_db` below its active level. A silent
/// signal is returned as it is (no SNR to keep).
pub fn mix_at_snr(signal: &[f32], rate: u32, noise: &[f32], snr_db: f32) -> Vec<f32> {
    let s = active_power(signal, rate);
    let noise = &noise[..signal.len().min(noise.len())];
    let n = noise.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / noise.len().max(1) as f64;
    if s <= 0.0 || n <= 0.0 {
        return signal.to_vec();
    }
    let gain = (s / n / 10f64.powf(f64::from(snr_db) / 10.0)).sqrt() as f32;
    signal
        .iter()
        .zip(noise.iter().chain(std::iter::repeat(&0.0)))
        .map(|(x, v)| x + v * gain)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, rate: u32) -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin())
            .collect()
    }

    #[test]
    fn parses_and_names() {
        let n: Noise = "babble:5".parse().unwrap();
        assert_eq!(
            (n.kind, n.snr_db, n.name()),
            (NoiseKind::Babble, 5.0, "babble5".into())
        );
        assert!("pink".parse::<Noise>().unwrap_err().contains("KIND:SNR_DB"));
        assert!(
            "white:5"
                .parse::<Noise>()
                .unwrap_err()
                .contains("pink and babble")
        );
        assert!("pink:x".parse::<Noise>().is_err());
        assert!("pink:100".parse::<Noise>().is_err());
    }

    #[test]
    fn mixes_at_the_asked_snr_on_the_active_part() {
        let rate = 16_000;
        // One second of tone, then a second of silence (padding that must not count).
        let mut sig = tone(16_000, rate);
        sig.extend(vec![0.0; 16_000]);
        let noise = pink(sig.len(), 3);
        for snr in [20.0f32, 10.0, 5.0] {
            let mixed = mix_at_snr(&sig, rate, &noise, snr);
            let added: Vec<f32> = mixed.iter().zip(&sig).map(|(m, s)| m - s).collect();
            let n = added.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / added.len() as f64;
            let got = 10.0 * (active_power(&sig, rate) / n).log10();
            assert!((got - f64::from(snr)).abs() < 0.01, "{snr}: {got}");
        }
        assert_eq!(mix_at_snr(&[0.0; 100], rate, &noise, 10.0), vec![0.0; 100]);
    }

    #[test]
    fn pink_noise_falls_3_db_an_octave() {
        let x = pink(1 << 16, 1);
        // A first difference is a +6 dB/octave filter: white noise comes out with twice its
        // power, pink noise (its power mostly low) with far less.
        let p = |v: &[f32]| v.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>();
        let diff: Vec<f32> = x.windows(2).map(|w| w[1] - w[0]).collect();
        let ratio = p(&diff) / p(&x);
        assert!(ratio < 0.5, "{ratio}");
        assert_eq!(pink(100, 9), pink(100, 9));
        assert_ne!(pink(100, 9), pink(100, 10));
    }

    #[test]
    fn babble_levels_its_talkers_and_needs_speech() {
        let rate = 16_000;
        let loud = tone(8_000, rate);
        let quiet: Vec<f32> = loud.iter().map(|x| x * 0.01).collect();
        let with = |c: &[f32]| (c.to_vec(), active_power(c, rate));
        let (l, q) = (with(&loud), with(&quiet));
        let b = babble(&[(&l.0, l.1), (&q.0, q.1)], 4_000, 2).unwrap();
        assert_eq!(b.len(), 4_000);
        assert!(b.iter().any(|x| *x != 0.0));
        // Every talker at the same level: the quiet clip alone makes the same babble.
        let only_q = babble(&[(&q.0, q.1)], 4_000, 2).unwrap();
        let only_l = babble(&[(&l.0, l.1)], 4_000, 2).unwrap();
        for (a, b) in only_q.iter().zip(&only_l) {
            assert!((a - b).abs() < 1e-3, "{a} {b}");
        }
        assert!(babble(&[(&[0.0; 10][..], 0.0)], 10, 1).is_none());
        assert!(babble(&[], 10, 1).is_none());
    }
}
