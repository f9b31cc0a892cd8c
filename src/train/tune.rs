//! Fine-tuning the text encoder's top layers together with the dialogue model: the lower
//! layers' hidden states are computed once per utterance (they do not change), the top
//! `layers` are trainable, and what changed is stored beside a model as a delta
//! (`text_tuned.safetensors`, checkpoint names) that the daemon's text encoder applies to the
//! registry weights at load. Trainable are either whole copies of the layers (`lora_rank = 0`;
//! 7 MB a MiniLM layer) or, with `lora_rank = r`, low-rank updates of each layer's six linear
//! maps plus its two layer norms (LoRA: about 57 k parameters, 0.2 MB, a MiniLM layer at r = 8);
//! the daemon folds the updates into the weights, so inference costs the same either way.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{Module, OptimizerConfig};
use tch::{Device, Kind, Tensor, nn};

use super::data::Dataset;
use crate::bert::{LORA_B, LayerAdapters, LayerWeights, mean_pool_normalize};
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
    /// Rank of the low-rank updates of the tuned layers (0: the whole layers are tuned).
    pub lora_rank: usize,
    /// The updates' scale is `lora_alpha / lora_rank`.
    pub lora_alpha: f64,
    /// How the layers are tuned: with the teacher through the dialogue model (`joint`), or
    /// first on single utterances with a linear classifier, after which the teacher trains on
    /// the tuned encoder's vectors (`utterance`; how the ERC literature's RoBERTa features
    /// were made).
    pub mode: TuneMode,
    /// Epochs of utterance-level tuning (`utterance` mode; the learning rate warms up over
    /// the first 6 % of steps and decays linearly to 0 at the end; the epoch with the best dev
    /// WF1 is kept).
    pub epochs: usize,
    /// Utterances a step (`utterance` mode).
    pub batch: usize,
    /// The share of MELD's training utterances whose every `!` is made `.` before the encoder
    /// is tuned and the vectors made (dev and test untouched): MELD's subtitles carry `!` in a
    /// third of their lines, an ASR's text almost never (docs/asr.md). 0: MELD's text as is.
    pub exclamation_to_period: f64,
}

/// See [`TextConfig::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuneMode {
    /// Through the dialogue model, with the teacher.
    Joint,
    /// On single utterances first.
    Utterance,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            tune_layers: 0,
            lr: 3e-5,
            encoder: PathBuf::from(crate::text::DEFAULT_DIR),
            max_tokens: crate::text::DEFAULT_MAX_TOKENS,
            lora_rank: 0,
            lora_alpha: 16.0,
            mode: TuneMode::Joint,
            epochs: 3,
            batch: 32,
            exclamation_to_period: 0.0,
        }
    }
}

/// `ds` with every `!` made `.` in a share `p` of its utterances, drawn with `seed` (see
/// [`TextConfig::exclamation_to_period`]).
pub fn asr_punctuation(ds: &Dataset, p: f64, seed: u64) -> Dataset {
    let mut out = ds.subset(&(0..ds.dialogues()).collect::<Vec<_>>());
    let mut rng = crate::rng::Rng::new(seed);
    for t in &mut out.meta.texts {
        if rng.unit() < p {
            *t = t.replace('!', ".");
        }
    }
    out
}

impl TextConfig {
    /// The low-rank updates' scale (1 without them).
    pub fn lora_scale(&self) -> f64 {
        if self.lora_rank == 0 {
            1.0
        } else {
            self.lora_alpha / self.lora_rank as f64
        }
    }
}

/// Lower-layer hidden states of every utterance of a split ([L_i, H] each, on the CPU).
pub struct TextCache {
    hidden: Vec<Tensor>,
}

/// The trainable top layers.
pub struct Tuner {
    /// What is trained (checkpoint names): the layers' weights, or their adapters.
    pub vs: nn::VarStore,
    /// The frozen layers under adapters (unused without).
    _base: Option<nn::VarStore>,
    layers: Vec<LayerWeights>,
    /// Low-rank adapters of `layers`, one each; empty when the whole layers are tuned.
    adapters: Vec<LayerAdapters>,
    heads: i64,
    /// Index of the first tuned layer.
    pub first: usize,
    /// The adapters' scale (1 without them), folded into `lora_b` on disk.
    lora_scale: f64,
    device: Device,
}

