//! Training and evaluation of SUMMER models: the recipe (TOML), the teacher phase (cross-entropy,
//! early stopping on dev), the student phase (cross-entropy + logit KD + Cross-KD + latent
//! alignment with the frozen teacher), one final evaluation on the test split, and the report.

pub mod classes;
pub mod clips;
pub mod data;
pub mod eval;
pub mod faces;
pub mod metrics;
pub mod mix;
pub mod summer_default;
pub mod tune;
pub mod writers;

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::model::kd::{self, KdConfig};
use crate::model::{Model, ModelConfig, ModelError, NetKind, Output, Summer};
use crate::text::TextEncoder;
use data::Dataset;
use metrics::Metrics;

/// What can stop training or evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A dataset problem.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// A model problem.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The recipe is wrong.
    #[error("recipe: {0}")]
    Recipe(String),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Writing the report failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Optimisation settings (the `[train]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Adam learning rate.
    pub lr: f64,
    /// Most epochs per phase.
    pub epochs: usize,
    /// Stop after this many epochs without a better dev WF1.
    pub patience: usize,
    /// Dialogues per batch.
    pub batch: usize,
    /// Seed of libtorch's generator and of the shuffling.
    pub seed: i64,
    /// libtorch CPU threads.
    pub threads: i32,
    /// Train the fused student after the teacher (false: the teacher is the result).
    pub student: bool,
    /// Chance, per utterance with two or more modalities, of hiding all but one proper subset
    /// of them from the student (each subset as likely: with text and audio, each hidden with
    /// half of it), so that it learns each alone.
    pub modality_dropout: f64,
    /// Weight averaging (0: off): after every step a running average of the weights moves
    /// towards them by `1 - ema` (more at first: see [`Average`]), and each epoch is judged on
    /// the dev split, and kept, with the averaged weights instead of the last step's.
    pub ema: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 5e-4,
            epochs: 30,
            patience: 5,
            batch: 16,
            seed: 1,
            threads: 2,
            student: true,
            modality_dropout: 0.0,
            ema: 0.0,
        }
    }
}

/// A training recipe: `[model]`, `[train]`, `[kd]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    /// The network.
    pub model: ModelConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Distillation.
    pub kd: KdConfig,
    /// Text encoder fine-tuning.
    pub text: tune::TextConfig,
    /// How the default model's training data is mixed (`summerd train-default` only).
    pub mix: mix::MixConfig,
}

impl Recipe {
    /// Parse a recipe file's text.
    pub fn parse(text: &str) -> Result<Recipe, TrainError> {
        let de = toml::Deserializer::parse(text).map_err(|e| TrainError::Recipe(e.to_string()))?;
        let r: Recipe = serde_path_to_error::deserialize(de)
            .map_err(|e| TrainError::Recipe(format!("`{}`: {}", e.path(), e.inner().message())))?;
        if r.text.lora_rank > 0 && !(r.text.lora_alpha.is_finite() && r.text.lora_alpha > 0.0) {
            return Err(TrainError::Recipe(format!(
                "`text.lora_alpha` {} must be positive",
                r.text.lora_alpha
            )));
        }
        if !(0.0..=1.0).contains(&r.mix.condition_probability) {
            return Err(TrainError::Recipe(format!(
                "`mix.condition_probability` {} must be within 0..=1",
                r.mix.condition_probability
            )));
        }
        if (r.mix.condition_probability > 0.0 || r.mix.condition_sequences > 0)
            && r.mix.conditions.is_empty()
        {
            return Err(TrainError::Recipe(
                "`mix.condition_probability` or `mix.condition_sequences` is set but \
                 `mix.conditions` names none"
                    .into(),
            ));
        }
        if !(0.0..=1.0).contains(&r.text.exclamation_to_period) {
            return Err(TrainError::Recipe(format!(
                "`text.exclamation_to_period` {} must be within 0..=1",
                r.text.exclamation_to_period
            )));
        }
        if !(r.text.lr.is_finite() && r.text.lr > 0.0) {
            return Err(TrainError::Recipe(format!(
                "`text.lr` {} must be positive",
                r.text.lr
            )));
        }
        Ok(r)
    }
}

/// One phase's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Utterance-level tuning of the text encoder before this phase (`text.mode = "utterance"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_tuning: Option<tune::UtteranceReport>,
    /// Teacher or student.
    pub kind: NetKind,
    /// Epochs run.
    pub epochs: usize,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// Dev metrics of the kept weights.
    pub dev: Metrics,
    /// Dev WF1 per epoch.
    pub dev_wf1: Vec<f64>,
    /// Test metrics (computed once, after training).
    pub test: Option<Metrics>,
    /// Mean experts kept per token, per SDMoE, on the test (or dev) split.
    pub active_experts: Vec<(String, f64)>,
    /// Wall seconds.
    pub seconds: f64,
}

/// Everything `summerd train` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// The recipe.
    pub recipe: Recipe,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Teacher phase (none when the data has no text: the fused network is trained alone).
    pub teacher: Option<PhaseReport>,
    /// Student phase, if run.
    pub student: Option<PhaseReport>,
}

