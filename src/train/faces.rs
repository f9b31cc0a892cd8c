//! Labelled face pictures for the visual branch: `DIR/<class>/*.{jpg,jpeg,png}` (class folders
//! in FER2013's words, angry .. surprise, or MELD's, anger .. joy), each picture a pre-cropped
//! face. Every picture becomes the visual vector the daemon would pool from one frame with
//! that face ([`VisionModels::expression_of_crop`], [`VisualVector::model_input`]): the same
//! code makes it in the daemon, in `replay`, for training and for `summerd eval --faces`.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::classes::{MELD_CLASSES, meld_names};
use super::data::{DataError, Dataset, FORMAT, Sidecar, absent};
use super::metrics::{self, Metrics};
use crate::model::{FeatureSpec, Features, VISUAL_DIM, VISUAL_EXTRACTOR};
use crate::rng::Rng;
use crate::vision::expression::CLASSES as FER_CLASSES;
use crate::vision::stage::{VisionModels, VisualVector};

/// The MELD class index of a class folder named in FER2013's or MELD's words.
pub fn class_of_folder(name: &str) -> Option<usize> {
    let meld = match name.to_ascii_lowercase().as_str() {
        "angry" => "anger".to_string(),
        "happy" => "joy".to_string(),
        "sad" => "sadness".to_string(),
        other => other.to_string(),
    };
    MELD_CLASSES.iter().position(|c| *c == meld)
}

/// The MELD class index of each of the expression network's outputs.
fn meld_of_fer(i: usize) -> usize {
    class_of_folder(FER_CLASSES[i]).expect("FER's classes are MELD's")
}

/// Labelled faces as visual vectors.
#[derive(Debug, Clone, Default)]
pub struct Faces {
    /// One visual vector ([`VISUAL_DIM`]) per picture.
    pub vectors: Vec<Vec<f32>>,
    /// MELD class index per picture.
    pub label: Vec<usize>,
    /// The pictures, relative to the folder read.
    pub names: Vec<String>,
}

