//! `summerd eval`: a model directory evaluated on a split. The split is a native dataset, a
//! folder of labelled audio files (the model card's EmoDB protocol: each speaker's clips as
//! one sequence in random order, online per-speaker normalisation, text absent) or a
//! MELD-format CSV (dialogues as conversations, text only), made into the model's own features
//! as the daemon would compute them.

use std::path::{Path, PathBuf};

use tch::Device;

use super::data::{DataError, Dataset};
use super::faces::Faces;
use super::metrics::{self, Metrics};
use super::{mix, tune, writers};
use crate::model::{Model, ModelError};
use crate::text::{self, Precision, TextEncoder, TextError};
use crate::vision::stage::VisionModels;

/// What is evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalInput {
    /// A split in the native format.
    Native(PathBuf),
    /// A folder of audio files and its labels file (`FILE,LABEL[,SPEAKER]` per line), each
    /// file passed through a telephone channel and noise first.
    Wavs(PathBuf, PathBuf, crate::decode::Condition),
    /// A MELD-format CSV.
    Meld(PathBuf),
    /// Labelled face pictures (`DIR/<class>/*.{jpg,png}`): the visual branch alone.
    Faces(PathBuf),
}

impl EvalInput {
    /// The data's name in messages and titles: its file or folder.
    pub fn describe(&self) -> String {
        match self {
            EvalInput::Native(p)
            | EvalInput::Meld(p)
            | EvalInput::Wavs(p, ..)
            | EvalInput::Faces(p) => p.display().to_string(),
        }
    }
}

/// What can stop an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The data could not be read or made.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model did not load.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The text encoder did not load or failed.
    #[error(transparent)]
    Text(#[from] TextError),
    /// Writing the report failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The data does not fit the model.
    #[error("{0}")]
    Mismatch(String),
    /// The vision networks (for face pictures) did not load.
    #[error(transparent)]
    Vision(#[from] crate::vision::VisionError),
}

/// The figures of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Metrics over the labelled utterances.
    pub metrics: Metrics,
    /// Mean experts kept per token, per SDMoE.
    pub active_experts: Vec<(String, f64)>,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// For face pictures: the expression network's own answers (its argmax) on them.
    pub network: Option<Metrics>,
}

impl EvalReport {
    /// The report as `summerd eval` prints it and writes it to `report.json`.
    pub fn json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({
            "metrics": self.metrics,
            "macro_f1": self.metrics.macro_f1(),
            "active_experts": self.active_experts,
            "classes": self.classes,
        });
        if let Some(n) = &self.network {
            j["expression_network"] = serde_json::json!({
                "metrics": n,
                "macro_f1": n.macro_f1(),
            });
        }
        j
    }

    /// `out/report.json` and `out/report.svg` (a picture titled `title`).
    pub fn write(&self, out: &Path, title: &str) -> Result<(), EvalError> {
        std::fs::create_dir_all(out)?;
        let json = serde_json::to_string_pretty(&self.json()).expect("plain values");
        std::fs::write(out.join("report.json"), json + "\n")?;
        std::fs::write(
            out.join("report.svg"),
            metrics::svg(&self.metrics, &self.classes, title),
        )?;
        Ok(())
    }
}

/// Evaluate the model in `model_dir` on `input` (`precision`: the text encoder's matrix
/// products for a MELD CSV). `note` receives what the reader noticed on the way (unknown
/// labels, the precision chosen), as it happens.
pub fn run(
    model_dir: &Path,
    input: &EvalInput,
    precision: Precision,
    device: Device,
    note: &mut dyn FnMut(String),
) -> Result<EvalReport, EvalError> {
    let m = Model::load(model_dir, device)?;
    let (mut ds, network) = dataset(&m, model_dir, input, device, precision, note)?;
    if m.manifest.features.visual.is_some() {
        ds = mix::visual_absent(&ds);
    }
    let ds = as_model_reads(&m, model_dir, ds, &input.describe(), device)?;
    let (metrics, active) = super::evaluate(&m.net, &ds, device, 64);
    Ok(EvalReport {
        metrics,
        active_experts: active,
        classes: ds.meta.classes,
        network,
    })
}

