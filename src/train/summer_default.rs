//! `summerd train-default`: the default model, its held-out figures and its report.
//!
//! 1. The text teacher on MELD train (early stopping on MELD dev), tested once on MELD test.
//! 2. Unless skipped, EmoDB leave-one-speaker-out: per held-out speaker, a student trained on
//!    the mix ([`super::mix`]) of the other speakers' voices, then run on the held-out
//!    speaker's clips as one sequence in random order (online normalisation with the other
//!    speakers' prior, text absent), and on MELD test with the held-out voice attached to
//!    every utterance (the fused condition). Accuracy is counted on the 6 classes EmoDB shares
//!    with MELD.
//! 3. The shipped student on the mix of all speakers, tested once on MELD test (audio absent),
//!    saved with the normalisation prior in its manifest.
//!
//! With faces (`mix.face_probability` > 0, and labelled face splits `fer-{train,test}` made by
//! `summerd dataset faces`): the training faces, thinned to the expression network's accuracy
//! on the held-out faces ([`Faces::calibrated`]), join the MELD dialogues ([`mix`]); each fold
//! also scores MELD test with the held-out voice and a held-out face of the utterance's label
//! on every utterance, under every combination of modalities (pooled over folds); and the
//! shipped student is scored on the held-out faces alone, beside the expression network's own
//! answers on them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::Device;

use std::collections::BTreeMap;

use super::clips::Clips;
use super::data::Dataset;
use super::faces::Faces;
use super::metrics::{self, Metrics};
use super::mix;
use super::{Recipe, TrainError, TrainReport, predict, run, run_with};
use crate::model::norm::SpeakerNorm;
use crate::model::{FeatureSpec, Model, ModelError, TunedText};

/// Which leave-one-speaker-out folds to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folds {
    /// None: the shipped model only.
    Skip,
    /// Every speaker, then the shipped model.
    All,
    /// These held-out speakers only, and no shipped model (a quick trial of a recipe).
    Only(Vec<String>),
}

/// One held-out EmoDB speaker.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    /// The speaker.
    pub speaker: String,
    /// Audio alone: 6-class accuracy (%) of the held-out speaker's clips.
    pub audio_accuracy: f64,
    /// Clips counted (boredom excluded).
    pub clips: usize,
    /// MELD test with this voice on every utterance: weighted F1.
    pub fused_meld_wf1: f64,
    /// Audio alone through each condition the build found (`emodb-<name>.safetensors`):
    /// 6-class accuracy (%) of the held-out speaker's clips.
    pub conditions: BTreeMap<String, f64>,
}

/// The modalities' combinations, by their initials (text, audio, visual).
pub const COMBINATIONS: [(&str, [bool; 3]); 7] = [
    ("T", [true, false, false]),
    ("A", [false, true, false]),
    ("V", [false, false, true]),
    ("TA", [true, true, false]),
    ("TV", [true, false, true]),
    ("AV", [false, true, true]),
    ("TAV", [true, true, true]),
];

/// What the build did with faces and what they gave.
#[derive(Debug, Clone, Serialize)]
pub struct FacesReport {
    /// Training faces read, and the expression network's accuracy (%) and mean confidence on
    /// them.
    pub train: (usize, f64, f64),
    /// The same on the held-out faces.
    pub test: (usize, f64, f64),
    /// The training faces kept ([`Faces::calibrated`]), and the network's accuracy on them.
    pub kept: (usize, f64),
    /// Pooled over folds: MELD test with the held-out voice and a held-out face of the
    /// utterance's label on every utterance, under each combination of modalities.
    pub fused: BTreeMap<String, Metrics>,
    /// The shipped student on the held-out faces alone.
    pub face_alone: Option<Metrics>,
    /// The expression network's own answers on the held-out faces.
    pub network: Metrics,
}

