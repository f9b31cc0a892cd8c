//! A BERT encoder on tch, shaped by the Hugging Face `config.json` of the checkpoint and with
//! the checkpoint's own weight names (`embeddings.word_embeddings.weight`,
//! `encoder.layer.N.attention.self.query.weight`, ...), so that `VarStore::load` reads the
//! `model.safetensors` of a `BertModel` unchanged.
//!
//! Reference: `transformers/models/bert/modeling_bert.py` (BertEmbeddings, BertSelfAttention,
//! BertSelfOutput, BertIntermediate, BertOutput): post-LayerNorm blocks, exact (erf) GELU,
//! absolute positions, attention over non-padding keys only. Inference only: no dropout.

use serde::Deserialize;
use tch::{Kind, Tensor, nn, nn::Module};

/// The fields of a Hugging Face BERT `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Token vocabulary size.
    pub vocab_size: i64,
    /// Width of every hidden state.
    pub hidden_size: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Width of the feed-forward layer.
    pub intermediate_size: i64,
    /// Longest input, in tokens.
    pub max_position_embeddings: i64,
    /// Number of token types (segments).
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only "gelu" (exact) is supported.
    pub hidden_act: String,
    /// Only "absolute" is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Check that this implementation covers the configuration.
    pub fn check(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act '{}' is not supported (gelu only)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type '{}' is not supported (absolute only)",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

fn layer_norm(p: nn::Path, cfg: &BertConfig) -> nn::LayerNorm {
    let c = nn::LayerNormConfig {
        eps: cfg.layer_norm_eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![cfg.hidden_size], c)
}

struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
}

impl Embeddings {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let e = Default::default();
        Embeddings {
            word: nn::embedding(&p / "word_embeddings", cfg.vocab_size, cfg.hidden_size, e),
            position: nn::embedding(
                &p / "position_embeddings",
                cfg.max_position_embeddings,
                cfg.hidden_size,
                e,
            ),
            token_type: nn::embedding(
                &p / "token_type_embeddings",
                cfg.type_vocab_size,
                cfg.hidden_size,
                e,
            ),
            norm: layer_norm(&p / "LayerNorm", cfg),
        }
    }

    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Tensor {
        let len = ids.size()[1];
        let positions = Tensor::arange(len, (Kind::Int64, ids.device())).unsqueeze(0);
        let x = self.word.forward(ids)
            + self.position.forward(&positions)
            + self.token_type.forward(type_ids);
        self.norm.forward(&x)
    }
}

/// A layer's weights as named in the checkpoint; also a differentiable layer for fine-tuning.
pub struct LayerWeights {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
}

impl LayerWeights {
    /// Declare the layer's variables under `p` (`encoder.layer.N`).
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let l = Default::default();
        let att = &p / "attention";
        LayerWeights {
            query: nn::linear(&att / "self" / "query", h, h, l),
            key: nn::linear(&att / "self" / "key", h, h, l),
            value: nn::linear(&att / "self" / "value", h, h, l),
            attn_out: nn::linear(&att / "output" / "dense", h, h, l),
            attn_norm: layer_norm(&att / "output" / "LayerNorm", cfg),
            intermediate: nn::linear(&p / "intermediate" / "dense", h, i, l),
            output: nn::linear(&p / "output" / "dense", i, h, l),
            out_norm: layer_norm(&p / "output" / "LayerNorm", cfg),
        }
    }
}

impl LayerWeights {
    /// The layer, differentiably: `x` [B, L, H], `attention` [B, L] (1 = token). With
    /// `adapters`, each linear map adds its low-rank update and the adapters' layer norms
    /// replace the layer's.
    pub fn forward_train(
        &self,
        x: &Tensor,
        attention: &Tensor,
        heads: i64,
        adapters: Option<&LayerAdapters>,
    ) -> Tensor {
        let (b, l, h) = x.size3().expect("[B, L, H]");
        let d = h / heads;
        let lin = |base: &nn::Linear, pick: fn(&LayerAdapters) -> &Lora, x: &Tensor| {
            let y = base.forward(x);
            match adapters {
                Some(a) => y + pick(a).delta(x),
                None => y,
            }
        };
        let split = |t: Tensor| t.view([b, l, heads, d]).transpose(1, 2);
        let (q, k, v) = (
            split(lin(&self.query, |a| &a.query, x)),
            split(lin(&self.key, |a| &a.key, x)),
            split(lin(&self.value, |a| &a.value, x)),
        );
        let mask = attention.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
        let ctx =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).reshape([b, l, h]);
        let (attn_norm, out_norm) = match adapters {
            Some(a) => (&a.attn_norm, &a.out_norm),
            None => (&self.attn_norm, &self.out_norm),
        };
        let x = attn_norm.forward(&(lin(&self.attn_out, |a| &a.attn_out, &ctx) + x));
        let ff = lin(&self.intermediate, |a| &a.intermediate, &x).gelu("none");
        out_norm.forward(&(lin(&self.output, |a| &a.output, &ff) + x))
    }
}

