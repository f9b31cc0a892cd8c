//! The per-stream vision pipeline and the per-utterance visual vector.
//!
//! Every frame (at `ingest.video_fps`): full MTCNN detection on some frames ([`Cadence`]); on
//! the frames between, O-Net on each live track's box, or R-Net and O-Net on nine windows
//! around it when the face moved ([`Mtcnn::refine`]: finds the face again, refines box and
//! landmarks, drops a face that is gone). Boxes are clipped to the frame, and a held box that
//! strays from its track's last detected box ([`super::track::plausible`]) makes the stage
//! detect again on that frame. Detection runs every `detect_every` frames while nothing is tracked or a track lost
//! its face on some frame since the last detection, and every `detect_every_tracked` frames
//! while every live track was found again on every frame. A face therefore appears within
//! `detect_every` frames of an empty picture, or within `detect_every_tracked` frames (3 s at
//! the defaults) beside faces already held; a held face that is lost brings the short cadence
//! back at once. Faces are linked into tracks ([`super::track`]); the main face's
//! aligned crop goes through the expression network.
//!
//! Pooling over an utterance's span [t0, t1]: the mean of the main face's embeddings and of
//! its class probabilities over the frames in the span that had a main face (whichever track
//! was main at that frame); `present` says whether there was any, `face_fraction` is the share
//! of the span's frames that had one. No face: `present` false, zeros, nothing invented.
//!
//! The model's visual input ([`VisualVector::model_input`]) is the pooled embedding followed by
//! the pooled probabilities, present only when a main face was seen on at least
//! [`MIN_FACE_FRACTION`] of the span's frames: a face glimpsed on one frame of a long utterance
//! is not evidence of how the speaker looked while speaking. A pre-cropped face (a picture
//! that is all face: `summerd features face`, the training faces) is one frame with a face,
//! cropped as a detected face is ([`VisionModels::expression_of_crop`]).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tch::Device;

use crate::settings::{Checker, first_problem};

use super::align::{CropGeometry, crops};
use super::expression::{CLASSES, EMBED_DIM, Expression, INPUT};
use super::mtcnn::{Mtcnn, MtcnnSettings};
use super::track::{TrackSettings, Tracker, clip, plausible};
use super::{EXPRESSION_FILE, Face, FaceDetector, MTCNN_DIR, RgbImage, VisionError, to_vec};

/// The vision stage's settings (`[vision]` in the config).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionSettings {
    /// Run the vision stage on streams with video.
    pub enabled: bool,
    /// Full detection every k-th frame while nothing is tracked or a track missed its face;
    /// R-Net + O-Net refinement of tracked faces in between.
    pub detect_every: u32,
    /// Full detection every k-th frame while every live track is found on every frame
    /// (>= `detect_every`).
    pub detect_every_tracked: u32,
    /// Directory of the converted MTCNN weights (default: the set-up's, from `config/`).
    pub mtcnn_dir: std::path::PathBuf,
    /// The converted expression network.
    pub expression_file: std::path::PathBuf,
    /// MTCNN settings (the daemon's default minimum face is 40 px: a speaker's face in a call).
    pub mtcnn: MtcnnSettings,
    /// Tracking and main-face settings.
    pub track: TrackSettings,
    /// Seconds of per-frame results kept per stream for pooling.
    pub history_s: f64,
}

impl Default for VisionSettings {
    fn default() -> Self {
        VisionSettings {
            enabled: true,
            detect_every: 5,
            detect_every_tracked: 15,
            // Relative to the config file's directory, as every path of the config.
            mtcnn_dir: Path::new("..").join(MTCNN_DIR),
            expression_file: Path::new("..").join(EXPRESSION_FILE),
            mtcnn: MtcnnSettings {
                min_face: 40.0,
                ..Default::default()
            },
            track: TrackSettings::default(),
            history_s: 120.0,
        }
    }
}