/// Everything `train-default` measured.
#[derive(Debug, Clone, Serialize)]
pub struct DefaultReport {
    /// The recipe.
    pub recipe: Recipe,
    /// The text teacher's run (MELD test once).
    pub teacher: TrainReport,
    /// The shipped student's run (MELD test once, audio absent, with the f32 weights).
    pub student: TrainReport,
    /// MELD test (audio absent) with the shipped file's weights (stored in f16).
    pub shipped_meld_test: Option<Metrics>,
    /// EmoDB leave-one-speaker-out folds (empty when skipped).
    pub folds: Vec<Fold>,
    /// Pooled over folds: audio alone, 6-class metrics (labels are MELD's classes).
    pub emodb_loso: Option<Metrics>,
    /// Pooled over folds: MELD test with held-out voices attached.
    pub fused_loso: Option<Metrics>,
    /// Pooled over folds: audio alone through each condition found, 6-class metrics.
    pub emodb_loso_conditions: BTreeMap<String, Metrics>,
    /// With faces: what they gave.
    pub faces: Option<FacesReport>,
    /// Wall seconds.
    pub seconds: f64,
}

fn pooled(parts: &[(Vec<i64>, Vec<i64>)], classes: usize) -> Metrics {
    let (mut t, mut p) = (Vec::new(), Vec::new());
    for (a, b) in parts {
        t.extend_from_slice(a);
        p.extend_from_slice(b);
    }
    metrics::compute(&t, &p, classes)
}

/// Labelled faces for training and for held-out figures.
pub struct FaceSplits {
    /// The training faces.
    pub train: Faces,
    /// The held-out faces.
    pub test: Faces,
}

/// What `summerd train-default` reads.
pub struct Splits {
    /// MELD train, dev, test.
    pub meld: [Dataset; 3],
    /// EmoDB, clean.
    pub emodb: Dataset,
    /// EmoDB through each condition, by name (`emodb-<name>.safetensors`), sorted.
    pub conditions: Vec<(String, Dataset)>,
    /// The labelled faces, when asked for.
    pub faces: Option<FaceSplits>,
}

/// The splits `summerd train-default` reads from `dir`, as `summerd dataset` writes them:
/// MELD [train, dev, test] (`meld-{train,dev,test}.safetensors`), EmoDB
/// (`emodb.safetensors`), EmoDB through conditions (every `emodb-<name>.safetensors`) and,
/// when `faces`, the labelled faces (`fer-{train,test}.safetensors`).
pub fn load_splits(dir: &Path, faces: bool) -> Result<Splits, TrainError> {
    let split = |name: &str| Dataset::load(&dir.join(format!("{name}.safetensors")));
    let meld = [
        split("meld-train")?,
        split("meld-dev")?,
        split("meld-test")?,
    ];
    let face = |name: &str| {
        Faces::from_dataset(&split(name)?)
            .map_err(|e| TrainError::Recipe(format!("{}: {e}", dir.join(name).display())))
    };
    let faces = if faces {
        Some(FaceSplits {
            train: face("fer-train")?,
            test: face("fer-test")?,
        })
    } else {
        None
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            let cond = name.strip_prefix("emodb-")?.strip_suffix(".safetensors")?;
            Some(cond.to_string())
        })
        .collect();
    names.sort();
    let conditions = names
        .into_iter()
        .map(|n| Ok((n.clone(), split(&format!("emodb-{n}"))?)))
        .collect::<Result<Vec<_>, TrainError>>()?;
    Ok(Splits {
        meld,
        emodb: split("emodb")?,
        conditions,
        faces,
    })
}

