//! `summerd eval`: a model directory on a split, through [`summerd::train::eval`]; the metrics
//! as JSON on stdout.

use std::path::{Path, PathBuf};

use summerd::text::Precision;
use summerd::train::eval::{self, EvalInput};

/// The input clap let through: exactly one of `--data`, `--wavs` with `--labels`,
/// `--meld-csv`, `--faces`.
pub fn input(
    data: Option<PathBuf>,
    wavs: Option<(PathBuf, PathBuf, summerd::decode::Condition)>,
    meld: Option<PathBuf>,
    faces: Option<PathBuf>,
) -> EvalInput {
    match (data, wavs, meld, faces) {
        (Some(d), ..) => EvalInput::Native(d),
        (_, Some((w, l, c)), ..) => EvalInput::Wavs(w, l, c),
        (_, _, Some(m), _) => EvalInput::Meld(m),
        (.., Some(f)) => EvalInput::Faces(f),
        _ => unreachable!("clap requires one input"),
    }
}

/// Evaluate `model` on `input`: what the reader noticed on stderr, the report on stdout, and
/// with `out`, `out/report.json` and `out/report.svg`.
pub fn eval(
    model: &Path,
    input: EvalInput,
    out: Option<&Path>,
    precision: Precision,
) -> anyhow::Result<()> {
    let device = tch::Device::cuda_if_available();
    let r = eval::run(model, &input, precision, device, &mut |n| eprintln!("{n}"))?;
    println!("{}", serde_json::to_string_pretty(&r.json())?);
    if let Some(out) = out {
        let title = format!("{} on {}", model.display(), input.describe());
        r.write(out, &title)?;
    }
    Ok(())
}