impl VisionSettings {
    /// Check the values (every range check of the vision stage), naming fields under
    /// `prefix` (`vision`).
    pub fn check_into(&self, c: &mut Checker, prefix: &str) {
        let k = |f: &str| format!("{prefix}.{f}");
        c.range(&k("detect_every"), self.detect_every, 1, 100);
        c.range(
            &k("detect_every_tracked"),
            self.detect_every_tracked,
            self.detect_every.clamp(1, 100),
            100,
        );
        c.range(&k("history_s"), self.history_s, 1.0, 3600.0);
        self.mtcnn.check_into(c, &k("mtcnn"));
        self.track.check_into(c, &k("track"));
    }

    /// Check the values; the first problem.
    pub fn check(&self) -> Result<(), String> {
        first_problem(|c| self.check_into(c, "vision"))
    }

    /// These settings with the weight files resolved against the config's directory; a
    /// missing file is a problem.
    pub fn resolve_files(&self, c: &mut Checker, prefix: &str) -> VisionSettings {
        let mut v = self.clone();
        v.mtcnn_dir = c.resolve(&self.mtcnn_dir);
        v.expression_file = c.resolve(&self.expression_file);
        if let Some(p) = ["pnet", "rnet", "onet"]
            .iter()
            .map(|f| v.mtcnn_dir.join(format!("{f}.safetensors")))
            .find(|p| !p.is_file())
        {
            c.bad(
                format!("{prefix}.mtcnn_dir"),
                format!("'{}' does not exist", p.display()),
                "the converted MTCNN weights (make setup), or vision.enabled = false",
            );
        }
        if !v.expression_file.is_file() {
            c.bad(
                format!("{prefix}.expression_file"),
                format!("'{}' does not exist", v.expression_file.display()),
                "the converted expression network (make setup), or vision.enabled = false",
            );
        }
        v
    }

    /// When full detection runs.
    pub fn cadence(&self) -> Cadence {
        Cadence {
            every: self.detect_every,
            tracked: self.detect_every_tracked,
        }
    }
}

/// When full detection runs: every `every` frames, or every `tracked` frames while every
/// live track has been found again on every frame since the last detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Frames between detections while nothing is tracked or a track missed its face.
    pub every: u32,
    /// Frames between detections while all tracks hold.
    pub tracked: u32,
}

impl Cadence {
    /// Every `k`-th frame, whatever is tracked.
    pub fn fixed(k: u32) -> Self {
        Cadence {
            every: k,
            tracked: k,
        }
    }
}

/// The networks, loaded once; every stream's stage runs on its own handles to the same
/// weights ([`SharedModels`]).
pub struct VisionModels {
    /// The face detector.
    pub detector: Mtcnn,
    /// The expression network.
    pub expression: Expression,
}

impl VisionModels {
    /// Handles of its own to the same weights (nothing is copied), for another thread.
    pub fn fork(&self) -> VisionModels {
        VisionModels {
            detector: self.detector.fork(),
            expression: self.expression.fork(),
        }
    }

    /// Load both networks onto `device` (paths relative to the working directory).
    pub fn load(settings: &VisionSettings, device: Device) -> Result<Self, VisionError> {
        Ok(VisionModels {
            detector: Mtcnn::load(&settings.mtcnn_dir, settings.mtcnn.clone(), device)?,
            expression: Expression::load(&settings.expression_file, device)?,
        })
    }

    /// Load from the default paths under `root` (a checkout).
    pub fn load_default(
        root: &Path,
        mtcnn: MtcnnSettings,
        device: Device,
    ) -> Result<Self, VisionError> {
        Ok(VisionModels {
            detector: Mtcnn::load(&root.join(MTCNN_DIR), mtcnn, device)?,
            expression: Expression::load(&root.join(EXPRESSION_FILE), device)?,
        })
    }

    /// Expression of faces of one frame: (embeddings, probabilities), one per face.
    pub fn expressions(&self, frame: &RgbImage, faces: &[Face]) -> Vec<(Vec<f32>, [f32; 7])> {
        let geo: Vec<CropGeometry> = faces
            .iter()
            .map(|f| CropGeometry::of_in(f, frame.width, frame.height))
            .collect();
        self.expressions_of(frame, &geo)
    }

