//! `summerd version`: what this build is and what the machine offers it.

use serde::Serialize;

/// Versions and capabilities of summerd and the native libraries it runs on.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// summerd's own version.
    pub summerd: String,
    /// libtorch's version (read from the libtorch that was linked).
    pub libtorch: String,
    /// Where that libtorch lives (the rpath of this binary).
    pub libtorch_lib: String,
    /// Whether `libtorch_cuda` was linked into this binary.
    pub libtorch_cuda_linked: bool,
    /// Whether CUDA is usable now.
    pub cuda_available: bool,
    /// How many CUDA devices libtorch sees.
    pub cuda_devices: i64,
    /// Whether cuDNN is usable.
    pub cudnn_available: bool,
    /// GStreamer's runtime version.
    pub gstreamer: String,
    /// libzmq's runtime version.
    pub libzmq: String,
    /// Whether libzmq has CURVE security.
    pub libzmq_curve: bool,
}

impl VersionInfo {
    /// Versions that need no device probing (cheap; used for metrics' build info).
    pub fn libraries() -> Self {
        let (a, b, c) = zmq::version();
        let gstreamer = match gstreamer::init() {
            Ok(()) => {
                let (ma, mi, mc, _) = gstreamer::version();
                format!("{ma}.{mi}.{mc}")
            }
            Err(e) => format!("unavailable ({e})"),
        };
        VersionInfo {
            summerd: env!("CARGO_PKG_VERSION").to_string(),
            libtorch: env!("SUMMERD_LIBTORCH_VERSION").to_string(),
            libtorch_lib: env!("SUMMERD_LIBTORCH_LIB").to_string(),
            libtorch_cuda_linked: env!("SUMMERD_LIBTORCH_CUDA") == "linked",
            cuda_available: false,
            cuda_devices: 0,
            cudnn_available: false,
            gstreamer,
            libzmq: format!("{a}.{b}.{c}"),
            libzmq_curve: zmq::has("curve") == Some(true),
        }
    }

    /// Everything, including a CUDA probe through libtorch.
    pub fn probe() -> Self {
        let mut v = Self::libraries();
        v.cuda_available = tch::Cuda::is_available();
        v.cuda_devices = tch::Cuda::device_count();
        v.cudnn_available = tch::Cuda::cudnn_is_available();
        v
    }

    /// Human-readable lines.
    pub fn render(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "summerd {}\n\
             libtorch {} ({}; libtorch_cuda linked: {})\n\
             cuda: {} ({} device(s); cudnn: {})\n\
             gstreamer {}\n\
             libzmq {} (curve: {})\n",
            self.summerd,
            self.libtorch,
            self.libtorch_lib,
            yes(self.libtorch_cuda_linked),
            if self.cuda_available {
                "usable"
            } else {
                "not usable, CPU fallback"
            },
            self.cuda_devices,
            yes(self.cudnn_available),
            self.gstreamer,
            self.libzmq,
            yes(self.libzmq_curve),
        )
    }
}
