//! The losses of interactive knowledge distillation (MODEL.md), as pure functions of tensors.
//! Token axes are flattened by the caller: logits are [N, C], features [N, d].

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Which distillation terms the student is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KdMode {
    /// Cross-entropy only.
    None,
    /// + logit KD.
    Logit,
    /// + Cross-KD.
    Cross,
    /// + latent alignment.
    Latent,
    /// All three (SUMMER).
    #[default]
    All,
}

/// Weights and temperature of the distillation terms (the `[kd]` table of a recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdConfig {
    /// Which terms.
    pub mode: KdMode,
    /// lambda of logit KD.
    pub logit: f64,
    /// lambda of Cross-KD.
    pub cross: f64,
    /// lambda of the latent loss.
    pub latent: f64,
    /// Softmax temperature T.
    pub temperature: f64,
    /// The teacher: `false` the text branch alone (SUMMER), `true` a fused multimodal network.
    pub multimodal_teacher: bool,
}

impl Default for KdConfig {
    fn default() -> Self {
        KdConfig {
            mode: KdMode::All,
            logit: 1.0,
            cross: 0.5,
            latent: 0.5,
            temperature: 2.0,
            multimodal_teacher: false,
        }
    }
}

impl KdConfig {
    /// (logit, cross, latent) weights after the mode.
    pub fn weights(&self) -> (f64, f64, f64) {
        match self.mode {
            KdMode::None => (0.0, 0.0, 0.0),
            KdMode::Logit => (self.logit, 0.0, 0.0),
            KdMode::Cross => (0.0, self.cross, 0.0),
            KdMode::Latent => (0.0, 0.0, self.latent),
            KdMode::All => (self.logit, self.cross, self.latent),
        }
    }
}

/// T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the N tokens.
pub fn soft_kl(teacher: &Tensor, student: &Tensor, t: f64) -> Tensor {
    let pt = (teacher / t).softmax(-1, Kind::Float);
    let log_pt = (teacher / t).log_softmax(-1, Kind::Float);
    let log_ps = (student / t).log_softmax(-1, Kind::Float);
    let n = teacher.size()[0].max(1) as f64;
    (pt * (log_pt - log_ps)).sum(Kind::Float) / n * (t * t)
}

/// Mean of 1 - cos(a_i, b_i) over the N tokens.
pub fn cosine_loss(a: &Tensor, b: &Tensor) -> Tensor {
    let cos = Tensor::cosine_similarity(a, b, -1, 1e-8);
    let loss: Tensor = 1.0 - cos;
    loss.mean(Kind::Float)
}

/// Cross-entropy over tokens whose label is >= 0.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -1, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn soft_kl_matches_the_closed_form() {
        // Two tokens, two classes. Token 1: teacher [0, 0] (p = 1/2, 1/2), student [ln 3, 0]
        // (q = 3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3). Token 2: identical: 0.
        let teacher = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 2.0]).view([2, 2]);
        let student = Tensor::from_slice(&[3f32.ln(), 0.0, 1.0, 2.0]).view([2, 2]);
        let got = scalar(&soft_kl(&teacher, &student, 1.0));
        let want = 0.5 * (0.5 * (4.0f64 / 3.0).ln());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Temperature 2: logits halved, loss scaled by 4. Token 1 student [ln3/2, 0]:
        // q1 = sqrt3/(sqrt3+1).
        let got = scalar(&soft_kl(&teacher, &student, 2.0));
        let q1 = 3f64.sqrt() / (3f64.sqrt() + 1.0);
        let kl = 0.5 * (0.5 / q1).ln() + 0.5 * (0.5 / (1.0 - q1)).ln();
        let want = 4.0 * kl / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn cosine_loss_matches_the_closed_form() {
        // (1,0)·(1,0) = 1 -> 0; (1,0)·(0,1) = 0 -> 1; (1,1)·(-1,-1) = -1 -> 2. Mean = 1.
        let a = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0]).view([3, 2]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0]).view([3, 2]);
        assert!((scalar(&cosine_loss(&a, &b)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_ignores_unlabelled_tokens() {
        let logits = Tensor::from_slice(&[0.0f32, 0.0, 5.0, -5.0]).view([2, 2]);
        let labels = Tensor::from_slice(&[0i64, -1]);
        let got = scalar(&cross_entropy(&logits, &labels));
        assert!((got - 2f64.ln()).abs() < 1e-6, "{got}");
    }

    #[test]
    fn modes_select_their_terms() {
        let c = KdConfig::default();
        assert_eq!(
            KdConfig {
                mode: KdMode::None,
                ..c.clone()
            }
            .weights(),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(
            KdConfig {
                mode: KdMode::Cross,
                ..c.clone()
            }
            .weights(),
            (0.0, 0.5, 0.0)
        );
        assert_eq!(c.weights(), (1.0, 0.5, 0.5));
    }
}