impl Tuner {
    /// The top `k` layers of the encoder in `dir`: trainable copies (`cfg.lora_rank` 0) or
    /// frozen copies with trainable adapters.
    pub fn new(dir: &Path, k: usize, cfg: &TextConfig, device: Device) -> Result<Tuner, TextError> {
        let bert = TextEncoder::read_config(dir)?;
        let depth = bert.num_hidden_layers as usize;
        let first = depth.saturating_sub(k);
        let weights = dir.join("model.safetensors");
        let load = |vs: &mut nn::VarStore| {
            vs.load_partial(&weights)
                .map_err(|source| TextError::Weights {
                    path: weights.clone(),
                    source,
                })
        };
        let mut vs = nn::VarStore::new(device);
        let declare = |vs: &nn::VarStore| -> Vec<LayerWeights> {
            let root = vs.root() / "encoder" / "layer";
            (first..depth)
                .map(|i| LayerWeights::new(&root / i, &bert))
                .collect()
        };
        let (base, layers, adapters) = if cfg.lora_rank == 0 {
            let layers = declare(&vs);
            load(&mut vs)?;
            (None, layers, Vec::new())
        } else {
            let mut base = nn::VarStore::new(device);
            let layers = declare(&base);
            load(&mut base)?;
            base.freeze();
            let root = vs.root() / "encoder" / "layer";
            let scale = cfg.lora_scale();
            let adapters = (first..depth)
                .map(|i| LayerAdapters::new(&root / i, &bert, cfg.lora_rank as i64, scale))
                .collect();
            load(&mut vs)?;
            (Some(base), layers, adapters)
        };
        Ok(Tuner {
            vs,
            _base: base,
            layers,
            adapters,
            heads: bert.num_attention_heads,
            first,
            lora_scale: cfg.lora_scale(),
            device,
        })
    }

    /// Write what was tuned to `path` as a delta [`TextEncoder::load_tuned`] applies: the
    /// whole layers, or the adapters with their scale folded into `lora_b`.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let _g = tch::no_grad_guard();
        let scale = self.lora_scale;
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| {
                let t = if n.ends_with(LORA_B) { &t * scale } else { t };
                (n, t.to_device(Device::Cpu))
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&named, path)
    }

    /// Load a delta written by [`Tuner::save`] back into the trainable variables.
    pub fn load(&mut self, path: &Path) -> Result<(), tch::TchError> {
        let _g = tch::no_grad_guard();
        let scale = self.lora_scale;
        let vars = self.vs.variables();
        for (name, t) in Tensor::read_safetensors(path)? {
            let mut v = vars
                .get(&name)
                .ok_or_else(|| {
                    tch::TchError::FileFormat(format!("{}: no variable {name}", path.display()))
                })?
                .shallow_clone();
            let t = if name.ends_with(LORA_B) { t / scale } else { t };
            v.f_copy_(&t)?;
        }
        Ok(())
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
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_train(&x, &att, self.heads, self.adapters.get(i));
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
        with_tuned_text(ds, Tensor::cat(&parts, 0))
    }
}

/// `ds` with `text` as its text vectors, named as tuned vectors.
fn with_tuned_text(ds: &Dataset, text: Tensor) -> Dataset {
    let mut meta = ds.meta.clone();
    meta.features.mark_text_tuned();
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

/// `ds` with its text vectors remade by `enc`, an encoder loaded with a model's tuning delta
/// ([`TextEncoder::load_tuned`], the daemon's path), and named as tuned vectors. Utterances
/// without text keep their (absent) vectors.
pub fn reencode(ds: &Dataset, enc: &TextEncoder) -> Result<Dataset, TextError> {
    if ds.meta.texts.len() != ds.len() {
        return Err(TextError::Tokenizer(format!(
            "{} texts for {} utterances: the split has no texts to encode",
            ds.meta.texts.len(),
            ds.len()
        )));
    }
    let fresh = enc.embed_texts(&ds.meta.texts, 64)?;
    let has_text = ds.present.select(1, 0).unsqueeze(1);
    Ok(with_tuned_text(
        ds,
        fresh.where_self(&has_text, &ds.features[0]),
    ))
}

/// Learning rate of the utterance-level classifier (the adapters use `text.lr`).
const HEAD_LR: f64 = 1e-3;
/// The sentence vectors are unit length; the classifier reads them times this.
const HEAD_SCALE: f64 = 10.0;

/// What utterance-level tuning did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UtteranceReport {
    /// Dev WF1 of the classifier after each epoch.
    pub dev_wf1: Vec<f64>,
    /// The epoch kept (1-based).
    pub best_epoch: usize,
    /// Seconds it took.
    pub seconds: f64,
}