/// Suffix of a low-rank factor's name: `<linear>.lora_a` [r, in] and `<linear>.lora_b`
/// [out, r] update `<linear>.weight` by `lora_b @ lora_a` (times the scale while training;
/// stored with the scale folded into `lora_b`).
pub const LORA_A: &str = "lora_a";
/// See [`LORA_A`].
pub const LORA_B: &str = "lora_b";

/// A low-rank update of one linear map (LoRA): `x @ a^T @ b^T * scale`.
pub struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Lora {
    fn new(p: nn::Path, inputs: i64, outputs: i64, rank: i64, scale: f64) -> Self {
        // `b` starts at zero, so the adapted layer starts as the checkpoint's.
        let bound = 1.0 / (inputs as f64).sqrt();
        Lora {
            a: p.var(
                LORA_A,
                &[rank, inputs],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            b: p.var(LORA_B, &[outputs, rank], nn::Init::Const(0.0)),
            scale,
        }
    }

    fn delta(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }
}

/// Trainable low-rank updates of a layer's six linear maps and copies of its two layer norms,
/// declared under the layer's checkpoint path (`encoder.layer.N`), so that loading the
/// checkpoint partially fills the norms and leaves the factors at their start.
pub struct LayerAdapters {
    query: Lora,
    key: Lora,
    value: Lora,
    attn_out: Lora,
    intermediate: Lora,
    output: Lora,
    attn_norm: nn::LayerNorm,
    out_norm: nn::LayerNorm,
}

impl LayerAdapters {
    /// Declare them under `p` with rank `rank` and scale `scale`.
    pub fn new(p: nn::Path, cfg: &BertConfig, rank: i64, scale: f64) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let att = &p / "attention";
        let lora = |q: nn::Path, inp, out| Lora::new(q, inp, out, rank, scale);
        LayerAdapters {
            query: lora(&att / "self" / "query", h, h),
            key: lora(&att / "self" / "key", h, h),
            value: lora(&att / "self" / "value", h, h),
            attn_out: lora(&att / "output" / "dense", h, h),
            attn_norm: layer_norm(&att / "output" / "LayerNorm", cfg),
            intermediate: lora(&p / "intermediate" / "dense", h, i),
            output: lora(&p / "output" / "dense", i, h),
            out_norm: layer_norm(&p / "output" / "LayerNorm", cfg),
        }
    }
}

/// Apply a fine-tuning delta (`named` tensors, checkpoint names) to the encoder variables
/// `vars`: a tensor named like a variable replaces it; a `<linear>.lora_a` / `lora_b` pair
/// adds `lora_b @ lora_a` to `<linear>.weight`. Returns how many variables changed; an error
/// names the first tensor that fits nothing (unknown name, wrong shape, unpaired factor).
pub fn apply_delta(
    vars: &std::collections::HashMap<String, Tensor>,
    named: &[(String, Tensor)],
) -> Result<usize, String> {
    let _g = tch::no_grad_guard();
    let by_name: std::collections::HashMap<&str, &Tensor> =
        named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut changed = 0;
    for (name, t) in named {
        if let Some(base) = name.strip_suffix(&format!(".{LORA_A}")) {
            let b = by_name
                .get(format!("{base}.{LORA_B}").as_str())
                .ok_or_else(|| format!("{name} has no {base}.{LORA_B}"))?;
            let w = format!("{base}.weight");
            let var = vars
                .get(&w)
                .ok_or_else(|| format!("{name}: no variable {w}"))?;
            let update = b.to_kind(Kind::Float).matmul(&t.to_kind(Kind::Float));
            if update.size() != var.size() {
                return Err(format!(
                    "{name}: update {:?} does not fit {w} {:?}",
                    update.size(),
                    var.size()
                ));
            }
            let mut v = var.shallow_clone();
            let _ = v
                .f_add_(&update.to_device(v.device()))
                .map_err(|e| e.to_string())?;
            changed += 1;
            continue;
        }
        if let Some(base) = name.strip_suffix(&format!(".{LORA_B}")) {
            if !by_name.contains_key(format!("{base}.{LORA_A}").as_str()) {
                return Err(format!("{name} has no {base}.{LORA_A}"));
            }
            continue;
        }
        let var = vars
            .get(name)
            .ok_or_else(|| format!("{name}: no such encoder weight"))?;
        if var.size() != t.size() {
            return Err(format!(
                "{name}: shape {:?}, the encoder's is {:?}",
                t.size(),
                var.size()
            ));
        }
        let mut v = var.shallow_clone();
        v.f_copy_(t).map_err(|e| e.to_string())?;
        changed += 1;
    }
    Ok(changed)
}