/// Train the default model into `out` (scratch in `work`) with the `folds` asked for, from
/// `splits` ([`load_splits`]).
pub fn build(
    recipe: &Recipe,
    splits: &Splits,
    out: &Path,
    work: &Path,
    folds: &Folds,
    device: Device,
) -> Result<DefaultReport, TrainError> {
    let meld = [&splits.meld[0], &splits.meld[1], &splits.meld[2]];
    let faces = splits.faces.as_ref();
    let (clips, heard) = voices(recipe, splits)?;
    let (loso, only): (bool, &[String]) = match folds {
        Folds::Skip => (false, &[]),
        Folds::All => (true, &[]),
        Folds::Only(s) => (true, s),
    };
    let t0 = Instant::now();
    let classes = meld[0].meta.classes.len();
    // ASR-like punctuation on part of the training text (`text.exclamation_to_period`).
    let asr_train;
    let meld = if recipe.text.exclamation_to_period > 0.0 {
        asr_train = super::tune::asr_punctuation(
            meld[0],
            recipe.text.exclamation_to_period,
            recipe.train.seed as u64,
        );
        [&asr_train, meld[1], meld[2]]
    } else {
        meld
    };

    tracing::info!("Teacher: MELD text");
    let mut teacher_recipe = recipe.clone();
    teacher_recipe.train.student = false;
    let teacher_dir = work.join("teacher");
    let teacher = teacher_once(&teacher_recipe, meld, &teacher_dir, device)?;
    // With a fine-tuned text encoder (`[text]` in the recipe), the students read the tuned
    // encoder's vectors, made as the daemon makes them, and ship its delta; they tune nothing.
    let tuned = Model::load(&teacher_dir, device)?.manifest.text_tuned;
    let remade = match &tuned {
        Some(t) => Some(remake_text(
            recipe,
            &teacher_dir.join(&t.file),
            meld,
            device,
        )?),
        None => None,
    };
    let meld = match &remade {
        Some([train, dev, test]) => [train, dev, test],
        None => meld,
    };
    // The training faces, thinned to what faces never seen deserve; every class must keep
    // some (a class without faces would make a missing face a hint at the label).
    let (kept, mut faces_report) = match faces {
        None => (None, None),
        Some(f) => {
            let network = f.test.network_metrics();
            let kept = if recipe.mix.calibrate_faces {
                f.train.calibrated(network.wa / 100.0, recipe.mix.seed)
            } else {
                f.train.clone()
            };
            let names = &meld[0].meta.classes;
            if let Some(c) = (0..names.len()).find(|c| kept.of_label(*c).is_empty()) {
                return Err(TrainError::Recipe(format!(
                    "no training faces of class '{}' (after calibration): every class needs \
                     faces, or a missing face tells the label",
                    names[c]
                )));
            }
            let r = FacesReport {
                train: (
                    f.train.len(),
                    f.train.network_metrics().wa,
                    f.train.network_confidence(),
                ),
                test: (f.test.len(), network.wa, f.test.network_confidence()),
                kept: (kept.len(), kept.network_metrics().wa),
                fused: BTreeMap::new(),
                face_alone: None,
                network,
            };
            tracing::info!(train = ?r.train, test = ?r.test, kept = ?r.kept, "Faces (pictures, network accuracy %, confidence)");
            (Some(kept), Some(r))
        }
    };
    let face_sets = kept.as_ref().zip(faces.map(|f| &f.test));
    let students = Students::new(
        recipe,
        teacher_dir,
        tuned,
        meld,
        clips,
        heard,
        face_sets,
        device,
    );
    let all = students.clips.speakers();
    let norm_all = students.clips.prior(&all, recipe.mix.prior_weight);

    let mut folds = Vec::new();
    let (mut audio_parts, mut fused_parts) = (Vec::new(), Vec::new());
    let mut combos: BTreeMap<String, Vec<Answers>> = BTreeMap::new();
    let mut through: BTreeMap<String, Vec<Answers>> = BTreeMap::new();
    if loso {
        for s in all.iter().filter(|s| only.is_empty() || only.contains(s)) {
            let run = students.fold(s, &all, work, classes)?;
            folds.push(run.fold);
            audio_parts.push(run.audio);
            fused_parts.push(run.fused);
            for (k, v) in run.combos {
                combos.entry(k).or_default().push(v);
            }
            for (k, v) in run.conditions {
                through.entry(k).or_default().push(v);
            }
        }
    }
    if let Some(r) = faces_report.as_mut() {
        r.fused = combos
            .iter()
            .map(|(k, parts)| (k.clone(), pooled(parts, classes)))
            .collect();
    }

    let summary = |folds: Vec<Fold>, student: TrainReport, shipped, faces| DefaultReport {
        recipe: recipe.clone(),
        teacher: teacher.clone(),
        student,
        shipped_meld_test: shipped,
        folds,
        emodb_loso: loso.then(|| pooled(&audio_parts, classes)),
        fused_loso: loso.then(|| pooled(&fused_parts, classes)),
        emodb_loso_conditions: through
            .iter()
            .map(|(k, parts)| (k.clone(), pooled(parts, classes)))
            .collect(),
        faces,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if !only.is_empty() {
        // A trial: the folds asked for, no shipped model.
        let empty = TrainReport {
            recipe: recipe.clone(),
            classes: teacher.classes.clone(),
            teacher: None,
            student: None,
        };
        let r = summary(folds, empty, None, faces_report);
        std::fs::create_dir_all(work)?;
        std::fs::write(
            work.join("trial.json"),
            serde_json::to_string_pretty(&r).expect("plain struct") + "\n",
        )?;
        return Ok(r);
    }
    let (student, shipped_test, face_alone) = students.ship(&all, norm_all, out, classes)?;
    if let Some(r) = faces_report.as_mut() {
        r.face_alone = face_alone;
    }
    let report = summary(folds, student, Some(shipped_test), faces_report);
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report).expect("plain struct") + "\n",
    )?;
    Ok(report)
}

