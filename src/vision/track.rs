//! Face tracks: faces linked from frame to frame, with stable ids, and the stream's main face.
//!
//! Linking: each new face is matched greedily (best similarity first) to a live track;
//! similarity = 0.5 x IoU of the boxes + 0.5 x (1 - mean landmark distance / box diagonal,
//! floored at 0); pairs below `min_similarity` are not linked. An unmatched face starts a
//! track; a track unmatched for more than `max_missed` frames ends.
//!
//! The main face (the one whose expression describes the stream's speaker) is the live track
//! with the highest score = size x centrality x persistence, where size = sqrt(box area /
//! frame area), centrality = 1 - distance of the box centre from the frame centre / half the
//! frame diagonal, persistence = min(1, hits / `persist_frames`) x (1 if seen in this frame,
//! else 0.5). The current main face keeps its place unless another scores `switch_margin`
//! times higher (no flicker between two similar faces).
//! Not done (noted): choosing, among several faces, the one whose mouth moves while the
//! current speaker talks.
//!
//! Held boxes: between full detections a track's face is found again on its last box
//! ([`super::mtcnn::Mtcnn::refine`]), so a box that O-Net grows a little on every frame would
//! grow without bound (as it does on a face that fills the frame). Every box is therefore
//! clipped to the frame ([`clip`]), and a held box must stay
//! near the track's last detected box ([`plausible`]: size within [`HELD_MAX_SCALE`] times,
//! centre within [`HELD_MAX_SHIFT`] of its side); otherwise the stage detects again on that
//! frame.

use super::{Face, iou};
use crate::settings::Checker;

/// Tracker settings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackSettings {
    /// Least similarity for a face to continue a track.
    pub min_similarity: f32,
    /// Frames a track survives without a face.
    pub max_missed: u32,
    /// Hits after which a track counts as fully persistent.
    pub persist_frames: u32,
    /// How much better another face must score to become the main face.
    pub switch_margin: f32,
}

impl TrackSettings {
    /// Check the values, naming fields under `prefix` (`vision.track`).
    pub fn check_into(&self, c: &mut Checker, prefix: &str) {
        let k = |f: &str| format!("{prefix}.{f}");
        c.range(&k("min_similarity"), self.min_similarity, 0.0, 1.0);
        c.range(&k("max_missed"), self.max_missed, 0, 1000);
        c.range(&k("persist_frames"), self.persist_frames, 1, 1000);
        c.range(&k("switch_margin"), self.switch_margin, 1.0, 10.0);
    }
}

impl Default for TrackSettings {
    fn default() -> Self {
        TrackSettings {
            min_similarity: 0.3,
            max_missed: 5,
            persist_frames: 5,
            switch_margin: 1.3,
        }
    }
}

/// Most a held box's side may differ from the track's last detected box, as a ratio.
pub const HELD_MAX_SCALE: f32 = 1.3;
/// Most a held box's centre may move from the track's last detected box, in that box's sides.
pub const HELD_MAX_SHIFT: f32 = 0.5;

/// `face` with its box clipped to a `w` x `h` frame (landmarks as they are).
pub fn clip(face: &Face, w: u32, h: u32) -> Face {
    Face {
        bbox: super::clip_box(&face.bbox, w, h),
        ..face.clone()
    }
}

/// Whether a held (refined) box is still the face last detected at `anchor` (both clipped):
/// its side (square root of the area) within [`HELD_MAX_SCALE`] times the anchor's, and its
/// centre within [`HELD_MAX_SHIFT`] anchor sides of the anchor's.
pub fn plausible(held: &[f32; 4], anchor: &[f32; 4]) -> bool {
    let side = |b: &[f32; 4]| ((b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)).sqrt();
    let (s, a) = (side(held), side(anchor));
    if !(s > 0.0 && a > 0.0) {
        return false;
    }
    let ratio = s / a;
    let centre = |b: &[f32; 4]| ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let ((x, y), (ax, ay)) = (centre(held), centre(anchor));
    let shift = ((x - ax).powi(2) + (y - ay).powi(2)).sqrt() / a;
    (1.0 / HELD_MAX_SCALE..=HELD_MAX_SCALE).contains(&ratio) && shift <= HELD_MAX_SHIFT
}

/// A live track.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Stable id (per stream, from 1).
    pub id: u64,
    /// The latest face.
    pub face: Face,
    /// Frames with a face.
    pub hits: u32,
    /// Consecutive frames without one.
    pub missed: u32,
    /// The box of its face at the last full detection that found it.
    pub anchor: [f32; 4],
}