    /// Expression of a pre-cropped face, a picture that is all face (no detection): the
    /// square of side max(width, height) about the picture's centre, level, through the same
    /// crop sampling, grey conversion and network as a detected face.
    pub fn expression_of_crop(&self, face: &RgbImage) -> (Vec<f32>, [f32; 7]) {
        let (w, h) = (face.width as f32, face.height as f32);
        let geo = CropGeometry {
            cx: (w - 1.0) / 2.0,
            cy: (h - 1.0) / 2.0,
            side: w.max(h),
            angle: 0.0,
        };
        self.expressions_of(face, &[geo])
            .pop()
            .expect("one crop, one result")
    }

    fn expressions_of(&self, frame: &RgbImage, geo: &[CropGeometry]) -> Vec<(Vec<f32>, [f32; 7])> {
        if geo.is_empty() {
            return Vec::new();
        }
        let _g = tch::no_grad_guard();
        let out =
            self.expression
                .forward(&crops(frame, geo, INPUT as usize, self.expression.device()));
        let emb = to_vec(&out.embedding);
        let probs = to_vec(&out.probs);
        (0..geo.len())
            .map(|i| {
                let mut p = [0f32; 7];
                p.copy_from_slice(&probs[7 * i..7 * i + 7]);
                (emb[EMBED_DIM * i..EMBED_DIM * (i + 1)].to_vec(), p)
            })
            .collect()
    }
}

/// The networks as the streams share them: one copy of the weights, from which each stream's
/// stage takes handles of its own ([`VisionModels::fork`], under the lock, once) and then runs
/// without it. A libtorch tensor handle may be moved to another thread but not shared with
/// one (`Send`, not `Sync`); the handles of all stages point at the same weights, which the
/// forward passes only read.
#[derive(Clone)]
pub struct SharedModels(Arc<Mutex<VisionModels>>);

impl SharedModels {
    /// Share `models`.
    pub fn new(models: VisionModels) -> Self {
        SharedModels(Arc::new(Mutex::new(models)))
    }

    /// Handles of a stage's own to the shared weights.
    pub fn fork(&self) -> VisionModels {
        self.0.lock().expect("vision models lock").fork()
    }
}

/// A face of a frame with its track.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrackedFace {
    /// Track id.
    pub track: u64,
    /// The face.
    #[serde(flatten)]
    pub face: Face,
}

/// The main face's expression in a frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrameExpression {
    /// The main face's track.
    pub track: u64,
    /// Penultimate embedding (128).
    #[serde(skip_serializing)]
    pub embedding: Vec<f32>,
    /// Class probabilities, in [`CLASSES`] order.
    pub probs: [f32; 7],
}

/// What the stage saw in one frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrameFaces {
    /// Media time, seconds.
    pub t: f64,
    /// Whether this frame had a full detection (else tracked faces were refined).
    pub detected: bool,
    /// Faces with their tracks.
    pub faces: Vec<TrackedFace>,
    /// The main face's track, if any.
    pub main: Option<u64>,
    /// The main face's expression, when it is in this frame.
    pub expression: Option<FrameExpression>,
}

/// One stream's vision pipeline.
pub struct VisionStage {
    models: VisionModels,
    tracker: Tracker,
    cadence: Cadence,
    /// Frames since the last full detection (None: none yet).
    since_detect: Option<u32>,
    /// Whether every live track found its face on every frame since the last detection.
    held: bool,
}

impl VisionStage {
    /// A stage running `models` (its own handles: [`SharedModels::fork`]).
    pub fn new(models: VisionModels, cadence: Cadence, track: TrackSettings) -> Self {
        VisionStage {
            models,
            tracker: Tracker::new(track),
            cadence: Cadence {
                every: cadence.every.max(1),
                tracked: cadence.tracked.max(cadence.every).max(1),
            },
            since_detect: None,
            held: false,
        }
    }