/// The EmoDB clips the students hear (clean, and through the recipe's `mix.conditions`), and
/// every condition found, as clips of its own, to score the held-out speakers on.
fn voices(recipe: &Recipe, splits: &Splits) -> Result<(Clips, Vec<(String, Clips)>), TrainError> {
    // A condition's clips must be the clean set's, described by the same extractor.
    for (name, ds) in &splits.conditions {
        let (a, b) = (&ds.meta, &splits.emodb.meta);
        if a.dialogues != b.dialogues || a.features != b.features || a.classes != b.classes {
            return Err(TrainError::Recipe(format!(
                "emodb-{name}.safetensors does not hold emodb.safetensors' clips with the same \
                 features and classes; make both again (tests/bench_model.sh datasets)"
            )));
        }
    }
    let heard: Vec<(String, Clips)> = splits
        .conditions
        .iter()
        .map(|(name, ds)| (name.clone(), Clips::from_emodb(ds)))
        .collect();
    let mut clips = Clips::from_emodb(&splits.emodb);
    for name in &recipe.mix.conditions {
        let (_, through) = heard.iter().find(|(n, _)| n == name).ok_or_else(|| {
            TrainError::Recipe(format!(
                "mix.conditions names '{name}', but there is no emodb-{name}.safetensors beside \
                 emodb.safetensors (make it with `summerd dataset emodb --channel --noise`)"
            ))
        })?;
        clips.conditions.push((name.clone(), through.audio.clone()));
    }
    Ok((clips, heard))
}

/// The text teacher, trained once per recipe and data: a teacher in `dir` made from the same
/// teacher recipe (`[mix]` aside: the teacher reads none of it) and the same MELD splits
/// (`teacher-key.json`) is reused, with its report.
fn teacher_once(
    recipe: &Recipe,
    [train, dev, test]: [&Dataset; 3],
    dir: &Path,
    device: Device,
) -> Result<TrainReport, TrainError> {
    // What the teacher depends on: the build (this very executable), the recipe but its mix,
    // and the splits' texts, vectors, labels, speakers and dialogues.
    let build = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| format!("{} bytes, modified {:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    let fingerprint = |d: &Dataset| {
        let sum = |t: &tch::Tensor| t.to_kind(tch::Kind::Double).sum(tch::Kind::Double);
        (
            d.meta.clone(),
            d.offsets.clone(),
            [&d.features[0], &d.label, &d.speaker].map(|t| sum(t).double_value(&[]).to_bits()),
            sum(&(d.features[0].abs()
                * (tch::Tensor::arange(d.len() as i64, (tch::Kind::Double, tch::Device::Cpu))
                    + 1.0)
                    .unsqueeze(1)))
            .double_value(&[])
            .to_bits(),
        )
    };
    let mut keyed = serde_json::to_value(recipe).expect("plain data");
    keyed["mix"] = serde_json::Value::Null;
    let key = serde_json::to_string(&(
        crate::version::VersionInfo::libraries().summerd,
        build,
        keyed,
        fingerprint(train),
        fingerprint(dev),
        fingerprint(test),
    ))
    .expect("plain data");
    let (key_file, report_file) = (
        dir.join("teacher-key.json"),
        dir.join("teacher-report.json"),
    );
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str())
        && let Ok(text) = std::fs::read_to_string(&report_file)
        && let Ok(mut report) = serde_json::from_str::<TrainReport>(&text)
        && Model::load(dir, device).is_ok()
    {
        tracing::info!(dir = %dir.display(), "Teacher: reusing the one trained from this recipe and data");
        report.recipe = recipe.clone();
        return Ok(report);
    }
    let _ = std::fs::remove_file(&key_file);
    let report = run(recipe, train, dev, Some(test), dir, device)?;
    std::fs::write(
        &report_file,
        serde_json::to_string(&report).expect("plain data"),
    )?;
    std::fs::write(&key_file, key)?;
    Ok(report)
}

