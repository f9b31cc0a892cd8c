//! MTCNN (Zhang et al. 2016) on tch, with the weights facenet-pytorch ships, computing what
//! facenet-pytorch's `detect_face` computes:
//!
//! 1. an image pyramid from `min_face` (scale 12/min_face, then x`factor` while the shorter
//!    side is >= 12 px), each level resized by area averaging and run through P-Net; cells
//!    scoring >= `thresholds[0]` become 12x12 boxes at that scale; NMS (IoU 0.5) within each
//!    level, then NMS (0.7) across levels; the boxes are regressed, squared and clipped;
//! 2. each box cropped, resized to 24x24 and scored by R-Net (> `thresholds[1]`), NMS 0.7,
//!    regressed and squared;
//! 3. 48x48 crops through O-Net (> `thresholds[2]`), which also gives the five landmarks; a
//!    last regression and an NMS by intersection over the smaller box (0.7).
//!
//! Frames of the same size go through P-Net as one batch; the crops of every frame go through
//! R-Net and O-Net together, so a GPU sees the faces of many frames (and streams) at once.
//! Time per frame is bounded: at most `max_levels` pyramid levels (the finest are dropped, i.e.
//! the minimum face grows, on huge frames) and at most `max_candidates` boxes into R-Net and
//! O-Net (the best scoring).
//!
//! [`Mtcnn::refine`] runs only stages 2 and 3 on windows around given boxes: the cheap
//! per-frame update of tracked faces between full detections.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::settings::{Checker, first_problem};

use super::{Face, FaceDetector, RgbImage, VisionError, Weights, load_net, to_vec};

/// Detector settings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtcnnSettings {
    /// Smallest face looked for, pixels.
    pub min_face: f32,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Pyramid scale step.
    pub factor: f32,
    /// Most pyramid levels a frame gets.
    pub max_levels: usize,
    /// Most candidate boxes of a frame into R-Net, and into O-Net.
    pub max_candidates: usize,
}

impl Default for MtcnnSettings {
    fn default() -> Self {
        // facenet-pytorch's defaults, with caps that ordinary frames never reach.
        MtcnnSettings {
            min_face: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            factor: 0.709,
            max_levels: 16,
            max_candidates: 4000,
        }
    }
}

impl MtcnnSettings {
    /// Check the values, naming fields under `prefix` (`vision.mtcnn`).
    pub fn check_into(&self, c: &mut Checker, prefix: &str) {
        let k = |f: &str| format!("{prefix}.{f}");
        c.range(&k("min_face"), self.min_face, 12.0, 4096.0);
        for &t in &self.thresholds {
            if !(0.0..1.0).contains(&t) {
                c.bad(
                    k("thresholds"),
                    format!("{t} is out of range"),
                    "0 to less than 1",
                );
            }
        }
        c.open_range(&k("factor"), self.factor, 0.1, 0.95);
        c.range(&k("max_levels"), self.max_levels, 1, 32);
        c.range(&k("max_candidates"), self.max_candidates, 1, 100_000);
    }

    /// Check the values; the first problem.
    pub fn check(&self) -> Result<(), String> {
        first_problem(|c| self.check_into(c, "mtcnn"))
    }
}

struct Conv {
    w: Tensor,
    b: Tensor,
}

struct Lin {
    w: Tensor,
    b: Tensor,
}

/// The same tensor laid out channels-last (NHWC strides, NCHW shape): oneDNN's fast path for
/// these small convolutions (R-Net and O-Net run 3-4x faster than in the default layout).
pub(crate) fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl Conv {
    fn fork(&self) -> Self {
        Conv {
            w: self.w.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }

    fn load(w: &mut Weights, name: &str, o: i64, i: i64, k: i64) -> Result<Self, VisionError> {
        Ok(Conv {
            w: channels_last(&w.take(&format!("{name}.weight"), &[o, i, k, k])?),
            b: w.take(&format!("{name}.bias"), &[o])?,
        })
    }
    fn f(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.w, Some(&self.b), [1, 1], [0, 0], [1, 1], 1)
    }
}