/// Tune `tuner` on the labelled utterances of `train` one by one: mean-pooled vector, a linear
/// classifier, cross-entropy; gradients clipped to norm 1; the epoch with the best dev WF1 of
/// that classifier is kept (the test split is not read).
pub fn fit_utterances(
    tuner: &Tuner,
    cfg: &TextConfig,
    (train, train_cache): (&Dataset, &TextCache),
    (dev, dev_cache): (&Dataset, &TextCache),
    seed: i64,
) -> Result<UtteranceReport, tch::TchError> {
    let t0 = std::time::Instant::now();
    let classes = train.meta.classes.len() as i64;
    let dim = train_cache.hidden.first().map_or(1, |h| h.size()[1]);
    let head_vs = nn::VarStore::new(tuner.device);
    let head = nn::linear(head_vs.root() / "head", dim, classes, Default::default());
    let mut opt = nn::Adam::default().build(&tuner.vs, cfg.lr)?;
    let mut head_opt = nn::Adam::default().build(&head_vs, HEAD_LR)?;
    let labels =
        |ds: &Dataset| -> Vec<i64> { ds.label.shallow_clone().try_into().unwrap_or_default() };
    let (train_y, dev_y) = (labels(train), labels(dev));
    let rows: Vec<i64> = (0..train_y.len() as i64)
        .filter(|&i| train_y[i as usize] >= 0)
        .collect();
    let batch = cfg.batch.max(1);
    let per_epoch = rows.len().div_ceil(batch);
    let total = (per_epoch * cfg.epochs).max(1) as f64;
    let warm = (0.06 * total).max(1.0);
    let mut step = 0f64;
    let mut best: Option<(f64, usize, super::Snapshot)> = None;
    let mut curve = Vec::new();
    for epoch in 0..cfg.epochs {
        // Shuffled, then sorted by length within runs of 50 batches (less padding), the
        // batches shuffled again.
        let shuffled: Vec<i64> = super::order(rows.len(), seed, epoch)
            .into_iter()
            .map(|i| rows[i])
            .collect();
        let mut batches: Vec<Vec<i64>> = Vec::with_capacity(per_epoch);
        for run in shuffled.chunks(50 * batch) {
            let mut run = run.to_vec();
            run.sort_by_key(|&r| train_cache.hidden[r as usize].size()[0]);
            batches.extend(run.chunks(batch).map(<[i64]>::to_vec));
        }
        for bi in super::order(batches.len(), seed ^ 0x5eed, epoch) {
            let b = &batches[bi];
            let f = (step + 1.0) / warm;
            let lr_scale = f.min(1.0) * ((total - step) / total).max(0.0);
            opt.set_lr(cfg.lr * lr_scale);
            head_opt.set_lr(HEAD_LR * lr_scale);
            step += 1.0;
            let y: Vec<i64> = b.iter().map(|&r| train_y[r as usize]).collect();
            let y = Tensor::from_slice(&y).to_device(tuner.device);
            let logits = head.forward(&(tuner.vectors(train_cache, b) * HEAD_SCALE));
            let loss = logits.cross_entropy_for_logits(&y);
            opt.zero_grad();
            head_opt.zero_grad();
            loss.backward();
            opt.clip_grad_norm(1.0);
            opt.step();
            head_opt.step();
        }
        let wf1 = {
            let _g = tch::no_grad_guard();
            let dev_rows: Vec<i64> = (0..dev_y.len() as i64)
                .filter(|&i| dev_y[i as usize] >= 0)
                .collect();
            let mut pred = Vec::with_capacity(dev_rows.len());
            for c in dev_rows.chunks(256) {
                let p: Vec<i64> = head
                    .forward(&(tuner.vectors(dev_cache, c) * HEAD_SCALE))
                    .argmax(-1, false)
                    .to_device(Device::Cpu)
                    .try_into()?;
                pred.extend(p);
            }
            let truth: Vec<i64> = dev_rows.iter().map(|&r| dev_y[r as usize]).collect();
            super::metrics::compute(&truth, &pred, classes as usize).wf1
        };
        tracing::info!(
            epoch = epoch + 1,
            dev_wf1 = wf1,
            "text encoder, utterance level"
        );
        curve.push(wf1);
        if best.as_ref().is_none_or(|(w, ..)| wf1 > *w) {
            best = Some((wf1, epoch + 1, super::snapshot(&tuner.vs)));
        }
    }
    let best_epoch = match best {
        Some((_, e, saved)) => {
            super::restore(&tuner.vs, &saved);
            e
        }
        None => 0,
    };
    Ok(UtteranceReport {
        dev_wf1: curve,
        best_epoch,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
