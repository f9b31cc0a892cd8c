//! The inference engine against the network itself: utterance-by-utterance scoring with the
//! engine's sliding conversation state must give what one forward pass over the whole
//! conversation gives (the trainer's view), in any batching; provisional utterances never
//! join the context; forgetting a stream starts it afresh; the model must fit the daemon.

use std::path::{Path, PathBuf};
use std::time::Instant;

use summerd::acoustic::Band;
use summerd::infer::engine::{Engine, Utterance, daemon_features};
use summerd::model::norm::SpeakerNorm;
use summerd::model::{Batch, Features, Model, ModelConfig, NetKind};
use summerd::text::Precision;
use summerd::vision::stage::VisualVector;
use tch::{Device, Kind, Tensor};

fn encoder_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/third_party/all-minilm-l6-v2")
}

/// The engine on the model in `dir`, as the tests load it (f32 text, on the CPU).
fn engine(dir: &Path) -> Engine {
    Engine::load(dir, &encoder_dir(), 128, Precision::F32, Device::Cpu).unwrap()
}

fn classes() -> Vec<String> {
    summerd::train::writers::MELD_CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// A small random student with window 3, saved to a temporary directory.
fn model(layers: i64) -> (tempfile::TempDir, SpeakerNorm) {
    let _g = RNG.lock().unwrap();
    tch::manual_seed(3);
    let cfg = ModelConfig {
        d_model: 32,
        heads: 2,
        layers,
        ffn_hidden: 32,
        dropout: 0.0,
        window: 3,
        speakers: 2,
        experts: 4,
        expert_hidden: 16,
        own_residual: true,
        ..ModelConfig::default()
    };
    let mut m = Model::new(
        NetKind::Fused,
        daemon_features(384, false, Band::Telephone),
        classes(),
        &cfg,
        Device::Cpu,
    );
    let norm = SpeakerNorm {
        prior_weight: 2.0,
        mean: vec![0.5; 88],
        std: vec![2.0; 88],
    };
    m.manifest.speaker_norm = Some(norm.clone());
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    (dir, norm)
}

static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A pooled face seen on `fraction` of the span's frames, random values (the caller holds RNG).
fn face(fraction: f32) -> VisualVector {
    let e = Tensor::randn([128], (Kind::Float, Device::Cpu));
    let p = Tensor::randn([7], (Kind::Float, Device::Cpu)).softmax(0, Kind::Float);
    let mut probs = [0f32; 7];
    probs.copy_from_slice(&Vec::<f32>::try_from(&p).unwrap());
    VisualVector {
        present: true,
        face_fraction: fraction,
        frames: 10,
        probs,
        embedding: Vec::<f32>::try_from(&e).unwrap(),
    }
}

/// What the model reads of an utterance's face.
fn seen(u: &Utterance) -> Option<Vec<f32>> {
    u.face.as_ref().and_then(VisualVector::model_input)
}

fn conversation(n: usize) -> Vec<Utterance> {
    let _g = RNG.lock().unwrap();
    tch::manual_seed(11);
    (0..n)
        .map(|i| {
            let e = Tensor::randn([384], (Kind::Float, Device::Cpu));
            let e = &e / e.norm();
            let a = Tensor::randn([88], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
            Utterance {
                stream: "s".into(),
                seq: i as u64 + 1,
                // Three speakers for a model with two speaker embeddings: the third shares.
                speaker: ["ann", "bob", "cy"][i % 3].into(),
                start: i as f64,
                end: i as f64 + 0.9,
                text: format!("utterance {i}"),
                embedding: Some(Vec::<f32>::try_from(&e).unwrap()),
                // Every fourth utterance without audio.
                audio: (i % 4 != 3).then(|| Vec::<f32>::try_from(&a).unwrap()),
                // A face on most utterances; seen too briefly on every fifth (the model reads
                // none); no video on every third.
                face: (i % 3 != 2).then(|| face(if i % 5 == 4 { 0.3 } else { 1.0 })),
                provisional: false,
                publish_text: false,
                arrival: Instant::now(),
            }
        })
        .collect()
}

/// Class probabilities of every utterance from one forward pass over the whole conversation.
fn reference(dir: &std::path::Path, norm: &SpeakerNorm, conv: &[Utterance]) -> Vec<Vec<f32>> {
    let m = Model::load(dir, Device::Cpu).unwrap();
    let n = conv.len() as i64;
    let mut stats = std::collections::HashMap::new();
    let mut ids = std::collections::HashMap::new();
    let (mut text, mut audio, mut present, mut speaker) = (vec![], vec![], vec![], vec![]);
    let mut visual = vec![];
    for u in conv {
        text.extend(u.embedding.clone().unwrap());
        match &u.audio {
            Some(a) => {
                let s = stats
                    .entry(u.speaker.clone())
                    .or_insert_with(|| norm.fresh());
                audio.extend(norm.apply(s, a));
            }
            None => audio.extend(vec![0.0; 88]),
        }
        let v = seen(u);
        present.extend([1u8, u8::from(u.audio.is_some()), u8::from(v.is_some())]);
        visual.extend(v.unwrap_or_else(|| vec![0.0; 135]));
        let next = ids.len() as i64;
        speaker.push((*ids.entry(u.speaker.clone()).or_insert(next)).min(1));
    }
    let b = Batch {
        features: [
            Tensor::from_slice(&text).view([1, n, 384]),
            Tensor::from_slice(&audio).view([1, n, 88]),
            Tensor::from_slice(&visual).view([1, n, 135]),
        ],
        present: Tensor::from_slice(&present)
            .view([1, n, 3])
            .to_kind(Kind::Bool),
        valid: Tensor::ones([1, n], (Kind::Bool, Device::Cpu)),
        speaker: Tensor::from_slice(&speaker).view([1, n]),
        label: Tensor::full([1, n], -1, (Kind::Int64, Device::Cpu)),
        offset: None,
    };
    let p = tch::no_grad(|| m.net.forward(&b, false))
        .logits
        .softmax(-1, Kind::Float)
        .squeeze_dim(0);
    (0..n)
        .map(|i| Vec::<f32>::try_from(p.get(i)).unwrap())
        .collect()
}

fn probs(e: &summerd::events::EmotionEvent, classes: &[String]) -> Vec<f32> {
    classes.iter().map(|c| e.probs[c]).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}

#[test]
fn streaming_one_by_one_or_in_batches_equals_the_whole_conversation() {
    for layers in [1, 2] {
        let (dir, norm) = model(layers);
        let conv = conversation(14);
        let want = reference(dir.path(), &norm, &conv);
        let cl = classes();
        let mut one = engine(dir.path());
        for (i, u) in conv.iter().enumerate() {
            let e = one.infer(std::slice::from_ref(u)).unwrap();
            assert!(
                close(&probs(&e[0], &cl), &want[i]),
                "layers {layers}, utterance {i}: {:?} vs {:?}",
                probs(&e[0], &cl),
                want[i]
            );
            assert_eq!(e[0].modalities.audio, u.audio.is_some());
            assert_eq!(e[0].modalities.visual, seen(u).is_some());
            assert!(e[0].modalities.text);
        }
        // All at once (one forward pass) and in uneven chunks: the same.
        let mut all = engine(dir.path());
        let evs = all.infer(&conv).unwrap();
        let mut chunks = engine(dir.path());
        let mut evs2 = Vec::new();
        for c in conv.chunks(5) {
            evs2.extend(chunks.infer(c).unwrap());
        }
        for i in 0..conv.len() {
            assert!(close(&probs(&evs[i], &cl), &want[i]), "batch, {i}");
            assert!(close(&probs(&evs2[i], &cl), &want[i]), "chunks, {i}");
        }
    }
}

#[test]
fn provisional_utterances_do_not_join_and_forget_starts_afresh() {
    let (dir, norm) = model(1);
    let conv = conversation(6);
    let want = reference(dir.path(), &norm, &conv);
    let cl = classes();
    let mut e = engine(dir.path());
    // Another stream interleaved does not disturb this one.
    let mut other = conversation(3);
    for u in &mut other {
        u.stream = "t".into();
    }
    for (i, u) in conv.iter().enumerate() {
        if i == 3 {
            let mut p = conv[0].clone();
            p.provisional = true;
            p.seq = 99;
            let ev = e.infer(&[p, other[0].clone()]).unwrap();
            assert!(ev[0].provisional);
        }
        let ev = e.infer(std::slice::from_ref(u)).unwrap();
        assert!(close(&probs(&ev[0], &cl), &want[i]), "utterance {i}");
    }
    assert_eq!(e.streams().len(), 2);
    e.forget("s");
    assert_eq!(e.streams(), vec!["t".to_string()]);
    let ev = e.infer(&conv[..1]).unwrap();
    assert!(close(&probs(&ev[0], &cl), &want[0]), "afresh");
}

/// Forty streams in every batch (the cache pool grows past its first 16 slots), then half of
/// them detached and twenty new ones attached (freed slots reused): every stream's events are
/// those of its conversation alone.
#[test]
fn many_streams_grow_the_cache_and_reuse_freed_slots() {
    let (dir, norm) = model(1);
    let conv = conversation(5);
    let want = reference(dir.path(), &norm, &conv);
    let cl = classes();
    let mut e = engine(dir.path());
    let as_stream = |u: &Utterance, s: String| Utterance {
        stream: s,
        ..u.clone()
    };
    let mut names: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
    for (i, u) in conv.iter().enumerate() {
        let batch: Vec<Utterance> = names.iter().map(|n| as_stream(u, n.clone())).collect();
        for ev in e.infer(&batch).unwrap() {
            assert!(
                close(&probs(&ev, &cl), &want[i]),
                "{} utterance {i}",
                ev.stream
            );
        }
    }
    for n in names.drain(..20) {
        e.forget(&n);
    }
    names.extend((0..20).map(|i| format!("b{i}")));
    for (i, u) in conv.iter().enumerate() {
        let batch: Vec<Utterance> = names[20..]
            .iter()
            .map(|n| as_stream(u, n.clone()))
            .collect();
        for ev in e.infer(&batch).unwrap() {
            assert!(
                close(&probs(&ev, &cl), &want[i]),
                "{} utterance {i}",
                ev.stream
            );
        }
    }
    assert_eq!(e.streams().len(), 40);
}

/// A small untrained model with these features and causality (window 3), saved to a
/// temporary directory.
fn small_model(features: Features, causal: bool) -> tempfile::TempDir {
    let _g = RNG.lock().unwrap();
    tch::manual_seed(3);
    let mut m = Model::new(
        NetKind::Fused,
        features,
        classes(),
        &ModelConfig {
            d_model: 16,
            heads: 2,
            ffn_hidden: 16,
            expert_hidden: 8,
            experts: 2,
            window: 3,
            causal,
            ..ModelConfig::default()
        },
        Device::Cpu,
    );
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    dir
}

/// Why the engine refuses a small untrained model with these features and causality.
fn refusal(features: Features, causal: bool) -> String {
    let dir = small_model(features, causal);
    Engine::load(dir.path(), &encoder_dir(), 128, Precision::F32, Device::Cpu)
        .err()
        .expect("must be refused")
        .to_string()
}

/// A model's voices are heard through the band its manifest names: the telephone band for
/// egemaps-v02/summerd/4, wide for egemaps-v02/summerd/3.
#[test]
fn the_engine_hears_voices_through_the_models_band() {
    for band in [Band::Telephone, Band::Wide] {
        let dir = small_model(daemon_features(384, false, band), true);
        let e = engine(dir.path());
        assert_eq!(e.audio_band(), band);
    }
}

#[test]
fn a_bidirectional_model_is_refused() {
    let err = refusal(daemon_features(384, false, Band::Telephone), false);
    assert!(err.contains("bidirectional"), "{err}");
}

#[test]
fn a_model_that_reads_other_features_is_refused_by_name() {
    let mut f = daemon_features(384, false, Band::Telephone);
    f.audio.as_mut().unwrap().extractor = "egemaps-v02/opensmile".into();
    let err = refusal(f, true);
    assert!(err.contains("egemaps-v02/opensmile"), "{err}");
    // A visual input of another size (or extractor) is refused by name too.
    let mut f = daemon_features(384, false, Band::Telephone);
    f.visual.as_mut().unwrap().dim = 7;
    let err = refusal(f, true);
    assert!(err.contains("visual") && err.contains("(7-d)"), "{err}");
}

/// A model that reads faces: a face changes the answer and says so (`visual`); no face, or one
/// seen on too few of the span's frames, leaves every bit of the other modalities' answer as
/// it is; a model without a visual input ignores faces.
#[test]
fn a_face_changes_the_answer_and_a_missing_face_changes_no_bit() {
    let (dir, _) = model(1);
    let cl = classes();
    let faceless: Vec<Utterance> = conversation(6)
        .into_iter()
        .map(|u| Utterance { face: None, ..u })
        .collect();
    let run = |dir: &std::path::Path, conv: &[Utterance]| {
        let mut e = engine(dir);
        conv.iter()
            .map(|u| e.infer(std::slice::from_ref(u)).unwrap().remove(0))
            .collect::<Vec<_>>()
    };
    let base = run(dir.path(), &faceless);
    assert!(
        Engine::load(dir.path(), &encoder_dir(), 128, Precision::F32, Device::Cpu)
            .unwrap()
            .uses_visual()
    );
    let glimpsed: Vec<Utterance> = {
        let _g = RNG.lock().unwrap();
        faceless
            .iter()
            .map(|u| Utterance {
                face: Some(face(0.3)),
                ..u.clone()
            })
            .collect()
    };
    let mut one_face = faceless.clone();
    one_face[2].face = Some({
        let _g = RNG.lock().unwrap();
        face(1.0)
    });
    let brief = run(dir.path(), &glimpsed);
    let with = run(dir.path(), &one_face);
    for i in 0..faceless.len() {
        assert!(!base[i].modalities.visual && !brief[i].modalities.visual);
        assert_eq!(probs(&brief[i], &cl), probs(&base[i], &cl), "glimpse, {i}");
        assert_eq!(with[i].modalities.visual, i == 2);
        if i < 2 {
            assert_eq!(
                probs(&with[i], &cl),
                probs(&base[i], &cl),
                "before the face, {i}"
            );
        }
    }
    assert_ne!(probs(&with[2], &cl), probs(&base[2], &cl));
    // A model without a visual input loads and ignores faces.
    let mut text_audio = daemon_features(384, false, Band::Telephone);
    text_audio.visual = None;
    let plain = small_model(text_audio, true);
    assert!(
        !Engine::load(
            plain.path(),
            &encoder_dir(),
            128,
            Precision::F32,
            Device::Cpu
        )
        .unwrap()
        .uses_visual()
    );
    let a = run(plain.path(), &faceless);
    let b = run(plain.path(), &one_face);
    for i in 0..faceless.len() {
        assert!(!b[i].modalities.visual);
        assert_eq!(probs(&a[i], &cl), probs(&b[i], &cl), "no visual input, {i}");
    }
}

#[test]
fn a_stream_remembers_a_bounded_number_of_speakers() {
    let (dir, _) = model(1);
    let mut e = engine(dir.path());
    let base = conversation(1).remove(0);
    // Far more labels than remembered: the state stays bounded and inference goes on.
    for i in 0..(summerd::infer::engine::MAX_SPEAKERS * 3) {
        let mut u = base.clone();
        u.speaker = format!("label-{i}");
        u.seq = i as u64;
        assert_eq!(e.infer(&[u]).unwrap().len(), 1);
    }
    assert_eq!(
        e.speakers_of("s"),
        Some(summerd::infer::engine::MAX_SPEAKERS)
    );
}

/// A conversation checkpointed half-way and continued in another engine (another node) gives
/// the events the whole conversation gives in one; a checkpoint that does not fit is refused.
#[test]
fn a_checkpoint_continues_a_conversation_elsewhere_and_a_bad_one_is_refused() {
    let (dir, norm) = model(1);
    let conv = conversation(9);
    let want = reference(dir.path(), &norm, &conv);
    let cl = classes();
    let load = || engine(dir.path());
    let mut first = load();
    for u in &conv[..5] {
        first.infer(std::slice::from_ref(u)).unwrap();
    }
    assert!(first.scored("s", 5) && !first.scored("s", 6));
    let cp = first.checkpoint("s").unwrap();
    let bytes = cp.to_bytes();
    let back = summerd::infer::engine::Checkpoint::from_bytes(&bytes).unwrap();
    assert!(back == cp, "a checkpoint reads back exactly as written");
    let mut second = load();
    // Another stream already in the second engine keeps its own slot.
    let mut other = conversation(2);
    for u in &mut other {
        u.stream = "t".into();
    }
    second.infer(&other).unwrap();
    second.restore("s", &back).unwrap();
    assert!(second.scored("s", 5));
    for (i, u) in conv.iter().enumerate().skip(5) {
        let ev = second.infer(std::slice::from_ref(u)).unwrap();
        assert!(
            close(&probs(&ev[0], &cl), &want[i]),
            "utterance {i} after the move"
        );
    }
    // Refused, and the stream's own conversation is left as it was.
    let mut bad = cp.clone();
    bad.cache.pop();
    assert!(second.restore("u", &bad).is_err());
    let mut bad = cp.clone();
    bad.cache[0] = f32::NAN;
    assert!(second.restore("u", &bad).is_err());
    let mut bad = cp.clone();
    bad.speakers[0].1 = -1;
    assert!(second.restore("u", &bad).is_err());
    let mut bad = cp.clone();
    bad.model = "another@000000000000".into();
    assert!(second.restore("u", &bad).is_err());
    assert!(!second.has("u"));
    let text = String::from_utf8_lossy(&bytes[..bytes.iter().position(|b| *b == b'\n').unwrap()])
        .to_string();
    let shorter = text.replacen(
        "\"norms\":[[",
        "\"norms\":[[\"x\",{\"n\":1.0,\"mean\":[0.0],\"m2\":[0.0]}],[",
        1,
    );
    if shorter != text {
        let mut b = shorter.into_bytes();
        b.push(b'\n');
        b.extend(&bytes[text.len() + 1..]);
        let c = summerd::infer::engine::Checkpoint::from_bytes(&b).unwrap();
        assert!(
            second.restore("u", &c).is_err(),
            "statistics of the wrong length"
        );
    }
    assert!(summerd::infer::engine::Checkpoint::from_bytes(b"{}\n\x00").is_err());
    assert!(summerd::infer::engine::Checkpoint::from_bytes(b"no header").is_err());
}
