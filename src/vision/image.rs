//! Frames as callers hold them, checked and turned into packed RGB.

use super::VisionError;

/// Largest side accepted (8K); anything bigger is refused rather than allocated.
pub const MAX_SIDE: u32 = 8192;

/// How a frame's pixels are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 3 bytes a pixel, R G B.
    Rgb,
    /// 3 bytes a pixel, B G R.
    Bgr,
    /// 4 bytes a pixel, R G B A (alpha ignored).
    Rgba,
    /// 1 byte a pixel, luma.
    Gray,
}

impl PixelFormat {
    /// Bytes a pixel.
    pub fn bytes(self) -> usize {
        match self {
            PixelFormat::Rgb | PixelFormat::Bgr => 3,
            PixelFormat::Rgba => 4,
            PixelFormat::Gray => 1,
        }
    }
}

/// A borrowed frame: `height` rows of `stride` bytes, each starting with `width` pixels.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// The bytes.
    pub data: &'a [u8],
    /// Pixels a row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bytes from one row's start to the next (at least `width * bytes a pixel`).
    pub stride: usize,
    /// Pixel layout.
    pub format: PixelFormat,
}

/// An owned packed RGB frame (`width * 3` bytes a row), the form the networks take.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    /// Pixels a row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl Image<'_> {
    /// Check the description against the bytes and convert to packed RGB (grey is replicated).
    pub fn to_rgb(&self) -> Result<RgbImage, VisionError> {
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 {
            return Err(VisionError::Frame(format!(
                "zero-sized frame {}x{}",
                self.width, self.height
            )));
        }
        if self.width > MAX_SIDE || self.height > MAX_SIDE {
            return Err(VisionError::Frame(format!(
                "{}x{} is larger than {MAX_SIDE} on a side",
                self.width, self.height
            )));
        }
        let bpp = self.format.bytes();
        if self.stride < w * bpp {
            return Err(VisionError::Frame(format!(
                "stride {} is shorter than a row of {w} {:?} pixels",
                self.stride, self.format
            )));
        }
        let need = self.stride * (h - 1) + w * bpp;
        if self.data.len() < need {
            return Err(VisionError::Frame(format!(
                "{} bytes for a {w}x{h} frame of stride {} (needs {need})",
                self.data.len(),
                self.stride
            )));
        }
        let mut out = Vec::with_capacity(w * h * 3);
        for row in 0..h {
            let r = &self.data[row * self.stride..row * self.stride + w * bpp];
            match self.format {
                PixelFormat::Rgb => out.extend_from_slice(r),
                PixelFormat::Bgr => r.chunks_exact(3).for_each(|p| {
                    out.extend_from_slice(&[p[2], p[1], p[0]]);
                }),
                PixelFormat::Rgba => r.chunks_exact(4).for_each(|p| {
                    out.extend_from_slice(&p[..3]);
                }),
                PixelFormat::Gray => r.iter().for_each(|&g| out.extend_from_slice(&[g, g, g])),
            }
        }
        Ok(RgbImage {
            width: self.width,
            height: self.height,
            data: out,
        })
    }
}

impl RgbImage {
    /// Wrap packed RGB bytes, checking their number.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self, VisionError> {
        Image {
            data: &data,
            width,
            height,
            stride: width as usize * 3,
            format: PixelFormat::Rgb,
        }
        .to_rgb()?;
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }

    /// The frame as a float tensor `[3, H, W]` with values in [0, 255], on `device`.
    pub fn to_tensor(&self, device: tch::Device) -> tch::Tensor {
        tch::Tensor::from_slice(&self.data)
            .view([self.height as i64, self.width as i64, 3])
            .permute([2, 0, 1])
            .to_device(device)
            .to_kind(tch::Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(data: &[u8], width: u32, height: u32, stride: usize, format: PixelFormat) -> Image<'_> {
        Image {
            data,
            width,
            height,
            stride,
            format,
        }
    }

    #[test]
    fn layouts_become_packed_rgb() {
        // 2x2 with padded rows (stride 8 for 6 bytes of RGB).
        let rgb = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let out = img(&rgb, 2, 2, 8, PixelFormat::Rgb).to_rgb().unwrap();
        assert_eq!(out.data, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let bgr = [3, 2, 1];
        let out = img(&bgr, 1, 1, 3, PixelFormat::Bgr).to_rgb().unwrap();
        assert_eq!(out.data, [1, 2, 3]);
        let rgba = [1, 2, 3, 255, 4, 5, 6, 0];
        let out = img(&rgba, 2, 1, 8, PixelFormat::Rgba).to_rgb().unwrap();
        assert_eq!(out.data, [1, 2, 3, 4, 5, 6]);
        let grey = [9, 7];
        let out = img(&grey, 1, 2, 1, PixelFormat::Gray).to_rgb().unwrap();
        assert_eq!(out.data, [9, 9, 9, 7, 7, 7]);
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let d = [0u8; 12];
        for (w, h, stride, what) in [
            (0, 2, 6, "zero-sized"),
            (2, 0, 6, "zero-sized"),
            (2, 2, 5, "stride"),
            (3, 2, 9, "bytes"),
            (MAX_SIDE + 1, 1, 3 * (MAX_SIDE as usize + 1), "larger"),
        ] {
            let e = img(&d, w, h, stride, PixelFormat::Rgb)
                .to_rgb()
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(2, 2, vec![0; 12]).is_ok());
    }
}
