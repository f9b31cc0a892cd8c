//! The native training format (MODEL.md): one safetensors file per split with every utterance's
//! vectors, speaker, label and presence mask, utterances of a dialogue contiguous, plus a JSON
//! sidecar (`<file>.json`) naming the classes, the extractors and dimensions, and the dialogues.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::acoustic::Band;
use crate::model::{AUDIO_EXTRACTOR, AUDIO_EXTRACTOR_WIDE, Batch, Features};

/// The sidecar's format tag.
pub const FORMAT: &str = "summerd-dataset/1";

/// Errors reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The reason the system or the format gave.
        message: String,
    },
    /// The contents are inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The JSON sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// [`FORMAT`].
    pub format: String,
    /// Class names (labels index them).
    pub classes: Vec<String>,
    /// Extractors and dimensions per modality.
    pub features: Features,
    /// Dialogue ids, in file order.
    pub dialogues: Vec<String>,
    /// A group per dialogue (e.g. the speaker, for leave-one-speaker-out folds).
    pub groups: Vec<String>,
    /// Where it came from (free text).
    pub source: String,
    /// The utterances' texts, when the writer had them (needed to fine-tune the text encoder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<String>,
}

/// A split in memory (CPU tensors).
#[derive(Debug)]
pub struct Dataset {
    /// The sidecar.
    pub meta: Sidecar,
    /// Dialogue d's utterances are rows offsets[d]..offsets[d + 1].
    pub offsets: Vec<i64>,
    /// [N, D_m] per modality (D_m = 0: absent).
    pub features: [Tensor; 3],
    /// [N, 3] bool.
    pub present: Tensor,
    /// [N] i64, speaker index within the dialogue.
    pub speaker: Tensor,
    /// [N] i64, class index or -1.
    pub label: Tensor,
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

impl Dataset {
    /// Utterances.
    pub fn len(&self) -> usize {
        self.label.size()[0] as usize
    }

