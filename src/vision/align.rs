//! Aligned face crops: a square about the face box's centre, `CROP_SCALE` times the box's
//! longer side, rotated so that the eye landmarks are level, sampled bilinearly in grey
//! (ITU-R 601 luma, as OpenCV's RGB->grey) at the expression network's input size, straight
//! from the frame's bytes: what libtorch's `affine_grid` + `grid_sample` (bilinear, zeros
//! outside, align_corners = false) compute on the frame in grey, without turning the whole
//! frame into floats first (that cost 2-4 ms a 640x360 frame, the crop itself 20 us).

use tch::{Device, Tensor};

use super::{Face, RgbImage};

/// Side of the crop relative to the face box's longer side (fer pads its boxes by 10 px).
pub const CROP_SCALE: f32 = 1.15;

/// The crop of a face: centre, side and rotation (radians, the eye line's angle).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropGeometry {
    /// Centre x, pixels.
    pub cx: f32,
    /// Centre y, pixels.
    pub cy: f32,
    /// Side, pixels.
    pub side: f32,
    /// Rotation, radians (positive: the right eye is lower than the left in the image).
    pub angle: f32,
}

impl CropGeometry {
    /// The crop of `face`.
    pub fn of(face: &Face) -> Self {
        let (cx, cy) = face.centre();
        let (w, h) = face.size();
        let [l, r] = [face.landmarks[0], face.landmarks[1]];
        let angle = (r[1] - l[1]).atan2(r[0] - l[0]);
        // A face whose eyes are not left-then-right (a profile, a bad landmark) is not turned
        // upside down: beyond 45 degrees, no rotation.
        let angle = if angle.abs() <= std::f32::consts::FRAC_PI_4 {
            angle
        } else {
            0.0
        };
        CropGeometry {
            cx,
            cy,
            side: w.max(h).max(1.0) * CROP_SCALE,
            angle,
        }
    }

    /// The crop of `face` in a `w` x `h` frame: as [`CropGeometry::of`], but a square that
    /// would reach past the frame shrinks towards the face box's own longer side (never
    /// below it), so that a face filling the frame is read without a black border. The
    /// expression network reads a face cropped tighter than its training pictures nearly as
    /// well, and one with a border about it much worse (14 of 18 whole FER faces read right
    /// whole, 11-13 cropped to 0.7-1.0 of the picture, 4 with a black border of 5 %).
    pub fn of_in(face: &Face, w: u32, h: u32) -> Self {
        let mut g = Self::of(face);
        let (bw, bh) = face.size();
        let room = 2.0
            * (g.cx + 0.5)
                .min(w as f32 - 0.5 - g.cx)
                .min(g.cy + 0.5)
                .min(h as f32 - 0.5 - g.cy);
        g.side = g.side.min(room.max(bw.max(bh)).max(1.0));
        g
    }

    /// The 2x3 matrix mapping output coordinates in [-1, 1] to the frame's normalised
    /// coordinates (`affine_grid` convention, align_corners = false, pixel i's centre at i).
    fn theta(&self, w: u32, h: u32) -> [f32; 6] {
        let (w, h) = (w as f32, h as f32);
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let half = self.side / 2.0;
        [
            2.0 * half * c / w,
            -2.0 * half * s / w,
            (2.0 * self.cx + 1.0) / w - 1.0,
            2.0 * half * s / h,
            2.0 * half * c / h,
            (2.0 * self.cy + 1.0) / h - 1.0,
        ]
    }
}

