//! Writers of the native format from real data with summerd's own extractors: MELD's CSV
//! (text vectors from the text encoder, speakers, labels, dialogues) and EmoDB's wav files (the
//! eGeMAPS functionals, speakers as groups, labels).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::classes::meld_names;
// The class sets live in `classes`; they stay reachable here, where the datasets are written.
pub use super::classes::{EMODB_CLASSES, MELD_CLASSES};
use super::clips::Clips;
use super::data::{DataError, Dataset, FORMAT, Sidecar, absent, presence};
use crate::acoustic::Band;
use crate::decode::Condition;
use crate::model::{FeatureSpec, Features};
use crate::text::TextEncoder;

fn invalid(path: &Path, message: String) -> DataError {
    DataError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

/// A MELD split (`*_sent_emo.csv`) as a dataset: each dialogue in utterance order, speakers
/// numbered by first appearance within the dialogue, texts encoded with `enc`.
pub fn meld(csv: &Path, enc: &TextEncoder) -> Result<Dataset, DataError> {
    let rows = crate::assets::read_meld(csv).map_err(|e| invalid(csv, e.to_string()))?;
    let mut dialogues: BTreeMap<u32, Vec<&crate::assets::MeldRow>> = BTreeMap::new();
    for r in &rows {
        dialogues.entry(r.dialogue).or_default().push(r);
    }
    let mut offsets = vec![0i64];
    let (mut texts, mut speakers, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for (id, mut utts) in dialogues {
        utts.sort_by_key(|r| r.index);
        let mut names: Vec<&str> = Vec::new();
        for r in utts {
            let s = match names.iter().position(|n| *n == r.speaker) {
                Some(i) => i,
                None => {
                    names.push(&r.speaker);
                    names.len() - 1
                }
            };
            let label = MELD_CLASSES
                .iter()
                .position(|c| *c == r.emotion)
                .ok_or_else(|| invalid(csv, format!("unknown emotion '{}'", r.emotion)))?;
            texts.push(r.utterance.as_str());
            speakers.push(s as i64);
            labels.push(label as i64);
        }
        offsets.push(texts.len() as i64);
        ids.push(format!("dia{id}"));
    }
    let text = enc
        .embed_texts(&texts, 32)
        .map_err(|e| invalid(csv, e.to_string()))?
        .to_kind(Kind::Float);
    let n = texts.len() as i64;
    let dim = text.size()[1];
    let groups = ids.clone();
    Ok(Dataset {
        meta: Sidecar {
            format: FORMAT.into(),
            classes: meld_names(),
            features: Features {
                text: Some(FeatureSpec {
                    extractor: enc.extractor(),
                    dim,
                }),
                audio: None,
                visual: None,
            },
            dialogues: ids,
            groups,
            source: format!(
                "MELD {}",
                csv.file_name().unwrap_or_default().to_string_lossy()
            ),
            texts: texts.iter().map(|t| t.to_string()).collect(),
        },
        offsets,
        features: [text, absent(n), absent(n)],
        present: presence(n, [true, false, false]),
        speaker: Tensor::from_slice(&speakers),
        label: Tensor::from_slice(&labels),
    })
}

/// EmoDB clips as a dataset: one single-utterance dialogue per clip, its 88 eGeMAPS functionals
/// heard through `band` as the audio vector, the speaker (first two characters) as its group.
pub fn emodb(dir: &Path, cond: Condition, band: Band) -> Result<Dataset, DataError> {
    let files = crate::assets::wav_files(dir).map_err(|e| invalid(dir, e.to_string()))?;
    let (mut feats, mut labels, mut ids, mut groups) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in &files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let letter = name.chars().nth(5).unwrap_or('?');
        let label = EMODB_CLASSES
            .iter()
            .position(|(_, c)| *c == letter)
            .ok_or_else(|| invalid(f, format!("no EmoDB label letter in '{name}'")))?;
        labels.push(label as i64);
        ids.push(name.trim_end_matches(".wav").to_string());
        groups.push(name[..2].to_string());
    }
    for (f, audio) in files.iter().zip(
        crate::decode::decode_set(&files, &groups, cond)
            .map_err(|e| invalid(dir, e.to_string()))?,
    ) {
        let (func, _) = crate::acoustic::file_functionals(audio.rate, &audio.samples, band)
            .map_err(|e| invalid(f, e.to_string()))?;
        feats.extend_from_slice(&func.values);
    }
    let n = files.len() as i64;
    Ok(Dataset {
        meta: Sidecar {
            format: FORMAT.into(),
            classes: EMODB_CLASSES.iter().map(|(s, _)| s.to_string()).collect(),
            features: Features {
                text: None,
                audio: Some(FeatureSpec {
                    extractor: band.extractor().into(),
                    dim: 88,
                }),
                visual: None,
            },
            dialogues: ids,
            groups,
            source: format!(
                "EmoDB (acted German speech){}, summerd eGeMAPS v02 functionals ({})",
                if cond == Condition::CLEAN {
                    String::new()
                } else {
                    format!(" through {}", cond.name())
                },
                match band {
                    Band::Telephone => "telephone band",
                    Band::Wide => "wide band",
                }
            ),
            texts: Vec::new(),
        },
        offsets: (0..=n).collect(),
        features: [
            absent(n),
            Tensor::from_slice(&feats).view([n, 88]),
            absent(n),
        ],
        present: presence(n, [false, true, false]),
        speaker: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
        label: Tensor::from_slice(&labels),
    })
}

/// Labelled wav files for `summerd eval`: `labels` has one line per clip, `FILE,LABEL` or
/// `FILE,LABEL,SPEAKER` (FILE relative to `dir`; `#` starts a comment; a first line whose
/// label column is `label` is a header). LABEL must be one of `classes` (anything else is kept
/// unlabelled and named in the returned notes); without SPEAKER every clip is one speaker's.
/// Each clip goes through `cond` first ([`crate::decode::decode_set`]), then the descriptors
/// heard through `band`.
pub fn labelled_wavs(
    dir: &Path,
    labels: &Path,
    classes: &[String],
    cond: Condition,
    band: Band,
) -> Result<(Clips, Vec<String>), DataError> {
    let text = std::fs::read_to_string(labels).map_err(|e| DataError::File {
        path: labels.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut clips = Clips {
        audio: Vec::new(),
        speaker: Vec::new(),
        label: Vec::new(),
        conditions: Vec::new(),
        extractor: band.extractor().into(),
    };
    let mut notes = Vec::new();
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() < 2 {
            return Err(invalid(
                labels,
                format!("line {}: expected FILE,LABEL[,SPEAKER]", n + 1),
            ));
        }
        if n == 0 && cols[1].eq_ignore_ascii_case("label") {
            continue;
        }
        let label = classes.iter().position(|c| c == cols[1]);
        if label.is_none() {
            notes.push(format!(
                "line {}: '{}' is not one of the model's classes; unlabelled",
                n + 1,
                cols[1]
            ));
        }
        files.push(dir.join(cols[0]));
        clips.label.push(label);
        clips
            .speaker
            .push(cols.get(2).copied().unwrap_or("speaker").to_string());
    }
    let audio = crate::decode::decode_set(&files, &clips.speaker, cond)
        .map_err(|e| invalid(labels, e.to_string()))?;
    for (f, a) in files.iter().zip(audio) {
        let (func, _) = crate::acoustic::file_functionals(a.rate, &a.samples, band)
            .map_err(|e| invalid(f, e.to_string()))?;
        clips.audio.push(func.values.to_vec());
    }
    if clips.audio.is_empty() {
        return Err(invalid(labels, "no clips listed".into()));
    }
    Ok((clips, notes))
}