    /// Process the frame at media time `t`.
    pub fn process(&mut self, t: f64, frame: &RgbImage) -> Result<FrameFaces, VisionError> {
        let interval = if self.held && !self.tracker.tracks().is_empty() {
            self.cadence.tracked
        } else {
            self.cadence.every
        };
        let (w, h) = (frame.width, frame.height);
        let mut detected = self.since_detect.is_none_or(|n| n >= interval);
        let mut faces: Vec<Face> = Vec::new();
        if !detected && !self.tracker.tracks().is_empty() {
            let tracks = self.tracker.tracks();
            let boxes: Vec<[f32; 4]> = tracks.iter().map(|t| t.face.bbox).collect();
            let refined = self.models.detector.refine(frame, &boxes);
            for (t, f) in tracks.iter().zip(refined) {
                let Some(f) = f.map(|f| clip(&f, w, h)) else {
                    continue;
                };
                if plausible(&f.bbox, &t.anchor) {
                    faces.push(f);
                } else {
                    // A held box that drifted from its face: find the faces again now.
                    detected = true;
                    break;
                }
            }
        }
        if detected {
            faces = self
                .models
                .detector
                .detect(&[frame])?
                .pop()
                .unwrap_or_default()
                .iter()
                .map(|f| clip(f, w, h))
                .collect();
        }
        // Counted once the frame's faces are in: a detection that failed is retried next frame.
        self.since_detect = Some(if detected {
            1
        } else {
            self.since_detect.unwrap_or(0) + 1
        });
        let ids = self.tracker.update(&faces, w, h, detected);
        // A detection starts a new period; any track without its face in this frame ends
        // the long cadence until the next detection.
        let all_found = self.tracker.tracks().iter().all(|t| t.missed == 0);
        self.held = all_found && (detected || self.held);
        let main = self.tracker.main();
        let expression = main
            .and_then(|m| ids.iter().position(|&id| id == m))
            .and_then(|i| {
                let (embedding, probs) = self
                    .models
                    .expressions(frame, std::slice::from_ref(&faces[i]))
                    .pop()?;
                Some(FrameExpression {
                    track: ids[i],
                    embedding,
                    probs,
                })
            });
        Ok(FrameFaces {
            t,
            detected,
            faces: ids
                .into_iter()
                .zip(faces)
                .map(|(track, face)| TrackedFace { track, face })
                .collect(),
            main,
            expression,
        })
    }
}

/// An utterance's visual vector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VisualVector {
    /// Whether any frame of the span had a main face.
    pub present: bool,
    /// Share of the span's frames with a main face.
    pub face_fraction: f32,
    /// Frames in the span.
    pub frames: u32,
    /// Mean class probabilities of those frames ([`CLASSES`] order; zeros when absent).
    pub probs: [f32; 7],
    /// Mean embedding (128; zeros when absent).
    pub embedding: Vec<f32>,
}

/// Least share of an utterance's frames with a main face for the model to read the face.
pub const MIN_FACE_FRACTION: f32 = 0.5;

impl VisualVector {
    /// A pre-cropped face: one frame, with a face.
    pub fn of_crop((embedding, probs): (Vec<f32>, [f32; 7])) -> VisualVector {
        VisualVector {
            present: true,
            face_fraction: 1.0,
            frames: 1,
            probs,
            embedding,
        }
    }

    /// The probabilities part of a [`VisualVector::model_input`] vector.
    pub fn probs_of(input: &[f32]) -> &[f32] {
        &input[input.len() - CLASSES.len()..]
    }

    /// The model's visual input ([`crate::model::VISUAL_EXTRACTOR`]): the pooled embedding
    /// then the pooled probabilities; None (absent) unless a main face was seen on at least
    /// [`MIN_FACE_FRACTION`] of the span's frames.
    pub fn model_input(&self) -> Option<Vec<f32>> {
        if !self.present
            || self.face_fraction < MIN_FACE_FRACTION
            || self.embedding.len() != EMBED_DIM
        {
            return None;
        }
        let mut v = Vec::with_capacity(crate::model::VISUAL_DIM as usize);
        v.extend_from_slice(&self.embedding);
        v.extend_from_slice(&self.probs);
        Some(v)
    }

    /// The most probable class and its probability, when a face was seen.
    pub fn top(&self) -> Option<(&'static str, f32)> {
        if !self.present {
            return None;
        }
        let (i, p) = self
            .probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        Some((CLASSES[i], *p))
    }
}

/// A frame's main-face expression: (embedding, probabilities).
type Seen = Option<(Vec<f32>, [f32; 7])>;

/// A stream's per-frame expression results on its media timeline, for pooling.
#[derive(Debug, Clone)]
pub struct VisualTimeline {
    frames: VecDeque<(f64, Seen)>,
    history_s: f64,
}