/// The tracker of one stream.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    settings: TrackSettings,
    tracks: Vec<Track>,
    next_id: u64,
    main: Option<u64>,
}

/// How similar a face is to a track's last face.
pub fn similarity(a: &Face, b: &Face) -> f32 {
    let (w, h) = a.size();
    let diag = (w * w + h * h).sqrt().max(1.0);
    let d: f32 = a
        .landmarks
        .iter()
        .zip(&b.landmarks)
        .map(|(p, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
        .sum::<f32>()
        / 5.0;
    0.5 * iou(&a.bbox, &b.bbox) + 0.5 * (1.0 - d / diag).max(0.0)
}

impl Tracker {
    /// A tracker with these settings.
    pub fn new(settings: TrackSettings) -> Self {
        Tracker {
            settings,
            tracks: Vec::new(),
            next_id: 1,
            main: None,
        }
    }

    /// The live tracks.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// The main face's track id, if any.
    pub fn main(&self) -> Option<u64> {
        self.main
    }

    /// Link a frame's faces (`detected`: found by a full detection, which sets the tracks'
    /// anchors); returns each face's track id (same order as `faces`).
    pub fn update(
        &mut self,
        faces: &[Face],
        frame_w: u32,
        frame_h: u32,
        detected: bool,
    ) -> Vec<u64> {
        let mut pairs = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            for (f, face) in faces.iter().enumerate() {
                let s = similarity(&track.face, face);
                if s >= self.settings.min_similarity {
                    pairs.push((s, t, f));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_of = vec![None; faces.len()];
        let mut used = vec![false; self.tracks.len()];
        for (_, t, f) in pairs {
            if !used[t] && track_of[f].is_none() {
                used[t] = true;
                track_of[f] = Some(t);
            }
        }
        for (t, u) in used.iter().enumerate() {
            if !u {
                self.tracks[t].missed += 1;
            }
        }
        let mut ids = Vec::with_capacity(faces.len());
        for (f, face) in faces.iter().enumerate() {
            match track_of[f] {
                Some(t) => {
                    let tr = &mut self.tracks[t];
                    tr.face = face.clone();
                    if detected {
                        tr.anchor = face.bbox;
                    }
                    tr.hits += 1;
                    tr.missed = 0;
                    ids.push(tr.id);
                }
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.tracks.push(Track {
                        id,
                        face: face.clone(),
                        hits: 1,
                        missed: 0,
                        anchor: face.bbox,
                    });
                    ids.push(id);
                }
            }
        }
        let max_missed = self.settings.max_missed;
        self.tracks.retain(|t| t.missed <= max_missed);
        self.choose_main(frame_w, frame_h);
        ids
    }

    /// The main-face score of a track (see the module's documentation).
    pub fn score(&self, t: &Track, frame_w: u32, frame_h: u32) -> f32 {
        let (fw, fh) = (frame_w.max(1) as f32, frame_h.max(1) as f32);
        let (w, h) = t.face.size();
        let size = ((w * h).max(0.0) / (fw * fh)).sqrt();
        let (cx, cy) = t.face.centre();
        let half_diag = (fw * fw + fh * fh).sqrt() / 2.0;
        let dist = ((cx - fw / 2.0).powi(2) + (cy - fh / 2.0).powi(2)).sqrt();
        let centrality = (1.0 - dist / half_diag).max(0.0);
        let persistence = (t.hits as f32 / self.settings.persist_frames.max(1) as f32).min(1.0)
            * if t.missed == 0 { 1.0 } else { 0.5 };
        size * centrality * persistence
    }

    fn choose_main(&mut self, frame_w: u32, frame_h: u32) {
        let best = self
            .tracks
            .iter()
            .map(|t| (self.score(t, frame_w, frame_h), t.id))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let current = self.main.and_then(|id| {
            self.tracks
                .iter()
                .find(|t| t.id == id)
                .map(|t| self.score(t, frame_w, frame_h))
        });
        self.main = match (best, current) {
            (None, _) => None,
            (Some((_, id)), None) => Some(id),
            (Some((s, id)), Some(c)) => {
                if s > c * self.settings.switch_margin {
                    Some(id)
                } else {
                    self.main
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, side: f32) -> Face {
        let lm = |dx: f32, dy: f32| [x + dx * side, y + dy * side];
        Face {
            bbox: [x, y, x + side, y + side],
            confidence: 0.99,
            landmarks: [
                lm(0.3, 0.4),
                lm(0.7, 0.4),
                lm(0.5, 0.6),
                lm(0.35, 0.8),
                lm(0.65, 0.8),
            ],
        }
    }

    #[test]
    fn moving_faces_keep_their_ids_and_new_ones_get_new_ids() {
        let mut t = Tracker::new(TrackSettings::default());
        let ids = t.update(
            &[face(100.0, 100.0, 80.0), face(400.0, 100.0, 60.0)],
            640,
            360,
            true,
        );
        assert_eq!(ids, vec![1, 2]);
        // Both move a little; listed in the other order.
        let ids = t.update(
            &[face(405.0, 102.0, 60.0), face(104.0, 98.0, 82.0)],
            640,
            360,
            true,
        );
        assert_eq!(ids, vec![2, 1]);
        // A third appears far away.
        let ids = t.update(
            &[
                face(108.0, 97.0, 82.0),
                face(410.0, 103.0, 60.0),
                face(250.0, 250.0, 40.0),
            ],
            640,
            360,
            true,
        );
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn a_track_survives_short_gaps_and_ends_after_max_missed() {
        let mut t = Tracker::new(TrackSettings {
            max_missed: 2,
            ..Default::default()
        });
        t.update(&[face(100.0, 100.0, 80.0)], 640, 360, true);
        t.update(&[], 640, 360, true);
        t.update(&[], 640, 360, true);
        assert_eq!(
            t.update(&[face(101.0, 100.0, 80.0)], 640, 360, true),
            vec![1]
        );
        for _ in 0..3 {
            t.update(&[], 640, 360, true);
        }
        assert!(t.tracks().is_empty());
        assert_eq!(t.main(), None);
        assert_eq!(
            t.update(&[face(101.0, 100.0, 80.0)], 640, 360, true),
            vec![2]
        );
    }

    #[test]
    fn the_main_face_is_big_central_and_persistent_and_does_not_flicker() {
        let mut t = Tracker::new(TrackSettings::default());
        // A large central face and a small corner one.
        let central = face(240.0, 100.0, 150.0);
        let corner = face(10.0, 10.0, 50.0);
        for _ in 0..5 {
            t.update(&[corner.clone(), central.clone()], 640, 360, true);
        }
        assert_eq!(t.main(), Some(2));
        // A somewhat better-placed rival (scoring 1.13x) does not take over...
        let central = face(240.0, 105.0, 150.0);
        let mut t = Tracker::new(TrackSettings::default());
        for _ in 0..5 {
            t.update(std::slice::from_ref(&central), 640, 360, true);
        }
        for _ in 0..10 {
            t.update(&[central.clone(), face(280.0, 80.0, 200.0)], 640, 360, true);
        }
        assert_eq!(t.main(), Some(1));
        // ... a much better one (a large face in the middle) does.
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids = t.update(&[central.clone(), face(170.0, 20.0, 300.0)], 640, 360, true);
        }
        assert_ne!(ids[1], 1);
        assert_eq!(t.main(), Some(ids[1]));
    }

    #[test]
    fn held_boxes_are_clipped_and_must_stay_near_the_last_detection() {
        let f = face(-20.0, 150.0, 300.0);
        assert_eq!(clip(&f, 192, 192).bbox, [0.0, 150.0, 192.0, 192.0]);
        let anchor = [10.0, 10.0, 110.0, 110.0];
        assert!(plausible(&anchor, &anchor));
        assert!(plausible(&[20.0, 5.0, 130.0, 115.0], &anchor));
        // Grown past 1.3x, shrunk below 1/1.3, moved more than half a side, or empty.
        assert!(!plausible(&[0.0, 0.0, 140.0, 140.0], &anchor));
        assert!(!plausible(&[30.0, 30.0, 100.0, 100.0], &anchor));
        assert!(!plausible(&[70.0, 10.0, 170.0, 110.0], &anchor));
        assert!(!plausible(&[50.0, 50.0, 50.0, 90.0], &anchor));
        // The anchor moves with detections only.
        let mut t = Tracker::new(TrackSettings::default());
        t.update(&[face(100.0, 100.0, 80.0)], 640, 360, true);
        t.update(&[face(104.0, 100.0, 84.0)], 640, 360, false);
        assert_eq!(t.tracks()[0].anchor, [100.0, 100.0, 180.0, 180.0]);
        t.update(&[face(106.0, 100.0, 84.0)], 640, 360, true);
        assert_eq!(t.tracks()[0].anchor, [106.0, 100.0, 190.0, 184.0]);
    }
}
