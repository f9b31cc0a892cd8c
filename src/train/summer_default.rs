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

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::Device;

use super::clips::Clips;
use super::data::Dataset;
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

/// The splits `summerd train-default` reads from `dir`, as `summerd dataset` writes them:
/// MELD [train, dev, test] (`meld-{train,dev,test}.safetensors`) and EmoDB
/// (`emodb.safetensors`).
pub fn load_splits(dir: &Path) -> Result<([Dataset; 3], Dataset), TrainError> {
    let split = |name: &str| Dataset::load(&dir.join(format!("{name}.safetensors")));
    let meld = [
        split("meld-train")?,
        split("meld-dev")?,
        split("meld-test")?,
    ];
    Ok((meld, split("emodb")?))
}

/// Train the default model into `out` (scratch in `work`) with the `folds` asked for; `meld`
/// is [train, dev, test] as `summerd dataset meld` writes them.
pub fn build(
    recipe: &Recipe,
    meld: [&Dataset; 3],
    emodb: &Dataset,
    out: &Path,
    work: &Path,
    folds: &Folds,
    device: Device,
) -> Result<DefaultReport, TrainError> {
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
    let [train, dev, test] = meld;
    let teacher = run(
        &teacher_recipe,
        train,
        dev,
        Some(test),
        &teacher_dir,
        device,
    )?;
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
    let students = Students::new(recipe, teacher_dir, tuned, meld, emodb, device);
    let all = students.clips.speakers();
    let norm_all = students.clips.prior(&all, recipe.mix.prior_weight);

    let mut folds = Vec::new();
    let (mut audio_parts, mut fused_parts) = (Vec::new(), Vec::new());
    if loso {
        for s in all.iter().filter(|s| only.is_empty() || only.contains(s)) {
            let (fold, audio, fused) = students.fold(s, &all, work, classes)?;
            folds.push(fold);
            audio_parts.push(audio);
            fused_parts.push(fused);
        }
    }

    let summary = |folds: Vec<Fold>, student: TrainReport, shipped| DefaultReport {
        recipe: recipe.clone(),
        teacher: teacher.clone(),
        student,
        shipped_meld_test: shipped,
        folds,
        emodb_loso: loso.then(|| pooled(&audio_parts, classes)),
        fused_loso: loso.then(|| pooled(&fused_parts, classes)),
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
        let r = summary(folds, empty, None);
        std::fs::create_dir_all(work)?;
        std::fs::write(
            work.join("trial.json"),
            serde_json::to_string_pretty(&r).expect("plain struct") + "\n",
        )?;
        return Ok(r);
    }
    let (student, shipped_test) = students.ship(&all, norm_all, out, classes)?;
    let report = summary(folds, student, Some(shipped_test));
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report).expect("plain struct") + "\n",
    )?;
    Ok(report)
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
    clips: Clips,
    train: &'a Dataset,
    test: &'a Dataset,
    /// MELD dev, audio absent (early stopping).
    dev_wide: Dataset,
    /// MELD test, audio absent.
    test_wide: Dataset,
    device: Device,
}

/// One fold's outcome: its figures, then (truths, predictions) of the held-out speaker's clips
/// and of MELD test with that voice attached.
type FoldRun = (Fold, (Vec<i64>, Vec<i64>), (Vec<i64>, Vec<i64>));

impl<'a> Students<'a> {
    fn new(
        recipe: &Recipe,
        teacher_dir: PathBuf,
        tuned: Option<TunedText>,
        [train, dev, test]: [&'a Dataset; 3],
        emodb: &Dataset,
        device: Device,
    ) -> Students<'a> {
        let mut student_recipe = recipe.clone();
        student_recipe.text.tune_layers = 0;
        Students {
            recipe: student_recipe,
            teacher_dir,
            tuned,
            clips: Clips::from_emodb(emodb),
            train,
            test,
            dev_wide: mix::audio_absent(dev),
            test_wide: mix::audio_absent(test),
            device,
        }
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
            &mix::pair_meld(self.train, &self.clips, speakers, norm, cfg),
            &mix::speaker_sequences(
                &self.clips,
                speakers,
                norm,
                self.text(),
                cfg.sequences_per_speaker,
                cfg.seed,
            ),
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
        let seq = mix::speaker_sequences(&self.clips, held, &norm, self.text(), 1, cfg.seed + 1);
        let (t, p, _) = predict(&student.net, &seq, device, 64);
        let acc = metrics::compute(&t, &p, classes).wa;
        let voiced = mix::MixConfig {
            pair_probability: 1.0,
            ..cfg.clone()
        };
        let fused = mix::pair_meld(self.test, &self.clips, held, &norm, &voiced);
        let (ft, fp, _) = predict(&student.net, &fused, device, 64);
        let fm = metrics::compute(&ft, &fp, classes);
        tracing::info!(speaker = %s, audio_accuracy = acc, fused_meld_wf1 = fm.wf1, "fold");
        let fold = Fold {
            speaker: s.to_string(),
            audio_accuracy: acc,
            clips: t.len(),
            fused_meld_wf1: fm.wf1,
        };
        Ok((fold, (t, p), (ft, fp)))
    }

    /// The shipped student on every speaker's mix, saved in `out` (f16 weights, the
    /// normalisation prior `norm`, the tuned text delta), checked as the daemon will load it
    /// and tested once on MELD test (audio absent) with the shipped weights.
    fn ship(
        &self,
        all: &[String],
        norm: SpeakerNorm,
        out: &Path,
        classes: usize,
    ) -> Result<(TrainReport, Metrics), TrainError> {
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
        model.manifest.trained_on = format!(
            "MELD train (text) with EmoDB voices of speakers {} attached (p = {}), and those \
             speakers' clips as sequences; per-speaker online normalisation (prior weight {})",
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
        );
        shipped
            .manifest
            .features
            .check_against(&daemon)
            .map_err(|e| TrainError::Recipe(format!("the daemon would refuse the model: {e}")))?;
        let (t, p, _) = predict(&shipped.net, &self.test_wide, device, 64);
        Ok((student, metrics::compute(&t, &p, classes)))
    }
}
