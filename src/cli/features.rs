//! `summerd features`: what the daemon's extractors compute, offline, for a file or a text.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use summerd::acoustic::{self, LLD_NAMES};
use summerd::vision::expression::CLASSES;
use summerd::vision::stage::{VisionModels, VisionSettings, VisionStage, VisualTimeline};

/// `summerd features video`: per frame the faces, the main face and its expression, then the
/// vector pooled over the file; a table, or one JSON document.
pub fn video(
    file: &Path,
    json: bool,
    fps: u32,
    max_size: &str,
    (detect_every, detect_every_tracked): (u32, u32),
    min_face: f32,
    max_frames: usize,
) -> anyhow::Result<()> {
    let (w, h) = max_size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .with_context(|| format!("--max-size {max_size}: expected WxH, e.g. 640x480"))?;
    let mut settings = VisionSettings {
        detect_every,
        detect_every_tracked,
        mtcnn_dir: summerd::vision::MTCNN_DIR.into(),
        expression_file: summerd::vision::EXPRESSION_FILE.into(),
        ..Default::default()
    };
    settings.mtcnn.min_face = min_face;
    settings.check().map_err(anyhow::Error::msg)?;
    let frames = summerd::decode::decode_video(
        file,
        summerd::decode::VideoRequest {
            fps: Some(fps),
            max_size: Some((w, h)),
            max_frames,
        },
    )?;
    let models = VisionModels::load(&settings, tch::Device::Cpu)?;
    let mut stage = VisionStage::new(models, settings.cadence(), settings.track.clone());
    let mut timeline = VisualTimeline::new(f64::INFINITY);
    let mut seen = Vec::with_capacity(frames.len());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(
            out,
            "{:>8}  {:>5}  {:>5}  expression of the main face",
            "t", "faces", "main"
        )?;
    }
    for f in &frames {
        let r = stage.process(f.t, &f.image)?;
        timeline.push(&r);
        if !json {
            let expr = r.expression.as_ref().map_or(String::from("-"), |e| {
                let (i, p) = e
                    .probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap_or((0, &0.0));
                format!("{} {:.2}", CLASSES[i], p)
            });
            let main = r.main.map_or("-".into(), |m| m.to_string());
            writeln!(
                out,
                "{:>8.2}  {:>5}  {:>5}  {expr}",
                r.t,
                r.faces.len(),
                main
            )?;
        }
        seen.push(r);
    }
    let (t0, t1) = (
        frames.first().map_or(0.0, |f| f.t),
        frames.last().map_or(0.0, |f| f.t),
    );
    let pooled = timeline.pool(t0, t1);
    let (fw, fh) = frames
        .first()
        .map_or((0, 0), |f| (f.image.width, f.image.height));
    if json {
        let doc = serde_json::json!({
            "file": file.display().to_string(),
            "frame_size": [fw, fh],
            "settings": {"fps": fps, "detect_every": detect_every, "detect_every_tracked": detect_every_tracked, "min_face": min_face},
            "classes": CLASSES,
            "frames": seen,
            "pooled": pooled,
        });
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        let top = pooled
            .top()
            .map_or("no face".to_string(), |(l, p)| format!("{l} {p:.2}"));
        writeln!(
            out,
            "{} frames of {fw}x{fh}: main face in {:.0}% of them; pooled expression: {top}",
            pooled.frames,
            100.0 * pooled.face_fraction
        )?;
    }
    Ok(())
}

/// `summerd features audio`: the eGeMAPS functionals of each file (a table, or a JSON object a
/// line), or the smoothed LLD frames as CSV; files that do not decode are named and counted.
pub fn audio(files: &[PathBuf], band: acoustic::Band, json: bool, lld: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if lld {
        writeln!(out, "file,start,{}", LLD_NAMES.join(","))?;
    }
    let mut failed = 0;
    for path in files {
        let audio = match summerd::decode::decode_audio(path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("summerd: {e}");
                failed += 1;
                continue;
            }
        };
        let (f, frames) = acoustic::file_functionals(audio.rate, &audio.samples, band)
            .with_context(|| path.display().to_string())?;
        let name = path.display().to_string();
        if lld {
            for (k, row) in acoustic::functionals::smooth(&frames).iter().enumerate() {
                write!(out, "{},{:.2}", name, k as f64 * acoustic::FRAME_SECONDS)?;
                for v in row {
                    write!(out, ",{v}")?;
                }
                writeln!(out)?;
            }
        } else if json {
            let values: serde_json::Map<String, serde_json::Value> = f
                .named()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            let obj = serde_json::json!({
                "file": name,
                "rate": audio.rate,
                "seconds": audio.samples.len() as f64 / f64::from(audio.rate),
                "frames": f.frames,
                "voiced_frames": f.voiced_frames,
                "enough_voiced": f.enough_voiced(),
                "functionals": values,
            });
            writeln!(out, "{obj}")?;
        } else {
            writeln!(
                out,
                "{name}: {} frames, {} voiced{}",
                f.frames,
                f.voiced_frames,
                if f.enough_voiced() {
                    ""
                } else {
                    " (not enough voiced frames: voice functionals are 0)"
                }
            )?;
            for (k, v) in f.named() {
                writeln!(out, "  {k:<45} {v:>14.6}")?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} file(s) could not be read", files.len());
    }
    Ok(())
}

/// `summerd features text`: each text's sentence embedding, one JSON object a line.
pub fn text(dir: &Path, max_tokens: usize, ids: bool, texts: Vec<String>) -> anyhow::Result<()> {
    let texts = if texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .context("reading stdin")?
    } else {
        texts
    };
    let enc = summerd::text::TextEncoder::load(dir, max_tokens, tch::Device::cuda_if_available())?;
    for chunk in texts.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let tokens = enc.tokenize(&refs)?;
        let emb = enc.vectors(&tokens)?;
        for (i, (text, e)) in refs.iter().zip(emb).enumerate() {
            let row = tokens.row(i);
            let mut obj = serde_json::json!({"text": text, "tokens": row.len(), "embedding": e});
            if ids {
                obj["ids"] = serde_json::json!(row);
            }
            println!("{obj}");
        }
    }
    Ok(())
}

/// `summerd features face`: each pre-cropped face picture's expression (a table line, or a
/// JSON object a line with the probabilities and the model's visual vector); pictures that do
/// not decode are named and counted.
pub fn face(files: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let models = VisionModels::load_default(Path::new("."), Default::default(), tch::Device::Cpu)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = 0;
    for path in files {
        let vector = match summerd::train::faces::vector_of(path, &models) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("summerd: {e}");
                failed += 1;
                continue;
            }
        };
        let probs = summerd::vision::stage::VisualVector::probs_of(&vector);
        let (best, p) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        if json {
            let named: serde_json::Map<String, serde_json::Value> = CLASSES
                .iter()
                .zip(probs)
                .map(|(c, p)| (c.to_string(), serde_json::json!(p)))
                .collect();
            let obj = serde_json::json!({
                "file": path.display().to_string(),
                "label": CLASSES[best],
                "confidence": p,
                "probs": named,
                "visual": vector,
            });
            writeln!(out, "{obj}")?;
        } else {
            writeln!(out, "{}: {} {p:.2}", path.display(), CLASSES[best])?;
        }
    }
    out.flush()?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} picture(s) could not be read", files.len());
    }
    Ok(())
}