/// `ds` with an absent visual column when `faces` (the model reads them).
fn with_faces(ds: Dataset, faces: bool) -> Dataset {
    if faces { mix::visual_absent(&ds) } else { ds }
}

/// The MELD splits re-encoded by the text encoder with the teacher's fine-tuning delta.
fn remake_text(
    recipe: &Recipe,
    delta: &Path,
    [train, dev, test]: [&Dataset; 3],
    device: Device,
) -> Result<[Dataset; 3], TrainError> {
    let enc = crate::text::TextEncoder::load_tuned(
        &recipe.text.encoder,
        recipe.text.max_tokens,
        device,
        Some(delta),
    )
    .map_err(|e| TrainError::Recipe(e.to_string()))?;
    let again =
        |d: &Dataset| super::tune::reencode(d, &enc).map_err(|e| TrainError::Recipe(e.to_string()));
    Ok([again(train)?, again(dev)?, again(test)?])
}

/// What every student of the build shares: the teacher it distils from, the EmoDB clips it
/// hears, and the MELD splits it reads (re-encoded when the teacher tuned the text encoder).
struct Students<'a> {
    /// The students' recipe: the text encoder is the teacher's, not tuned again.
    recipe: Recipe,
    teacher_dir: PathBuf,
    /// The teacher's fine-tuning delta of the text encoder, which the students ship.
    tuned: Option<TunedText>,
    /// The clips heard in training (clean, and through the recipe's conditions).
    clips: Clips,
    /// Every condition found, as clips of its own: the held-out speakers are scored on each.
    heard: Vec<(String, Clips)>,
    train: &'a Dataset,
    test: &'a Dataset,
    /// The training faces (as kept) and the held-out faces.
    faces: Option<(&'a Faces, &'a Faces)>,
    /// MELD dev, audio absent (early stopping).
    dev_wide: Dataset,
    /// MELD test, audio absent.
    test_wide: Dataset,
    device: Device,
}

/// (truths, predictions).
type Answers = (Vec<i64>, Vec<i64>);

/// One fold's outcome.
struct FoldRun {
    fold: Fold,
    /// On the held-out speaker's clips.
    audio: Answers,
    /// On MELD test with that voice attached.
    fused: Answers,
    /// With faces: on MELD test with that voice and held-out faces, under each combination of
    /// modalities.
    combos: Vec<(String, Answers)>,
    /// On the held-out speaker's clips through each condition.
    conditions: Vec<(String, Answers)>,
}

