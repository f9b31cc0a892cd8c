//! The training commands: `dataset`, `train`, `train-default`, `loso`, `ablate`. Each reads its
//! files, calls the library's [`summerd::train`] and prints a summary.

use std::path::Path;

use anyhow::Context;
use summerd::train::data::Dataset;
use summerd::train::summer_default::{self, Folds};
use summerd::train::{self, Recipe, Splits, TrainReport, writers};

/// A recipe file.
pub fn read_recipe(path: &Path) -> anyhow::Result<Recipe> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Recipe::parse(&text).with_context(|| path.display().to_string())
}

/// A split in the native format.
pub fn load_data(path: &Path) -> anyhow::Result<Dataset> {
    Ok(Dataset::load(path)?)
}

/// `summerd dataset meld`: a MELD split from the shared data, encoded with `encoder`.
pub fn dataset_meld(split: &str, out: &Path, encoder: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        ["train", "dev", "test"].contains(&split),
        "--split must be train, dev or test"
    );
    let csv = super::assets()?.join(format!("data/meld/{split}_sent_emo.csv"));
    let enc = summerd::text::TextEncoder::load(
        encoder,
        summerd::text::DEFAULT_MAX_TOKENS,
        tch::Device::cuda_if_available(),
    )?;
    save(&writers::meld(&csv, &enc)?, out)
}

/// `summerd dataset emodb`: EmoDB from the shared data, through `cond`, heard through `band`.
pub fn dataset_emodb(
    out: &Path,
    cond: summerd::decode::Condition,
    band: summerd::acoustic::Band,
) -> anyhow::Result<()> {
    save(
        &writers::emodb(&super::assets()?.join("data/emodb/wav"), cond, band)?,
        out,
    )
}

/// `summerd dataset faces`: labelled face pictures as visual vectors.
pub fn dataset_faces(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let models = summerd::vision::stage::VisionModels::load_default(
        Path::new("."),
        Default::default(),
        tch::Device::Cpu,
    )?;
    let faces = summerd::train::faces::Faces::read(dir, &models)?;
    let net = faces.network_metrics();
    eprintln!(
        "{}: the expression network's own answers: accuracy {:.1} %, macro F1 {:.1}",
        dir.display(),
        net.wa,
        net.macro_f1()
    );
    save(&faces.as_dataset(&summerd::model::Features::default()), out)
}

fn save(ds: &Dataset, out: &Path) -> anyhow::Result<()> {
    ds.save(out)?;
    println!(
        "{}: {} utterances in {} dialogues, {} classes, dims (text, audio, visual) {:?}",
        out.display(),
        ds.len(),
        ds.dialogues(),
        ds.meta.classes.len(),
        ds.meta.features.dims()
    );
    Ok(())
}