/// Luma weights (ITU-R 601).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Aligned grey crops `[N, 1, size, size]` (0..255; outside the frame is 0) of `faces`, on
/// `device`.
pub fn crops(frame: &RgbImage, faces: &[CropGeometry], size: usize, device: Device) -> Tensor {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut out = Vec::with_capacity(faces.len() * size * size);
    // Grey value of pixel (x, y); 0 outside the frame (grid_sample's zero padding).
    let px = |x: i64, y: i64| -> f32 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            return 0.0;
        }
        let p = &frame.data[(y as usize * w + x as usize) * 3..][..3];
        LUMA[0] * f32::from(p[0]) + LUMA[1] * f32::from(p[1]) + LUMA[2] * f32::from(p[2])
    };
    for g in faces {
        let t = g.theta(frame.width, frame.height);
        for i in 0..size {
            // Output pixel centres in [-1, 1] (affine_grid, align_corners = false).
            let yn = (2 * i + 1) as f32 / size as f32 - 1.0;
            for j in 0..size {
                let xn = (2 * j + 1) as f32 / size as f32 - 1.0;
                let gx = t[0] * xn + t[1] * yn + t[2];
                let gy = t[3] * xn + t[4] * yn + t[5];
                // Back to pixel coordinates (grid_sample, align_corners = false).
                let ix = ((gx + 1.0) * w as f32 - 1.0) / 2.0;
                let iy = ((gy + 1.0) * h as f32 - 1.0) / 2.0;
                let (x0, y0) = (ix.floor(), iy.floor());
                let (fx, fy) = (ix - x0, iy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                out.push(
                    px(x0, y0) * (1.0 - fx) * (1.0 - fy)
                        + px(x0 + 1, y0) * fx * (1.0 - fy)
                        + px(x0, y0 + 1) * (1.0 - fx) * fy
                        + px(x0 + 1, y0 + 1) * fx * fy,
                );
            }
        }
    }
    let s = size as i64;
    Tensor::from_slice(&out)
        .view([faces.len() as i64, 1, s, s])
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn face(l: [f32; 2], r: [f32; 2]) -> Face {
        Face {
            bbox: [20.0, 20.0, 60.0, 60.0],
            confidence: 1.0,
            landmarks: [l, r, [40.0, 45.0], [30.0, 52.0], [50.0, 52.0]],
        }
    }

    #[test]
    fn level_eyes_give_a_plain_crop() {
        let g = CropGeometry::of(&face([30.0, 35.0], [50.0, 35.0]));
        assert_eq!(g.angle, 0.0);
        assert_eq!((g.cx, g.cy), (40.0, 40.0));
        assert!((g.side - 46.0).abs() < 1e-4);
    }

    #[test]
    fn crops_sample_the_right_place_and_turn_the_eye_line_level() {
        // A 100x100 frame, black but for a bright horizontal bar through the face box that
        // the eyes say is tilted by 30 degrees: a crop turned by that angle shows the bar
        // tilted; an unturned one shows it level.
        let (w, h) = (100u32, 100u32);
        let mut data = vec![0u8; (w * h * 3) as usize];
        for y in 38..43 {
            for x in 10..90 {
                data[((y * w + x) * 3) as usize..][..3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let frame = RgbImage::new(w, h, data).unwrap();
        let level = CropGeometry::of(&face([30.0, 40.0], [50.0, 40.0]));
        let a = 30f32.to_radians();
        let tilted = CropGeometry::of(&face(
            [30.0, 40.0],
            [30.0 + 20.0 * a.cos(), 40.0 + 20.0 * a.sin()],
        ));
        let c = crops(&frame, &[level, tilted], 64, Device::Cpu);
        assert_eq!(c.size(), [2, 1, 64, 64]);
        // The level crop's middle row is bright from edge to edge; the tilted one's is not.
        let row = |i: i64| c.get(i).get(0).get(32);
        assert!(row(0).min().double_value(&[]) > 200.0);
        assert!(row(1).min().double_value(&[]) < 50.0);
        // The bar crosses the tilted crop's centre.
        assert!(row(1).get(32).double_value(&[]) > 200.0);
    }

    /// The same crops by libtorch: the frame in grey as floats, `affine_grid` + `grid_sample`.
    fn crops_by_libtorch(frame: &RgbImage, faces: &[CropGeometry], size: i64) -> Tensor {
        let rgb = frame.to_tensor(Device::Cpu);
        let wts = Tensor::from_slice(&LUMA).view([3, 1, 1]);
        let grey = (rgb * wts)
            .sum_dim_intlist([0i64].as_slice(), true, Kind::Float)
            .unsqueeze(0);
        let (h, w) = (grey.size()[2], grey.size()[3]);
        let n = faces.len() as i64;
        let thetas: Vec<f32> = faces
            .iter()
            .flat_map(|g| g.theta(w as u32, h as u32))
            .collect();
        let theta = Tensor::from_slice(&thetas).view([n, 2, 3]);
        let grid = Tensor::affine_grid_generator(&theta, [n, 1, size, size], false);
        grey.expand([n, 1, h, w], false)
            .grid_sampler(&grid, 0, 0, false)
    }

    #[test]
    fn crops_match_libtorch_grid_sample() {
        // A textured 90x70 frame; faces inside, turned, and reaching over every edge.
        let (w, h) = (90u32, 70u32);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 253) as u8).collect();
        let frame = RgbImage::new(w, h, data).unwrap();
        let geo = [
            CropGeometry {
                cx: 45.0,
                cy: 35.0,
                side: 30.0,
                angle: 0.0,
            },
            CropGeometry {
                cx: 40.3,
                cy: 30.7,
                side: 41.5,
                angle: 0.35,
            },
            CropGeometry {
                cx: 5.0,
                cy: 66.0,
                side: 50.0,
                angle: -0.6,
            },
            CropGeometry {
                cx: 88.0,
                cy: 2.0,
                side: 12.0,
                angle: 0.1,
            },
        ];
        let ours = crops(&frame, &geo, 64, Device::Cpu);
        let want = crops_by_libtorch(&frame, &geo, 64);
        assert_eq!(ours.size(), want.size());
        let d = (ours - want).abs().max().double_value(&[]);
        assert!(d < 1e-2, "largest difference {d} (of 255)");
    }

    #[test]
    fn a_crop_shrinks_inside_the_frame_but_not_below_the_face_box() {
        // A box in the middle of a large frame: the full 1.15x square.
        let f = face([30.0, 35.0], [50.0, 35.0]);
        assert_eq!(CropGeometry::of_in(&f, 1000, 1000), CropGeometry::of(&f));
        // A frame-filling box: the square stays inside the frame.
        let mut big = f.clone();
        big.bbox = [0.0, 0.0, 192.0, 192.0];
        let g = CropGeometry::of_in(&big, 192, 192);
        assert!((g.side - 192.0).abs() < 1e-3, "{g:?}");
        // Near an edge: no smaller than the box.
        big.bbox = [0.0, 40.0, 100.0, 140.0];
        assert!((CropGeometry::of_in(&big, 400, 400).side - 101.0).abs() < 1e-3);
    }
}
