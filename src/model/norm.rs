//! Per-speaker normalisation of the acoustic vectors, online.
//!
//! Voices differ more than emotions do, so an utterance's 88 functionals are standardised by
//! the statistics of the same speaker's utterances. In a live call only the speaker's past is
//! known: each speaker keeps running statistics (Welford), and until they have said enough the
//! estimate leans on a prior taken from the training speakers. With `k` the prior weight and
//! `n` the speaker's utterances so far (this one included):
//!
//! ```text
//! mean = (k * prior_mean + n * speaker_mean) / (k + n)
//! var  = (k * prior_std^2 + sum of squared deviations from speaker_mean) / (k + n)
//! x'   = (x - mean) / sqrt(var)
//! ```
//!
//! `prior_mean` is the training speakers' overall mean and `prior_std` their pooled
//! within-speaker standard deviation, so a new speaker starts at the average voice and moves
//! to their own over roughly `k` utterances. The trainer builds its sequences with exactly
//! this code, utterance by utterance, so the model sees during training what the daemon will
//! give it.

use serde::{Deserialize, Serialize};

/// The normalisation a model expects, stored in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakerNorm {
    /// Weight of the prior, in utterances.
    pub prior_weight: f64,
    /// Prior mean per dimension.
    pub mean: Vec<f32>,
    /// Prior (pooled within-speaker) standard deviation per dimension.
    pub std: Vec<f32>,
}

/// One speaker's running statistics (serialisable for a conversation checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerStats {
    n: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl SpeakerStats {
    /// Utterances seen.
    pub fn count(&self) -> usize {
        self.n as usize
    }
}

impl SpeakerNorm {
    /// Fresh statistics for a new speaker.
    pub fn fresh(&self) -> SpeakerStats {
        SpeakerStats {
            n: 0.0,
            mean: vec![0.0; self.mean.len()],
            m2: vec![0.0; self.mean.len()],
        }
    }

    /// Whether `s` could have been made by this normalisation: its length, a finite count of
    /// at least 0, finite sums and a spread of at least 0 (for a checkpoint from elsewhere).
    pub fn fits(&self, s: &SpeakerStats) -> bool {
        s.mean.len() == self.mean.len()
            && s.m2.len() == self.mean.len()
            && s.n.is_finite()
            && s.n >= 0.0
            && s.mean.iter().all(|v| v.is_finite())
            && s.m2.iter().all(|v| v.is_finite() && *v >= 0.0)
    }

    /// Add `x` to the speaker's statistics and return it normalised. A non-finite value is
    /// taken as the prior mean (it neither moves the statistics nor the output).
    pub fn apply(&self, s: &mut SpeakerStats, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.mean.len());
        s.n += 1.0;
        let k = self.prior_weight.max(0.0);
        let mut out = Vec::with_capacity(x.len());
        for (i, &v) in x.iter().enumerate() {
            let v = if v.is_finite() {
                f64::from(v)
            } else {
                f64::from(self.mean[i])
            };
            let d = v - s.mean[i];
            s.mean[i] += d / s.n;
            s.m2[i] += d * (v - s.mean[i]);
            let mean = (k * f64::from(self.mean[i]) + s.n * s.mean[i]) / (k + s.n);
            let prior_var = f64::from(self.std[i]).powi(2);
            let var = (k * prior_var + s.m2[i]) / (k + s.n);
            let sd = var.sqrt().max(1e-6);
            out.push(((v - mean) / sd) as f32);
        }
        out
    }

    /// The prior from training speakers' vectors: overall mean and pooled within-speaker
    /// standard deviation (a dimension constant within every speaker gets 1).
    pub fn from_speakers(speakers: &[Vec<&[f32]>], prior_weight: f64) -> SpeakerNorm {
        let dim = speakers.iter().flatten().next().map_or(0, |v| v.len());
        let mut sum = vec![0.0f64; dim];
        let mut n = 0.0;
        let mut within = vec![0.0f64; dim];
        let mut dof = 0.0;
        for sp in speakers {
            if sp.is_empty() {
                continue;
            }
            let mut m = vec![0.0f64; dim];
            for v in sp {
                for i in 0..dim {
                    m[i] += f64::from(v[i]);
                    sum[i] += f64::from(v[i]);
                }
            }
            n += sp.len() as f64;
            m.iter_mut().for_each(|x| *x /= sp.len() as f64);
            for v in sp {
                for i in 0..dim {
                    within[i] += (f64::from(v[i]) - m[i]).powi(2);
                }
            }
            dof += (sp.len() - 1) as f64;
        }
        SpeakerNorm {
            prior_weight,
            mean: sum.iter().map(|s| (s / n.max(1.0)) as f32).collect(),
            std: within
                .iter()
                .map(|w| {
                    let sd = (w / dof.max(1.0)).sqrt();
                    if sd > 1e-9 { sd as f32 } else { 1.0 }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(k: f64) -> SpeakerNorm {
        SpeakerNorm {
            prior_weight: k,
            mean: vec![10.0],
            std: vec![2.0],
        }
    }

    #[test]
    fn first_utterance_leans_on_the_prior() {
        let n = norm(4.0);
        let mut s = n.fresh();
        // mean = (4*10 + 14)/5 = 10.8; var = 4*4/5 = 3.2
        let y = n.apply(&mut s, &[14.0])[0];
        assert!((y - (14.0 - 10.8) / 3.2f32.sqrt()).abs() < 1e-5, "{y}");
    }

    #[test]
    fn a_long_run_converges_to_the_speakers_own_statistics() {
        let n = norm(4.0);
        let mut s = n.fresh();
        // A speaker centred at 20 with spread 1 (alternating 19, 21).
        let mut last = 0.0;
        for i in 0..2000 {
            last = n.apply(&mut s, &[if i % 2 == 0 { 19.0 } else { 21.0 }])[0];
        }
        assert!((last - 1.0).abs() < 0.02, "{last}");
        assert_eq!(s.count(), 2000);
    }

    #[test]
    fn without_prior_weight_it_is_plain_running_standardisation() {
        let n = norm(0.0);
        let mut s = n.fresh();
        n.apply(&mut s, &[1.0]);
        let y = n.apply(&mut s, &[3.0])[0];
        // mean 2, population var 1
        assert!((y - 1.0).abs() < 1e-6, "{y}");
    }

    #[test]
    fn non_finite_values_are_the_prior_mean() {
        let n = norm(4.0);
        let mut s = n.fresh();
        let y = n.apply(&mut s, &[f32::NAN])[0];
        assert_eq!(y, 0.0);
    }

    #[test]
    fn prior_is_overall_mean_and_pooled_within_speaker_spread() {
        let a = [[0.0f32], [2.0]];
        let b = [[10.0f32], [12.0]];
        let sp: Vec<Vec<&[f32]>> = vec![
            a.iter().map(|v| &v[..]).collect(),
            b.iter().map(|v| &v[..]).collect(),
        ];
        let n = SpeakerNorm::from_speakers(&sp, 8.0);
        assert_eq!(n.mean, vec![6.0]);
        // within: (1+1+1+1)/(1+1) = 2 -> sd sqrt(2)
        assert!((n.std[0] - 2f32.sqrt()).abs() < 1e-6);
    }
}