/// `summerd train`: a teacher and its student; a line per phase.
pub fn train_cmd(
    recipe: &Path,
    train: &Path,
    dev: &Path,
    test: Option<&Path>,
    out: &Path,
) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let (tr, dv) = (load_data(train)?, load_data(dev)?);
    let te = test.map(load_data).transpose()?;
    let device = tch::Device::cuda_if_available();
    let r = train::run(&recipe, &tr, &dv, te.as_ref(), out, device)?;
    for (name, p) in [
        ("teacher", r.teacher.as_ref()),
        ("student", r.student.as_ref()),
    ] {
        if let Some(p) = p {
            let t = p
                .test
                .as_ref()
                .map(|m| format!(", test WA {:.1} WF1 {:.1}", m.wa, m.wf1))
                .unwrap_or_default();
            println!(
                "{name}: best epoch {}/{}, dev WA {:.1} WF1 {:.1}{t}; experts kept {:?} ({:.0} s)",
                p.best_epoch, p.epochs, p.dev.wa, p.dev.wf1, p.active_experts, p.seconds
            );
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// `summerd train-default`: the default model from the splits in `data`; its held-out figures,
/// a line each.
pub fn train_default(
    recipe: &Path,
    data: &Path,
    out: &Path,
    work: &Path,
    folds: &Folds,
) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let splits = summer_default::load_splits(data, recipe.mix.face_probability > 0.0)?;
    let device = tch::Device::cuda_if_available();
    let r = summer_default::build(&recipe, &splits, out, work, folds, device)?;
    let test = |t: &TrainReport, teacher: bool| {
        let p = if teacher { &t.teacher } else { &t.student };
        p.as_ref()
            .and_then(|p| p.test.as_ref())
            .map_or("-".into(), |m| format!("WA {:.1} WF1 {:.1}", m.wa, m.wf1))
    };
    println!("MELD test, teacher (text): {}", test(&r.teacher, true));
    println!(
        "MELD test, student (audio absent): {}",
        test(&r.student, false)
    );
    for f in &r.folds {
        println!(
            "EmoDB held out {}: audio-alone accuracy {:.1} % ({} clips); MELD test with this voice WF1 {:.1}",
            f.speaker, f.audio_accuracy, f.clips, f.fused_meld_wf1
        );
    }
    if let (Some(a), Some(f)) = (&r.emodb_loso, &r.fused_loso) {
        println!(
            "EmoDB LOSO pooled (6 classes, text absent): accuracy {:.1} %, UAR {:.1}; MELD test + held-out voices: WF1 {:.1}",
            a.wa, a.uar, f.wf1
        );
    }
    for (name, m) in &r.emodb_loso_conditions {
        println!(
            "EmoDB LOSO pooled through {name}: accuracy {:.1} %, UAR {:.1}",
            m.wa, m.uar
        );
    }
    if let Some(f) = &r.faces {
        println!(
            "Faces: {} training pictures (network accuracy {:.1} %, confidence {:.2}), {} kept \
             (accuracy {:.1} %); {} held out (network accuracy {:.1} %, confidence {:.2})",
            f.train.0, f.train.1, f.train.2, f.kept.0, f.kept.1, f.test.0, f.test.1, f.test.2
        );
        for (k, m) in &f.fused {
            println!(
                "MELD test + held-out voice + held-out face, {k}: WF1 {:.1}",
                m.wf1
            );
        }
        if let Some(m) = &f.face_alone {
            println!(
                "Held-out faces alone: accuracy {:.1} %, macro F1 {:.1} (the expression network: {:.1} %, {:.1})",
                m.wa,
                m.macro_f1(),
                f.network.wa,
                f.network.macro_f1()
            );
        }
    }
    println!("{:.0} s; wrote {}", r.seconds, out.display());
    Ok(())
}

/// `summerd loso`: leave-one-group-out on `data`; a line per fold, then the pooled figures.
pub fn loso(recipe: &Path, data: &Path, out: &Path) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let ds = load_data(data)?;
    let r = train::loso(&recipe, &ds, tch::Device::cuda_if_available())?;
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&r)? + "\n",
    )?;
    std::fs::write(
        out.join("report.svg"),
        train::metrics::svg(&r.pooled, &r.classes, "leave one group out, pooled"),
    )?;
    for (g, m, dev) in &r.folds {
        println!("held out {g} (dev {dev}): WA {:.1} UAR {:.1}", m.wa, m.uar);
    }
    println!(
        "pooled over {} folds: WA {:.1}, WF1 {:.1}, UAR {:.1} ({:.0} s); wrote {}",
        r.folds.len(),
        r.pooled.wa,
        r.pooled.wf1,
        r.pooled.uar,
        r.seconds,
        out.display()
    );
    Ok(())
}

/// `summerd ablate`: the variants of `set`, `seeds` seeds each; prints the Markdown table.
pub fn ablate(
    recipe: &Path,
    set: train::AblationSet,
    seeds: usize,
    [train, dev, test]: [&Path; 3],
    out: &Path,
) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let (tr, dv, te) = (load_data(train)?, load_data(dev)?, load_data(test)?);
    let device = tch::Device::cuda_if_available();
    let splits = Splits {
        train: &tr,
        dev: &dv,
        test: &te,
    };
    let (_, md) = train::ablate(&recipe, set, seeds, splits, out, device)?;
    print!("{md}");
    Ok(())
}