impl Lin {
    fn fork(&self) -> Self {
        Lin {
            w: self.w.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }

    fn load(w: &mut Weights, name: &str, o: i64, i: i64) -> Result<Self, VisionError> {
        Ok(Lin {
            w: w.take(&format!("{name}.weight"), &[o, i])?,
            b: w.take(&format!("{name}.bias"), &[o])?,
        })
    }
    fn f(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
}

fn prelu(w: &mut Weights, name: &str, n: i64) -> Result<Tensor, VisionError> {
    w.take(&format!("{name}.weight"), &[n])
}

fn pool(x: &Tensor, k: i64, s: i64) -> Tensor {
    x.max_pool2d([k, k], [s, s], [0, 0], [1, 1], true)
}

struct PNet {
    c1: Conv,
    a1: Tensor,
    c2: Conv,
    a2: Tensor,
    c3: Conv,
    a3: Tensor,
    c41: Conv,
    c42: Conv,
}

impl PNet {
    fn load(p: &Path, d: Device) -> Result<Self, VisionError> {
        load_net(p, d, |w| {
            Ok(PNet {
                c1: Conv::load(w, "conv1", 10, 3, 3)?,
                a1: prelu(w, "prelu1", 10)?,
                c2: Conv::load(w, "conv2", 16, 10, 3)?,
                a2: prelu(w, "prelu2", 16)?,
                c3: Conv::load(w, "conv3", 32, 16, 3)?,
                a3: prelu(w, "prelu3", 32)?,
                c41: Conv::load(w, "conv4_1", 2, 32, 1)?,
                c42: Conv::load(w, "conv4_2", 4, 32, 1)?,
            })
        })
    }
    /// (box regression [B, 4, h, w], face probability [B, h, w]).
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = pool(&self.c1.f(x).prelu(&self.a1), 2, 2);
        let x = self.c2.f(&x).prelu(&self.a2);
        let x = self.c3.f(&x).prelu(&self.a3);
        let prob = self.c41.f(&x).softmax(1, Kind::Float).select(1, 1);
        (self.c42.f(&x), prob)
    }
}

struct RNet {
    c1: Conv,
    a1: Tensor,
    c2: Conv,
    a2: Tensor,
    c3: Conv,
    a3: Tensor,
    d4: Lin,
    a4: Tensor,
    d51: Lin,
    d52: Lin,
}

impl RNet {
    fn load(p: &Path, d: Device) -> Result<Self, VisionError> {
        load_net(p, d, |w| {
            Ok(RNet {
                c1: Conv::load(w, "conv1", 28, 3, 3)?,
                a1: prelu(w, "prelu1", 28)?,
                c2: Conv::load(w, "conv2", 48, 28, 3)?,
                a2: prelu(w, "prelu2", 48)?,
                c3: Conv::load(w, "conv3", 64, 48, 2)?,
                a3: prelu(w, "prelu3", 64)?,
                d4: Lin::load(w, "dense4", 128, 576)?,
                a4: prelu(w, "prelu4", 128)?,
                d51: Lin::load(w, "dense5_1", 2, 128)?,
                d52: Lin::load(w, "dense5_2", 4, 128)?,
            })
        })
    }
    /// (box regression [N, 4], face probability [N]).
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = pool(&self.c1.f(x).prelu(&self.a1), 3, 2);
        let x = pool(&self.c2.f(&x).prelu(&self.a2), 3, 2);
        let x = self.c3.f(&x).prelu(&self.a3);
        // The Caffe-born dense weights expect (w, h, c) order.
        let n = x.size()[0];
        let x = x.permute([0, 3, 2, 1]).contiguous().view([n, -1]);
        let x = self.d4.f(&x).prelu(&self.a4);
        let prob = self.d51.f(&x).softmax(1, Kind::Float).select(1, 1);
        (self.d52.f(&x), prob)
    }
}

struct ONet {
    c1: Conv,
    a1: Tensor,
    c2: Conv,
    a2: Tensor,
    c3: Conv,
    a3: Tensor,
    c4: Conv,
    a4: Tensor,
    d5: Lin,
    a5: Tensor,
    d61: Lin,
    d62: Lin,
    d63: Lin,
}

impl ONet {
    fn load(p: &Path, d: Device) -> Result<Self, VisionError> {
        load_net(p, d, |w| {
            Ok(ONet {
                c1: Conv::load(w, "conv1", 32, 3, 3)?,
                a1: prelu(w, "prelu1", 32)?,
                c2: Conv::load(w, "conv2", 64, 32, 3)?,
                a2: prelu(w, "prelu2", 64)?,
                c3: Conv::load(w, "conv3", 64, 64, 3)?,
                a3: prelu(w, "prelu3", 64)?,
                c4: Conv::load(w, "conv4", 128, 64, 2)?,
                a4: prelu(w, "prelu4", 128)?,
                d5: Lin::load(w, "dense5", 256, 1152)?,
                a5: prelu(w, "prelu5", 256)?,
                d61: Lin::load(w, "dense6_1", 2, 256)?,
                d62: Lin::load(w, "dense6_2", 4, 256)?,
                d63: Lin::load(w, "dense6_3", 10, 256)?,
            })
        })
    }
    /// (box regression [N, 4], landmarks [N, 10] (x1..x5, y1..y5), face probability [N]).
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let x = pool(&self.c1.f(x).prelu(&self.a1), 3, 2);
        let x = pool(&self.c2.f(&x).prelu(&self.a2), 3, 2);
        let x = pool(&self.c3.f(&x).prelu(&self.a3), 2, 2);
        let x = self.c4.f(&x).prelu(&self.a4);
        let n = x.size()[0];
        let x = x.permute([0, 3, 2, 1]).contiguous().view([n, -1]);
        let x = self.d5.f(&x).prelu(&self.a5);
        let prob = self.d61.f(&x).softmax(1, Kind::Float).select(1, 1);
        (self.d62.f(&x), self.d63.f(&x), prob)
    }
}