/// Predictions of `net` on `ds` (labelled utterances only): (truths, predictions, mean experts
/// kept per SDMoE).
pub fn predict(
    net: &Summer,
    ds: &Dataset,
    device: Device,
    batch: usize,
) -> (Vec<i64>, Vec<i64>, Vec<(String, f64)>) {
    let _g = tch::no_grad_guard();
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    let mut active: Vec<(String, f64, f64)> = Vec::new();
    let idx: Vec<usize> = (0..ds.dialogues()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let b = ds.batch(chunk, device);
        let out = net.forward(&b, false);
        let keep = b.label.ge(0).logical_and(&b.valid).flatten(0, 1);
        let sel = keep.nonzero().squeeze_dim(1);
        let c = out.logits.size()[2];
        let p = out
            .logits
            .view([-1, c])
            .index_select(0, &sel)
            .argmax(-1, false);
        let t = b.label.flatten(0, 1).index_select(0, &sel);
        truth.extend(Vec::<i64>::try_from(&t.to_device(Device::Cpu)).expect("i64"));
        pred.extend(Vec::<i64>::try_from(&p.to_device(Device::Cpu)).expect("i64"));
        let valid = b.valid.flatten(0, 1).nonzero().squeeze_dim(1);
        for (name, a) in &out.active {
            let a = a.flatten(0, 1).index_select(0, &valid);
            let (s, n) = (a.sum(Kind::Double).double_value(&[]), a.size()[0] as f64);
            match active.iter_mut().find(|(k, _, _)| k == name) {
                Some(e) => {
                    e.1 += s;
                    e.2 += n;
                }
                None => active.push((name.clone(), s, n)),
            }
        }
    }
    let active = active
        .into_iter()
        .map(|(k, s, n)| (k, s / n.max(1.0)))
        .collect();
    (truth, pred, active)
}

/// The test metrics (when there is a test split) and the experts kept per token, on the test
/// split or else on dev.
fn tested(
    net: &Summer,
    test: Option<&Dataset>,
    dev: &Dataset,
    device: Device,
) -> (Option<Metrics>, Vec<(String, f64)>) {
    match test.map(|t| evaluate(net, t, device, 64)) {
        Some((m, active)) => (Some(m), active),
        None => (None, evaluate(net, dev, device, 64).1),
    }
}

/// Metrics of `net` on `ds`.
pub fn evaluate(
    net: &Summer,
    ds: &Dataset,
    device: Device,
    batch: usize,
) -> (Metrics, Vec<(String, f64)>) {
    let (t, p, a) = predict(net, ds, device, batch);
    (metrics::compute(&t, &p, net.classes() as usize), a)
}

/// Deterministic shuffle (splitmix64) of 0..n for an epoch.
pub(crate) fn order(n: usize, seed: i64, epoch: usize) -> Vec<usize> {
    let mut state = (seed as u64) ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Flattened labelled-token selection of a batch: (indices into B*T, labels).
fn labelled(label: &Tensor) -> (Tensor, Tensor) {
    let flat = label.flatten(0, 1);
    let sel = flat.ge(0).nonzero().squeeze_dim(1);
    let y = flat.index_select(0, &sel);
    (sel, y)
}

fn tokens(x: &Tensor, sel: &Tensor) -> Tensor {
    let d = x.size()[2];
    x.reshape([-1, d]).index_select(0, sel)
}

/// The best epoch so far: dev WF1, epoch, dev metrics, weights.
/// Saved variables, by name.
pub(crate) type Snapshot = Vec<(String, Tensor)>;
type Best = (f64, usize, Metrics, Snapshot);

pub(crate) fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub(crate) fn restore(vs: &nn::VarStore, saved: &[(String, Tensor)]) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (k, t) in saved {
            if let Some(v) = vars.get(k) {
                v.shallow_clone().copy_(t);
            }
        }
    });
}

/// A running (exponential) average of a model's weights, Polyak averaging: after step `t`
/// the average moves towards the weights by `1 - d`, with `d = min(decay, (1 + t) / (10 + t))`
/// so that the first steps' weights, far from trained, fade quickly.
pub(crate) struct Average {
    steps: u64,
    decay: f64,
    /// (name, the model's variable, its average), sorted by name as [`snapshot`] is.
    vars: Vec<(String, Tensor, Tensor)>,
}

impl Average {
    /// Start from the weights `vs` has now.
    pub(crate) fn new(vs: &nn::VarStore, decay: f64) -> Average {
        let live = vs.variables();
        let vars = snapshot(vs)
            .into_iter()
            .map(|(k, avg)| {
                let var = live[&k].shallow_clone();
                (k, var, avg)
            })
            .collect();
        Average {
            steps: 0,
            decay,
            vars,
        }
    }

