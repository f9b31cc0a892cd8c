//! The GPU check (`scripts/gpu-check`): on a machine with an NVIDIA GPU, CPU-vs-CUDA parity of
//! the student, MTCNN and the expression net, the model worker's throughput and latency with
//! 64 and 256 simulated streams, and batched face detection on CUDA. Writes
//! target/bench/gpu.json. Without a CUDA device it says so, writes `{"cuda": false}` and
//! measures nothing.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use summerd::decode::{VideoRequest, decode_video};
use summerd::infer::engine::{Engine, Utterance};
use summerd::vision::mtcnn::MtcnnSettings;
use summerd::vision::stage::VisionModels;
use summerd::vision::{FaceDetector, RgbImage, iou};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(v: &serde_json::Value) {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gpu.json"),
        serde_json::to_string_pretty(v).unwrap(),
    )
    .unwrap();
    println!("wrote target/bench/gpu.json");
}

fn engine(device: Device) -> Engine {
    Engine::load(
        &root().join("models/summer-default"),
        &root().join(summerd::text::DEFAULT_DIR),
        summerd::text::DEFAULT_MAX_TOKENS,
        summerd::text::Precision::F32,
        device,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

const LINES: [&str; 8] = [
    "I have been waiting for an hour and nobody called me back",
    "Thank you so much, that is wonderful news",
    "Could you tell me the reference number again",
    "This is the third time I am explaining the same thing",
    "Oh no, I did not expect that at all",
    "Fine, I suppose that will have to do",
    "I am really scared the payment went to the wrong account",
    "Great, I will wait for the email then",
];

/// One utterance of stream `s`, number `k`, with a deterministic audio vector.
fn utterance(s: usize, k: usize) -> Utterance {
    let audio: Vec<f32> = (0..88)
        .map(|i| (((s * 31 + k * 7 + i * 13) % 97) as f32 / 97.0) - 0.5)
        .collect();
    Utterance {
        stream: format!("s{s}"),
        seq: k as u64 + 1,
        speaker: ["agent", "customer"][k % 2].into(),
        start: k as f64 * 3.0,
        end: k as f64 * 3.0 + 2.5,
        text: LINES[(s + k) % LINES.len()].into(),
        embedding: None,
        audio: Some(audio),
        face: None,
        provisional: false,
        publish_text: false,
        arrival: Instant::now(),
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !tch::Cuda::is_available() {
        eprintln!(
            "SKIPPED: no CUDA device (tch::Cuda::is_available() is false; libtorch_cuda {}): nothing measured",
            summerd::version::VersionInfo::libraries().libtorch
        );
        write(&json!({"cuda": false}));
        return;
    }
    let gpu = Device::Cuda(0);
    let mut report = json!({
        "cuda": true,
        "devices": tch::Cuda::device_count(),
        "date": summerd::events::now_rfc3339(),
        "command": "scripts/gpu-check",
    });

    // 1. The student: the same 3 conversations of 12 utterances on the CPU and on CUDA.
    let (mut cpu, mut cuda) = (engine(Device::Cpu), engine(gpu));
    let batch: Vec<Utterance> = (0..3)
        .flat_map(|s| (0..12).map(move |k| utterance(s, k)))
        .collect();
    let mut max_dp = 0f64;
    for u in batch.chunks(3) {
        let a = cpu.infer(u).unwrap();
        let b = cuda.infer(u).unwrap();
        for (x, y) in a.iter().zip(&b) {
            for (k, p) in &x.probs {
                max_dp = max_dp.max(f64::from((p - y.probs[k]).abs()));
            }
        }
    }
    println!(
        "student CPU vs CUDA: max |dp| {max_dp:.2e} over {} utterances",
        batch.len()
    );
    report["student_parity_max_abs_prob_diff"] = json!(max_dp);

    // 2. The model worker's throughput with 64 and 256 simulated streams: each stream's
    //    conversation warmed to its window, then rounds of one utterance per stream, scored
    //    in batches of the daemon's max_batch (32) and of all streams at once.
    let mut worker = Vec::new();
    for streams in [64usize, 256] {
        for max_batch in [32usize, streams] {
            let mut e = engine(gpu);
            for k in 0..12 {
                let warm: Vec<Utterance> = (0..streams).map(|s| utterance(s, k)).collect();
                for c in warm.chunks(max_batch) {
                    e.infer(c).unwrap();
                }
            }
            let mut lat = Vec::new();
            let t = Instant::now();
            let rounds = 10;
            for k in 12..12 + rounds {
                let round: Vec<Utterance> = (0..streams).map(|s| utterance(s, k)).collect();
                for c in round.chunks(max_batch) {
                    let t0 = Instant::now();
                    e.infer(c).unwrap();
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            let per_s = (streams * rounds) as f64 / t.elapsed().as_secs_f64();
            let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
            println!(
                "model worker, {streams} streams, batches of {max_batch}: {per_s:.0} utterances/s, batch latency p50 {p50:.1} ms p99 {p99:.1} ms"
            );
            worker.push(json!({"streams": streams, "max_batch": max_batch,
                "utterances_per_s": per_s, "batch_ms_p50": p50, "batch_ms_p99": p99}));
        }
    }
    report["model_worker"] = json!(worker);

    // 3. MTCNN and the expression net, CPU vs CUDA, and batched detection on CUDA.
    let Some(assets) = summerd::assets::dir() else {
        eprintln!("SKIPPED (vision part): ../shared is absent");
        write(&report);
        return;
    };
    let frames: Vec<RgbImage> = decode_video(
        &assets.join("media/street-faces.mp4"),
        VideoRequest {
            fps: None,
            max_size: Some((640, 360)),
            max_frames: 32,
        },
    )
    .unwrap()
    .into_iter()
    .map(|f| f.image)
    .collect();
    let load = |d| VisionModels::load_default(&root(), MtcnnSettings::default(), d).unwrap();
    let (vc, vg) = (load(Device::Cpu), load(gpu));
    let refs: Vec<&RgbImage> = frames.iter().collect();
    let a = vc.detector.detect(&refs).unwrap();
    let b = vg.detector.detect(&refs).unwrap();
    let (mut same_count, mut worst_iou, mut worst_px) = (true, 1f32, 0f32);
    for (x, y) in a.iter().zip(&b) {
        same_count &= x.len() == y.len();
        for f in x {
            if let Some(g) = y
                .iter()
                .max_by(|p, q| iou(&p.bbox, &f.bbox).total_cmp(&iou(&q.bbox, &f.bbox)))
            {
                worst_iou = worst_iou.min(iou(&g.bbox, &f.bbox));
                for (p, q) in f.landmarks.iter().zip(&g.landmarks) {
                    worst_px = worst_px.max((p[0] - q[0]).abs().max((p[1] - q[1]).abs()));
                }
            }
        }
    }
    println!(
        "MTCNN CPU vs CUDA on 32 frames: same counts {same_count}, worst IoU {worst_iou:.4}, worst landmark {worst_px:.3} px"
    );
    tch::manual_seed(3);
    let x = Tensor::rand([16, 1, 64, 64], (Kind::Float, Device::Cpu)) * 255.0;
    let pe = (vc.expression.forward(&x).probs
        - vg.expression.forward(&x).probs.to_device(Device::Cpu))
    .abs()
    .max()
    .double_value(&[]);
    println!("expression CPU vs CUDA: max |dp| {pe:.2e}");
    let mut batched = Vec::new();
    for n in [1usize, 8, 32] {
        let batch: Vec<&RgbImage> = refs.iter().cycle().take(n).copied().collect();
        vg.detector.detect(&batch).unwrap();
        let t = Instant::now();
        let reps = 10;
        for _ in 0..reps {
            vg.detector.detect(&batch).unwrap();
        }
        let fps = (n * reps) as f64 / t.elapsed().as_secs_f64();
        println!("MTCNN on CUDA, 640x360, batches of {n}: {fps:.0} frames/s");
        batched.push(json!({"batch": n, "frames_per_s": fps}));
    }
    report["mtcnn_parity"] =
        json!({"same_counts": same_count, "worst_iou": worst_iou, "worst_landmark_px": worst_px});
    report["expression_parity_max_abs_prob_diff"] = json!(pe);
    report["mtcnn_cuda_640x360"] = json!(batched);
    write(&report);
}
