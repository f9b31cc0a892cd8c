//! Building blocks of SUMMER on tch: masked multi-head attention, the sparse dynamic mixture of
//! experts (SDMoE) and the gated cross-modal attention (DynAttn).
//!
//! Masks are boolean `[B, T, S]` tensors, true where query t may look at key s. A masked score is
//! set to -1e9 (its softmax weight is exactly 0 in f32, so a masked key cannot change a result
//! by a single bit); a query with no key at all gets a zero attention output.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

const MASKED: f64 = -1e9;

/// Multi-head attention with separate query and key/value inputs.
#[derive(Debug)]
pub struct Mha {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    heads: i64,
}

impl Mha {
    /// Weights under `p`: `q`, `k`, `v`, `o`.
    pub fn new(p: nn::Path, d: i64, heads: i64) -> Mha {
        let c = Default::default();
        Mha {
            q: nn::linear(&p / "q", d, d, c),
            k: nn::linear(&p / "k", d, d, c),
            v: nn::linear(&p / "v", d, d, c),
            o: nn::linear(&p / "o", d, d, c),
            heads,
        }
    }

    /// `xq` [B, T, d] attends to `xkv` [B, S, d] where `mask` [B, T, S] allows.
    pub fn forward(
        &self,
        xq: &Tensor,
        xkv: &Tensor,
        mask: &Tensor,
        dropout: f64,
        train: bool,
    ) -> Tensor {
        let (b, t, d) = xq.size3().expect("[B, T, d]");
        let s = xkv.size()[1];
        let dh = d / self.heads;
        let split = |x: Tensor, n: i64| x.view([b, n, self.heads, dh]).transpose(1, 2);
        let q = split(self.q.forward(xq), t);
        let k = split(self.k.forward(xkv), s);
        let v = split(self.v.forward(xkv), s);
        let m = mask.unsqueeze(1);
        let scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt();
        let w = scores
            .masked_fill(&m.logical_not(), MASKED)
            .softmax(-1, Kind::Float)
            .dropout(dropout, train);
        let any = mask.any_dim(-1, true).unsqueeze(1).to_kind(Kind::Float);
        let out = (w.matmul(&v) * any)
            .transpose(1, 2)
            .contiguous()
            .view([b, t, d]);
        self.o.forward(&out)
    }
}

/// Two linear layers with a GELU between.
#[derive(Debug)]
struct Ffn {
    l0: nn::Linear,
    l1: nn::Linear,
}

impl Ffn {
    fn new(p: nn::Path, d: i64, hidden: i64) -> Ffn {
        Ffn {
            l0: nn::linear(&p / "0", d, hidden, Default::default()),
            l1: nn::linear(&p / "1", hidden, d, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.l1.forward(&self.l0.forward(x).gelu("none"))
    }
}

/// A post-norm Transformer encoder layer (self-attention + FFN).
#[derive(Debug)]
pub struct EncoderLayer {
    attn: Mha,
    ln1: nn::LayerNorm,
    ffn: Ffn,
    ln2: nn::LayerNorm,
    dropout: f64,
}

impl EncoderLayer {
    /// Weights under `p`.
    pub fn new(p: nn::Path, d: i64, heads: i64, hidden: i64, dropout: f64) -> EncoderLayer {
        EncoderLayer {
            attn: Mha::new(&p / "attn", d, heads),
            ln1: nn::layer_norm(&p / "ln1", vec![d], Default::default()),
            ffn: Ffn::new(&p / "ffn", d, hidden),
            ln2: nn::layer_norm(&p / "ln2", vec![d], Default::default()),
            dropout,
        }
    }

    /// One layer over `x` [B, T, d] with the self-attention `mask` [B, T, T].
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.forward_q(x, x, mask, train)
    }

    /// The layer's outputs for the queries `q` [B, N, d] only, attending to `x` [B, T, d]
    /// (the whole layer input) where `mask` [B, N, T] allows: the same rows as `forward`.
    pub fn forward_q(&self, q: &Tensor, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let a = self.attn.forward(q, x, mask, self.dropout, train);
        let h = self.ln1.forward(&(q + a.dropout(self.dropout, train)));
        let f = self.ffn.forward(&h).dropout(self.dropout, train);
        self.ln2.forward(&(&h + f))
    }
}

/// Which experts an SDMoE keeps per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Routing {
    /// SUMMER: keep experts whose weight lies in [mu - alpha*sigma, mu + alpha*sigma].
    Dynamic {
        /// The threshold in standard deviations (paper: 2).
        alpha: f64,
    },
    /// Keep experts whose weight is at least mu + beta*sigma.
    OneSided {
        /// The threshold in standard deviations.
        beta: f64,
    },
    /// Keep the k largest weights.
    TopK {
        /// How many.
        k: i64,
    },
    /// Keep every expert.
    Dense,
}

