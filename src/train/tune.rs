//! Fine-tuning the text encoder's top layers together with the dialogue model: the lower
//! layers' hidden states are computed once per utterance (they do not change), the top
//! `layers` are trainable copies of the checkpoint's, and the tuned layers are stored beside a
//! model as a small delta (`text_tuned.safetensors`, checkpoint names) that the daemon's text
//! encoder loads over the registry weights.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use super::data::Dataset;
use crate::bert::{LayerWeights, mean_pool_normalize};
use crate::text::{TextEncoder, TextError};

/// The `[text]` table of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// Top encoder layers fine-tuned with the teacher (0: the encoder stays frozen).
    pub tune_layers: usize,
    /// Adam learning rate of the tuned layers.
    pub lr: f64,
    /// The registry encoder the data's vectors were made with.
    pub encoder: PathBuf,
    /// Truncation in tokens.
    pub max_tokens: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            tune_layers: 0,
            lr: 3e-5,
            encoder: PathBuf::from(crate::text::DEFAULT_DIR),
            max_tokens: crate::text::DEFAULT_MAX_TOKENS,
        }
    }
}

/// Lower-layer hidden states of every utterance of a split ([L_i, H] each, on the CPU).
pub struct TextCache {
    hidden: Vec<Tensor>,
}

/// The trainable top layers.
pub struct Tuner {
    /// Their weights (checkpoint names).
    pub vs: nn::VarStore,
    layers: Vec<LayerWeights>,
    heads: i64,
    /// Index of the first tuned layer.
    pub first: usize,
    device: Device,
}

impl Tuner {
    /// Copies of the top `k` layers of the encoder in `dir`.
    pub fn new(dir: &Path, k: usize, device: Device) -> Result<Tuner, TextError> {
        let cfg = TextEncoder::read_config(dir)?;
        let depth = cfg.num_hidden_layers as usize;
        let first = depth.saturating_sub(k);
        let mut vs = nn::VarStore::new(device);
        let root = vs.root() / "encoder" / "layer";
        let layers = (first..depth)
            .map(|i| LayerWeights::new(&root / i, &cfg))
            .collect();
        let weights = dir.join("model.safetensors");
        vs.load_partial(&weights)
            .map_err(|source| TextError::Weights {
                path: weights.clone(),
                source,
            })?;
        Ok(Tuner {
            vs,
            layers,
            heads: cfg.num_attention_heads,
            first,
            device,
        })
    }

    /// The lower layers' states of `texts`.
    pub fn cache(
        enc: &TextEncoder,
        texts: &[String],
        first: usize,
    ) -> Result<TextCache, TextError> {
        let mut hidden = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let t = enc.tokenize(&refs)?;
            let h = enc.hidden_after(&t, first)?.to_device(Device::Cpu);
            for (i, row) in t.attention.chunks(t.len.max(1)).enumerate() {
                let n = row.iter().sum::<i64>().max(1);
                hidden.push(h.get(i as i64).narrow(0, 0, n).contiguous());
            }
        }
        Ok(TextCache { hidden })
    }

    /// Sentence vectors [n, H] of the cached utterances `rows`, through the tuned layers.
    pub fn vectors(&self, cache: &TextCache, rows: &[i64]) -> Tensor {
        let h = cache.hidden[0].size()[1];
        let l = rows
            .iter()
            .map(|r| cache.hidden[*r as usize].size()[0])
            .max()
            .unwrap_or(1);
        let mut xs = Vec::with_capacity(rows.len());
        let mut atts = Vec::with_capacity(rows.len());
        for r in rows {
            let x = &cache.hidden[*r as usize];
            let n = x.size()[0];
            xs.push(Tensor::cat(
                &[
                    x.shallow_clone(),
                    Tensor::zeros([l - n, h], (Kind::Float, Device::Cpu)),
                ],
                0,
            ));
            atts.push(
                Tensor::arange(l, (Kind::Int64, Device::Cpu))
                    .lt(n)
                    .to_kind(Kind::Int64),
            );
        }
        let mut x = Tensor::stack(&xs, 0).to_device(self.device);
        let att = Tensor::stack(&atts, 0).to_device(self.device);
        for layer in &self.layers {
            x = layer.forward_train(&x, &att, self.heads);
        }
        mean_pool_normalize(&x, &att)
    }

    /// Text features [B, T, H] for the dialogues `idx` of `ds`, padded as `Dataset::batch`.
    pub fn batch_features(&self, ds: &Dataset, cache: &TextCache, idx: &[usize]) -> Tensor {
        let rows: Vec<i64> = idx
            .iter()
            .flat_map(|d| ds.offsets[*d]..ds.offsets[d + 1])
            .collect();
        let v = self.vectors(cache, &rows);
        let h = v.size()[1];
        let t = idx
            .iter()
            .map(|d| ds.offsets[d + 1] - ds.offsets[*d])
            .max()
            .unwrap_or(1);
        let mut at = 0;
        let parts: Vec<Tensor> = idx
            .iter()
            .map(|d| {
                let n = ds.offsets[d + 1] - ds.offsets[*d];
                let p = v.narrow(0, at, n);
                at += n;
                Tensor::cat(
                    &[p, Tensor::zeros([t - n, h], (Kind::Float, self.device))],
                    0,
                )
            })
            .collect();
        Tensor::stack(&parts, 0)
    }

    /// `ds` with its text vectors recomputed through the tuned layers (no gradient).
    pub fn retext(&self, ds: &Dataset, cache: &TextCache) -> Dataset {
        let _g = tch::no_grad_guard();
        let n = ds.len() as i64;
        let rows: Vec<i64> = (0..n).collect();
        let parts: Vec<Tensor> = rows
            .chunks(256)
            .map(|c| self.vectors(cache, c).to_device(Device::Cpu))
            .collect();
        let text = Tensor::cat(&parts, 0);
        let mut meta = ds.meta.clone();
        if let Some(t) = meta.features.text.as_mut() {
            t.extractor = tuned_extractor(&t.extractor);
        }
        Dataset {
            meta,
            offsets: ds.offsets.clone(),
            features: [
                text,
                ds.features[1].shallow_clone(),
                ds.features[2].shallow_clone(),
            ],
            present: ds.present.shallow_clone(),
            speaker: ds.speaker.shallow_clone(),
            label: ds.label.shallow_clone(),
        }
    }
}

/// The extractor name of vectors made with tuned top layers.
pub fn tuned_extractor(base: &str) -> String {
    if base.ends_with("+tuned") {
        base.to_string()
    } else {
        format!("{base}+tuned")
    }
}
