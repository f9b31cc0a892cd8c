//! SUMMER on tch (`../shared/docs/MODEL.md`): the network ([`net`]), its blocks ([`layers`]),
//! the distillation losses ([`kd`]) and the model directory format: `weights.safetensors` plus
//! `manifest.json` (what the model reads, with which extractors and dimensions, its classes,
//! window, causality, configuration and the weights' sha256).

pub mod kd;
pub mod layers;
pub mod net;
pub mod norm;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, nn};

pub use layers::Routing;
pub use net::{
    Batch, Fusion, MODALITIES, ModelConfig, NetKind, Output, StepInput, StepPool, StepRows, Summer,
};

/// The manifest's format tag.
pub const FORMAT: &str = "summerd-model/1";
/// The text extractor summerd runs (all-MiniLM-L6-v2, mean-pooled, L2-normalised).
pub const TEXT_EXTRACTOR: &str = "all-MiniLM-L6-v2/mean/l2";

/// The name of an extractor's vectors when the text encoder carries a model's tuning delta.
pub fn tuned_extractor(base: &str) -> String {
    if base.ends_with("+tuned") {
        base.to_string()
    } else {
        format!("{base}+tuned")
    }
}
/// The acoustic extractor summerd runs (its own eGeMAPS v02 functionals). Version 2: formants,
/// pitch, harmonics, slopes and scales as openSMILE 2.6.0 computes them (70 of the 88
/// functionals at r >= 0.9 against it on the same signal). Version 3: openSMILE's pitch
/// candidates and smoother (its voicing on every frame) and its frames at the end of a
/// recording (79 of 88). Version 4: the same functionals heard through the telephone band
/// (the acoustic stage's telephone band: every input through 8 kHz), so that wide-band and
/// narrow-band calls give the model the same kind of vectors. Version 3 is also made: a model
/// trained on it is served wide ([`AUDIO_EXTRACTOR_WIDE`]). A model trained on another
/// version's features (1, 2) is refused, not silently fed a different distribution.
pub const AUDIO_EXTRACTOR: &str = "egemaps-v02/summerd/4";
/// Version 3 of the acoustic extractor: the functionals of [`AUDIO_EXTRACTOR`] heard wide
/// (everything up to 8 kHz).
pub const AUDIO_EXTRACTOR_WIDE: &str = "egemaps-v02/summerd/3";

/// The visual extractor summerd runs: the main face's mini-Xception embedding (128) and class
/// probabilities (7, FER2013's order), each averaged over the utterance's frames that had a
/// main face ([`crate::vision::stage::VisualVector::model_input`]).
pub const VISUAL_EXTRACTOR: &str = "fer-mini-xception/main-face-mean/1";
/// Length of the visual vector.
pub const VISUAL_DIM: i64 = 135;

/// Errors loading or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path}: bad manifest: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights are not the ones the manifest names.
    #[error("{path}: sha256 {actual} does not match the manifest's {expected}")]
    Checksum {
        /// The weights file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// The model reads features the daemon does not compute (or with other dimensions).
    #[error("model needs {modality} features {wanted}, but the daemon computes {have}")]
    Features {
        /// Which modality.
        modality: String,
        /// What the model needs.
        wanted: String,
        /// What the daemon has.
        have: String,
    },
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// One modality's input as a model expects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The extractor that makes the vectors (e.g. [`TEXT_EXTRACTOR`]).
    pub extractor: String,
    /// Vector length.
    pub dim: i64,
}

/// The inputs of a model, per modality; `None`: the model does not use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// Text.
    pub text: Option<FeatureSpec>,
    /// Audio.
    pub audio: Option<FeatureSpec>,
    /// Visual.
    pub visual: Option<FeatureSpec>,
}

impl Features {
    /// Name the text vectors as the tuned encoder's ([`tuned_extractor`]).
    pub fn mark_text_tuned(&mut self) {
        if let Some(t) = self.text.as_mut() {
            t.extractor = tuned_extractor(&t.extractor);
        }
    }

    /// Dimensions in [`MODALITIES`] order (0: not used).
    pub fn dims(&self) -> [i64; 3] {
        let d = |f: &Option<FeatureSpec>| f.as_ref().map_or(0, |f| f.dim);
        [d(&self.text), d(&self.audio), d(&self.visual)]
    }

    fn get(&self, m: usize) -> &Option<FeatureSpec> {
        match m {
            0 => &self.text,
            1 => &self.audio,
            _ => &self.visual,
        }
    }

