//! The vision stage against its references: MTCNN against facenet-pytorch's own MTCNN on real
//! photos and video (needs ../shared; skips loudly without it), the expression network against
//! an independent numpy forward pass of fer's Keras file, and bad frames.

mod common;

use std::path::{Path, PathBuf};

use summerd::decode::{Frame, VideoRequest, decode_video};
use summerd::vision::align::{CropGeometry, crops};
use summerd::vision::expression::Expression;
use summerd::vision::mtcnn::{Mtcnn, MtcnnSettings};
use summerd::vision::stage::{Cadence, VisionModels, VisionStage, VisualTimeline};
use summerd::vision::track::TrackSettings;
use summerd::vision::{FaceDetector, Image, PixelFormat, RgbImage, iou};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mtcnn() -> Mtcnn {
    Mtcnn::load(
        &root().join(summerd::vision::MTCNN_DIR),
        MtcnnSettings::default(),
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn expression() -> Expression {
    Expression::load(&root().join(summerd::vision::EXPRESSION_FILE), Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn media(name: &str) -> Option<PathBuf> {
    match summerd::assets::dir() {
        Some(d) => Some(d.join("media").join(name)),
        None => {
            eprintln!("SKIPPED: ../shared (or $SUMMERD_ASSETS) is absent; no media/{name}");
            None
        }
    }
}

/// The astronaut portrait (one clear face), when ../shared is there.
fn astronaut() -> Option<RgbImage> {
    let astro = media("astronaut.png")?;
    Some(all_frames(&astro, 1).remove(0).image)
}

/// The astronaut portrait, the networks (MTCNN from `min_face` pixels) and her face in it.
fn astronaut_face(min_face: f32) -> Option<(RgbImage, VisionModels, summerd::vision::Face)> {
    let photo = astronaut()?;
    let models = vision_models(min_face);
    let face = models
        .detector
        .detect(&[&photo])
        .unwrap()
        .remove(0)
        .remove(0);
    Some((photo, models, face))
}

/// The vision networks from the checkout, MTCNN looking for faces from `min_face` pixels.
fn vision_models(min_face: f32) -> VisionModels {
    VisionModels::load_default(
        &root(),
        MtcnnSettings {
            min_face,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap()
}

fn all_frames(path: &Path, n: usize) -> Vec<Frame> {
    decode_video(
        path,
        VideoRequest {
            fps: None,
            max_size: None,
            max_frames: n,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Write frames as the oracle reads them (frames.json + raw RGB).
fn write_frames(dir: &Path, frames: &[&RgbImage]) {
    let mut meta = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let file = format!("{i}.rgb");
        std::fs::write(dir.join(&file), &f.data).unwrap();
        meta.push(serde_json::json!({"w": f.width, "h": f.height, "file": file}));
    }
    std::fs::write(dir.join("frames.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
}

#[test]
fn mtcnn_matches_facenet_pytorch_on_photos_and_video() {
    let Some(multi) = media("multiface.jpg") else {
        return;
    };
    let astro = media("astronaut.png").unwrap();
    let street = media("street-faces.mp4").unwrap();
    let mut frames: Vec<RgbImage> = Vec::new();
    frames.push(all_frames(&multi, 1).remove(0).image);
    frames.push(all_frames(&astro, 1).remove(0).image);
    frames.extend(all_frames(&street, 30).into_iter().map(|f| f.image));
    assert_eq!(frames.len(), 32);
    let tmp = tempfile::tempdir().unwrap();
    let refs: Vec<&RgbImage> = frames.iter().collect();
    write_frames(tmp.path(), &refs);
    let out = common::run_peer("vision_oracle.py", &["mtcnn", tmp.path().to_str().unwrap()]);
    let want: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();

    let det = mtcnn();
    // Frames go through in batches (the street frames share a size), as the daemon may.
    let mut got = det.detect(&refs[..2]).unwrap();
    got.extend(det.detect(&refs[2..]).unwrap());

    let (mut faces, mut worst_iou, mut worst_px) = (0, 1f32, 0f32);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let wb: Vec<Vec<f32>> = serde_json::from_value(w["boxes"].clone()).unwrap();
        let wp: Vec<Vec<Vec<f32>>> = serde_json::from_value(w["points"].clone()).unwrap();
        assert_eq!(
            g.len(),
            wb.len(),
            "frame {i}: {} faces, facenet-pytorch {}: {:?} vs {wb:?}",
            g.len(),
            wb.len(),
            g.iter().map(|f| (f.bbox, f.confidence)).collect::<Vec<_>>()
        );
        for (b, p) in wb.iter().zip(&wp) {
            let b = [b[0], b[1], b[2], b[3]];
            let m = g
                .iter()
                .max_by(|x, y| iou(&x.bbox, &b).total_cmp(&iou(&y.bbox, &b)))
                .unwrap();
            let o = iou(&m.bbox, &b);
            let px = m
                .landmarks
                .iter()
                .zip(p)
                .map(|(a, q)| (a[0] - q[0]).abs().max((a[1] - q[1]).abs()))
                .fold(0f32, f32::max);
            assert!(o >= 0.9, "frame {i}: IoU {o} with {b:?}");
            assert!(px <= 2.0, "frame {i}: a landmark {px} px off");
            worst_iou = worst_iou.min(o);
            worst_px = worst_px.max(px);
            faces += 1;
        }
    }
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    eprintln!(
        "MTCNN parity: {faces} faces in 32 frames (multiface {}, astronaut {}, street {:?}); \
         worst IoU {worst_iou:.4}, worst landmark {worst_px:.3} px",
        counts[0],
        counts[1],
        &counts[2..]
    );
    assert_eq!(counts[0], 6, "multiface.jpg has 6 faces");
    assert_eq!(counts[1], 1, "astronaut.png has 1 face");
}

/// Faces for the expression parity: aligned crops of real faces when ../shared is there, and
/// always a set of synthetic images (gradients, noise, extremes) that exercise every path.
fn expression_inputs() -> Tensor {
    let mut parts = Vec::new();
    tch::manual_seed(7);
    let g = Tensor::arange(64, (Kind::Float, Device::Cpu)) * 4.0;
    parts.push(g.view([1, 1, 1, 64]).expand([1, 1, 64, 64], false) + 0.0);
    parts.push(g.view([1, 1, 64, 1]).expand([1, 1, 64, 64], false) + 0.0);
    parts.push(Tensor::rand([3, 1, 64, 64], (Kind::Float, Device::Cpu)) * 255.0);
    parts.push(Tensor::zeros([1, 1, 64, 64], (Kind::Float, Device::Cpu)));
    parts.push(Tensor::ones([1, 1, 64, 64], (Kind::Float, Device::Cpu)) * 255.0);
    if let Some(multi) = media("multiface.jpg") {
        let frame = all_frames(&multi, 1).remove(0).image;
        let faces = mtcnn().detect(&[&frame]).unwrap().remove(0);
        let geo: Vec<CropGeometry> = faces.iter().map(CropGeometry::of).collect();
        parts.push(crops(&frame, &geo, 64, Device::Cpu));
    }
    Tensor::cat(&parts, 0).contiguous()
}

#[test]
fn expression_net_matches_an_independent_numpy_forward_pass() {
    let x = expression_inputs();
    let n = x.size()[0];
    let tmp = tempfile::tempdir().unwrap();
    let crops_path = tmp.path().join("crops.f32");
    let flat = Vec::<f32>::try_from(x.view([-1])).unwrap();
    std::fs::write(
        &crops_path,
        flat.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let h5 = root().join("models/third_party/fer/emotion_model.hdf5");
    let out = common::run_peer(
        "vision_oracle.py",
        &[
            "expression",
            h5.to_str().unwrap(),
            crops_path.to_str().unwrap(),
            &n.to_string(),
        ],
    );
    let want: serde_json::Value = serde_json::from_str(&out).unwrap();
    let wp: Vec<Vec<f64>> = serde_json::from_value(want["probs"].clone()).unwrap();
    let we: Vec<Vec<f64>> = serde_json::from_value(want["embedding"].clone()).unwrap();
    let got = expression().forward(&x);
    let gp = Vec::<f32>::try_from(got.probs.contiguous().view([-1])).unwrap();
    let ge = Vec::<f32>::try_from(got.embedding.contiguous().view([-1])).unwrap();
    let (mut dp, mut de) = (0f64, 0f64);
    for i in 0..n as usize {
        for c in 0..7 {
            dp = dp.max((f64::from(gp[7 * i + c]) - wp[i][c]).abs());
        }
        for c in 0..128 {
            de = de.max((f64::from(ge[128 * i + c]) - we[i][c]).abs());
        }
    }
    eprintln!("expression parity on {n} faces: max |dp| {dp:.2e}, max |d embedding| {de:.2e}");
    assert!(dp <= 1e-4, "probabilities differ by {dp}");
    assert!(de <= 1e-3, "embeddings differ by {de}");
    // The classes are not all the same (the net is not a constant).
    let top: std::collections::HashSet<i64> = Vec::<i64>::try_from(got.probs.argmax(1, false))
        .unwrap()
        .into_iter()
        .collect();
    assert!(top.len() >= 2, "{top:?}");
}

#[test]
fn bad_frames_get_errors_and_odd_frames_get_answers() {
    let det = mtcnn();
    // Zero-sized and short buffers are refused before any network sees them.
    let d = [0u8; 16];
    for (w, h, stride) in [(0, 4, 12), (4, 0, 12), (4, 4, 11), (4, 4, 12)] {
        let img = Image {
            data: &d,
            width: w,
            height: h,
            stride,
            format: PixelFormat::Rgb,
        };
        assert!(img.to_rgb().is_err(), "{w}x{h} stride {stride}");
    }
    // Tiny, grey, RGBA and odd-strided frames: answers (no faces), no panic.
    let grey_px = vec![128u8; 7 * 5];
    let rgba = vec![200u8; 33 * 17 * 4];
    let odd = vec![50u8; 101 * 3 * 40 + 40 * 3];
    let frames = [
        Image {
            data: &grey_px,
            width: 7,
            height: 5,
            stride: 7,
            format: PixelFormat::Gray,
        },
        Image {
            data: &rgba,
            width: 33,
            height: 17,
            stride: 33 * 4,
            format: PixelFormat::Rgba,
        },
        Image {
            data: &odd,
            width: 101,
            height: 40,
            stride: 101 * 3 + 3,
            format: PixelFormat::Bgr,
        },
    ]
    .map(|i| i.to_rgb().unwrap());
    let refs: Vec<&RgbImage> = frames.iter().collect();
    let got = det.detect(&refs).unwrap();
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
    assert!(det.detect(&[]).unwrap().is_empty());
    // A file no decoder takes is an error, not a hang.
    let e = decode_video(
        &root().join("Cargo.toml"),
        VideoRequest {
            fps: Some(5),
            max_size: None,
            max_frames: 10,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Cargo.toml"), "{e}");
    // A missing weights file is a clear error.
    let e = Mtcnn::load(
        Path::new("/nonexistent"),
        MtcnnSettings::default(),
        Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("pnet.safetensors") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn the_stage_tracks_the_astronaut_and_pools_her_expression() {
    let Some(frame) = astronaut() else {
        return;
    };
    let models = vision_models(MtcnnSettings::default().min_face);
    let mut stage = VisionStage::new(models, Cadence::fixed(3), TrackSettings::default());
    let mut tl = VisualTimeline::new(60.0);
    let mut tracks = std::collections::HashSet::new();
    for i in 0..9 {
        let f = stage.process(f64::from(i) * 0.2, &frame).unwrap();
        assert_eq!(f.detected, i % 3 == 0);
        assert_eq!(f.faces.len(), 1, "frame {i}");
        tracks.insert(f.faces[0].track);
        assert_eq!(f.main, Some(f.faces[0].track));
        assert!(f.expression.is_some());
        tl.push(&f);
    }
    assert_eq!(tracks.len(), 1, "one track throughout");
    let v = tl.pool(0.0, 2.0);
    assert!(v.present && v.face_fraction == 1.0 && v.frames == 9);
    let (label, p) = v.top().unwrap();
    eprintln!("astronaut: {label} {p:.2} ({:?})", v.probs);
    assert!((v.probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    // She smiles in the portrait.
    assert_eq!(label, "happy");
}

/// The long cadence holds while the face is found on every frame; a frame without it brings
/// the short cadence back at once.
#[test]
fn detection_slows_while_faces_hold_and_returns_when_one_is_lost() {
    let Some(astro) = media("astronaut.png") else {
        return;
    };
    let frame = all_frames(&astro, 1).remove(0).image;
    let blank = RgbImage {
        data: vec![0; frame.data.len()],
        ..frame.clone()
    };
    let models =
        VisionModels::load_default(&root(), MtcnnSettings::default(), Device::Cpu).unwrap();
    let cadence = Cadence {
        every: 3,
        tracked: 6,
    };
    let mut stage = VisionStage::new(models, cadence, TrackSettings::default());
    let mut detected = Vec::new();
    for i in 0..16 {
        let f = if i == 8 { &blank } else { &frame };
        let r = stage.process(f64::from(i) * 0.2, f).unwrap();
        assert_eq!(r.faces.len(), usize::from(i != 8), "frame {i}");
        if r.detected {
            detected.push(i);
        }
    }
    // 0: first frame; 6: the face held since 0; 8 loses it, so 9 is due at the short
    // cadence (3 frames after 6); then it holds again: 15.
    assert_eq!(detected, [0, 6, 9, 15]);
}

#[test]
fn refining_finds_faces_on_their_boxes_and_a_quarter_side_off() {
    let Some(multi) = media("multiface.jpg") else {
        return;
    };
    let frame = all_frames(&multi, 1).remove(0).image;
    let det = mtcnn();
    let faces = det.detect(&[&frame]).unwrap().remove(0);
    let boxes: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    let again = det.refine(&frame, &boxes);
    for (f, g) in faces.iter().zip(&again) {
        let g = g.as_ref().unwrap_or_else(|| panic!("lost {f:?}"));
        assert!(iou(&f.bbox, &g.bbox) > 0.7, "{f:?} -> {g:?}");
    }
    // Boxes a quarter of a side off (the face moved since): O-Net alone on the box is not
    // trusted there (IoU of box and face about 0.6), the search around the box finds them.
    let moved: Vec<[f32; 4]> = boxes
        .iter()
        .map(|b| {
            let d = (b[2] - b[0]) / 4.0;
            [b[0] + d, b[1], b[2] + d, b[3]]
        })
        .collect();
    let again = det.refine(&frame, &moved);
    for (f, g) in faces.iter().zip(&again) {
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("lost {f:?} a quarter side off"));
        assert!(iou(&f.bbox, &g.bbox) > 0.7, "{f:?} -> {g:?}");
    }
}

#[test]
fn fifty_faces_in_one_frame_are_all_found_in_bounded_time() {
    let Some(multi) = media("multiface.jpg") else {
        return;
    };
    // multiface.jpg (6 faces) tiled 3x3: 54 faces in one frame.
    let tile = all_frames(&multi, 1).remove(0).image;
    let (tw, th) = (tile.width as usize, tile.height as usize);
    let (w, h) = (tw * 3, th * 3);
    let mut data = vec![0u8; w * h * 3];
    for ty in 0..3 {
        for tx in 0..3 {
            for y in 0..th {
                let src = &tile.data[y * tw * 3..(y + 1) * tw * 3];
                let at = ((ty * th + y) * w + tx * tw) * 3;
                data[at..at + tw * 3].copy_from_slice(src);
            }
        }
    }
    let frame = RgbImage::new(w as u32, h as u32, data).unwrap();
    let t = std::time::Instant::now();
    let faces = mtcnn().detect(&[&frame]).unwrap().remove(0);
    eprintln!(
        "{} faces in a {w}x{h} frame in {:.2} s",
        faces.len(),
        t.elapsed().as_secs_f64()
    );
    // Every tile's 6 faces (a seam between tiles may add a spurious one).
    for ty in 0..3 {
        for tx in 0..3 {
            let inside = faces
                .iter()
                .filter(|f| {
                    let (cx, cy) = f.centre();
                    (cx as usize / tw, cy as usize / th) == (tx, ty)
                })
                .count();
            assert!(inside >= 6, "tile ({tx}, {ty}): {inside} faces");
        }
    }
    assert!(faces.len() <= 60, "{}", faces.len());
}

/// The square of `img` of side `side` about (cx, cy), resampled to `out` x `out` (nearest
/// pixel; outside the picture is black).
fn square_crop(img: &RgbImage, (cx, cy): (f32, f32), side: f32, out: u32) -> RgbImage {
    let mut data = vec![0u8; (out * out * 3) as usize];
    for y in 0..out {
        for x in 0..out {
            let sx = cx - side / 2.0 + (x as f32 + 0.5) * side / out as f32;
            let sy = cy - side / 2.0 + (y as f32 + 0.5) * side / out as f32;
            if sx < 0.0 || sy < 0.0 || sx >= img.width as f32 || sy >= img.height as f32 {
                continue;
            }
            let s = ((sy as u32 * img.width + sx as u32) * 3) as usize;
            let d = ((y * out + x) * 3) as usize;
            data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    RgbImage::new(out, out, data).unwrap()
}

/// A stage on its own handles to `models`, at the daemon's detection cadence.
fn call_stage(models: &VisionModels) -> VisionStage {
    VisionStage::new(
        models.fork(),
        Cadence {
            every: 5,
            tracked: 15,
        },
        TrackSettings::default(),
    )
}

/// A face that fills a webcam close-up: held boxes stay inside the frame and near the last
/// detection (no detection on every frame), and the expression read there is the one read on
/// the same face at video-call size.
#[test]
fn a_frame_filling_face_keeps_a_plausible_box_between_detections() {
    let Some((photo, models, face)) = astronaut_face(40.0) else {
        return;
    };
    let (_, call_size) = models
        .expressions(&photo, std::slice::from_ref(&face))
        .remove(0);
    let (w, h) = face.size();
    let happy = 3;
    // The face box as wide as the frame, and 1.2 times wider (the face overflows it).
    for fill in [1.0f32, 1.2] {
        let frame = square_crop(&photo, face.centre(), w.max(h) / fill, 192);
        let mut stage = call_stage(&models);
        let mut detections = 0;
        let mut first = None;
        for i in 0..30 {
            let r = stage.process(f64::from(i) * 0.2, &frame).unwrap();
            detections += usize::from(r.detected);
            assert_eq!(r.faces.len(), 1, "fill {fill}, frame {i}");
            let b = r.faces[0].face.bbox;
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 192.0 && b[3] <= 192.0,
                "fill {fill}, frame {i}: {b:?} leaves the frame"
            );
            let anchor = *first.get_or_insert(b);
            assert!(
                summerd::vision::track::plausible(&b, &anchor),
                "fill {fill}, frame {i}: {b:?} strayed from {anchor:?}"
            );
            let p = r.expression.unwrap().probs;
            assert!(
                (p[happy] - call_size[happy]).abs() < 0.2,
                "fill {fill}, frame {i}: happy {:.2} here, {:.2} at call size",
                p[happy],
                call_size[happy]
            );
        }
        eprintln!("fill {fill}: {detections} detections in 30 frames");
        assert!(detections <= 3, "fill {fill}: {detections} detections");
    }
}

/// Faces without video: `summerd features face` on pre-cropped pictures, and `summerd eval
/// --faces` with a model that reads faces: its visual branch alone, and beside it the
/// expression network's own answers, which are those `features face` gives.
#[test]
fn faces_without_video_through_features_face_and_eval_faces() {
    let Some(shared) = summerd::assets::dir().map(|d| d.join("data/fer/test")) else {
        eprintln!("SKIPPED: ../shared (or $SUMMERD_ASSETS) is absent; no data/fer");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let faces = tmp.path().join("faces");
    // Two pictures a class, the folders named in FER's words and in MELD's.
    let folders = [
        ("angry", "angry"),
        ("disgust", "disgust"),
        ("fear", "fear"),
        ("happy", "joy"),
        ("neutral", "neutral"),
        ("sad", "sadness"),
        ("surprise", "surprise"),
    ];
    let mut pictures = Vec::new();
    for (k, (fer, meld)) in folders.iter().enumerate() {
        let name = if k % 2 == 0 { fer } else { meld };
        std::fs::create_dir_all(faces.join(name)).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join(fer))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(2) {
            let to = faces.join(name).join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            pictures.push((fer.to_string(), to));
        }
    }
    let out = common::succeed(
        common::summerd()
            .args(["features", "face", "--json"])
            .args(pictures.iter().map(|p| &p.1)),
    );
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 14);
    let mut right = 0;
    for ((fer, _), a) in pictures.iter().zip(&answers) {
        assert_eq!(a["visual"].as_array().unwrap().len(), 135);
        right += usize::from(a["label"] == fer.as_str());
    }
    // A model that reads faces (small, untrained).
    let model = tmp.path().join("model");
    tch::manual_seed(5);
    let mut m = summerd::model::Model::new(
        summerd::model::NetKind::Fused,
        summerd::infer::engine::daemon_features(384, false, summerd::acoustic::Band::Telephone),
        summerd::train::writers::MELD_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        &summerd::model::ModelConfig {
            d_model: 16,
            heads: 2,
            ffn_hidden: 16,
            expert_hidden: 8,
            experts: 2,
            ..Default::default()
        },
        Device::Cpu,
    );
    m.save(&model).unwrap();
    let out = common::succeed(
        common::summerd()
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--faces")
            .arg(&faces),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metrics"]["n"], 14, "{v}");
    let net = &v["expression_network"];
    assert_eq!(net["metrics"]["n"], 14, "{v}");
    let wa = net["metrics"]["wa"].as_f64().unwrap();
    assert!(
        (wa - 100.0 * right as f64 / 14.0).abs() < 1e-9,
        "the network's accuracy {wa} is not that of `features face` ({right} of 14)"
    );
    assert!(v["macro_f1"].is_number() && net["macro_f1"].is_number());
    // A command that must fail, saying `why` on stderr; its stdout.
    let fails = |args: &[&std::ffi::OsStr], why: &str| {
        let out = common::summerd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The shipped model reads no faces: a clear refusal, as is a folder that is not a class.
    fails(
        &["eval".as_ref(), "--faces".as_ref(), faces.as_os_str()],
        "reads no faces",
    );
    std::fs::create_dir_all(faces.join("contempt")).unwrap();
    fails(
        &[
            "eval".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--faces".as_ref(),
            faces.as_os_str(),
        ],
        "'contempt' is not a class",
    );
    // A picture that is not there is named, and the others still answered.
    let missing = tmp.path().join("missing.png");
    let out = fails(
        &[
            "features".as_ref(),
            "face".as_ref(),
            pictures[0].1.as_os_str(),
            missing.as_os_str(),
        ],
        "missing.png",
    );
    assert_eq!(out.lines().count(), 1);
}

/// A face partly out of the frame: its held box (clipped to the frame) still matches the face
/// O-Net finds on it, so it is held between detections as a face inside the frame is.
#[test]
fn a_face_half_out_of_the_frame_is_held_between_detections() {
    let Some((photo, models, face)) = astronaut_face(MtcnnSettings::default().min_face) else {
        return;
    };
    let (w, h) = face.size();
    let (cx, cy) = face.centre();
    // A 320x320 view in which the face's centre sits 0.35 of its width inside the left edge:
    // 15 % of the face is out of the frame.
    let side = 2.0 * w.max(h);
    let frame = square_crop(&photo, (cx - 0.35 * w + side / 2.0, cy), side, 320);
    let mut stage = call_stage(&models);
    let mut detections = 0;
    for i in 0..30 {
        let r = stage.process(f64::from(i) * 0.2, &frame).unwrap();
        detections += usize::from(r.detected);
        assert_eq!(r.faces.len(), 1, "frame {i}");
        assert_eq!(
            r.faces[0].face.bbox[0], 0.0,
            "frame {i}: clipped at the left edge"
        );
        assert!(r.expression.is_some(), "frame {i}");
    }
    assert!(detections <= 3, "{detections} detections in 30 frames");
}