    /// No utterances.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dialogues.
    pub fn dialogues(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Write `path` (safetensors) and `path.json`.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let err = |e: String| DataError::File {
            path: path.to_path_buf(),
            message: e,
        };
        let mut named: Vec<(String, Tensor)> = vec![
            ("offsets".into(), Tensor::from_slice(&self.offsets)),
            ("present".into(), self.present.to_kind(Kind::Uint8)),
            ("speaker".into(), self.speaker.shallow_clone()),
            ("label".into(), self.label.shallow_clone()),
        ];
        for (m, name) in crate::model::MODALITIES.iter().enumerate() {
            if self.features[m].size()[1] > 0 {
                named.push((name.to_string(), self.features[m].contiguous()));
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        Tensor::write_safetensors(&named, path).map_err(|e| err(e.to_string()))?;
        let side = sidecar_path(path);
        std::fs::write(
            &side,
            serde_json::to_string_pretty(&self.meta).expect("plain struct") + "\n",
        )
        .map_err(|e| DataError::File {
            path: side,
            message: e.to_string(),
        })
    }

    /// Read `path` and `path.json`, checking that they agree.
    pub fn load(path: &Path) -> Result<Dataset, DataError> {
        let side = sidecar_path(path);
        let text = std::fs::read_to_string(&side).map_err(|e| DataError::File {
            path: side.clone(),
            message: e.to_string(),
        })?;
        let meta: Sidecar = serde_json::from_str(&text).map_err(|e| DataError::Invalid {
            path: side.clone(),
            message: e.to_string(),
        })?;
        let bad = |m: String| DataError::Invalid {
            path: path.to_path_buf(),
            message: m,
        };
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format '{}' (expected '{FORMAT}')",
                meta.format
            )));
        }
        // Audio features made by a version of summerd's own extractor that this binary does
        // not make (neither band): a model trained on them would be refused by the daemon.
        if let Some(a) = &meta.features.audio {
            let (family, _) = AUDIO_EXTRACTOR
                .rsplit_once('/')
                .unwrap_or((AUDIO_EXTRACTOR, ""));
            if a.extractor.starts_with(&format!("{family}/"))
                && Band::of_extractor(&a.extractor).is_none()
            {
                return Err(bad(format!(
                    "its audio features were made by {}, and this summerd computes \
                     {AUDIO_EXTRACTOR} (or {AUDIO_EXTRACTOR_WIDE}, heard wide): remake the \
                     dataset (`summerd dataset emodb`, or the writer that made it)",
                    a.extractor
                )));
            }
        }
        let tensors = Tensor::read_safetensors(path).map_err(|e| DataError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
        };
        let need = |name: &str| get(name).ok_or_else(|| bad(format!("no tensor '{name}'")));
        let offsets_t = need("offsets")?;
        let offsets: Vec<i64> = Vec::<i64>::try_from(&offsets_t).map_err(|e| bad(e.to_string()))?;
        let label = need("label")?;
        let n = label.size()[0];
        let dims = meta.features.dims();
        let mut features: [Tensor; 3] = [absent(n), absent(n), absent(n)];
        for (m, name) in crate::model::MODALITIES.iter().enumerate() {
            if dims[m] > 0 {
                let t = need(name)?.to_kind(Kind::Float);
                if t.size() != [n, dims[m]] {
                    return Err(bad(format!(
                        "'{name}' is {:?}, the sidecar says [{n}, {}]",
                        t.size(),
                        dims[m]
                    )));
                }
                features[m] = t;
            }
        }
        if offsets.first() != Some(&0)
            || offsets.last() != Some(&n)
            || offsets.windows(2).any(|w| w[1] <= w[0])
            || offsets.len() != meta.dialogues.len() + 1
            || meta.groups.len() != meta.dialogues.len()
            || !(meta.texts.is_empty() || meta.texts.len() as i64 == n)
        {
            return Err(bad("offsets do not match the dialogues".into()));
        }
        let max = label.max().int64_value(&[]);
        if max >= meta.classes.len() as i64 {
            return Err(bad(format!(
                "label {max} but only {} classes",
                meta.classes.len()
            )));
        }
        Ok(Dataset {
            meta,
            offsets,
            features,
            present: need("present")?.to_kind(Kind::Bool),
            speaker: need("speaker")?,
            label,
        })
    }

    /// The dialogues `idx` as one padded batch on `device`.
    pub fn batch(&self, idx: &[usize], device: Device) -> Batch {
        let lens: Vec<i64> = idx
            .iter()
            .map(|d| self.offsets[d + 1] - self.offsets[*d])
            .collect();
        let t = *lens.iter().max().unwrap_or(&1);
        let pad = |x: &Tensor, d: usize, fill: f64| {
            let rows = x.narrow(0, self.offsets[d], self.offsets[d + 1] - self.offsets[d]);
            let extra = t - rows.size()[0];
            if extra == 0 {
                return rows;
            }
            let mut shape = rows.size();
            shape[0] = extra;
            Tensor::cat(
                &[
                    rows.shallow_clone(),
                    Tensor::full(&shape, fill, (rows.kind(), Device::Cpu)),
                ],
                0,
            )
        };
        let stack = |x: &Tensor, fill: f64| {
            Tensor::stack(&idx.iter().map(|d| pad(x, *d, fill)).collect::<Vec<_>>(), 0)
                .to_device(device)
        };
        let valid = Tensor::stack(
            &lens
                .iter()
                .map(|l| Tensor::arange(t, (Kind::Int64, Device::Cpu)).lt(*l))
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(device);
        Batch {
            features: [
                stack(&self.features[0], 0.0),
                stack(&self.features[1], 0.0),
                stack(&self.features[2], 0.0),
            ],
            present: stack(&self.present.to_kind(Kind::Uint8), 0.0).to_kind(Kind::Bool),
            valid,
            speaker: stack(&self.speaker, 0.0),
            label: stack(&self.label, -1.0),
            offset: None,
        }
    }

    /// The dialogues `idx` (in that order) as a dataset of their own.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut rows = Vec::new();
        let mut offsets = vec![0i64];
        for d in idx {
            rows.extend(self.offsets[*d]..self.offsets[d + 1]);
            offsets.push(rows.len() as i64);
        }
        let sel = Tensor::from_slice(&rows);
        let take = |t: &Tensor| t.index_select(0, &sel);
        let mut meta = self.meta.clone();
        meta.dialogues = idx
            .iter()
            .map(|d| self.meta.dialogues[*d].clone())
            .collect();
        meta.groups = idx.iter().map(|d| self.meta.groups[*d].clone()).collect();
        if !meta.texts.is_empty() {
            meta.texts = rows
                .iter()
                .map(|r| self.meta.texts[*r as usize].clone())
                .collect();
        }
        Dataset {
            meta,
            offsets,
            features: [
                take(&self.features[0]),
                take(&self.features[1]),
                take(&self.features[2]),
            ],
            present: take(&self.present),
            speaker: take(&self.speaker),
            label: take(&self.label),
        }
    }

    /// Mean and standard deviation of modality `m` over the utterances where it is present.
    pub fn stats(&self, m: usize) -> (Tensor, Tensor) {
        let x = &self.features[m];
        let keep = self.present.select(1, m as i64);
        let rows = x.index_select(0, &keep.nonzero().squeeze_dim(1));
        if rows.size()[0] == 0 {
            let d = x.size()[1];
            return (
                Tensor::zeros([d], (Kind::Float, Device::Cpu)),
                Tensor::ones([d], (Kind::Float, Device::Cpu)),
            );
        }
        (
            rows.mean_dim(0, false, Kind::Float),
            rows.std_dim(0, false, false),
        )
    }
}

/// Presence [n, 3] with the same modalities present on every utterance.
pub fn presence(n: i64, present: [bool; 3]) -> Tensor {
    Tensor::from_slice(&present.map(u8::from))
        .to_kind(Kind::Bool)
        .unsqueeze(0)
        .repeat([n, 1])
}

/// The [n, 0] feature matrix of a modality a split does not have.
pub fn absent(n: i64) -> Tensor {
    Tensor::zeros([n, 0], (Kind::Float, Device::Cpu))
}