/// A linear layer laid out for inference: weight transposed to [in, out] and contiguous, so
/// that one `addmm` does the work without a transposed operand.
struct Dense {
    wt: Tensor,
    b: Tensor,
}

impl Dense {
    fn from(parts: &[&nn::Linear]) -> Self {
        let ws: Vec<&Tensor> = parts.iter().map(|l| &l.ws).collect();
        let bs: Vec<Tensor> = parts
            .iter()
            .map(|l| {
                l.bs.as_ref()
                    .expect("BERT linears have biases")
                    .shallow_clone()
            })
            .collect();
        Dense {
            wt: Tensor::cat(&ws, 0).tr().contiguous(),
            b: Tensor::cat(&bs, 0),
        }
    }

    /// [N, in] -> [N, out], in the weights' precision, returned in the input's.
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.wt.kind() == x.kind() {
            self.b.addmm(x, &self.wt)
        } else {
            self.b
                .addmm(&x.to_kind(self.wt.kind()), &self.wt)
                .to_kind(x.kind())
        }
    }
}

struct Layer {
    /// Query, key and value projections fused into one [H, 3H] product.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: nn::LayerNorm,
    intermediate: Dense,
    output: Dense,
    out_norm: nn::LayerNorm,
    heads: i64,
}

impl Layer {
    fn prepare(w: LayerWeights, heads: i64) -> Self {
        Layer {
            qkv: Dense::from(&[&w.query, &w.key, &w.value]),
            attn_out: Dense::from(&[&w.attn_out]),
            attn_norm: w.attn_norm,
            intermediate: Dense::from(&[&w.intermediate]),
            output: Dense::from(&[&w.output]),
            out_norm: w.out_norm,
            heads,
        }
    }

    /// `x`: [B*L, H] (rows of all sequences); `mask`: None (no padding) or a boolean
    /// [B, 1, 1, L], true = attend.
    fn forward(&self, x: &Tensor, b: i64, l: i64, mask: Option<&Tensor>) -> Tensor {
        let h = x.size()[1];
        let d = h / self.heads;
        // [B*L, 3H] -> [3, B, heads, L, d]
        let qkv = self
            .qkv
            .forward(x)
            .view([b, l, 3, self.heads, d])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).reshape([b * l, h]);
        let x = self.attn_norm.forward(&(self.attn_out.forward(&ctx) + x));
        let ff = self.intermediate.forward(&x).gelu("none");
        self.out_norm.forward(&(self.output.forward(&ff) + x))
    }
}

/// The weights of a BERT encoder, named as in the checkpoint, ready for `VarStore::load`.
pub struct BertWeights {
    embeddings: Embeddings,
    layers: Vec<LayerWeights>,
    heads: i64,
}

impl BertWeights {
    /// Declare the variables under `p` (the checkpoint's root: `embeddings.*`,
    /// `encoder.layer.N.*`). No pooler: sentence embeddings pool the last hidden states.
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let enc = &p / "encoder" / "layer";
        BertWeights {
            embeddings: Embeddings::new(&p / "embeddings", cfg),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| LayerWeights::new(&enc / i, cfg))
                .collect(),
            heads: cfg.num_attention_heads,
        }
    }

    /// Lay the loaded weights out for inference (fused QKV, pre-transposed matrices).
    pub fn prepare(self) -> Bert {
        let _guard = tch::no_grad_guard();
        let heads = self.heads;
        Bert {
            layers: self
                .layers
                .into_iter()
                .map(|w| Layer::prepare(w, heads))
                .collect(),
            embeddings: self.embeddings,
        }
    }
}