impl Default for Routing {
    fn default() -> Self {
        Routing::Dynamic { alpha: 2.0 }
    }
}

/// The hard expert mask for router probabilities `p` [.., E]: the routing rule, then the top-1
/// fallback for tokens that would keep none. A pure function of `p`, tested on its own.
pub fn expert_mask(p: &Tensor, routing: Routing) -> Tensor {
    let mu = p.mean_dim(-1, true, Kind::Float);
    let sigma = p.std_dim(-1, false, true);
    let m = match routing {
        Routing::Dynamic { alpha } => p
            .ge_tensor(&(&mu - &sigma * alpha))
            .logical_and(&p.le_tensor(&(&mu + &sigma * alpha))),
        Routing::OneSided { beta } => p.ge_tensor(&(&mu + &sigma * beta)),
        Routing::TopK { k } => {
            let e = p.size()[p.dim() - 1];
            let (_, idx) = p.topk(k.clamp(1, e), -1, true, true);
            p.zeros_like()
                .scatter_value(-1, &idx, 1.0)
                .to_kind(Kind::Bool)
        }
        Routing::Dense => p.ones_like().to_kind(Kind::Bool),
    };
    let e = p.size()[p.dim() - 1];
    let top1 = p.argmax(-1, false).one_hot(e).to_kind(Kind::Bool);
    let none = m.any_dim(-1, true).logical_not();
    m.logical_or(&top1.logical_and(&none))
}

/// The sparse dynamic mixture of experts of one stream: output = x + sum_i w_i * expert_i(x).
#[derive(Debug)]
pub struct Sdmoe {
    router: nn::Linear,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    tau: f64,
    routing: Routing,
}

impl Sdmoe {
    /// `experts` two-layer FFNs of width `hidden` under `p`.
    pub fn new(
        p: nn::Path,
        d: i64,
        experts: i64,
        hidden: i64,
        tau: f64,
        routing: Routing,
    ) -> Sdmoe {
        let init1 = nn::Init::Uniform {
            lo: -(1.0 / d as f64).sqrt(),
            up: (1.0 / d as f64).sqrt(),
        };
        let init2 = nn::Init::Uniform {
            lo: -(1.0 / hidden as f64).sqrt(),
            up: (1.0 / hidden as f64).sqrt(),
        };
        Sdmoe {
            router: nn::linear(&p / "router", d, experts, Default::default()),
            w1: p.var("w1", &[experts, d, hidden], init1),
            b1: p.var("b1", &[experts, 1, hidden], nn::Init::Const(0.0)),
            w2: p.var("w2", &[experts, hidden, d], init2),
            b2: p.var("b2", &[experts, 1, d], nn::Init::Const(0.0)),
            tau,
            routing,
        }
    }