    /// A clear error unless every feature this model needs is one `have` provides, with the
    /// same extractor and dimension.
    pub fn check_against(&self, have: &Features) -> Result<(), ModelError> {
        for (m, name) in MODALITIES.iter().enumerate() {
            if let Some(w) = self.get(m) {
                let ok = have.get(m).as_ref().is_some_and(|h| h == w);
                if !ok {
                    return Err(ModelError::Features {
                        modality: name.to_string(),
                        wanted: format!("{} ({}-d)", w.extractor, w.dim),
                        have: have
                            .get(m)
                            .as_ref()
                            .map_or("none".into(), |h| format!("{} ({}-d)", h.extractor, h.dim)),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `manifest.json` of a model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Teacher or fused student.
    pub kind: NetKind,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Inputs.
    pub features: Features,
    /// Utterances a prediction sees (copied from `config` for readers).
    pub window: i64,
    /// Whether it is the streaming (causal) variant.
    pub causal: bool,
    /// The network's configuration.
    pub config: ModelConfig,
    /// The weights file, relative to the directory.
    pub weights: String,
    /// sha256 of the weights file (hex).
    pub weights_sha256: String,
    /// What it was trained on (free text, for people).
    #[serde(default)]
    pub trained_on: String,
    /// Text encoder layers fine-tuned with the model, stored beside it over the registry
    /// weights; the daemon's encoder must load them to make the vectors this model reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_tuned: Option<TunedText>,
    /// Per-speaker online normalisation of the audio vectors ([`norm`]); absent: the audio
    /// vectors are used as extracted (the network's own standardisation still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_norm: Option<norm::SpeakerNorm>,
    /// How the weights file stores floats: `f32` (default) or `f16` (half the size; the
    /// network still computes in f32, the weights are widened at load).
    #[serde(default = "f32_name", skip_serializing_if = "is_f32")]
    pub weights_dtype: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn is_f32(s: &str) -> bool {
    s == "f32"
}

/// Fine-tuned text encoder layers shipped with a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedText {
    /// File in the model directory (checkpoint-named tensors).
    pub file: String,
    /// Its sha256.
    pub sha256: String,
    /// How many top layers it changes.
    pub layers: usize,
    /// Rank of its low-rank updates (0: it holds whole layers).
    #[serde(default)]
    pub lora_rank: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// An error unless `path`'s sha256 is `expected`.
fn verify_sha256(path: &Path, expected: &str) -> Result<(), ModelError> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(ModelError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A loaded model: its network, manifest and weights.
pub struct Model {
    /// The network.
    pub net: Summer,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its weights.
    pub vs: nn::VarStore,
}

impl Model {
    /// A fresh (untrained) model.
    pub fn new(
        kind: NetKind,
        features: Features,
        classes: Vec<String>,
        cfg: &ModelConfig,
        device: Device,
    ) -> Model {
        let vs = nn::VarStore::new(device);
        let net = Summer::new(&vs.root(), kind, features.dims(), classes.len() as i64, cfg);
        Model {
            net,
            manifest: Manifest {
                format: FORMAT.into(),
                kind,
                classes,
                features,
                window: cfg.window,
                causal: cfg.causal,
                config: cfg.clone(),
                weights: "weights.safetensors".into(),
                weights_sha256: String::new(),
                trained_on: String::new(),
                text_tuned: None,
                speaker_norm: None,
                weights_dtype: f32_name(),
            },
            vs,
        }
    }

    /// Load `dir/manifest.json` and the weights it names (checked against its sha256).
    pub fn load(dir: &Path, device: Device) -> Result<Model, ModelError> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(io(&mpath))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path: mpath.clone(),
            message: e.to_string(),
        })?;
        if manifest.format != FORMAT {
            return Err(ModelError::Manifest {
                path: mpath,
                message: format!("format '{}' (expected '{FORMAT}')", manifest.format),
            });
        }
        if !matches!(manifest.weights_dtype.as_str(), "f32" | "f16") {
            return Err(ModelError::Manifest {
                path: mpath,
                message: format!(
                    "weights_dtype '{}' (expected f32 or f16)",
                    manifest.weights_dtype
                ),
            });
        }
        let wpath = dir.join(&manifest.weights);
        verify_sha256(&wpath, &manifest.weights_sha256)?;
        if let Some(t) = &manifest.text_tuned {
            verify_sha256(&dir.join(&t.file), &t.sha256)?;
        }
        let mut m = Model::new(
            manifest.kind,
            manifest.features.clone(),
            manifest.classes.clone(),
            &manifest.config,
            device,
        );
        m.vs.load(&wpath)?;
        // A loaded tensor keeps the file's precision: compute in f32 whatever was stored.
        m.vs.float();
        m.manifest = manifest;
        Ok(m)
    }

    /// Write `dir/weights.safetensors` and `dir/manifest.json` (with the weights' sha256).
    pub fn save(&mut self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let wpath = dir.join(&self.manifest.weights);
        match self.manifest.weights_dtype.as_str() {
            "f16" => {
                let named: Vec<(String, tch::Tensor)> = self
                    .vs
                    .variables()
                    .into_iter()
                    .map(|(k, v)| {
                        let v = if v.is_floating_point() {
                            v.to_kind(tch::Kind::Half)
                        } else {
                            v
                        };
                        (k, v)
                    })
                    .collect();
                tch::Tensor::write_safetensors(&named, &wpath)?;
            }
            _ => self.vs.save(&wpath)?,
        }
        self.manifest.weights_sha256 = sha256_file(&wpath)?;
        let mpath = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(&self.manifest).expect("plain struct");
        std::fs::write(&mpath, text + "\n").map_err(io(&mpath))?;
        Ok(())
    }
}