/// The BERT encoder, prepared for inference.
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl Bert {
    /// Last hidden states [B, L, H] for token ids and type ids [B, L] (int64) and the
    /// attention mask [B, L] (1 = token, 0 = padding). A mask without padding is skipped, which
    /// lets libtorch take its fastest attention path.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor, attention: &Tensor) -> Tensor {
        self.hidden_after(ids, type_ids, attention, self.layers.len())
    }

    /// Hidden states [B, L, H] after the embeddings and the first `n` layers.
    pub fn hidden_after(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        attention: &Tensor,
        n: usize,
    ) -> Tensor {
        let (b, l) = ids.size2().expect("ids are [B, L]");
        let padded = attention.min().int64_value(&[]) == 0;
        let mask = padded.then(|| attention.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1));
        let x = self.embeddings.forward(ids, type_ids);
        let h = x.size()[2];
        let mut x = x.view([b * l, h]);
        for layer in self.layers.iter().take(n) {
            x = layer.forward(&x, b, l, mask.as_ref());
        }
        x.view([b, l, h])
    }

    /// Hold the layers' matrices in `kind` (from the f32 checkpoint) and run their products in
    /// it; layer norms, attention and pooling stay in f32.
    pub fn set_matmul_kind(&mut self, kind: Kind) {
        for l in &mut self.layers {
            for d in [
                &mut l.qkv,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ] {
                d.wt = d.wt.to_kind(kind);
                d.b = d.b.to_kind(kind);
            }
        }
    }

    /// Number of layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }
}

/// Mean over the tokens where `attention` is 1, then L2 normalisation, as
/// sentence-transformers' Pooling(mean) + Normalize do. [B, L, H] -> [B, H].
pub fn mean_pool_normalize(hidden: &Tensor, attention: &Tensor) -> Tensor {
    let m = attention.to_kind(hidden.kind()).unsqueeze(-1);
    let summed = (hidden * &m).sum_dim_intlist([1i64].as_slice(), false, hidden.kind());
    let counts = m
        .sum_dim_intlist([1i64].as_slice(), false, hidden.kind())
        .clamp_min(1e-9);
    let mean = summed / counts;
    let norm = mean
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    mean / norm
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars() -> HashMap<String, Tensor> {
        let mut v = HashMap::new();
        v.insert(
            "l.dense.weight".into(),
            Tensor::ones([3, 2], (Kind::Float, tch::Device::Cpu)),
        );
        v.insert(
            "l.norm.bias".into(),
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        );
        v
    }

    #[test]
    fn delta_adds_low_rank_products_and_replaces_named_weights() {
        let v = vars();
        // b [3, 1] @ a [1, 2] = [[1, 2], [2, 4], [3, 6]]
        let named = vec![
            (
                "l.dense.lora_a".to_string(),
                Tensor::from_slice(&[1f32, 2.]).view([1, 2]),
            ),
            (
                "l.dense.lora_b".to_string(),
                Tensor::from_slice(&[1f32, 2., 3.]).view([3, 1]),
            ),
            (
                "l.norm.bias".to_string(),
                Tensor::from_slice(&[0.5f32, -0.5, 1.]),
            ),
        ];
        assert_eq!(apply_delta(&v, &named).unwrap(), 2);
        let w: Vec<f32> = v["l.dense.weight"].view([-1]).try_into().unwrap();
        assert_eq!(w, [2., 3., 3., 5., 4., 7.]);
        let b: Vec<f32> = v["l.norm.bias"].shallow_clone().try_into().unwrap();
        assert_eq!(b, [0.5, -0.5, 1.]);
    }

    #[test]
    fn delta_that_does_not_fit_is_refused() {
        let a = || Tensor::ones([1, 2], (Kind::Float, tch::Device::Cpu));
        let b = |rows| Tensor::ones([rows, 1], (Kind::Float, tch::Device::Cpu));
        for (named, says) in [
            (
                vec![("l.dense.lora_a".to_string(), a())],
                "has no l.dense.lora_b",
            ),
            (
                vec![("l.dense.lora_b".to_string(), b(3))],
                "has no l.dense.lora_a",
            ),
            (
                vec![
                    ("l.dense.lora_a".to_string(), a()),
                    ("l.dense.lora_b".to_string(), b(4)),
                ],
                "does not fit",
            ),
            (
                vec![("l.other.weight".to_string(), a())],
                "no such encoder weight",
            ),
            (vec![("l.norm.bias".to_string(), a())], "shape"),
        ] {
            let err = apply_delta(&vars(), &named).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