    /// Mix the experts for `x` [B, T, d]. Returns the output and the number of experts kept
    /// per token [B, T]. Gumbel noise is added to the router logits in training only; the mask is
    /// hard in the forward pass and straight-through in the backward pass.
    pub fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let (b, t, d) = x.size3().expect("[B, T, d]");
        let r = self.router.forward(x);
        let logits = if train {
            let u = r.rand_like().clamp(1e-9, 1.0 - 1e-9);
            &r - (-u.log()).log()
        } else {
            r
        };
        let p = (logits / self.tau).softmax(-1, Kind::Float);
        let m = expert_mask(&p, self.routing);
        let kept = &p * m.to_kind(Kind::Float);
        let hard = &kept / kept.sum_dim_intlist(-1, true, Kind::Float);
        let w = hard.detach() + &p - p.detach();
        // Every expert on every token ([E, N, d]); at these sizes that is cheaper than gathering.
        let flat = x.reshape([1, b * t, d]);
        let h = (flat.matmul(&self.w1) + &self.b1).gelu("none");
        let y = (h.matmul(&self.w2) + &self.b2).permute([1, 0, 2]); // [N, E, d]
        let mixed = (y * w.reshape([b * t, -1, 1])).sum_dim_intlist(1, false, Kind::Float);
        (
            x + mixed.view([b, t, d]),
            m.sum_dim_intlist(-1, false, Kind::Float),
        )
    }
}

/// DynAttn: cross-attention from one stream (queries) to another (keys/values), mixed with the
/// query by a learned gate g = sigmoid(W [q; attn]), then residual, LayerNorm and FFN.
#[derive(Debug)]
pub struct DynAttn {
    attn: Mha,
    gate: nn::Linear,
    ln1: nn::LayerNorm,
    ffn: Ffn,
    ln2: nn::LayerNorm,
    dropout: f64,
}

impl DynAttn {
    /// Weights under `p`.
    pub fn new(p: nn::Path, d: i64, heads: i64, hidden: i64, dropout: f64) -> DynAttn {
        DynAttn {
            attn: Mha::new(&p / "attn", d, heads),
            gate: nn::linear(&p / "gate", 2 * d, d, Default::default()),
            ln1: nn::layer_norm(&p / "ln1", vec![d], Default::default()),
            ffn: Ffn::new(&p / "ffn", d, hidden),
            ln2: nn::layer_norm(&p / "ln2", vec![d], Default::default()),
            dropout,
        }
    }

    /// `q` [B, T, d] attends to `kv` [B, S, d] where `mask` allows. A query with no key (the
    /// other modality is missing everywhere it may look) passes through unchanged in content:
    /// its gate is forced to 0.
    pub fn forward(&self, q: &Tensor, kv: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let a = self.attn.forward(q, kv, mask, self.dropout, train);
        let any = mask.any_dim(-1, true).to_kind(Kind::Float);
        let g = self.gate.forward(&Tensor::cat(&[q, &a], -1)).sigmoid() * any;
        let mixed: Tensor = &g * &a + (1.0 - &g) * q;
        let h = self.ln1.forward(&(q + mixed.dropout(self.dropout, train)));
        let f = self.ffn.forward(&h).dropout(self.dropout, train);
        self.ln2.forward(&(&h + f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(p: &[f32], routing: Routing) -> i64 {
        let t = Tensor::from_slice(p).view([1, 1, p.len() as i64]);
        expert_mask(&t, routing).sum(Kind::Int64).int64_value(&[])
    }

    #[test]
    fn mask_counts_follow_alpha() {
        // mean 0.125, population std 0.1436 over 8 experts; one dominant expert at 0.5.
        let p = [0.5, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05];
        // alpha 2: band [-0.15, 0.40]: the dominant 0.5 is outside, 7 kept.
        assert_eq!(counts(&p, Routing::Dynamic { alpha: 2.0 }), 7);
        // alpha 3: everything inside.
        assert_eq!(counts(&p, Routing::Dynamic { alpha: 3.0 }), 8);
        // alpha 0.5: band [0.056, 0.194]: the four 0.1s.
        assert_eq!(counts(&p, Routing::Dynamic { alpha: 0.5 }), 3);
        // one-sided beta 1: >= 0.2625: the dominant one.
        assert_eq!(counts(&p, Routing::OneSided { beta: 1.0 }), 1);
        assert_eq!(counts(&p, Routing::TopK { k: 2 }), 2);
        assert_eq!(counts(&p, Routing::Dense), 8);
        // uniform weights: sigma 0, the band is the single value: all kept.
        assert_eq!(counts(&[0.25; 4], Routing::Dynamic { alpha: 2.0 }), 4);
        // nothing passes: top-1 fallback.
        assert_eq!(counts(&p, Routing::OneSided { beta: 5.0 }), 1);
    }
}