    /// Move the average after a step.
    pub(crate) fn update(&mut self) {
        self.steps += 1;
        let t = self.steps as f64;
        let d = self.decay.min((1.0 + t) / (10.0 + t));
        tch::no_grad(|| {
            for (_, var, avg) in &mut self.vars {
                let _ = avg.lerp_(var, 1.0 - d);
            }
        });
    }

    /// The averaged weights, as a [`snapshot`].
    pub(crate) fn weights(&self) -> Snapshot {
        self.vars
            .iter()
            .map(|(k, _, avg)| (k.clone(), avg.shallow_clone()))
            .collect()
    }
}

/// Train `net` (weights in `vs`) with cross-entropy plus `extra(output, batch, selection)`;
/// keep the weights of the epoch with the best dev WF1 (with `cfg.ema`, the averaged weights
/// of that epoch; the encoder's adapters of a joint tuning, in `tuning`, are not averaged).
#[allow(clippy::too_many_arguments)]
fn fit(
    net: &Summer,
    vs: &nn::VarStore,
    extra_vs: &[(&nn::VarStore, f64)],
    train: &Dataset,
    dev: &Dataset,
    cfg: &TrainConfig,
    device: Device,
    extra: &dyn Fn(&Output, &crate::model::Batch, &Tensor) -> Option<Tensor>,
    tuning: Option<(&tune::Tuner, &tune::TextCache, &tune::TextCache)>,
) -> Result<(usize, usize, Metrics, Vec<f64>), TrainError> {
    if !(0.0..1.0).contains(&cfg.ema) {
        return Err(TrainError::Recipe(format!(
            "train.ema = {} (expected at least 0 and below 1; 0 is off)",
            cfg.ema
        )));
    }
    let mut opt = nn::Adam::default().build(vs, cfg.lr)?;
    let mut extra_opts = extra_vs
        .iter()
        .map(|(v, lr)| nn::Adam::default().build(v, *lr))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tuner_snapshot = None;
    let mut best: Option<Best> = None;
    let mut curve = Vec::new();
    let mut since = 0;
    let mut epochs = 0;
    let mut average = (cfg.ema > 0.0).then(|| Average::new(vs, cfg.ema));
    for epoch in 0..cfg.epochs {
        epochs = epoch + 1;
        let idx = order(train.dialogues(), cfg.seed, epoch);
        for chunk in idx.chunks(cfg.batch.max(1)) {
            let mut b = train.batch(chunk, device);
            if let Some((t, cache, _)) = tuning {
                b.features[0] = t.batch_features(train, cache, chunk);
            }
            if cfg.modality_dropout > 0.0 {
                b.present = drop_modality(&b.present, cfg.modality_dropout);
            }
            let out = net.forward(&b, true);
            let (sel, y) = labelled(&b.label);
            if sel.size()[0] == 0 {
                continue;
            }
            let logits = tokens(&out.logits, &sel);
            let mut loss = kd::cross_entropy(&logits, &y);
            if let Some(e) = extra(&out, &b, &sel) {
                loss += e;
            }
            opt.zero_grad();
            extra_opts.iter_mut().for_each(|o| o.zero_grad());
            loss.backward();
            opt.step();
            extra_opts.iter_mut().for_each(|o| o.step());
            if let Some(a) = &mut average {
                a.update();
            }
        }
        // Judged (and kept) with the averaged weights; training goes on from its own.
        let last = average.as_ref().map(|a| {
            let last = snapshot(vs);
            restore(vs, &a.weights());
            last
        });
        let (m, _) = match tuning {
            Some((t, _, dev_cache)) => evaluate(net, &t.retext(dev, dev_cache), device, 64),
            None => evaluate(net, dev, device, 64),
        };
        curve.push(m.wf1);
        tracing::info!(epoch = epoch + 1, dev_wf1 = m.wf1, dev_wa = m.wa, "epoch");
        if best.as_ref().is_none_or(|(w, ..)| m.wf1 > *w) {
            best = Some((m.wf1, epoch + 1, m, snapshot(vs)));
            tuner_snapshot = tuning.map(|(t, _, _)| snapshot(&t.vs));
            since = 0;
        } else {
            since += 1;
        }
        if let Some(last) = last {
            restore(vs, &last);
        }
        if since >= cfg.patience {
            break;
        }
    }
    let (_, best_epoch, m, saved) = best.ok_or_else(|| TrainError::Recipe("epochs = 0".into()))?;
    restore(vs, &saved);
    if let (Some((t, _, _)), Some(saved)) = (tuning, tuner_snapshot) {
        restore(&t.vs, &saved);
    }
    Ok((epochs, best_epoch, m, curve))
}

/// Modality dropout over a batch's presence mask ([`keep_after_dropout`] per utterance).
fn drop_modality(present: &Tensor, p: f64) -> Tensor {
    let dev = present.device();
    let size = present.size();
    let flags = Vec::<u8>::try_from(
        present
            .to_kind(Kind::Uint8)
            .to_device(Device::Cpu)
            .view([-1]),
    )
    .expect("u8");
    let u = Vec::<f32>::try_from(
        Tensor::rand([size[0] * size[1]], (Kind::Float, dev)).to_device(Device::Cpu),
    )
    .expect("f32");
    let kept: Vec<u8> = flags
        .chunks(3)
        .zip(u)
        .flat_map(|(row, u)| keep_after_dropout([row[0], row[1], row[2]], f64::from(u), p))
        .collect();
    Tensor::from_slice(&kept)
        .view([size[0], size[1], 3])
        .to_kind(Kind::Bool)
        .to_device(dev)
}