/// A candidate box of one frame.
#[derive(Debug, Clone, Copy)]
struct Cand {
    frame: usize,
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

impl PNet {
    fn fork(&self) -> Self {
        PNet {
            c1: self.c1.fork(),
            a1: self.a1.shallow_clone(),
            c2: self.c2.fork(),
            a2: self.a2.shallow_clone(),
            c3: self.c3.fork(),
            a3: self.a3.shallow_clone(),
            c41: self.c41.fork(),
            c42: self.c42.fork(),
        }
    }
}

impl RNet {
    fn fork(&self) -> Self {
        RNet {
            c1: self.c1.fork(),
            a1: self.a1.shallow_clone(),
            c2: self.c2.fork(),
            a2: self.a2.shallow_clone(),
            c3: self.c3.fork(),
            a3: self.a3.shallow_clone(),
            d4: self.d4.fork(),
            a4: self.a4.shallow_clone(),
            d51: self.d51.fork(),
            d52: self.d52.fork(),
        }
    }
}

impl ONet {
    fn fork(&self) -> Self {
        ONet {
            c1: self.c1.fork(),
            a1: self.a1.shallow_clone(),
            c2: self.c2.fork(),
            a2: self.a2.shallow_clone(),
            c3: self.c3.fork(),
            a3: self.a3.shallow_clone(),
            c4: self.c4.fork(),
            a4: self.a4.shallow_clone(),
            d5: self.d5.fork(),
            a5: self.a5.shallow_clone(),
            d61: self.d61.fork(),
            d62: self.d62.fork(),
            d63: self.d63.fork(),
        }
    }
}

/// The MTCNN detector.
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    settings: MtcnnSettings,
    device: Device,
}

impl Mtcnn {
    /// Handles of its own to the same weights (nothing is copied), for another thread.
    pub fn fork(&self) -> Self {
        Mtcnn {
            pnet: self.pnet.fork(),
            rnet: self.rnet.fork(),
            onet: self.onet.fork(),
            settings: self.settings.clone(),
            device: self.device,
        }
    }

