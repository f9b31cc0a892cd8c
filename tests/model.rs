//! The SUMMER model and its trainer on synthetic data: causality, presence masks, gradients,
//! save/load, determinism, the dataset format, recipes, and training end to end.

mod common;

use tch::{Device, Kind, Tensor};

use summerd::model::{
    Batch, FeatureSpec, Features, Fusion, Model, ModelConfig, ModelError, NetKind, Routing,
};
use summerd::train::data::{Dataset, FORMAT, Sidecar};
use summerd::train::tune::TuneMode;
use summerd::train::{self, Recipe, TrainReport};

/// libtorch's generator is global to the process: tests that seed it and draw from it take
/// turns, or one test's draws would move another's.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn features(dims: [i64; 3]) -> Features {
    let spec = |d: i64, name: &str| {
        (d > 0).then(|| FeatureSpec {
            extractor: name.into(),
            dim: d,
        })
    };
    Features {
        text: spec(dims[0], "t"),
        audio: spec(dims[1], "a"),
        visual: spec(dims[2], "v"),
    }
}

fn small_cfg() -> ModelConfig {
    ModelConfig {
        d_model: 32,
        heads: 4,
        ffn_hidden: 64,
        expert_hidden: 32,
        experts: 4,
        window: 4,
        dropout: 0.1,
        ..ModelConfig::default()
    }
}

fn batch(b: i64, t: i64, dims: [i64; 3]) -> Batch {
    let opts = (Kind::Float, Device::Cpu);
    Batch {
        features: [
            Tensor::randn([b, t, dims[0]], opts),
            Tensor::randn([b, t, dims[1]], opts),
            Tensor::randn([b, t, dims[2]], opts),
        ],
        present: Tensor::ones([b, t, 3], (Kind::Bool, Device::Cpu)),
        valid: Tensor::ones([b, t], (Kind::Bool, Device::Cpu)),
        speaker: Tensor::randint(3, [b, t], (Kind::Int64, Device::Cpu)),
        label: Tensor::randint(7, [b, t], (Kind::Int64, Device::Cpu)),
        offset: None,
    }
}

fn clone(b: &Batch) -> Batch {
    Batch {
        features: [
            b.features[0].copy(),
            b.features[1].copy(),
            b.features[2].copy(),
        ],
        present: b.present.copy(),
        valid: b.valid.copy(),
        speaker: b.speaker.copy(),
        label: b.label.copy(),
        offset: None,
    }
}

const DIMS: [i64; 3] = [12, 6, 5];

fn model(cfg: &ModelConfig) -> Model {
    Model::new(
        NetKind::Fused,
        features(DIMS),
        (0..7).map(|i| format!("c{i}")).collect(),
        cfg,
        Device::Cpu,
    )
}

#[test]
fn causal_outputs_do_not_depend_on_later_utterances() {
    let _rng = rng();
    tch::manual_seed(3);
    for fusion in [
        Fusion::TextAudioVisual,
        Fusion::TextVisualAudio,
        Fusion::AudioVisualText,
        Fusion::Concat,
    ] {
        let cfg = ModelConfig {
            fusion,
            ..small_cfg()
        };
        let m = model(&cfg);
        let b = batch(2, 7, DIMS);
        let base = m.net.forward(&b, false).logits;
        for t in 0..6 {
            let mut changed = clone(&b);
            for f in changed.features.iter_mut() {
                let _ = f.narrow(1, t + 1, 7 - t - 1).fill_(9.0);
            }
            let _ = changed.speaker.narrow(1, t + 1, 7 - t - 1).fill_(2);
            let out = m.net.forward(&changed, false).logits;
            assert!(
                out.narrow(1, 0, t + 1).equal(&base.narrow(1, 0, t + 1)),
                "{fusion:?}: utterance {t} changed when later ones did"
            );
            assert!(
                !out.narrow(1, t + 1, 7 - t - 1)
                    .equal(&base.narrow(1, t + 1, 7 - t - 1))
            );
        }
    }
    // The bidirectional variant does look ahead.
    let cfg = ModelConfig {
        causal: false,
        ..small_cfg()
    };
    let m = model(&cfg);
    let b = batch(1, 5, DIMS);
    let base = m.net.forward(&b, false).logits;
    let changed = clone(&b);
    let _ = changed.features[0].narrow(1, 4, 1).fill_(9.0);
    let out = m.net.forward(&changed, false).logits;
    assert!(!out.narrow(1, 3, 1).equal(&base.narrow(1, 3, 1)));
}