fn invalid(path: &Path, message: String) -> DataError {
    DataError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

impl Faces {
    /// Read `dir`'s class folders through `models` (pictures in name order; an unknown
    /// folder, an unreadable picture or no picture at all is an error naming it).
    pub fn read(dir: &Path, models: &VisionModels) -> Result<Faces, DataError> {
        let io = |p: &Path, e: std::io::Error| DataError::File {
            path: p.to_path_buf(),
            message: e.to_string(),
        };
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        let mut faces = Faces::default();
        for folder in folders {
            let name = folder.file_name().unwrap_or_default().to_string_lossy();
            let label = class_of_folder(&name).ok_or_else(|| {
                invalid(
                    &folder,
                    format!(
                        "'{name}' is not a class: FER's ({}) or MELD's ({})",
                        FER_CLASSES.join(", "),
                        MELD_CLASSES.join(", ")
                    ),
                )
            })?;
            let mut pictures: Vec<PathBuf> = std::fs::read_dir(&folder)
                .map_err(|e| io(&folder, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            pictures.sort();
            for p in pictures {
                faces.vectors.push(vector_of(&p, models)?);
                faces.label.push(label);
                faces.names.push(format!(
                    "{name}/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
        if faces.vectors.is_empty() {
            return Err(invalid(
                dir,
                "no pictures (.jpg, .jpeg, .png) in class folders".into(),
            ));
        }
        Ok(faces)
    }

    /// Pictures.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The expression network's own answer per picture (argmax of its probabilities, as a
    /// MELD class index).
    pub fn network_answers(&self) -> Vec<usize> {
        self.vectors
            .iter()
            .map(|v| {
                let p = VisualVector::probs_of(v);
                let best = (0..7)
                    .max_by(|a, b| p[*a].total_cmp(&p[*b]))
                    .expect("seven classes");
                meld_of_fer(best)
            })
            .collect()
    }

    /// The expression network's own figures on these pictures.
    pub fn network_metrics(&self) -> Metrics {
        let truth: Vec<i64> = self.label.iter().map(|l| *l as i64).collect();
        let pred: Vec<i64> = self.network_answers().iter().map(|l| *l as i64).collect();
        metrics::compute(&truth, &pred, MELD_CLASSES.len())
    }

    /// The expression network's mean probability of its own answer (its confidence).
    pub fn network_confidence(&self) -> f64 {
        let sum: f64 = self
            .vectors
            .iter()
            .map(|v| {
                f64::from(
                    VisualVector::probs_of(v)
                        .iter()
                        .copied()
                        .fold(0.0, f32::max),
                )
            })
            .sum();
        sum / self.len().max(1) as f64
    }

    /// The pictures of class `label`.
    pub fn of_label(&self, label: usize) -> Vec<usize> {
        (0..self.len())
            .filter(|i| self.label[*i] == label)
            .collect()
    }

    /// The faces a model may learn from without trusting them more than unseen faces
    /// deserve: per class, every picture the expression network reads wrong and, of those it
    /// reads right, a random share, so that its accuracy on what is kept is at most `target`
    /// (its accuracy on faces it has never seen). Unchanged when it is already at most that.
    pub fn calibrated(&self, target: f64, seed: u64) -> Faces {
        let answers = self.network_answers();
        let mut rng = Rng::new(seed);
        let mut keep = Vec::new();
        for c in 0..MELD_CLASSES.len() {
            let idx = self.of_label(c);
            let (mut right, wrong): (Vec<usize>, Vec<usize>) =
                idx.iter().partition(|i| answers[**i] == c);
            let n_right = right.len() as f64;
            let n_wrong = wrong.len() as f64;
            let most = if target >= 1.0 {
                n_right
            } else {
                (target * n_wrong / (1.0 - target)).floor()
            };
            rng.shuffle(&mut right);
            right.truncate(most.min(n_right) as usize);
            keep.extend(wrong);
            keep.extend(right);
        }
        keep.sort_unstable();
        Faces {
            vectors: keep.iter().map(|i| self.vectors[*i].clone()).collect(),
            label: keep.iter().map(|i| self.label[*i]).collect(),
            names: keep.iter().map(|i| self.names[*i].clone()).collect(),
        }
    }

    /// The faces as a split: one single-utterance dialogue per picture, the face present and
    /// every other column of `features` (a model's) absent, so that the model reads its
    /// visual branch alone.
    pub fn as_dataset(&self, features: &Features) -> Dataset {
        let n = self.len() as i64;
        let [dt, da, _] = features.dims();
        let flat: Vec<f32> = self.vectors.concat();
        let mut present = Vec::with_capacity(self.len() * 3);
        for _ in 0..self.len() {
            present.extend([0u8, 0, 1]);
        }
        let zeros = |d: i64| {
            if d == 0 {
                absent(n)
            } else {
                Tensor::zeros([n, d], (Kind::Float, Device::Cpu))
            }
        };
        Dataset {
            meta: Sidecar {
                format: FORMAT.into(),
                classes: meld_names(),
                features: Features {
                    visual: Some(visual_spec()),
                    ..features.clone()
                },
                dialogues: self.names.clone(),
                groups: self.names.clone(),
                source: "labelled face pictures, summerd's expression vectors".into(),
                texts: Vec::new(),
            },
            offsets: (0..=n).collect(),
            features: [
                zeros(dt),
                zeros(da),
                Tensor::from_slice(&flat).view([n, VISUAL_DIM]),
            ],
            present: Tensor::from_slice(&present)
                .view([n, 3])
                .to_kind(Kind::Bool),
            speaker: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
            label: Tensor::from_slice(&self.label.iter().map(|l| *l as i64).collect::<Vec<_>>()),
        }
    }

    /// Back from a split written by [`Faces::as_dataset`] (`summerd dataset faces`).
    pub fn from_dataset(ds: &Dataset) -> Result<Faces, String> {
        if ds.meta.features.visual.as_ref() != Some(&visual_spec()) {
            return Err(format!(
                "not a faces split: its visual column is {:?}, not {VISUAL_EXTRACTOR} ({VISUAL_DIM}-d)",
                ds.meta.features.visual
            ));
        }
        let flat = Vec::<f32>::try_from(ds.features[2].contiguous().view([-1]))
            .map_err(|e| e.to_string())?;
        let labels = Vec::<i64>::try_from(&ds.label).map_err(|e| e.to_string())?;
        if let Some(l) = labels
            .iter()
            .find(|l| !(0..MELD_CLASSES.len() as i64).contains(*l))
        {
            return Err(format!("label {l} is not one of MELD's 7 classes"));
        }
        if ds.meta.classes != meld_names() {
            return Err(format!("classes {:?} are not MELD's", ds.meta.classes));
        }
        Ok(Faces {
            vectors: flat
                .chunks(VISUAL_DIM as usize)
                .map(<[f32]>::to_vec)
                .collect(),
            label: labels.iter().map(|l| *l as usize).collect(),
            names: ds.meta.dialogues.clone(),
        })
    }
}

/// The visual column's spec.
pub fn visual_spec() -> FeatureSpec {
    FeatureSpec {
        extractor: VISUAL_EXTRACTOR.into(),
        dim: VISUAL_DIM,
    }
}

/// The visual vector of one pre-cropped face picture.
pub fn vector_of(picture: &Path, models: &VisionModels) -> Result<Vec<f32>, DataError> {
    let frame = crate::decode::decode_video(
        picture,
        crate::decode::VideoRequest {
            fps: None,
            max_size: None,
            max_frames: 1,
        },
    )
    .map_err(|e| invalid(picture, e.to_string()))?
    .pop()
    .ok_or_else(|| invalid(picture, "no picture in the file".into()))?;
    VisualVector::of_crop(models.expression_of_crop(&frame.image))
        .model_input()
        .ok_or_else(|| invalid(picture, "no visual vector".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_folders_in_fer_or_meld_words() {
        assert_eq!(class_of_folder("happy"), class_of_folder("joy"));
        assert_eq!(class_of_folder("Angry"), Some(6));
        assert_eq!(class_of_folder("sadness"), Some(3));
        assert_eq!(class_of_folder("contempt"), None);
        // Every output of the network is a MELD class, each a different one.
        let mut all: Vec<usize> = (0..7).map(meld_of_fer).collect();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
    }

    fn faces() -> Faces {
        // Ten joy faces: the network reads 8 right (probability on "happy", FER index 3) and
        // 2 as "sad"; ten neutral faces, all read right.
        let mut f = Faces::default();
        for i in 0..20 {
            let (label, fer) = if i < 10 {
                (4, if i < 8 { 3 } else { 4 })
            } else {
                (0, 6)
            };
            let mut v = vec![0f32; VISUAL_DIM as usize];
            v[128 + fer] = 1.0;
            f.vectors.push(v);
            f.label.push(label);
            f.names.push(format!("{i}.png"));
        }
        f
    }

    #[test]
    fn calibration_keeps_every_misread_face_and_thins_the_rest_to_the_target() {
        let f = faces();
        assert_eq!(f.network_metrics().wa, 90.0);
        let c = f.calibrated(0.5, 1);
        // joy: 2 wrong + 2 right; neutral: 0 wrong, so none of its right ones.
        assert_eq!(c.len(), 4);
        assert_eq!(c.network_metrics().wa, 50.0);
        assert_eq!(f.calibrated(1.0, 1).len(), 20);
        let ds = f.as_dataset(&crate::infer::engine::daemon_features(
            4,
            false,
            Default::default(),
        ));
        assert_eq!(ds.features[0].size(), vec![20, 4]);
        assert_eq!(ds.features[1].size(), vec![20, 88]);
        let back = Faces::from_dataset(&ds).unwrap();
        assert_eq!((back.vectors, back.label), (f.vectors, f.label));
    }
}