/// Modality dropout of one utterance: with probability `p` (`u` uniform in [0, 1)), of the
/// modalities present (two or more) only one proper non-empty subset is kept, each subset as
/// likely. For text and audio: text hidden when u < p/2, audio when p/2 <= u < p.
fn keep_after_dropout(present: [u8; 3], u: f64, p: f64) -> [u8; 3] {
    let on: Vec<usize> = (0..3).filter(|m| present[*m] != 0).collect();
    if on.len() < 2 || u >= p {
        return present;
    }
    // Bit i of a mask keeps on[i]; from the highest mask down, so that with two modalities
    // the first subset keeps the second alone.
    let masks: Vec<u32> = (1..(1u32 << on.len()) - 1).rev().collect();
    let mask = masks[((u / p) * masks.len() as f64) as usize % masks.len()];
    let mut out = [0u8; 3];
    for (bit, m) in on.iter().enumerate() {
        out[*m] = u8::from(mask & (1 << bit) != 0);
    }
    out
}

fn normalise(model: &mut Model, train: &Dataset) {
    for m in 0..3 {
        if train.meta.features.dims()[m] > 0 {
            let (mean, std) = train.stats(m);
            let dev = model.vs.device();
            model
                .net
                .set_normalisation(m, &mean.to_device(dev), &std.to_device(dev));
        }
    }
}

/// Train a teacher (and, unless `recipe.train.student` is false, a student distilled from it)
/// on `train`, stopping on `dev`; evaluate once on `test`; write the model(s) and the report
/// under `out` (the teacher in `out/teacher` when a student is trained).
pub fn run(
    recipe: &Recipe,
    train: &Dataset,
    dev: &Dataset,
    test: Option<&Dataset>,
    out: &Path,
    device: Device,
) -> Result<TrainReport, TrainError> {
    run_with(recipe, None, train, dev, test, out, device)
}

/// [`run`], with an already trained (text) teacher instead of training one.
pub fn run_with(
    recipe: &Recipe,
    teacher: Option<Model>,
    train: &Dataset,
    dev: &Dataset,
    test: Option<&Dataset>,
    out: &Path,
    device: Device,
) -> Result<TrainReport, TrainError> {
    if dev.meta.classes != train.meta.classes || dev.meta.features != train.meta.features {
        return Err(TrainError::Recipe(
            "the dev split has other classes or features than the train split".into(),
        ));
    }
    tch::set_num_threads(recipe.train.threads.max(1));
    tch::manual_seed(recipe.train.seed);
    let classes = train.meta.classes.clone();
    let features = train.meta.features.clone();
    let teacher_kind = if recipe.kd.multimodal_teacher {
        NetKind::Fused
    } else {
        NetKind::TextTeacher
    };
    let teacher_features = if teacher_kind == NetKind::TextTeacher {
        crate::model::Features {
            text: features.text.clone(),
            audio: None,
            visual: None,
        }
    } else {
        features.clone()
    };
    let has_text = features.text.is_some();
    if !has_text && !recipe.train.student {
        return Err(TrainError::Recipe(
            "the data has no text, so there is no text teacher: set train.student = true".into(),
        ));
    }
    let mut report = TrainReport {
        recipe: recipe.clone(),
        classes: classes.clone(),
        teacher: None,
        student: None,
    };
    let mut teacher_model = teacher;
    let mut tuned = None;
    if has_text && teacher_model.is_none() {
        let (model, phase, t) = train_teacher(
            recipe,
            teacher_kind,
            teacher_features,
            train,
            dev,
            test,
            out,
            device,
        )?;
        report.teacher = Some(phase);
        teacher_model = Some(model);
        tuned = t;
    }
    // The student reads the tuned vectors, if any, as the daemon will.
    let (train, dev, test) = match &tuned {
        Some(t) => (&t.train, &t.dev, t.test.as_ref()),
        None => (train, dev, test),
    };
    if recipe.train.student {
        report.student = Some(train_student(
            recipe,
            teacher_model.as_ref(),
            tuned.as_ref(),
            classes,
            (train, dev, test),
            out,
            device,
        )?);
    }
    write_report(out, &report)?;
    Ok(report)
}