impl VisualTimeline {
    /// Keep `history_s` seconds.
    pub fn new(history_s: f64) -> Self {
        VisualTimeline {
            frames: VecDeque::new(),
            history_s,
        }
    }

    /// Record a frame's result (frames arrive in time order; an earlier one is ignored).
    pub fn push(&mut self, f: &FrameFaces) {
        if self.frames.back().is_some_and(|(t, _)| f.t < *t) {
            return;
        }
        self.frames.push_back((
            f.t,
            f.expression
                .as_ref()
                .map(|e| (e.embedding.clone(), e.probs)),
        ));
        while self
            .frames
            .front()
            .is_some_and(|(t, _)| *t < f.t - self.history_s)
        {
            self.frames.pop_front();
        }
    }

    /// Media time of the latest frame.
    pub fn covered_until(&self) -> Option<f64> {
        self.frames.back().map(|(t, _)| *t)
    }

    /// Pool the frames in `[t0, t1]`.
    pub fn pool(&self, t0: f64, t1: f64) -> VisualVector {
        let mut n = 0u32;
        let mut with = 0u32;
        let mut emb = vec![0f32; EMBED_DIM];
        let mut probs = [0f32; 7];
        for (_, r) in self.frames.iter().filter(|(t, _)| *t >= t0 && *t <= t1) {
            n += 1;
            if let Some((e, p)) = r {
                with += 1;
                emb.iter_mut().zip(e).for_each(|(a, b)| *a += b);
                probs.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
        }
        if with > 0 {
            let k = with as f32;
            emb.iter_mut().for_each(|a| *a /= k);
            probs.iter_mut().for_each(|a| *a /= k);
        }
        VisualVector {
            present: with > 0,
            face_fraction: if n > 0 { with as f32 / n as f32 } else { 0.0 },
            frames: n,
            probs,
            embedding: emb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(t: f64, p: Option<f32>) -> FrameFaces {
        FrameFaces {
            t,
            detected: true,
            faces: Vec::new(),
            main: p.map(|_| 1),
            expression: p.map(|v| FrameExpression {
                track: 1,
                embedding: vec![v; EMBED_DIM],
                probs: [v, 1.0 - v, 0.0, 0.0, 0.0, 0.0, 0.0],
            }),
        }
    }

    #[test]
    fn pooling_averages_face_frames_and_reports_absence_honestly() {
        let mut tl = VisualTimeline::new(10.0);
        for (t, p) in [
            (0.0, Some(0.2)),
            (0.2, None),
            (0.4, Some(0.6)),
            (0.6, None),
            (5.0, Some(1.0)),
        ] {
            tl.push(&frame(t, p));
        }
        let v = tl.pool(0.0, 0.6);
        assert!(v.present);
        assert_eq!(v.frames, 4);
        assert_eq!(v.face_fraction, 0.5);
        assert!((v.probs[0] - 0.4).abs() < 1e-6 && (v.probs[1] - 0.6).abs() < 1e-6);
        assert!((v.embedding[5] - 0.4).abs() < 1e-6);
        assert_eq!(v.top().unwrap().0, "disgust");
        let none = tl.pool(1.0, 4.0);
        assert!(!none.present);
        assert_eq!(
            (none.frames, none.face_fraction, none.probs),
            (0, 0.0, [0.0; 7])
        );
        assert_eq!(none.top(), None);
        let faceless = tl.pool(0.1, 0.3);
        assert_eq!((faceless.present, faceless.frames), (false, 1));
    }

    #[test]
    fn history_is_bounded_and_time_only_moves_forward() {
        let mut tl = VisualTimeline::new(1.0);
        for i in 0..100 {
            tl.push(&frame(i as f64 * 0.2, Some(0.5)));
        }
        assert!(tl.frames.len() <= 6);
        tl.push(&frame(0.0, Some(0.5)));
        assert_eq!(tl.covered_until(), Some(99.0 * 0.2));
    }

    #[test]
    fn settings_are_checked() {
        assert!(VisionSettings::default().check().is_ok());
        let bad = VisionSettings {
            detect_every: 0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("detect_every"));
    }
}