#[test]
fn a_missing_modality_contributes_nothing() {
    let _rng = rng();
    tch::manual_seed(4);
    let m = model(&small_cfg());
    let b = batch(2, 5, DIMS);
    // No face anywhere, no audio for utterance 2 of the first conversation.
    let _ = b.present.select(2, 2).fill_(0);
    let _ = b.present.get(0).get(2).get(1).fill_(0);
    let base = m.net.forward(&b, false).logits;
    assert!(
        base.isfinite().all().int64_value(&[]) == 1,
        "NaN or inf with missing modalities"
    );
    let mut other = clone(&b);
    other.features[2] = Tensor::randn([2, 5, DIMS[2]], (Kind::Float, Device::Cpu)) * 100.0;
    let _ = other.features[1].get(0).get(2).fill_(1e3);
    let out = m.net.forward(&other, false).logits;
    assert!(
        out.equal(&base),
        "features of an absent modality changed the output"
    );
    // Everything but text missing still gives finite logits.
    let text_only = clone(&b);
    let _ = text_only.present.narrow(2, 1, 2).fill_(0);
    let out = m.net.forward(&text_only, false).logits;
    assert!(out.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn gradients_reach_every_trainable_parameter() {
    let _rng = rng();
    tch::manual_seed(5);
    for routing in [
        Routing::Dynamic { alpha: 2.0 },
        Routing::TopK { k: 2 },
        Routing::Dense,
    ] {
        let cfg = ModelConfig {
            routing,
            dropout: 0.0,
            ..small_cfg()
        };
        let m = model(&cfg);
        let b = batch(4, 6, DIMS);
        let out = m.net.forward(&b, true);
        let loss = out
            .logits
            .view([-1, 7])
            .cross_entropy_for_logits(&b.label.view([-1]));
        loss.backward();
        for (name, v) in m.vs.variables() {
            if !v.requires_grad() {
                continue; // normalisation statistics
            }
            let g = v.grad();
            assert!(g.defined(), "{routing:?}: no gradient for {name}");
            let s = g.abs().sum(Kind::Double).double_value(&[]);
            assert!(s > 0.0, "{routing:?}: zero gradient for {name}");
        }
    }
}

#[test]
fn active_expert_counts_follow_the_routing() {
    let _rng = rng();
    tch::manual_seed(6);
    let b = batch(2, 6, DIMS);
    let count = |routing| {
        let m = model(&ModelConfig {
            routing,
            ..small_cfg()
        });
        let out = m.net.forward(&b, false);
        out.active
            .iter()
            .map(|(_, a)| a.mean(Kind::Double).double_value(&[]))
            .collect::<Vec<_>>()
    };
    assert!(count(Routing::Dense).iter().all(|c| *c == 4.0));
    assert!(count(Routing::TopK { k: 2 }).iter().all(|c| *c == 2.0));
    let dynamic = count(Routing::Dynamic { alpha: 2.0 });
    assert_eq!(dynamic.len(), 4, "text, audio, visual and the global SDMoE");
    assert!(dynamic.iter().all(|c| (1.0..=4.0).contains(c)));
}

#[test]
fn save_and_load_round_trip_bit_exact() {
    let _rng = rng();
    tch::manual_seed(7);
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(&small_cfg());
    m.net.set_normalisation(
        1,
        &Tensor::ones([6], (Kind::Float, Device::Cpu)),
        &(Tensor::ones([6], (Kind::Float, Device::Cpu)) * 2.0),
    );
    m.save(dir.path()).unwrap();
    let back = Model::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(back.manifest, m.manifest);
    let a = m.vs.variables();
    let b = back.vs.variables();
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert!(v.equal(&b[k]), "{k} differs after load");
    }
    let x = batch(1, 4, DIMS);
    assert!(
        m.net
            .forward(&x, false)
            .logits
            .equal(&back.net.forward(&x, false).logits)
    );
    // Features the daemon does not have: a clear error.
    let err = back
        .manifest
        .features
        .check_against(&features([12, 88, 0]))
        .unwrap_err();
    assert!(matches!(err, ModelError::Features { .. }), "{err}");
    assert!(err.to_string().contains("audio"), "{err}");
    // Tampered weights: refused.
    let w = dir.path().join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let err = Model::load(dir.path(), Device::Cpu)
        .err()
        .expect("tampered weights load");
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
}

/// A synthetic conversation set whose labels are a linear function of the text vectors, with
/// audio that carries the same signal and visual absent on half the utterances.
fn synthetic(dialogues: usize, seed: i64) -> Dataset {
    let opts = (Kind::Float, Device::Cpu);
    // The same class centres for every split; the rest drawn from the split's own seed.
    tch::manual_seed(0);
    let centres = Tensor::randn([3, DIMS[0]], opts) * 2.0;
    tch::manual_seed(seed);
    let lens: Vec<i64> = (0..dialogues).map(|d| 3 + (d as i64 % 5)).collect();
    let n: i64 = lens.iter().sum();
    let label = Tensor::randint(3, [n], (Kind::Int64, Device::Cpu));
    let text = centres.index_select(0, &label) + Tensor::randn([n, DIMS[0]], opts);
    let audio = Tensor::randn([n, DIMS[1]], opts) + label.unsqueeze(1).to_kind(Kind::Float);
    let visual = Tensor::randn([n, DIMS[2]], opts);
    let mut offsets = vec![0i64];
    for l in &lens {
        offsets.push(offsets.last().unwrap() + l);
    }
    let present = Tensor::ones([n, 3], (Kind::Bool, Device::Cpu));
    present.select(1, 2).copy_(
        &Tensor::arange(n, (Kind::Int64, Device::Cpu))
            .remainder(2)
            .eq(0),
    );
    Dataset {
        meta: Sidecar {
            format: FORMAT.into(),
            classes: vec!["a".into(), "b".into(), "c".into()],
            features: features(DIMS),
            dialogues: (0..dialogues).map(|d| format!("d{d}")).collect(),
            groups: (0..dialogues).map(|d| format!("g{}", d % 4)).collect(),
            source: "synthetic".into(),
            texts: Vec::new(),
        },
        offsets,
        features: [text, audio, visual],
        present,
        speaker: Tensor::randint(2, [n], (Kind::Int64, Device::Cpu)),
        label,
    }
}

/// `train::run` on (train, dev, test) into `out`, on the CPU.
fn run_on(
    recipe: &Recipe,
    [train, dev, test]: [&Dataset; 3],
    out: &std::path::Path,
) -> TrainReport {
    train::run(recipe, train, dev, Some(test), out, Device::Cpu).unwrap()
}

fn quick_recipe() -> Recipe {
    let mut r = Recipe {
        model: small_cfg(),
        ..Recipe::default()
    };
    r.train.epochs = 4;
    r.train.patience = 2;
    r.train.batch = 8;
    r.train.threads = 1;
    r.train.lr = 3e-3;
    r
}

#[test]
fn datasets_round_trip_and_subset() {
    let _rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let ds = synthetic(10, 1);
    let p = dir.path().join("s.safetensors");
    ds.save(&p).unwrap();
    let back = Dataset::load(&p).unwrap();
    assert_eq!(back.meta, ds.meta);
    assert_eq!(back.offsets, ds.offsets);
    for m in 0..3 {
        assert!(back.features[m].equal(&ds.features[m]));
    }
    assert!(back.present.equal(&ds.present) && back.label.equal(&ds.label));
    let sub = ds.subset(&[2, 5]);
    assert_eq!(sub.dialogues(), 2);
    assert_eq!(sub.meta.dialogues, vec!["d2".to_string(), "d5".to_string()]);
    assert_eq!(
        sub.len() as i64,
        (ds.offsets[3] - ds.offsets[2]) + (ds.offsets[6] - ds.offsets[5])
    );
    // A sidecar that disagrees with the tensors is refused.
    let mut meta = ds.meta.clone();
    meta.dialogues.pop();
    std::fs::write(
        format!("{}.json", p.display()),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();
    assert!(Dataset::load(&p).is_err());
    // Audio features from a version of summerd's extractor it does not make are refused by
    // name; both bands' versions and other extractors load.
    let write = |audio: &str| {
        let mut meta = ds.meta.clone();
        meta.features.audio.as_mut().unwrap().extractor = audio.into();
        std::fs::write(
            format!("{}.json", p.display()),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
    };
    write("egemaps-v02/summerd/1");
    let err = Dataset::load(&p).unwrap_err().to_string();
    assert!(
        err.contains("egemaps-v02/summerd/1") && err.contains("remake"),
        "{err}"
    );
    write(summerd::model::AUDIO_EXTRACTOR);
    assert!(Dataset::load(&p).is_ok());
    // The wide-band version is one summerd also makes (`dataset emodb --band wide`).
    write(summerd::model::AUDIO_EXTRACTOR_WIDE);
    assert!(Dataset::load(&p).is_ok());
    write("opensmile/egemaps-v02");
    assert!(Dataset::load(&p).is_ok());
}

#[test]
fn recipes_reject_unknown_keys_by_name() {
    let _rng = rng();
    let err = Recipe::parse("[model]\nd_modle = 3\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("d_modle"), "{err}");
    let err = Recipe::parse("[model]\nrouting = { kind = \"dynamic\", beta = 1.0 }\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("beta"), "{err}");
    let r =
        Recipe::parse("[model]\nrouting = { kind = \"top_k\", k = 2 }\n[kd]\nmode = \"logit\"\n")
            .unwrap();
    assert_eq!(r.model.routing, Routing::TopK { k: 2 });
}

#[test]
fn weight_averaging_is_judged_on_dev_learns_and_is_checked() {
    let _rng = rng();
    let (train_ds, dev_ds, test_ds) = (synthetic(40, 11), synthetic(12, 12), synthetic(12, 13));
    let splits = [&train_ds, &dev_ds, &test_ds];
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = quick_recipe();
    recipe.train.student = false;
    let plain = run_on(&recipe, splits, &dir.path().join("p"));
    recipe.train.ema = 0.9;
    let avg = run_on(&recipe, splits, &dir.path().join("a"));
    let (p, a) = (plain.teacher.unwrap(), avg.teacher.unwrap());
    // The averaged weights are the ones judged: another dev curve from the same steps.
    assert_ne!(p.dev_wf1, a.dev_wf1);
    assert!(
        a.test.as_ref().unwrap().wa > 70.0,
        "averaged test WA {}",
        a.test.as_ref().unwrap().wa
    );
    // The kept weights are the averaged ones of the best epoch: the saved model scores its dev
    // figure again.
    let kept = summerd::model::Model::load(&dir.path().join("a"), Device::Cpu).unwrap();
    let (t, pr, _) = train::predict(&kept.net, &dev_ds, Device::Cpu, 64);
    let again = summerd::train::metrics::compute(&t, &pr, kept.manifest.classes.len());
    assert!(
        (again.wf1 - a.dev.wf1).abs() < 1e-9,
        "{} vs {}",
        again.wf1,
        a.dev.wf1
    );
    // Out of range: a clear error naming the key.
    recipe.train.ema = 1.0;
    let err = train::run(
        &recipe,
        &train_ds,
        &dev_ds,
        None,
        &dir.path().join("x"),
        Device::Cpu,
    )
    .expect_err("ema = 1 refused")
    .to_string();
    assert!(err.contains("train.ema"), "{err}");
}

#[test]
fn training_learns_is_deterministic_and_touches_test_once() {
    let _rng = rng();
    let (train_ds, dev_ds, test_ds) = (synthetic(40, 11), synthetic(12, 12), synthetic(12, 13));
    let splits = [&train_ds, &dev_ds, &test_ds];
    let dir = tempfile::tempdir().unwrap();
    let recipe = quick_recipe();
    let a = run_on(&recipe, splits, &dir.path().join("a"));
    let b = run_on(&recipe, splits, &dir.path().join("b"));
    let (ta, sa) = (a.teacher.as_ref().unwrap(), a.student.as_ref().unwrap());
    // Learns: three separable classes, well above chance (33 %).
    assert!(
        ta.test.as_ref().unwrap().wa > 70.0,
        "teacher test WA {}",
        ta.test.as_ref().unwrap().wa
    );
    assert!(
        sa.test.as_ref().unwrap().wa > 70.0,
        "student test WA {}",
        sa.test.as_ref().unwrap().wa
    );
    // Same seed, same result, bit for bit.
    assert_eq!(sa.test, b.student.as_ref().unwrap().test);
    let sha = |d: &str| {
        Model::load(&dir.path().join(d), Device::Cpu)
            .unwrap()
            .manifest
            .weights_sha256
    };
    assert_eq!(sha("a"), sha("b"));
    assert_eq!(sha("a/teacher"), sha("b/teacher"));
    // The report and pictures are written.
    for f in ["report.json", "teacher-test.svg", "student-test.svg"] {
        assert!(dir.path().join("a").join(f).exists(), "{f}");
    }
    // The saved student evaluates to the reported test metrics.
    let m = Model::load(&dir.path().join("a"), Device::Cpu).unwrap();
    let (metrics, _) = train::evaluate(&m.net, &test_ds, Device::Cpu, 64);
    assert_eq!(Some(metrics), sa.test);
}

#[test]
fn leave_one_group_out_pools_every_group() {
    let _rng = rng();
    let ds = synthetic(24, 21);
    let r = train::loso(&quick_recipe(), &ds, Device::Cpu).unwrap();
    assert_eq!(r.folds.len(), 4);
    assert_eq!(r.pooled.n, ds.len());
    assert!(r.pooled.wa > 60.0, "{}", r.pooled.wa);
}

/// The ERC literature's pickle layout (written here, small) converts to the native format,
/// trains and evaluates.
#[test]
fn erc_feature_pickles_convert_train_and_evaluate() {
    let _rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("IEMOCAP_features.pkl");
    let script = r#"
import pickle, sys, numpy as np
rng = np.random.default_rng(0)
centres = rng.normal(size=(3, 10)) * 2
ids, spk, lab, text, audio, vis, sent = {}, {}, {}, {}, {}, {}, {}
vids = [f"Ses0{i}" for i in range(40)]
for i, v in enumerate(vids):
    n = 3 + i % 4
    y = rng.integers(0, 3, size=n)
    ids[v] = [f"{v}_{k}" for k in range(n)]
    spk[v] = ["M" if k % 2 else "F" for k in range(n)]
    lab[v] = [int(x) for x in y]
    text[v] = [centres[x] + rng.normal(size=10) for x in y]
    audio[v] = [rng.normal(size=6) + x for x in y]
    vis[v] = [rng.normal(size=5) for x in y]
    sent[v] = ["..." for _ in range(n)]
obj = (ids, spk, lab, text, audio, vis, sent, vids[:32], vids[32:])
pickle.dump(obj, open(sys.argv[1], "wb"))
"#;
    let ok = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(&pkl)
        .status()
        .unwrap()
        .success();
    assert!(ok, "writing the pickle");
    let out = dir.path().join("native");
    let conv = std::process::Command::new(common::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/convert_erc_pickle.py"
        ))
        .arg(&pkl)
        .arg(&out)
        .args(["--classes", "happy,sad,neutral"])
        .output()
        .unwrap();
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    let train_ds = Dataset::load(&out.join("train.safetensors")).unwrap();
    let dev_ds = Dataset::load(&out.join("dev.safetensors")).unwrap();
    let test_ds = Dataset::load(&out.join("test.safetensors")).unwrap();
    assert_eq!(train_ds.meta.features.dims(), [10, 6, 5]);
    assert_eq!(
        (
            train_ds.dialogues(),
            dev_ds.dialogues(),
            test_ds.dialogues()
        ),
        (29, 3, 8)
    );
    // Speakers 'F'/'M' numbered by first appearance: F = 0, M = 1.
    assert_eq!(
        Vec::<i64>::try_from(&train_ds.speaker.narrow(0, 0, 3)).unwrap(),
        vec![0, 1, 0]
    );
    let r = train::run(
        &quick_recipe(),
        &train_ds,
        &dev_ds,
        Some(&test_ds),
        &dir.path().join("m"),
        Device::Cpu,
    )
    .unwrap();
    let wa = r.student.unwrap().test.unwrap().wa;
    assert!(wa > 70.0, "test WA {wa}");
}

#[test]
fn ablation_sets_name_their_variants() {
    use summerd::train::AblationSet;
    let base = Recipe::default();
    let alpha = AblationSet::Alpha.variants(&base);
    let names: Vec<&str> = alpha.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["alpha=0.5", "alpha=1", "alpha=1.5", "alpha=2", "alpha=2.5"]
    );
    assert_eq!(alpha[0].1.model.routing, Routing::Dynamic { alpha: 0.5 });
    let kd = AblationSet::Kd.variants(&base);
    assert_eq!(kd.len(), 5);
    assert!(kd.iter().all(|(_, r)| r.train.student));
    assert_eq!(kd[0].0, "kd=none");
    assert_eq!(AblationSet::Routing.variants(&base).len(), 4);
    assert_eq!(
        AblationSet::Fusion.variants(&base)[3].1.model.fusion,
        Fusion::Concat
    );
}

/// Fine-tuning the encoder's top layer with the teacher: the tuned layer is shipped with the
/// model, and the daemon's encoder loaded with it makes the vectors the trainer made.
#[test]
fn text_encoder_top_layer_tunes_and_ships_with_the_model() {
    tunes_and_ships(1, 0, TuneMode::Joint, 5_000_000..10_000_000);
}

/// The same with low-rank adapters on two layers: a file of a few hundred kB, which the
/// daemon's encoder folds into its weights.
#[test]
fn text_encoder_adapters_tune_and_ship_with_the_model() {
    tunes_and_ships(2, 4, TuneMode::Joint, 100_000..400_000);
}

/// Adapters tuned on single utterances first (`text.mode = "utterance"`), then the teacher on
/// their vectors: the same shipping and agreement, and the report has the tuning's dev curve.
#[test]
fn text_encoder_tuned_on_utterances_first_ships_with_the_model() {
    tunes_and_ships(2, 4, TuneMode::Utterance, 100_000..400_000);
}

fn tunes_and_ships(
    layers: usize,
    lora_rank: usize,
    mode: TuneMode,
    file_bytes: std::ops::Range<u64>,
) {
    let _rng = rng();
    let enc_dir = std::path::Path::new(summerd::text::DEFAULT_DIR);
    if !enc_dir.join("model.safetensors").exists() {
        eprintln!(
            "SKIPPED: {} is absent (run tests/setup.sh)",
            enc_dir.display()
        );
        return;
    }
    let enc = summerd::text::TextEncoder::load(enc_dir, 32, Device::Cpu).unwrap();
    let words = [
        ["wonderful", "great", "lovely", "happy"],
        ["terrible", "awful", "sad", "miserable"],
        ["table", "window", "street", "paper"],
    ];
    let make = |dialogues: usize, seed: usize| {
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        let mut offsets = vec![0i64];
        for d in 0..dialogues {
            for u in 0..3 {
                let c = (d * 7 + u * 3 + seed) % 3;
                texts.push(format!("this is {} indeed", words[c][(d + u + seed) % 4]));
                labels.push(c as i64);
            }
            offsets.push(texts.len() as i64);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let v = enc.embed(&enc.tokenize(&refs).unwrap()).unwrap();
        let n = texts.len() as i64;
        Dataset {
            meta: Sidecar {
                format: FORMAT.into(),
                classes: vec!["pos".into(), "neg".into(), "neu".into()],
                features: Features {
                    text: Some(FeatureSpec {
                        extractor: summerd::model::TEXT_EXTRACTOR.into(),
                        dim: 384,
                    }),
                    audio: None,
                    visual: None,
                },
                dialogues: (0..dialogues).map(|d| format!("d{d}")).collect(),
                groups: (0..dialogues).map(|d| format!("d{d}")).collect(),
                source: "words".into(),
                texts,
            },
            offsets,
            features: [
                v,
                summerd::train::data::absent(n),
                summerd::train::data::absent(n),
            ],
            present: summerd::train::data::presence(n, [true, false, false]),
            speaker: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
            label: Tensor::from_slice(&labels),
        }
    };
    let (tr, dv, te) = (make(16, 0), make(4, 1), make(4, 2));
    let mut recipe = quick_recipe();
    recipe.text.tune_layers = layers;
    recipe.text.lora_rank = lora_rank;
    recipe.text.mode = mode;
    recipe.text.epochs = 2;
    recipe.text.batch = 8;
    recipe.text.lr = if lora_rank > 0 { 1e-3 } else { 1e-4 };
    recipe.text.max_tokens = 32;
    recipe.train.epochs = 2;
    let dir = tempfile::tempdir().unwrap();
    let r = train::run(&recipe, &tr, &dv, Some(&te), dir.path(), Device::Cpu).unwrap();
    assert!(r.student.is_some());
    let utterance_curve = r
        .teacher
        .as_ref()
        .unwrap()
        .text_tuning
        .as_ref()
        .map(|t| t.dev_wf1.len());
    assert_eq!(
        utterance_curve,
        (mode == TuneMode::Utterance).then_some(2),
        "utterance-level tuning ran for its epochs, and only in that mode"
    );
    let m = Model::load(dir.path(), Device::Cpu).unwrap();
    let tuned = m
        .manifest
        .text_tuned
        .clone()
        .expect("the manifest names the tuned layer");
    assert_eq!(tuned.layers, layers);
    assert_eq!(tuned.lora_rank, lora_rank);
    assert!(
        m.manifest
            .features
            .text
            .as_ref()
            .unwrap()
            .extractor
            .ends_with("+tuned")
    );
    let file = dir.path().join(&tuned.file);
    let bytes = std::fs::metadata(&file).unwrap().len();
    assert!(
        file_bytes.contains(&bytes),
        "delta of {bytes} bytes, expected {file_bytes:?}"
    );
    // The frozen-encoder data no longer matches the model's features: a clear error.
    assert!(
        m.manifest
            .features
            .check_against(&tr.meta.features)
            .is_err()
    );
    // The tuned layer changed the vectors, and the daemon's encoder with it agrees with the
    // trainer's vectors (which went through the differentiable copy of the layer).
    let tuned_enc =
        summerd::text::TextEncoder::load_tuned(enc_dir, 32, Device::Cpu, Some(&file)).unwrap();
    let refs: Vec<&str> = te.meta.texts.iter().map(String::as_str).collect();
    let daemon = tuned_enc
        .embed(&tuned_enc.tokenize(&refs).unwrap())
        .unwrap();
    let trainer = {
        let mut t =
            summerd::train::tune::Tuner::new(enc_dir, layers, &recipe.text, Device::Cpu).unwrap();
        t.load(&file).unwrap();
        let cache = summerd::train::tune::Tuner::cache(&enc, &te.meta.texts, t.first).unwrap();
        tch::no_grad(|| t.retext(&te, &cache)).features[0].shallow_clone()
    };
    let cos = Tensor::cosine_similarity(&daemon, &trainer, -1, 1e-8)
        .min()
        .double_value(&[]);
    assert!(
        cos > 0.9999,
        "daemon vs trainer vectors: worst cosine {cos}"
    );
    let moved = Tensor::cosine_similarity(&daemon, &te.features[0], -1, 1e-8)
        .min()
        .double_value(&[]);
    assert!(
        moved < 0.999999,
        "the tuned layers did not change the vectors"
    );
}

/// The daemon's incremental step (one utterance at a time per stream, past read from the
/// stream's cache slot) equals the full forward pass over the whole conversation, for every
/// fusion order and concatenation, 1 and 2 layers, with missing modalities, conversations
/// longer than the window, streams in other slots, and a provisional step (scored, not
/// committed) in between that must change nothing after it.
#[test]
fn incremental_step_equals_the_full_forward() {
    let _g = rng();
    for fusion in [
        Fusion::TextAudioVisual,
        Fusion::TextVisualAudio,
        Fusion::AudioVisualText,
        Fusion::Concat,
    ] {
        for (layers, own_residual) in [(1, false), (2, true)] {
            tch::manual_seed(5);
            let cfg = ModelConfig {
                fusion,
                layers,
                own_residual,
                ..small_cfg()
            };
            let m = model(&cfg);
            let (b, t) = (3, 11);
            let mut x = batch(b, t, DIMS);
            x.present = Tensor::rand([b, t, 3], (Kind::Float, Device::Cpu)).gt(0.3);
            let full = tch::no_grad(|| m.net.forward(&x, false)).logits;
            // Slots 4, 0 and 2 of a pool that starts with 2 and grows.
            let mut pool = m.net.step_pool(2, Device::Cpu);
            pool.grow(5);
            let slots = Tensor::from_slice(&[4i64, 0, 2]);
            let at = |k: i64, features: [Tensor; 3]| summerd::model::StepInput {
                slots: slots.shallow_clone(),
                features,
                present: x.present.select(1, k),
                speaker: x.speaker.select(1, k),
                position: Tensor::full([b], k.min(cfg.window - 1), (Kind::Int64, Device::Cpu)),
            };
            for k in 0..t {
                if k == 5 {
                    let noise = |d: i64| Tensor::randn([b, d], (Kind::Float, Device::Cpu));
                    let (_, rows) = tch::no_grad(|| {
                        m.net.step(
                            &pool,
                            &at(k, [noise(DIMS[0]), noise(DIMS[1]), noise(DIMS[2])]),
                        )
                    });
                    pool.commit(&rows, &[false; 3]);
                }
                let f = [0, 1, 2].map(|i| x.features[i].select(1, k));
                let (logits, rows) = tch::no_grad(|| m.net.step(&pool, &at(k, f)));
                pool.commit(&rows, &[true; 3]);
                let diff = (&full.select(1, k) - &logits).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "{fusion:?} layers {layers} utterance {k}: {diff}"
                );
            }
        }
    }
}

#[test]
fn asr_punctuation_rewrites_a_share_of_the_texts_and_nothing_else() {
    let mut ds = synthetic(40, 3);
    let n = ds.len();
    ds.meta.texts = (0..n).map(|i| format!("Line {i}! Really?")).collect();
    let none = train::tune::asr_punctuation(&ds, 0.0, 1);
    assert_eq!(none.meta.texts, ds.meta.texts);
    let all = train::tune::asr_punctuation(&ds, 1.0, 1);
    assert!(
        all.meta
            .texts
            .iter()
            .all(|t| !t.contains('!') && t.ends_with(". Really?"))
    );
    let half = train::tune::asr_punctuation(&ds, 0.5, 1);
    let changed = half.meta.texts.iter().filter(|t| !t.contains('!')).count();
    assert!(n / 4 < changed && changed < 3 * n / 4, "{changed} of {n}");
    assert_eq!(
        half.meta.texts,
        train::tune::asr_punctuation(&ds, 0.5, 1).meta.texts
    );
    // Rows, labels and dialogues as they were.
    assert_eq!(half.len(), n);
    assert_eq!(half.offsets, ds.offsets);
    assert!(half.label.equal(&ds.label));
}