impl<'a> Students<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        recipe: &Recipe,
        teacher_dir: PathBuf,
        tuned: Option<TunedText>,
        [train, dev, test]: [&'a Dataset; 3],
        clips: Clips,
        heard: Vec<(String, Clips)>,
        faces: Option<(&'a Faces, &'a Faces)>,
        device: Device,
    ) -> Students<'a> {
        let mut student_recipe = recipe.clone();
        student_recipe.text.tune_layers = 0;
        let voices = clips.extractor.clone();
        let wide = |d: &Dataset| with_faces(mix::audio_absent(d, &voices), faces.is_some());
        Students {
            recipe: student_recipe,
            teacher_dir,
            tuned,
            clips,
            heard,
            train,
            test,
            faces,
            dev_wide: wide(dev),
            test_wide: wide(test),
            device,
        }
    }

    /// `ds` with an absent visual column when the students read faces.
    fn widen(&self, ds: Dataset) -> Dataset {
        with_faces(ds, self.faces.is_some())
    }

    fn teacher(&self) -> Result<Model, ModelError> {
        Model::load(&self.teacher_dir, self.device)
    }

    /// The MELD text column's spec. The mix names its text column as MELD's (re-encoded and
    /// named tuned, when the encoder is tuned), so the students' manifests say what the daemon
    /// computes.
    fn text(&self) -> Option<&FeatureSpec> {
        self.train.meta.features.text.as_ref()
    }

    /// The training mix with `speakers`' voices.
    fn mixed(&self, speakers: &[String], norm: &SpeakerNorm) -> Dataset {
        let cfg = &self.recipe.mix;
        mix::concat(&[
            &mix::pair_meld(
                self.train,
                &self.clips,
                speakers,
                norm,
                self.faces.map(|f| f.0),
                cfg,
            ),
            &self.widen(mix::speaker_sequences(
                &self.clips,
                speakers,
                norm,
                self.text(),
                cfg.sequences_per_speaker,
                cfg.seed,
                cfg.condition_sequences,
            )),
        ])
    }

    /// The teacher's text encoder delta copied beside a student in `dir`, and named in its
    /// manifest.
    fn ship_text(&self, model: &mut Model, dir: &Path) -> Result<(), TrainError> {
        if let Some(t) = &self.tuned {
            std::fs::copy(self.teacher_dir.join(&t.file), dir.join(&t.file))?;
            model.manifest.text_tuned = Some(t.clone());
        }
        Ok(())
    }

    /// Hold out speaker `s`: a student on the other speakers' mix, run on `s`'s clips and on
    /// MELD test with `s`'s voice on every utterance.
    fn fold(
        &self,
        s: &str,
        all: &[String],
        work: &Path,
        classes: usize,
    ) -> Result<FoldRun, TrainError> {
        let (cfg, device) = (&self.recipe.mix, self.device);
        tracing::info!(speaker = %s, "EmoDB fold");
        let others: Vec<String> = all.iter().filter(|x| *x != s).cloned().collect();
        let norm = self.clips.prior(&others, cfg.prior_weight);
        let fold_dir = work.join(format!("fold-{s}"));
        run_with(
            &self.recipe,
            Some(self.teacher()?),
            &self.mixed(&others, &norm),
            &self.dev_wide,
            None,
            &fold_dir,
            device,
        )?;
        let mut student = Model::load(&fold_dir, device)?;
        student.manifest.speaker_norm = Some(norm.clone());
        self.ship_text(&mut student, &fold_dir)?;
        student.save(&fold_dir)?;
        let held = &[s.to_string()][..];
        // The held-out speaker's clips as one sequence, clean and through each condition, in
        // the same order.
        let heard = |clips: &Clips| {
            let seq = self.widen(mix::speaker_sequences(
                clips,
                held,
                &norm,
                self.text(),
                1,
                cfg.seed + 1,
                0,
            ));
            predict(&student.net, &seq, device, 64)
        };
        let (t, p, _) = heard(&self.clips);
        let acc = metrics::compute(&t, &p, classes).wa;
        let mut conditions = Vec::new();
        let mut accuracy = BTreeMap::new();
        for (name, clips) in &self.heard {
            let (ct, cp, _) = heard(clips);
            let a = metrics::compute(&ct, &cp, classes).wa;
            tracing::info!(speaker = %s, condition = %name, audio_accuracy = a, "heard through");
            accuracy.insert(name.clone(), a);
            conditions.push((name.clone(), (ct, cp)));
        }
        // The fused figures are clean: the voice as recorded.
        let voiced = mix::MixConfig {
            pair_probability: 1.0,
            condition_probability: 0.0,
            ..cfg.clone()
        };
        let fused = self.widen(mix::pair_meld(
            self.test,
            &self.clips,
            held,
            &norm,
            None,
            &voiced,
        ));
        let (ft, fp, _) = predict(&student.net, &fused, device, 64);
        let fm = metrics::compute(&ft, &fp, classes);
        // MELD test with the held-out voice and a held-out face on every utterance.
        let mut by_combo = Vec::new();
        if let Some((_, held_faces)) = self.faces {
            let all_three = mix::MixConfig {
                pair_probability: 1.0,
                face_probability: 1.0,
                condition_probability: 0.0,
                ..cfg.clone()
            };
            let full = mix::pair_meld(
                self.test,
                &self.clips,
                held,
                &norm,
                Some(held_faces),
                &all_three,
            );
            for (name, keep) in COMBINATIONS {
                let (ct, cp, _) = predict(&student.net, &mix::only(&full, keep), device, 64);
                let m = metrics::compute(&ct, &cp, classes);
                tracing::info!(speaker = %s, combination = name, wf1 = m.wf1, "fused");
                by_combo.push((name.to_string(), (ct, cp)));
            }
        }
        tracing::info!(speaker = %s, audio_accuracy = acc, fused_meld_wf1 = fm.wf1, "fold");
        let fold = Fold {
            speaker: s.to_string(),
            audio_accuracy: acc,
            clips: t.len(),
            fused_meld_wf1: fm.wf1,
            conditions: accuracy,
        };
        Ok(FoldRun {
            fold,
            audio: (t, p),
            fused: (ft, fp),
            combos: by_combo,
            conditions,
        })
    }

    /// The shipped student on every speaker's mix, saved in `out` (f16 weights, the
    /// normalisation prior `norm`, the tuned text delta), checked as the daemon will load it
    /// and tested once on MELD test (audio absent) with the shipped weights, and with faces on
    /// the held-out faces alone.
    fn ship(
        &self,
        all: &[String],
        norm: SpeakerNorm,
        out: &Path,
        classes: usize,
    ) -> Result<(TrainReport, Metrics, Option<Metrics>), TrainError> {
        let (cfg, device) = (&self.recipe.mix, self.device);
        tracing::info!("Student: every EmoDB speaker");
        let student = run_with(
            &self.recipe,
            Some(self.teacher()?),
            &self.mixed(all, &norm),
            &self.dev_wide,
            Some(&self.test_wide),
            out,
            device,
        )?;
        let mut model = Model::load(out, device)?;
        model.manifest.speaker_norm = Some(norm);
        self.ship_text(&mut model, out)?;
        // Half-precision storage keeps the shipped file near 10 MB (the network computes in f32).
        model.manifest.weights_dtype = "f16".into();
        let faces = self.faces.map_or(String::new(), |(f, _)| {
            format!(
                "; faces of the utterance's emotion from {} labelled pictures (p = {})",
                f.len(),
                cfg.face_probability
            )
        });
        let heard = if cfg.conditions.is_empty() {
            String::new()
        } else {
            format!(
                "; voices also heard through {} (MELD voices p = {}, {} extra sequences a speaker)",
                cfg.conditions.join(", "),
                cfg.condition_probability,
                cfg.condition_sequences
            )
        };
        model.manifest.trained_on = format!(
            "MELD train (text) with EmoDB voices of speakers {} attached (p = {}), and those \
             speakers' clips as sequences; per-speaker online normalisation (prior weight \
             {}){heard}{faces}",
            all.join(","),
            cfg.pair_probability,
            cfg.prior_weight
        );
        model.save(out)?;
        let shipped = Model::load(out, device)?;
        // What the daemon will check when it loads the model.
        let daemon = crate::infer::engine::daemon_features(
            self.train.features[0].size()[1],
            self.tuned.is_some(),
            crate::acoustic::Band::of_extractor(&self.clips.extractor).unwrap_or_default(),
        );
        shipped
            .manifest
            .features
            .check_against(&daemon)
            .map_err(|e| TrainError::Recipe(format!("the daemon would refuse the model: {e}")))?;
        let (t, p, _) = predict(&shipped.net, &self.test_wide, device, 64);
        let face_alone = self.faces.map(|(_, held)| {
            let (ft, fp, _) = predict(
                &shipped.net,
                &held.as_dataset(&shipped.manifest.features),
                device,
                64,
            );
            metrics::compute(&ft, &fp, classes)
        });
        Ok((student, metrics::compute(&t, &p, classes), face_alone))
    }
}