/// `input` as a dataset in the model's own features, and for face pictures the expression
/// network's own figures on them.
pub fn dataset(
    m: &Model,
    model_dir: &Path,
    input: &EvalInput,
    device: Device,
    precision: Precision,
    note: &mut dyn FnMut(String),
) -> Result<(Dataset, Option<Metrics>), EvalError> {
    let ds = match input {
        EvalInput::Native(p) => Dataset::load(p)?,
        EvalInput::Faces(dir) => {
            if m.manifest.features.visual.is_none() {
                return Err(EvalError::Mismatch(format!(
                    "{} reads no faces (its manifest has no visual input)",
                    model_dir.display()
                )));
            }
            let models = VisionModels::load_default(Path::new("."), Default::default(), device)?;
            let faces = Faces::read(dir, &models)?;
            return Ok((
                faces.as_dataset(&m.manifest.features),
                Some(faces.network_metrics()),
            ));
        }
        EvalInput::Wavs(dir, labels, cond) => {
            let norm = m.manifest.speaker_norm.as_ref().ok_or_else(|| {
                EvalError::Mismatch(
                    "the model has no per-speaker normalisation in its manifest; evaluate it on a native split".into(),
                )
            })?;
            let band = crate::acoustic::Band::of_model(&m.manifest.features);
            let (clips, notes) =
                writers::labelled_wavs(dir, labels, &m.manifest.classes, *cond, band)?;
            for n in notes {
                note(format!("{}: {n}", labels.display()));
            }
            let speakers = clips.speakers();
            let text = m.manifest.features.text.as_ref();
            let mut ds = mix::speaker_sequences(&clips, &speakers, norm, text, 1, 8, 0);
            ds.meta.classes = m.manifest.classes.clone();
            ds
        }
        EvalInput::Meld(csv) => {
            // The encoder as the daemon loads it: with the model's tuning delta, if any.
            let tuned = m
                .manifest
                .text_tuned
                .as_ref()
                .map(|t| model_dir.join(&t.file));
            let mut enc = default_encoder(device, tuned.as_deref())?;
            let kind = enc.set_precision(precision);
            note(format!("text encoder matrix products in {kind:?}"));
            let ds = writers::meld(csv, &enc)?;
            match &m.manifest.features.audio {
                Some(a) => mix::audio_absent(&ds, &a.extractor),
                None => ds,
            }
        }
    };
    Ok((ds, None))
}

/// `ds` as the model reads it: text vectors remade by the model's fine-tuned encoder layers
/// when it has them and the data was made without; then the classes and features checked
/// against the model's. `data` names the data in messages.
pub fn as_model_reads(
    m: &Model,
    model_dir: &Path,
    mut ds: Dataset,
    data: &str,
    device: Device,
) -> Result<Dataset, EvalError> {
    let made_tuned = ds
        .meta
        .features
        .text
        .as_ref()
        .is_some_and(|f| f.extractor.ends_with("+tuned"));
    let has_text = ds.present.select(1, 0).any().int64_value(&[]) != 0;
    if let Some(t) = m.manifest.text_tuned.as_ref().filter(|_| !made_tuned) {
        // Data without any text, such as labelled wavs, has none to remake.
        if has_text {
            if ds.meta.texts.len() != ds.len() {
                return Err(EvalError::Mismatch(format!(
                    "the model's text encoder is fine-tuned, and {data} has no texts to encode"
                )));
            }
            let enc = default_encoder(device, Some(&model_dir.join(&t.file)))?;
            ds = tune::reencode(&ds, &enc)?;
        } else {
            ds.meta.features.mark_text_tuned();
        }
    }
    if ds.meta.classes != m.manifest.classes {
        return Err(EvalError::Mismatch(format!(
            "the data's classes {:?} are not the model's {:?}",
            ds.meta.classes, m.manifest.classes
        )));
    }
    m.manifest.features.check_against(&ds.meta.features)?;
    Ok(ds)
}

/// The daemon's default text encoder, with the fine-tuning delta `tuned` if given.
fn default_encoder(device: Device, tuned: Option<&Path>) -> Result<TextEncoder, TextError> {
    TextEncoder::load_tuned(
        Path::new(text::DEFAULT_DIR),
        text::DEFAULT_MAX_TOKENS,
        device,
        tuned,
    )
}