/// The student phase: the fused network, distilled from `teacher` when there is one
/// (cross-entropy alone otherwise), stopped on `dev`, tested once on `test`, saved under `out`
/// with the tuned text encoder's delta, if any.
fn train_student(
    recipe: &Recipe,
    teacher: Option<&Model>,
    tuned: Option<&Tuned>,
    classes: Vec<String>,
    (train, dev, test): (&Dataset, &Dataset, Option<&Dataset>),
    out: &Path,
    device: Device,
) -> Result<PhaseReport, TrainError> {
    let t0 = Instant::now();
    let mut student = Model::new(
        NetKind::Fused,
        train.meta.features.clone(),
        classes,
        &recipe.model,
        device,
    );
    normalise(&mut student, train);
    let kd_vs = nn::VarStore::new(device);
    let d = recipe.model.d_model;
    let proj = nn::linear(kd_vs.root() / "latent_proj", d, d, Default::default());
    let (w_logit, w_cross, w_latent) = match teacher {
        Some(_) => recipe.kd.weights(),
        None => (0.0, 0.0, 0.0),
    };
    let temp = recipe.kd.temperature;
    let tnet = teacher.map(|t| &t.net);
    let extra = move |out: &Output, b: &crate::model::Batch, sel: &Tensor| -> Option<Tensor> {
        let tnet = tnet?;
        if w_logit == 0.0 && w_cross == 0.0 && w_latent == 0.0 {
            return None;
        }
        // The teacher reads text: it says nothing about utterances without any.
        let with_text = b
            .present
            .select(2, 0)
            .flatten(0, 1)
            .index_select(0, sel)
            .nonzero()
            .squeeze_dim(1);
        if with_text.size()[0] == 0 {
            return None;
        }
        let sel = &sel.index_select(0, &with_text);
        let t_out = tch::no_grad(|| tnet.forward(b, false));
        let t_logits = tokens(&t_out.logits, sel);
        let s_feat = tokens(&out.feature, sel);
        let mut loss = Tensor::zeros([], (Kind::Float, out.logits.device()));
        if w_logit > 0.0 {
            loss += kd::soft_kl(&t_logits, &tokens(&out.logits, sel), temp) * w_logit;
        }
        if w_cross > 0.0 {
            loss += kd::soft_kl(&t_logits, &tnet.classify(&s_feat), temp) * w_cross;
        }
        if w_latent > 0.0 {
            let t_feat = tokens(&t_out.feature, sel);
            loss += kd::cosine_loss(&proj.forward(&s_feat), &t_feat) * w_latent;
        }
        Some(loss)
    };
    let (epochs, best_epoch, dev_m, curve) = fit(
        &student.net,
        &student.vs,
        &[(&kd_vs, recipe.train.lr)],
        train,
        dev,
        &recipe.train,
        device,
        &extra,
        None,
    )?;
    let (test_m, active) = tested(&student.net, test, dev, device);
    student.manifest.trained_on = train.meta.source.clone();
    if let Some(t) = tuned {
        t.attach(&mut student, out)?;
    }
    student.save(out)?;
    Ok(PhaseReport {
        text_tuning: None,
        kind: NetKind::Fused,
        epochs,
        best_epoch,
        dev: dev_m,
        dev_wf1: curve,
        test: test_m,
        active_experts: active,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn train_teacher(
    recipe: &Recipe,
    teacher_kind: NetKind,
    teacher_features: crate::model::Features,
    train: &Dataset,
    dev: &Dataset,
    test: Option<&Dataset>,
    out: &Path,
    device: Device,
) -> Result<(Model, PhaseReport, Option<Tuned>), TrainError> {
    let t0 = Instant::now();
    let mut teacher = Model::new(
        teacher_kind,
        teacher_features,
        train.meta.classes.clone(),
        &recipe.model,
        device,
    );
    normalise(&mut teacher, train);
    let k = recipe.text.tune_layers;
    let tuning = if k > 0 {
        for (name, ds) in [("train", Some(train)), ("dev", Some(dev)), ("test", test)] {
            if let Some(ds) = ds
                && ds.meta.texts.is_empty()
            {
                return Err(TrainError::Recipe(format!(
                    "text.tune_layers = {k} needs the utterances' texts, and the {name} split has none"
                )));
            }
        }
        let enc = TextEncoder::load(&recipe.text.encoder, recipe.text.max_tokens, device)
            .map_err(|e| TrainError::Recipe(e.to_string()))?;
        let tuner = tune::Tuner::new(&recipe.text.encoder, k, &recipe.text, device)
            .map_err(|e| TrainError::Recipe(e.to_string()))?;
        let cache = |ds: &Dataset| {
            tune::Tuner::cache(&enc, &ds.meta.texts, tuner.first)
                .map_err(|e| TrainError::Recipe(e.to_string()))
        };
        let caches = (cache(train)?, cache(dev)?, test.map(cache).transpose()?);
        Some((tuner, caches))
    } else {
        None
    };
    let make_tuned =
        |mut tuner: tune::Tuner,
         (ct, cd, ce): (tune::TextCache, tune::TextCache, Option<tune::TextCache>)| {
            tuner.vs.freeze();
            Tuned {
                train: tuner.retext(train, &ct),
                dev: tuner.retext(dev, &cd),
                test: test.zip(ce.as_ref()).map(|(t, c)| tuner.retext(t, c)),
                layers: k,
                lora_rank: recipe.text.lora_rank,
                tuner,
            }
        };
    // Utterance mode: tune the encoder first, then train the teacher on its vectors.
    let mut text_tuning = None;
    let (tuning, tuned_first) = match tuning {
        Some((tuner, (ct, cd, ce))) if recipe.text.mode == tune::TuneMode::Utterance => {
            let r = tune::fit_utterances(&tuner, &recipe.text, (train, &ct), (dev, &cd), {
                recipe.train.seed
            })?;
            text_tuning = Some(r);
            let t = make_tuned(tuner, (ct, cd, ce));
            normalise(&mut teacher, &t.train);
            (None, Some(t))
        }
        other => (other, None),
    };
    let (fit_train, fit_dev) = tuned_first
        .as_ref()
        .map_or((train, dev), |t| (&t.train, &t.dev));
    let (epochs, best_epoch, dev_m, curve) = fit(
        &teacher.net,
        &teacher.vs,
        &tuning
            .as_ref()
            .map(|(t, _)| vec![(&t.vs, recipe.text.lr)])
            .unwrap_or_default(),
        fit_train,
        fit_dev,
        &recipe.train,
        device,
        &|_, _, _| None,
        tuning.as_ref().map(|(t, (ct, cd, _))| (t, ct, cd)),
    )?;
    teacher.vs.freeze();
    // Joint mode: every split's text vectors are remade through the tuned layers, once.
    let tuned = tuned_first.or_else(|| tuning.map(|(t, c)| make_tuned(t, c)));
    let test = match &tuned {
        Some(t) => t.test.as_ref(),
        None => test,
    };
    let dev = tuned.as_ref().map_or(dev, |t| &t.dev);
    let (test_m, active) = tested(&teacher.net, test, dev, device);
    let teacher_report = PhaseReport {
        text_tuning,
        kind: teacher_kind,
        epochs,
        best_epoch,
        dev: dev_m,
        dev_wf1: curve,
        test: test_m,
        active_experts: active,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let teacher_dir = if recipe.train.student {
        out.join("teacher")
    } else {
        out.to_path_buf()
    };
    teacher.manifest.trained_on = train.meta.source.clone();
    if let Some(t) = &tuned {
        t.attach(&mut teacher, &teacher_dir)?;
    }
    teacher.save(&teacher_dir)?;
    Ok((teacher, teacher_report, tuned))
}

/// The outcome of fine-tuning the text encoder with the teacher: the tuned layers and every
/// split's text vectors remade through them.
pub struct Tuned {
    tuner: tune::Tuner,
    layers: usize,
    lora_rank: usize,
    train: Dataset,
    dev: Dataset,
    test: Option<Dataset>,
}

impl Tuned {
    /// Save the tuned layers into `dir` and point `model`'s manifest at them.
    fn attach(&self, model: &mut Model, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir)?;
        let file = "text_tuned.safetensors";
        self.tuner.save(&dir.join(file))?;
        model.manifest.text_tuned = Some(crate::model::TunedText {
            file: file.into(),
            sha256: crate::model::sha256_file(&dir.join(file))?,
            layers: self.layers,
            lora_rank: self.lora_rank,
        });
        model.manifest.features.mark_text_tuned();
        Ok(())
    }
}

/// `out/report.json` and, per phase with a test result, `out/<phase>-test.svg`.
pub fn write_report(out: &Path, report: &TrainReport) -> Result<(), TrainError> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(report).expect("plain struct") + "\n",
    )?;
    for (name, phase) in [
        ("teacher", report.teacher.as_ref()),
        ("student", report.student.as_ref()),
    ] {
        if let Some(p) = phase {
            let (m, split) = match &p.test {
                Some(m) => (m, "test"),
                None => (&p.dev, "dev"),
            };
            std::fs::write(
                out.join(format!("{name}-{split}.svg")),
                metrics::svg(m, &report.classes, &format!("{name}, {split} split")),
            )?;
        }
    }
    Ok(())
}

/// A leave-one-group-out evaluation (e.g. leave one speaker out).
#[derive(Debug, Clone, Serialize)]
pub struct LosoReport {
    /// The recipe (the fused network, cross-entropy only).
    pub recipe: Recipe,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Per held-out group: (group, its metrics, the dev group used for early stopping).
    pub folds: Vec<(String, Metrics, String)>,
    /// All held-out predictions pooled.
    pub pooled: Metrics,
    /// Wall seconds.
    pub seconds: f64,
}

/// Leave each group out in turn: train the fused network (cross-entropy only) on the other
/// groups but one, stop early on that one (the next group in order), test on the held-out group;
/// pool the held-out predictions.
pub fn loso(recipe: &Recipe, ds: &Dataset, device: Device) -> Result<LosoReport, TrainError> {
    let t0 = Instant::now();
    tch::set_num_threads(recipe.train.threads.max(1));
    let mut groups: Vec<String> = ds.meta.groups.clone();
    groups.sort();
    groups.dedup();
    if groups.len() < 3 {
        return Err(TrainError::Recipe(format!(
            "leave-one-group-out needs at least 3 groups, the data has {}",
            groups.len()
        )));
    }
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    let mut folds = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let dev_g = &groups[(i + 1) % groups.len()];
        let pick = |f: &dyn Fn(&str) -> bool| -> Vec<usize> {
            (0..ds.dialogues())
                .filter(|d| f(&ds.meta.groups[*d]))
                .collect()
        };
        let test = ds.subset(&pick(&|x| x == g));
        let dev = ds.subset(&pick(&|x| x == dev_g));
        let train = ds.subset(&pick(&|x| x != g && x != dev_g));
        tch::manual_seed(recipe.train.seed);
        let mut model = Model::new(
            NetKind::Fused,
            ds.meta.features.clone(),
            ds.meta.classes.clone(),
            &recipe.model,
            device,
        );
        normalise(&mut model, &train);
        fit(
            &model.net,
            &model.vs,
            &[],
            &train,
            &dev,
            &recipe.train,
            device,
            &|_, _, _| None,
            None,
        )?;
        let (t, p, _) = predict(&model.net, &test, device, 64);
        folds.push((
            g.clone(),
            metrics::compute(&t, &p, ds.meta.classes.len()),
            dev_g.clone(),
        ));
        truth.extend(t);
        pred.extend(p);
    }
    Ok(LosoReport {
        recipe: recipe.clone(),
        classes: ds.meta.classes.clone(),
        folds,
        pooled: metrics::compute(&truth, &pred, ds.meta.classes.len()),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A named set of variants for the ablation harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AblationSet {
    /// Routing: dynamic (alpha 2) / top-2 / dense / one-sided (beta 1).
    Routing,
    /// The dynamic threshold alpha in {0.5, 1, 1.5, 2, 2.5}.
    Alpha,
    /// Distillation: none / logit / cross / latent / all.
    Kd,
    /// Fusion order: T+A then V / T+V then A / A+V then T / concatenation.
    Fusion,
}

impl AblationSet {
    /// The variants: (name, recipe).
    pub fn variants(self, base: &Recipe) -> Vec<(String, Recipe)> {
        let with = |f: &dyn Fn(&mut Recipe)| {
            let mut r = base.clone();
            f(&mut r);
            r
        };
        match self {
            AblationSet::Routing => vec![
                (
                    "dynamic a=2".into(),
                    with(&|r| r.model.routing = crate::model::Routing::Dynamic { alpha: 2.0 }),
                ),
                (
                    "top-2".into(),
                    with(&|r| r.model.routing = crate::model::Routing::TopK { k: 2 }),
                ),
                (
                    "dense".into(),
                    with(&|r| r.model.routing = crate::model::Routing::Dense),
                ),
                (
                    "one-sided b=1".into(),
                    with(&|r| r.model.routing = crate::model::Routing::OneSided { beta: 1.0 }),
                ),
            ],
            AblationSet::Alpha => [0.5, 1.0, 1.5, 2.0, 2.5]
                .into_iter()
                .map(|a| {
                    (
                        format!("alpha={a}"),
                        with(&|r| r.model.routing = crate::model::Routing::Dynamic { alpha: a }),
                    )
                })
                .collect(),
            AblationSet::Kd => [
                kd::KdMode::None,
                kd::KdMode::Logit,
                kd::KdMode::Cross,
                kd::KdMode::Latent,
                kd::KdMode::All,
            ]
            .into_iter()
            .map(|m| {
                (
                    variant_name("kd", m),
                    with(&|r| {
                        r.kd.mode = m;
                        r.train.student = true;
                    }),
                )
            })
            .collect(),
            AblationSet::Fusion => [
                crate::model::Fusion::TextAudioVisual,
                crate::model::Fusion::TextVisualAudio,
                crate::model::Fusion::AudioVisualText,
                crate::model::Fusion::Concat,
            ]
            .into_iter()
            .map(|f| {
                (
                    variant_name("fusion", f),
                    with(&|r| {
                        r.model.fusion = f;
                        r.train.student = true;
                    }),
                )
            })
            .collect(),
        }
    }
}

/// `prefix=value`, the value as the recipe spells it.
fn variant_name(prefix: &str, value: impl Serialize) -> String {
    let v = serde_json::to_value(value).expect("plain enum");
    format!("{prefix}={}", v.as_str().unwrap_or("?"))
}

/// One ablation row: a variant's test figures over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct AblationRow {
    /// Variant name.
    pub variant: String,
    /// Seeds run.
    pub seeds: Vec<i64>,
    /// Test WF1 per seed (of the final model: the student when one is trained).
    pub wf1: Vec<f64>,
    /// Test WA per seed.
    pub wa: Vec<f64>,
    /// Mean experts kept per token (averaged over the model's SDMoEs), per seed.
    pub active: Vec<f64>,
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// The three splits of a run.
#[derive(Debug, Clone, Copy)]
pub struct Splits<'a> {
    /// Training.
    pub train: &'a Dataset,
    /// Early stopping.
    pub dev: &'a Dataset,
    /// Evaluated once.
    pub test: &'a Dataset,
}

/// Run every variant of `set` with `seeds` seeds; returns the rows and a Markdown table.
pub fn ablate(
    base: &Recipe,
    set: AblationSet,
    seeds: usize,
    data: Splits<'_>,
    out: &Path,
    device: Device,
) -> Result<(Vec<AblationRow>, String), TrainError> {
    let Splits { train, dev, test } = data;
    let mut rows = Vec::new();
    for (name, recipe) in set.variants(base) {
        let mut row = AblationRow {
            variant: name.clone(),
            seeds: Vec::new(),
            wf1: Vec::new(),
            wa: Vec::new(),
            active: Vec::new(),
        };
        for s in 0..seeds {
            let mut r = recipe.clone();
            r.train.seed = base.train.seed + s as i64;
            let dir = out.join(format!(
                "{}-seed{}",
                name.replace([' ', '='], "_"),
                r.train.seed
            ));
            let rep = run(&r, train, dev, Some(test), &dir, device)?;
            let phase = rep
                .student
                .as_ref()
                .or(rep.teacher.as_ref())
                .expect("a phase ran");
            let m = phase.test.as_ref().expect("test given");
            row.seeds.push(r.train.seed);
            row.wf1.push(m.wf1);
            row.wa.push(m.wa);
            let a = &phase.active_experts;
            row.active
                .push(a.iter().map(|(_, v)| v).sum::<f64>() / a.len().max(1) as f64);
            tracing::info!(variant = %name, seed = r.train.seed, wf1 = m.wf1, "ablation run");
        }
        rows.push(row);
    }
    let mut md = format!(
        "| variant ({} seeds) | test WF1 mean | spread (sd) | test WA mean | experts kept |\n|---|---|---|---|---|\n",
        seeds
    );
    for r in &rows {
        let (w, ws) = mean_std(&r.wf1);
        let (a, _) = mean_std(&r.wa);
        let (k, _) = mean_std(&r.active);
        md += &format!("| {} | {w:.2} | {ws:.2} | {a:.2} | {k:.2} |\n", r.variant);
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("ablation.json"),
        serde_json::to_string_pretty(&rows).expect("rows") + "\n",
    )?;
    std::fs::write(out.join("ablation.md"), &md)?;
    Ok((rows, md))
}

#[cfg(test)]
mod tests {
    #[test]
    fn modality_dropout_keeps_one_proper_subset_of_what_is_present() {
        use super::keep_after_dropout as keep;
        // Text and audio: text hidden below p/2, audio from p/2 to p, nothing from p on.
        assert_eq!(keep([1, 1, 0], 0.1, 0.3), [0, 1, 0]);
        assert_eq!(keep([1, 1, 0], 0.2, 0.3), [1, 0, 0]);
        assert_eq!(keep([1, 1, 0], 0.3, 0.3), [1, 1, 0]);
        // One modality is never hidden.
        assert_eq!(keep([0, 0, 1], 0.0, 0.3), [0, 0, 1]);
        // All three: each of the six proper subsets in turn, over [0, p).
        let seen: std::collections::BTreeSet<[u8; 3]> = (0..6)
            .map(|k| keep([1, 1, 1], (k as f64 + 0.5) * 0.05, 0.3))
            .collect();
        assert_eq!(seen.len(), 6);
        assert!(!seen.contains(&[1, 1, 1]) && !seen.contains(&[0, 0, 0]));
        // Text and face: the face hidden like audio.
        assert_eq!(keep([1, 0, 1], 0.1, 0.3), [0, 0, 1]);
        assert_eq!(keep([1, 0, 1], 0.2, 0.3), [1, 0, 0]);
    }

    #[test]
    fn the_weight_average_follows_the_weights_with_a_warm_up() {
        use tch::{Device, Kind, Tensor, nn};
        let vs = nn::VarStore::new(Device::Cpu);
        let mut w = vs.root().zeros("w", &[2]);
        let mut avg = super::Average::new(&vs, 0.9);
        let set = |w: &mut Tensor, v: f64| {
            tch::no_grad(|| {
                let _ = w.fill_(v);
            })
        };
        let got = |a: &super::Average| {
            Vec::<f64>::try_from(a.weights()[0].1.to_kind(Kind::Double)).unwrap()
        };
        // Step 1: d = min(0.9, 2/11); the average moves 9/11 of the way to the weights.
        set(&mut w, 11.0);
        avg.update();
        assert!(
            got(&avg).iter().all(|v| (v - 9.0).abs() < 1e-5),
            "{:?}",
            got(&avg)
        );
        // Later steps: d reaches 0.9 (from t = 80 on), and a constant weight is approached.
        for _ in 0..400 {
            avg.update();
        }
        assert!(got(&avg).iter().all(|v| (v - 11.0).abs() < 1e-4));
        // The model's own weights are left alone.
        assert_eq!(
            Vec::<f64>::try_from(w.to_kind(Kind::Double)).unwrap(),
            vec![11.0, 11.0]
        );
    }
}
