//! Inference cost of the default-sized SUMMER student (text 384-d + audio 88-d, d_model 256,
//! window 12): one forward over a 12-utterance window at batch 1 and batch 64, on the CPU with
//! one thread (and two), and on CUDA when there is a device. Prints the figures and writes
//! target/bench/model_speed.json.

use std::time::Instant;

use serde_json::json;
use summerd::model::{Batch, FeatureSpec, Features, Model, ModelConfig, NetKind};
use tch::{Device, Kind, Tensor};

fn batch(b: i64, device: Device) -> Batch {
    let t = 12;
    let f = (Kind::Float, device);
    Batch {
        features: [
            Tensor::randn([b, t, 384], f),
            Tensor::randn([b, t, 88], f),
            Tensor::zeros([b, t, 0], f),
        ],
        present: Tensor::ones([b, t, 3], (Kind::Bool, device)),
        valid: Tensor::ones([b, t], (Kind::Bool, device)),
        speaker: Tensor::zeros([b, t], (Kind::Int64, device)),
        label: Tensor::zeros([b, t], (Kind::Int64, device)),
        offset: None,
    }
}

/// Median and p95 milliseconds of `runs` forwards.
fn time(m: &Model, b: &Batch, runs: usize, device: Device) -> (f64, f64) {
    let _g = tch::no_grad_guard();
    for _ in 0..10 {
        let _ = m.net.forward(b, false);
    }
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = m.net.forward(b, false);
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            let _ = out.logits.double_value(&[0, 11, 0]);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 95 / 100])
}

fn main() {
    let features = Features {
        text: Some(FeatureSpec {
            extractor: summerd::model::TEXT_EXTRACTOR.into(),
            dim: 384,
        }),
        audio: Some(FeatureSpec {
            extractor: summerd::model::AUDIO_EXTRACTOR.into(),
            dim: 88,
        }),
        visual: None,
    };
    let classes: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let cfg = ModelConfig::default();
    let mut results = Vec::new();
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    for device in devices {
        let m = Model::new(
            NetKind::Fused,
            features.clone(),
            classes.clone(),
            &cfg,
            device,
        );
        let threads: &[i32] = if device.is_cuda() { &[1] } else { &[1, 2] };
        for &th in threads {
            tch::set_num_threads(th);
            for bsz in [1i64, 64] {
                let b = batch(bsz, device);
                let runs = if bsz == 1 { 300 } else { 30 };
                let (p50, p95) = time(&m, &b, runs, device);
                let dev = if device.is_cuda() { "cuda" } else { "cpu" };
                println!(
                    "{dev} ({th} thread{}): batch {bsz:>2} x 12 utterances: median {p50:.2} ms, p95 {p95:.2} ms ({:.2} ms per window)",
                    if th == 1 { "" } else { "s" },
                    p50 / bsz as f64
                );
                results.push(json!({
                    "device": dev, "threads": th, "batch": bsz, "window": 12,
                    "median_ms": p50, "p95_ms": p95, "ms_per_window": p50 / bsz as f64,
                }));
            }
        }
    }
    std::fs::create_dir_all("target/bench").expect("target/bench");
    std::fs::write(
        "target/bench/model_speed.json",
        serde_json::to_string_pretty(&json!({"model": cfg, "runs": results})).expect("json"),
    )
    .expect("write");
}
