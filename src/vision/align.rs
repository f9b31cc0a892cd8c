//! Aligned face crops: a square about the face box's centre, `CROP_SCALE` times the box's
//! longer side, rotated so that the eye landmarks are level, sampled bilinearly in grey
//! (ITU-R 601 luma, as OpenCV's RGB->grey) at the expression network's input size. One
//! `grid_sample` call crops every face of a frame.

use tch::{Device, Kind, Tensor};

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

/// The frame in grey, `[1, 1, H, W]` floats 0..255, on `device`.
pub fn grey(frame: &RgbImage, device: Device) -> Tensor {
    let rgb = frame.to_tensor(device);
    let wts = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
        .to_device(device)
        .view([3, 1, 1]);
    (rgb * wts)
        .sum_dim_intlist([0i64].as_slice(), true, Kind::Float)
        .unsqueeze(0)
}

/// Aligned grey crops `[N, 1, size, size]` (0..255; outside the frame is 0) of `faces`.
pub fn crops(grey: &Tensor, faces: &[CropGeometry], size: i64) -> Tensor {
    let (h, w) = (grey.size()[2], grey.size()[3]);
    let n = faces.len() as i64;
    let thetas: Vec<f32> = faces
        .iter()
        .flat_map(|g| g.theta(w as u32, h as u32))
        .collect();
    let theta = Tensor::from_slice(&thetas)
        .view([n, 2, 3])
        .to_device(grey.device());
    let grid = Tensor::affine_grid_generator(&theta, [n, 1, size, size], false);
    grey.expand([n, 1, h, w], false)
        .grid_sampler(&grid, 0, 0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let grey = grey(&frame, Device::Cpu);
        let level = CropGeometry::of(&face([30.0, 40.0], [50.0, 40.0]));
        let a = 30f32.to_radians();
        let tilted = CropGeometry::of(&face(
            [30.0, 40.0],
            [30.0 + 20.0 * a.cos(), 40.0 + 20.0 * a.sin()],
        ));
        let c = crops(&grey, &[level, tilted], 64);
        assert_eq!(c.size(), [2, 1, 64, 64]);
        // The level crop's middle row is bright from edge to edge; the tilted one's is not.
        let row = |i: i64| c.get(i).get(0).get(32);
        assert!(row(0).min().double_value(&[]) > 200.0);
        assert!(row(1).min().double_value(&[]) < 50.0);
        // The bar crosses the tilted crop's centre.
        assert!(row(1).get(32).double_value(&[]) > 200.0);
    }
}