    /// Load `{pnet,rnet,onet}.safetensors` from `dir` onto `device`.
    pub fn load(dir: &Path, settings: MtcnnSettings, device: Device) -> Result<Self, VisionError> {
        settings.check().map_err(VisionError::Frame)?;
        Ok(Mtcnn {
            pnet: PNet::load(&dir.join("pnet.safetensors"), device)?,
            rnet: RNet::load(&dir.join("rnet.safetensors"), device)?,
            onet: ONet::load(&dir.join("onet.safetensors"), device)?,
            settings,
            device,
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &MtcnnSettings {
        &self.settings
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The pyramid's scales for a frame of `w` x `h` (after the `max_levels` cap).
    pub fn scales(&self, w: u32, h: u32) -> Vec<f64> {
        let m = 12.0 / f64::from(self.settings.min_face);
        let factor = f64::from(self.settings.factor);
        let mut minl = f64::from(w.min(h)) * m;
        let mut s = m;
        let mut scales = Vec::new();
        while minl >= 12.0 {
            scales.push(s);
            s *= factor;
            minl *= factor;
        }
        let drop = scales.len().saturating_sub(self.settings.max_levels);
        scales.split_off(drop)
    }

    /// Stage 1 on same-sized frames; candidates name their frame by its place in `frames`.
    ///
    /// The pyramid's levels are area-resized on the CPU from each frame's summed-area table:
    /// what libtorch's adaptive average pooling computes (a unit test holds them to 1e-5),
    /// without its passes over the whole frame as floats (7 ms of a 15 ms detection at
    /// 640x360). Written pixel-major, they are channels-last, as the network wants them.
    fn stage1(&self, frames: &[&RgbImage], w: u32, h: u32) -> Vec<Cand> {
        let scales = self.scales(w, h);
        let size = |scale: f64| {
            (
                (f64::from(w) * scale + 1.0) as usize,
                (f64::from(h) * scale + 1.0) as usize,
            )
        };
        let sizes: Vec<(usize, usize)> = scales.iter().map(|&s| size(s)).collect();
        let mut levels: Vec<Vec<f32>> = sizes
            .iter()
            .map(|(ws, hs)| Vec::with_capacity(frames.len() * 3 * ws * hs))
            .collect();
        // One frame's table at a time (a 1080p table is 25 MB).
        for f in frames {
            let table = Integral::new(f);
            for (&wh, level) in sizes.iter().zip(&mut levels) {
                table.area_resize(f, 0..w as usize, 0..h as usize, wh, level);
            }
        }
        let mut all = Vec::new();
        for ((&scale, &(ws, hs)), level) in scales.iter().zip(&sizes).zip(&levels) {
            let im = nhwc_batch(level, frames.len(), hs, ws, self.device);
            let (reg, prob) = self.pnet.forward(&im);
            let mask = prob.ge(f64::from(self.settings.thresholds[0]));
            let idx = mask.nonzero(); // [N, 3]: frame, y, x (row-major order)
            let n = idx.size()[0];
            if n == 0 {
                continue;
            }
            let scores = Vec::<f32>::try_from(prob.masked_select(&mask).to_device(Device::Cpu))
                .unwrap_or_default();
            let (bi, yi, xi) = (idx.select(1, 0), idx.select(1, 1), idx.select(1, 2));
            let regs = reg
                .permute([0, 2, 3, 1])
                .index(&[Some(&bi), Some(&yi), Some(&xi)])
                .to_device(Device::Cpu)
                .contiguous();
            let regs = Vec::<f32>::try_from(regs.view([-1])).unwrap_or_default();
            let idx = Vec::<i64>::try_from(idx.to_device(Device::Cpu).contiguous().view([-1]))
                .unwrap_or_default();
            let s = scale as f32;
            let mut level = Vec::with_capacity(n as usize);
            for k in 0..n as usize {
                let (b, y, x) = (idx[3 * k], idx[3 * k + 1] as f32, idx[3 * k + 2] as f32);
                level.push(Cand {
                    frame: b as usize,
                    b: [
                        ((2.0 * x + 1.0) / s).floor(),
                        ((2.0 * y + 1.0) / s).floor(),
                        ((2.0 * x + 12.0) / s).floor(),
                        ((2.0 * y + 12.0) / s).floor(),
                    ],
                    score: scores[k],
                    reg: [
                        regs[4 * k],
                        regs[4 * k + 1],
                        regs[4 * k + 2],
                        regs[4 * k + 3],
                    ],
                });
            }
            all.extend(nms(level, 0.5, Overlap::Union));
        }
        all
    }

    /// Crop each candidate from its frame (the box truncated and clipped as the reference
    /// does), resize to `size` by area averaging (what `interpolate(mode="area")` computes, from
    /// the frame's summed-area table: four lookups a cell instead of a libtorch call a crop),
    /// normalise. Candidates whose crop is empty are dropped.
    fn crops(
        &self,
        frames: &[&RgbImage],
        mut cands: Vec<Cand>,
        size: usize,
    ) -> (Vec<Cand>, Option<Tensor>) {
        // One frame at a time, the table covering only that frame's crops.
        cands.sort_by_key(|c| c.frame);
        let mut kept = Vec::with_capacity(cands.len());
        let mut buf = Vec::with_capacity(cands.len() * 3 * size * size);
        for these in cands.chunk_by(|a, b| a.frame == b.frame) {
            let frame = frames[these[0].frame];
            let (fw, fh) = (i64::from(frame.width), i64::from(frame.height));
            // Columns x-1..ex, rows y-1..ey of each non-empty crop.
            let spans: Vec<(&Cand, [usize; 4])> = these
                .iter()
                .filter_map(|c| {
                    let [x, y, ex, ey] = pad(&c.b, fw, fh);
                    (ey > y - 1 && ex > x - 1).then(|| {
                        (
                            c,
                            [(x - 1) as usize, ex as usize, (y - 1) as usize, ey as usize],
                        )
                    })
                })
                .collect();
            if spans.is_empty() {
                continue;
            }
            // The rectangle holding them all.
            let [x0, x1, y0, y1] = spans
                .iter()
                .fold([usize::MAX, 0, usize::MAX, 0], |[a, b, c, d], (_, s)| {
                    [a.min(s[0]), b.max(s[1]), c.min(s[2]), d.max(s[3])]
                });
            let table = Integral::region(frame, x0..x1, y0..y1);
            for (c, [x0, x1, y0, y1]) in spans {
                table.area_resize(frame, x0..x1, y0..y1, (size, size), &mut buf);
                kept.push(*c);
            }
        }
        if kept.is_empty() {
            return (kept, None);
        }
        let batch = nhwc_batch(&buf, kept.len(), size, size, self.device);
        (kept, Some(batch))
    }

    fn stage2(&self, frames: &[&RgbImage], cands: Vec<Cand>) -> Vec<Cand> {
        let (cands, batch) = self.crops(frames, cands, 24);
        let Some(batch) = batch else {
            return Vec::new();
        };
        let (reg, prob) = self.rnet.forward(&batch);
        let (reg, prob) = (to_vec(&reg), to_vec(&prob));
        let thr = self.settings.thresholds[1];
        let passed = cands
            .iter()
            .enumerate()
            .filter(|(k, _)| prob[*k] > thr)
            .map(|(k, c)| Cand {
                frame: c.frame,
                b: c.b,
                score: prob[k],
                reg: [reg[4 * k], reg[4 * k + 1], reg[4 * k + 2], reg[4 * k + 3]],
            })
            .collect();
        nms(passed, 0.7, Overlap::Union)
            .into_iter()
            .map(|mut c| {
                c.b = rerec(bbreg(c.b, c.reg));
                c
            })
            .collect()
    }

    /// O-Net on the candidates: the faces passing `thresholds[2]`, with landmarks, regressed,
    /// each with the candidate's index in `cands`.
    fn stage3(&self, frames: &[&RgbImage], cands: Vec<Cand>) -> Vec<(usize, Face)> {
        let cands = cands
            .into_iter()
            .enumerate()
            .map(|(k, mut c)| {
                // Carry the candidate's index through the crops (which drop empty ones).
                c.reg = [k as f32, 0.0, 0.0, 0.0];
                c
            })
            .collect();
        let (cands, batch) = self.crops(frames, cands, 48);
        let Some(batch) = batch else {
            return Vec::new();
        };
        let (reg, lm, prob) = self.onet.forward(&batch);
        let (reg, lm, prob) = (to_vec(&reg), to_vec(&lm), to_vec(&prob));
        let thr = self.settings.thresholds[2];
        let mut out = Vec::new();
        for (k, c) in cands.iter().enumerate() {
            if prob[k] <= thr {
                continue;
            }
            let (bw, bh) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let mut landmarks = [[0f32; 2]; 5];
            for (i, p) in landmarks.iter_mut().enumerate() {
                *p = [
                    bw * lm[10 * k + i] + c.b[0] - 1.0,
                    bh * lm[10 * k + 5 + i] + c.b[1] - 1.0,
                ];
            }
            let r = [reg[4 * k], reg[4 * k + 1], reg[4 * k + 2], reg[4 * k + 3]];
            out.push((
                c.reg[0] as usize,
                Face {
                    bbox: bbreg(c.b, r),
                    confidence: prob[k],
                    landmarks,
                },
            ));
        }
        out
    }

    /// Find known faces again in a new frame, cheaply. First O-Net alone on each box
    /// (squared): a face that moved little since the box was found is found there again, its
    /// box and landmarks refined (O-Net regresses them, as it does R-Net's rough boxes in a
    /// full detection), and is kept when it overlaps its box by IoU >= [`DIRECT_IOU`]. For
    /// the boxes left, nine windows of the box's size (shifted by half a side: faces move
    /// between frames) go through R-Net (which re-centres them) and O-Net, as stages 2 and 3
    /// of a full detection but without the pyramid; each resulting face goes to the box it
    /// overlaps most (IoU >= 0.3), the most confident per box. `None` where no face is found
    /// near a box any more.
    pub fn refine(&self, frame: &RgbImage, boxes: &[[f32; 4]]) -> Vec<Option<Face>> {
        let _g = tch::no_grad_guard();
        let mut out: Vec<Option<Face>> = vec![None; boxes.len()];
        // Held boxes are clipped to the frame; a face found past its edge is compared with them
        // as clipped too (a face half out of the frame still matches its own box).
        let inside = |b: &[f32; 4]| super::clip_box(b, frame.width, frame.height);
        let direct = boxes
            .iter()
            .map(|b| Cand {
                frame: 0,
                b: rerec(*b),
                score: 0.0,
                reg: [0.0; 4],
            })
            .collect();
        let direct = self.stage3(&[frame], direct);
        for i in nms_face_indices(direct.iter().map(|(_, f)| (0, f))) {
            let (k, f) = &direct[i];
            if super::iou(&boxes[*k], &inside(&f.bbox)) >= DIRECT_IOU {
                out[*k] = Some(f.clone());
            }
        }
        let rest: Vec<usize> = (0..boxes.len()).filter(|&k| out[k].is_none()).collect();
        if rest.is_empty() {
            return out;
        }
        let mut cands = Vec::with_capacity(rest.len() * 9);
        for &k in &rest {
            let sq = rerec(boxes[k]);
            let (cx, cy, side) = ((sq[0] + sq[2]) / 2.0, (sq[1] + sq[3]) / 2.0, sq[2] - sq[0]);
            let h = side / 2.0;
            for dx in REFINE_SHIFTS {
                for dy in REFINE_SHIFTS {
                    let (x, y) = (cx + dx * side, cy + dy * side);
                    cands.push(Cand {
                        frame: 0,
                        b: [x - h, y - h, x + h, y + h],
                        score: 0.0,
                        reg: [0.0; 4],
                    });
                }
            }
        }
        let cands = self.stage2(&[frame], cands);
        // A window that finds a face already found directly does not find it twice.
        let held: Vec<[f32; 4]> = out.iter().flatten().map(|f| f.bbox).collect();
        let found: Vec<Face> = self
            .stage3(&[frame], cands)
            .into_iter()
            .map(|(_, f)| f)
            .filter(|f| {
                held.iter()
                    .all(|h| overlap(h, &f.bbox, Overlap::Min) <= 0.7)
            })
            .collect();
        for i in nms_face_indices(found.iter().map(|f| (0, f))) {
            let f = found[i].clone();
            let best = rest
                .iter()
                .map(|&k| (k, super::iou(&boxes[k], &inside(&f.bbox))))
                .max_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((k, o)) = best
                && o >= 0.3
                && out[k].as_ref().is_none_or(|g| g.confidence < f.confidence)
            {
                out[k] = Some(f);
            }
        }
        out
    }
}

/// Least IoU between a box and the face O-Net finds on it for [`Mtcnn::refine`] to keep that
/// face without searching around the box. Measured on the street video at 5 frames a second
/// (`make bench-vision`, 21 frames): at 0.8 the faces found and the frames with a main face
/// are those of the nine-window search alone or more (66.7 % of every-frame faces at minimum
/// face 20, 56 % at 40, against 66.7 and 54); at 0.5 some walking faces were kept on a
/// drifting box (61.8 % at 20, a main face in 71 % of frames instead of 90 %). A still face
/// (a call) passes at 0.8 on nearly every frame, where it costs half the search.
const DIRECT_IOU: f32 = 0.8;

/// Shifts of the refinement windows, in box sides (see [`Mtcnn::refine`]); measured on the
/// street video at 5 frames a second: windows at 0 only keep 51 % of the faces that detecting
/// every frame finds, this grid 67 %, a 5x5 grid at two sizes 70 % for twice the cost.
const REFINE_SHIFTS: [f32; 3] = [-0.5, 0.0, 0.5];

/// At most `n` candidates per frame, the best scoring (order otherwise kept).
fn cap(cands: Vec<Cand>, n: usize) -> Vec<Cand> {
    let mut per_frame = std::collections::HashMap::<usize, Vec<f32>>::new();
    for c in &cands {
        per_frame.entry(c.frame).or_default().push(c.score);
    }
    // Each crowded frame's n-th best score; ties at the bar are taken in order up to n.
    let mut bar: std::collections::HashMap<usize, (f32, usize)> = per_frame
        .into_iter()
        .filter(|(_, s)| s.len() > n)
        .map(|(f, mut s)| {
            s.sort_by(|a, b| b.total_cmp(a));
            let above = s.iter().filter(|&&v| v > s[n - 1]).count();
            (f, (s[n - 1], n - above))
        })
        .collect();
    if bar.is_empty() {
        return cands;
    }
    cands
        .into_iter()
        .filter(|c| match bar.get_mut(&c.frame) {
            None => true,
            Some((v, _)) if c.score > *v => true,
            Some((v, ties)) if c.score == *v && *ties > 0 => {
                *ties -= 1;
                true
            }
            Some(_) => false,
        })
        .collect()
}

impl FaceDetector for Mtcnn {
    fn detect(&self, frames: &[&RgbImage]) -> Result<Vec<Vec<Face>>, VisionError> {
        let _g = tch::no_grad_guard();
        // Stage 1 batches the frames of each size.
        let mut sizes: Vec<(u32, u32)> = frames.iter().map(|f| (f.width, f.height)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut cands = Vec::new();
        for (w, h) in sizes {
            let members: Vec<usize> = (0..frames.len())
                .filter(|&i| (frames[i].width, frames[i].height) == (w, h))
                .collect();
            let batch: Vec<&RgbImage> = members.iter().map(|&i| frames[i]).collect();
            for mut c in self.stage1(&batch, w, h) {
                c.frame = members[c.frame];
                cands.push(c);
            }
        }
        let cands = nms(cands, 0.7, Overlap::Union)
            .into_iter()
            .map(|mut c| {
                let (w, h) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                c.b = rerec([
                    c.b[0] + c.reg[0] * w,
                    c.b[1] + c.reg[1] * h,
                    c.b[2] + c.reg[2] * w,
                    c.b[3] + c.reg[3] * h,
                ]);
                c
            })
            .collect();
        let cands = cap(cands, self.settings.max_candidates);
        let cands = cap(self.stage2(frames, cands), self.settings.max_candidates);
        let frame_of: Vec<usize> = cands.iter().map(|c| c.frame).collect();
        let faces = self
            .stage3(frames, cands)
            .into_iter()
            .map(|(k, f)| (frame_of[k], f))
            .collect();
        let mut out = vec![Vec::new(); frames.len()];
        for (k, face) in nms_faces(faces) {
            out[k].push(face);
        }
        for faces in &mut out {
            faces.sort_by(|a, b| {
                let area = |f: &Face| f.size().0 * f.size().1;
                area(b).total_cmp(&area(a))
            });
        }
        Ok(out)
    }
}

/// `n` images written pixel by pixel (NHWC, `h` x `w` x 3) as an NCHW tensor on `device`: seen
/// that way it is already channels-last, as the networks want their input.
fn nhwc_batch(buf: &[f32], n: usize, h: usize, w: usize, device: Device) -> Tensor {
    Tensor::from_slice(buf)
        .view([n as i64, h as i64, w as i64, 3])
        .to_device(device)
        .permute([0, 3, 1, 2])
}

/// A summed-area table of a rectangle of a frame, per channel, in wrapping u32: the sum over
/// a rectangle (a difference of four entries) is exact while the true sum is below 2^32, i.e.
/// for crops of fewer than 16.8 M pixels; larger crops (faces over 4,000 px wide) are summed
/// directly.
struct Integral {
    /// The rectangle's origin in the frame.
    x0: usize,
    y0: usize,
    /// The rectangle's width.
    w: usize,
    /// `(h + 1) x (w + 1) x 3`, entry (y, x, c) = sum of channel c over the rectangle's rows
    /// < y, columns < x.
    t: Vec<u32>,
}

impl Integral {
    /// The table of the whole frame.
    fn new(f: &RgbImage) -> Self {
        Self::region(f, 0..f.width as usize, 0..f.height as usize)
    }

    /// The table of columns `xs`, rows `ys` (within the frame).
    fn region(f: &RgbImage, xs: std::ops::Range<usize>, ys: std::ops::Range<usize>) -> Self {
        let (w, h) = (xs.end - xs.start, ys.end - ys.start);
        let stride = (w + 1) * 3;
        let fw = f.width as usize;
        let mut t = vec![0u32; (h + 1) * stride];
        for (y, row_y) in ys.clone().enumerate() {
            let row = &f.data[(row_y * fw + xs.start) * 3..(row_y * fw + xs.end) * 3];
            let (done, next) = t.split_at_mut((y + 1) * stride);
            let above = &done[y * stride + 3..];
            let mut run = [0u32; 3];
            for ((px, out), up) in row
                .chunks_exact(3)
                .zip(next[3..stride].chunks_exact_mut(3))
                .zip(above.chunks_exact(3))
            {
                for c in 0..3 {
                    run[c] = run[c].wrapping_add(u32::from(px[c]));
                    out[c] = up[c].wrapping_add(run[c]);
                }
            }
        }
        Integral {
            x0: xs.start,
            y0: ys.start,
            w,
            t,
        }
    }

    /// Sum of channel `c` over frame columns `x0..x1`, rows `y0..y1` (inside the rectangle).
    fn sum(&self, x0: usize, x1: usize, y0: usize, y1: usize, c: usize) -> u32 {
        let stride = (self.w + 1) * 3;
        let at = |y: usize, x: usize| self.t[(y - self.y0) * stride + (x - self.x0) * 3 + c];
        at(y1, x1)
            .wrapping_sub(at(y0, x1))
            .wrapping_sub(at(y1, x0))
            .wrapping_add(at(y0, x0))
    }

    /// Area-resize columns `xs`, rows `ys` to `out_w` x `out_h`, pixel-major (HWC), normalised
    /// as MTCNN wants ((v - 127.5) / 128), appended to `out`. Cell i covers input
    /// `floor(i L / n) .. ceil((i + 1) L / n)` (adaptive average pooling's rule).
    fn area_resize(
        &self,
        img: &RgbImage,
        xs: std::ops::Range<usize>,
        ys: std::ops::Range<usize>,
        (out_w, out_h): (usize, usize),
        out: &mut Vec<f32>,
    ) {
        let span = |r: &std::ops::Range<usize>, i: usize, n: usize| {
            let l = r.end - r.start;
            (r.start + i * l / n, r.start + ((i + 1) * l).div_ceil(n))
        };
        let huge = (xs.end - xs.start) * (ys.end - ys.start) >= 16_000_000;
        for i in 0..out_h {
            let (y0, y1) = span(&ys, i, out_h);
            for j in 0..out_w {
                let (x0, x1) = span(&xs, j, out_w);
                for c in 0..3 {
                    let n = ((y1 - y0) * (x1 - x0)) as f64;
                    let total = if huge {
                        (y0..y1)
                            .flat_map(|y| (x0..x1).map(move |x| (y, x)))
                            .map(|(y, x)| u64::from(img.data[(y * img.width as usize + x) * 3 + c]))
                            .sum::<u64>() as f64
                    } else {
                        f64::from(self.sum(x0, x1, y0, y1, c))
                    };
                    out.push(((total / n) as f32 - 127.5) * 0.0078125);
                }
            }
        }
    }
}

/// Box regression with +1 sizes (stages 2 and 3).
fn bbreg(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [
        b[0] + r[0] * w,
        b[1] + r[1] * h,
        b[2] + r[2] * w,
        b[3] + r[3] * h,
    ]
}

/// Square a box about its centre (the longer side).
fn rerec(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// Truncate to integers and clip, 1-based as the reference: `[x, y, ex, ey]`; the crop is
/// rows `y-1 .. ey`, columns `x-1 .. ex`.
fn pad(b: &[f32; 4], w: i64, h: i64) -> [i64; 4] {
    let t = |v: f32| v.trunc() as i64;
    [
        t(b[0]).max(1),
        t(b[1]).max(1),
        t(b[2]).min(w),
        t(b[3]).min(h),
    ]
}

#[derive(Clone, Copy)]
enum Overlap {
    /// Intersection over union, sizes without +1 (torchvision's `nms`).
    Union,
    /// Intersection over the smaller box, sizes with +1 (the reference's last NMS).
    Min,
}

fn overlap(a: &[f32; 4], b: &[f32; 4], how: Overlap) -> f32 {
    match how {
        Overlap::Union => super::iou(a, b),
        Overlap::Min => {
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let area = |x: &[f32; 4]| (x[2] - x[0] + 1.0) * (x[3] - x[1] + 1.0);
            w * h / area(a).min(area(b))
        }
    }
}

/// Greedy non-maximum suppression within each frame: best score first, dropping boxes that
/// overlap a kept one by more than `thr`.
fn nms(mut c: Vec<Cand>, thr: f32, how: Overlap) -> Vec<Cand> {
    c.sort_by(|a, b| a.frame.cmp(&b.frame).then(b.score.total_cmp(&a.score)));
    let mut keep: Vec<Cand> = Vec::with_capacity(c.len());
    let mut start = 0;
    for x in c {
        if keep.get(start).is_some_and(|k| k.frame != x.frame) {
            start = keep.len();
        }
        if keep[start..]
            .iter()
            .all(|k| overlap(&k.b, &x.b, how) <= thr)
        {
            keep.push(x);
        }
    }
    keep
}

/// Indices of the `(frame, face)`s that NMS keeps within each frame (overlap over the
/// smaller box, 0.7: the last step of a detection), by frame, most confident first.
fn nms_face_indices<'a>(faces: impl Iterator<Item = (usize, &'a Face)>) -> Vec<usize> {
    let cands = faces
        .enumerate()
        .map(|(k, (frame, f))| Cand {
            frame,
            b: f.bbox,
            score: f.confidence,
            // The face's position, to find it again.
            reg: [k as f32, 0.0, 0.0, 0.0],
        })
        .collect();
    nms(cands, 0.7, Overlap::Min)
        .into_iter()
        .map(|c| c.reg[0] as usize)
        .collect()
}

fn nms_faces(faces: Vec<(usize, Face)>) -> Vec<(usize, Face)> {
    nms_face_indices(faces.iter().map(|(frame, f)| (*frame, f)))
        .into_iter()
        .map(|i| faces[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(frame: usize, b: [f32; 4], score: f32) -> Cand {
        Cand {
            frame,
            b,
            score,
            reg: [0.0; 4],
        }
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster_per_frame() {
        let a = cand(0, [0.0, 0.0, 10.0, 10.0], 0.9);
        let a2 = cand(0, [1.0, 0.0, 11.0, 10.0], 0.95);
        let b = cand(0, [50.0, 50.0, 60.0, 60.0], 0.8);
        let other = cand(1, [0.0, 0.0, 10.0, 10.0], 0.7);
        let kept = nms(vec![a, b, other, a2], 0.5, Overlap::Union);
        let got: Vec<(usize, f32)> = kept.iter().map(|c| (c.frame, c.score)).collect();
        assert_eq!(got, vec![(0, 0.95), (0, 0.8), (1, 0.7)]);
    }

    #[test]
    fn the_candidate_cap_is_per_frame() {
        let mut c: Vec<Cand> = (0..10).map(|i| cand(0, [0.0; 4], i as f32)).collect();
        c.push(cand(1, [0.0; 4], 0.5));
        c.push(cand(0, [0.0; 4], 9.0));
        let kept = cap(c, 3);
        let got: Vec<(usize, f32)> = kept.iter().map(|c| (c.frame, c.score)).collect();
        assert_eq!(got, vec![(0, 8.0), (0, 9.0), (1, 0.5), (0, 9.0)]);
    }

    #[test]
    fn min_overlap_drops_a_box_inside_another() {
        let big = [0.0, 0.0, 100.0, 100.0];
        let small = [10.0, 10.0, 30.0, 30.0];
        assert!(overlap(&big, &small, Overlap::Min) > 0.99);
        assert!(overlap(&big, &small, Overlap::Union) < 0.1);
    }

    #[test]
    fn boxes_are_squared_and_padded_like_the_reference() {
        assert_eq!(rerec([0.0, 0.0, 10.0, 20.0]), [-5.0, 0.0, 15.0, 20.0]);
        assert_eq!(pad(&[-5.7, 0.4, 15.9, 20.0], 12, 30), [1, 1, 12, 20]);
        assert_eq!(
            bbreg([0.0, 0.0, 9.0, 9.0], [0.1, 0.0, -0.1, 0.5]),
            [1.0, 0.0, 8.0, 14.0]
        );
    }

    #[test]
    fn area_resize_matches_libtorch_adaptive_average_pooling() {
        let (w, h) = (37u32, 23u32);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = RgbImage::new(w, h, data).unwrap();
        let whole = Integral::new(&img);
        // A table of only part of the frame, as the crops use.
        let part = Integral::region(&img, 2..31, 4..23);
        for (table, xs, ys, (ow, oh)) in [
            (&whole, 0..37, 0..23, (24, 24)),
            (&whole, 0..37, 0..23, (12, 8)),
            (&whole, 3..20, 5..22, (12, 12)),
            (&whole, 10..11, 2..3, (4, 4)),
            (&part, 3..20, 5..22, (12, 12)),
            (&part, 2..31, 4..23, (7, 5)),
        ] {
            let mut got = Vec::new();
            table.area_resize(&img, xs.clone(), ys.clone(), (ow, oh), &mut got);
            let t = img.to_tensor(Device::Cpu);
            let want = (t
                .narrow(1, ys.start as i64, (ys.end - ys.start) as i64)
                .narrow(2, xs.start as i64, (xs.end - xs.start) as i64)
                .unsqueeze(0)
                .adaptive_avg_pool2d([oh as i64, ow as i64])
                - 127.5)
                * 0.0078125;
            let want =
                Vec::<f32>::try_from(want.permute([0, 2, 3, 1]).contiguous().view([-1])).unwrap();
            assert_eq!(got.len(), want.len());
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(MtcnnSettings::default().check().is_ok());
        let bad = MtcnnSettings {
            min_face: 5.0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("min_face"));
    }
}
