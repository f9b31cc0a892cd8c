//! The default model's training data: MELD dialogues as the conversational backbone with
//! EmoDB voices attached, plus EmoDB-only sequences where the words carry nothing.
//!
//! No corpus here has text and audio on the same utterances, so the student learns each
//! modality from what exists, under one documented scheme (the `[mix]` table of a recipe):
//!
//! - **Paired MELD dialogues.** Each speaker of a MELD dialogue is given a voice: an EmoDB
//!   speaker drawn from the training speakers. With probability `pair_probability` an
//!   utterance gets a clip of that voice in the utterance's emotion (MELD joy = EmoDB
//!   happiness); surprise, which EmoDB lacks, gets a clip of a random emotion of that voice, so
//!   that the presence of audio says nothing about the label. Otherwise audio is absent.
//! - **EmoDB sequences.** Each training speaker's clips, in `sequences_per_speaker` random
//!   orders, as one "dialogue" each, text absent. Boredom (not a MELD class) stays in the
//!   sequence unlabelled: the speaker's statistics and the context still see it.
//! - **Faces** (when the recipe gives `face_probability` > 0 and the build has labelled faces,
//!   [`super::faces`]): with probability `face_probability`, independently of the voice, an
//!   utterance of a MELD dialogue gets a face picture of its own emotion, drawn at random from
//!   the training faces; otherwise its face is absent. Every class gets faces at the same rate,
//!   so the presence of a face says nothing about the label. The faces are drawn from their own
//!   random stream, so the voices an utterance gets are the same with or without faces. The
//!   EmoDB sequences get no faces. `train-default` refuses training faces that leave a class
//!   without any.
//! - **Conditions** (when the recipe names `conditions`): the same clips through a real
//!   telephone codec or with noise, as `summerd dataset emodb --channel --noise` made them.
//!   Each voice of a MELD dialogue is heard with probability `condition_probability` through
//!   one of the conditions, drawn uniformly, per voice and dialogue (a call goes through one
//!   channel from start to end), from its own random stream, so the clips drawn are the same
//!   with or without conditions. Each EmoDB training speaker also gets `condition_sequences`
//!   extra sequences, each through one condition in turn, besides its clean ones.
//! - **Per-speaker normalisation**, online ([`crate::model::norm`]): every audio vector is
//!   standardised by the running statistics of its speaker in its dialogue, utterance by
//!   utterance in order, with the prior from the training speakers, exactly as the daemon
//!   does on a live call.
//!
//! The dev and test splits stay as they are (MELD text only, audio absent): nothing about the
//! held-out EmoDB speaker is used for choosing anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::classes::meld_names;
use super::clips::Clips;
use super::data::{Dataset, FORMAT, Sidecar};
use super::faces::Faces;
use crate::model::norm::SpeakerNorm;
use crate::model::{FeatureSpec, Features, VISUAL_DIM};
use crate::rng::Rng;

/// The `[mix]` table of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixConfig {
    /// Chance that a MELD utterance gets a voice.
    pub pair_probability: f64,
    /// Random orders of each EmoDB training speaker's clips.
    pub sequences_per_speaker: usize,
    /// Prior weight of the per-speaker normalisation, in utterances.
    pub prior_weight: f64,
    /// Seed of the pairing and the orders.
    pub seed: u64,
    /// Chance that a MELD utterance gets a face of its emotion (0: a model without faces).
    pub face_probability: f64,
    /// Thin the training faces so that the expression network is no more accurate on them
    /// than on the held-out faces ([`super::faces::Faces::calibrated`]).
    pub calibrate_faces: bool,
    /// Conditions the voices are also heard through (`emodb-<name>.safetensors` beside
    /// `emodb.safetensors`: `g711u`, `pink10`, ...; `summerd dataset emodb --channel --noise`).
    pub conditions: Vec<String>,
    /// Chance that a voice, for a whole MELD dialogue, is heard through one of `conditions`
    /// (drawn uniformly) instead of clean.
    pub condition_probability: f64,
    /// Extra random orders of each EmoDB training speaker's clips heard through a condition,
    /// besides the `sequences_per_speaker` clean ones: order `k` through condition `k` modulo
    /// their number.
    pub condition_sequences: usize,
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            pair_probability: 0.5,
            sequences_per_speaker: 6,
            prior_weight: 8.0,
            seed: 7,
            face_probability: 0.0,
            calibrate_faces: true,
            conditions: Vec::new(),
            condition_probability: 0.0,
            condition_sequences: 0,
        }
    }
}

/// A mix's features: the text column named as its source's, the audio column summerd's (made
/// by `audio`), and the visual column summerd's when `visual`.
fn features(text: Option<FeatureSpec>, audio: &str, visual: bool) -> Features {
    Features {
        text,
        audio: Some(FeatureSpec {
            extractor: audio.into(),
            dim: 88,
        }),
        visual: visual.then(super::faces::visual_spec),
    }
}

/// `ds` with an absent visual column of summerd's kind (a split without faces, as a model that
/// reads faces takes it); unchanged if it has one.
pub fn visual_absent(ds: &Dataset) -> Dataset {
    if ds.features[2].size()[1] == VISUAL_DIM {
        let mut same = only(ds, [true; 3]);
        same.meta
            .features
            .visual
            .get_or_insert_with(super::faces::visual_spec);
        return same;
    }
    let n = ds.len() as i64;
    let mut meta = ds.meta.clone();
    meta.features.visual = Some(super::faces::visual_spec());
    Dataset {
        meta,
        offsets: ds.offsets.clone(),
        features: [
            ds.features[0].shallow_clone(),
            ds.features[1].shallow_clone(),
            Tensor::zeros([n, VISUAL_DIM], (Kind::Float, Device::Cpu)),
        ],
        present: ds.present.logical_and(
            &Tensor::from_slice(&[1u8, 1, 0])
                .to_kind(Kind::Bool)
                .unsqueeze(0),
        ),
        speaker: ds.speaker.shallow_clone(),
        label: ds.label.shallow_clone(),
    }
}

/// `ds` with only the modalities in `keep` (text, audio, visual) present.
pub fn only(ds: &Dataset, keep: [bool; 3]) -> Dataset {
    let mask = Tensor::from_slice(&keep.map(u8::from))
        .to_kind(Kind::Bool)
        .unsqueeze(0);
    Dataset {
        meta: ds.meta.clone(),
        offsets: ds.offsets.clone(),
        features: [
            ds.features[0].shallow_clone(),
            ds.features[1].shallow_clone(),
            ds.features[2].shallow_clone(),
        ],
        present: ds.present.logical_and(&mask),
        speaker: ds.speaker.shallow_clone(),
        label: ds.label.shallow_clone(),
    }
}

/// Rows of one dialogue being built.
struct Builder {
    text_spec: Option<FeatureSpec>,
    audio_extractor: String,
    text_dim: i64,
    text: Vec<f32>,
    audio: Vec<f32>,
    /// Empty and unused without a visual column.
    visual: Option<Vec<f32>>,
    present: Vec<u8>,
    speaker: Vec<i64>,
    label: Vec<i64>,
    offsets: Vec<i64>,
    dialogues: Vec<String>,
    groups: Vec<String>,
    texts: Vec<String>,
}

impl Builder {
    fn new(text_spec: Option<FeatureSpec>, audio_extractor: &str, visual: bool) -> Builder {
        Builder {
            text_dim: text_spec.as_ref().map_or(0, |t| t.dim),
            text_spec,
            audio_extractor: audio_extractor.into(),
            text: Vec::new(),
            audio: Vec::new(),
            visual: visual.then(Vec::new),
            present: Vec::new(),
            speaker: Vec::new(),
            label: Vec::new(),
            offsets: vec![0],
            dialogues: Vec::new(),
            groups: Vec::new(),
            texts: Vec::new(),
        }
    }

    fn row(&mut self, [text, audio, face]: [Option<&[f32]>; 3], speaker: i64, label: i64) {
        match text {
            Some(t) => self.text.extend_from_slice(t),
            None => self
                .text
                .extend(std::iter::repeat_n(0.0, self.text_dim as usize)),
        }
        match audio {
            Some(a) => self.audio.extend_from_slice(a),
            None => self.audio.extend(std::iter::repeat_n(0.0, 88)),
        }
        let seen = match (&mut self.visual, face) {
            (Some(v), Some(f)) => {
                v.extend_from_slice(f);
                true
            }
            (Some(v), None) => {
                v.extend(std::iter::repeat_n(0.0, VISUAL_DIM as usize));
                false
            }
            (None, _) => false,
        };
        self.present.extend([
            u8::from(text.is_some()),
            u8::from(audio.is_some()),
            u8::from(seen),
        ]);
        self.speaker.push(speaker);
        self.label.push(label);
    }

    fn end_dialogue(&mut self, id: String, group: String) {
        self.offsets.push(self.label.len() as i64);
        self.dialogues.push(id);
        self.groups.push(group);
    }

    fn finish(self, source: String) -> Dataset {
        let n = self.label.len() as i64;
        let visual = match &self.visual {
            Some(v) => Tensor::from_slice(v).view([n, VISUAL_DIM]),
            None => Tensor::zeros([n, 0], (Kind::Float, Device::Cpu)),
        };
        Dataset {
            meta: Sidecar {
                format: FORMAT.into(),
                classes: meld_names(),
                features: features(self.text_spec, &self.audio_extractor, self.visual.is_some()),
                dialogues: self.dialogues,
                groups: self.groups,
                source,
                texts: self.texts,
            },
            offsets: self.offsets,
            features: [
                Tensor::from_slice(&self.text).view([n, self.text_dim]),
                Tensor::from_slice(&self.audio).view([n, 88]),
                visual,
            ],
            present: Tensor::from_slice(&self.present)
                .view([n, 3])
                .to_kind(Kind::Bool),
            speaker: Tensor::from_slice(&self.speaker),
            label: Tensor::from_slice(&self.label),
        }
    }
}

/// MELD dialogues with voices from `speakers` and, with `faces`, face pictures attached under
/// the pairing scheme (module docs).
pub fn pair_meld(
    meld: &Dataset,
    clips: &Clips,
    speakers: &[String],
    norm: &SpeakerNorm,
    faces: Option<&Faces>,
    cfg: &MixConfig,
) -> Dataset {
    let mut rng = Rng::new(cfg.seed);
    let mut face_rng = Rng::new(cfg.seed ^ 0xFACE);
    let mut cond_rng = Rng::new(cfg.seed ^ COND_STREAM);
    let by_label: Vec<Vec<usize>> = (0..meld.meta.classes.len())
        .map(|c| faces.map_or(Vec::new(), |f| f.of_label(c)))
        .collect();
    let text_dim = meld.features[0].size()[1];
    let spec = meld.meta.features.text.clone();
    assert_eq!(
        spec.as_ref().map(|t| t.dim),
        Some(text_dim),
        "MELD's text column"
    );
    let text = Vec::<f32>::try_from(meld.features[0].contiguous().view([-1])).expect("f32");
    let spk = Vec::<i64>::try_from(&meld.speaker).expect("i64");
    let lab = Vec::<i64>::try_from(&meld.label).expect("i64");
    let by_voice: BTreeMap<&str, Vec<usize>> =
        speakers.iter().map(|s| (s.as_str(), clips.of(s))).collect();
    let mut b = Builder::new(spec, &clips.extractor, faces.is_some());
    b.texts = meld.meta.texts.clone();
    for d in 0..meld.dialogues() {
        let mut voices: Vec<&str> = speakers.iter().map(String::as_str).collect();
        rng.shuffle(&mut voices);
        let mut stats: BTreeMap<i64, _> = BTreeMap::new();
        let mut heard: BTreeMap<i64, Option<usize>> = BTreeMap::new();
        for r in meld.offsets[d] as usize..meld.offsets[d + 1] as usize {
            let t = &text[r * text_dim as usize..(r + 1) * text_dim as usize];
            let mut audio = None;
            if !voices.is_empty() && rng.unit() < cfg.pair_probability {
                let voice = voices[spk[r] as usize % voices.len()];
                let own = &by_voice[voice];
                let same: Vec<usize> = own
                    .iter()
                    .copied()
                    .filter(|c| lab[r] >= 0 && clips.label[*c] == Some(lab[r] as usize))
                    .collect();
                let pool = if same.is_empty() { own } else { &same };
                if !pool.is_empty() {
                    let c = pool[rng.below(pool.len())];
                    let s = stats.entry(spk[r]).or_insert_with(|| norm.fresh());
                    let cond = *heard.entry(spk[r]).or_insert_with(|| {
                        draw_condition(&mut cond_rng, clips, cfg.condition_probability)
                    });
                    audio = Some(norm.apply(s, clips.vector(c, cond)));
                }
            }
            let face = faces.and_then(|f| {
                let pool = by_label.get(usize::try_from(lab[r]).ok()?)?;
                if pool.is_empty() || face_rng.unit() >= cfg.face_probability {
                    return None;
                }
                Some(&f.vectors[pool[face_rng.below(pool.len())]][..])
            });
            b.row([Some(t), audio.as_deref(), face], spk[r], lab[r]);
        }
        b.end_dialogue(meld.meta.dialogues[d].clone(), meld.meta.groups[d].clone());
    }
    let with_faces = faces.map_or(String::new(), |f| {
        format!(
            " and faces from {} pictures (p = {})",
            f.len(),
            cfg.face_probability
        )
    });
    b.finish(format!(
        "{} with EmoDB voices of speakers {} (p = {}){with_faces}",
        meld.meta.source,
        speakers.join(","),
        cfg.pair_probability
    ))
}

/// The random stream of the conditions' draws (mixed into the seed).
const COND_STREAM: u64 = 0xC0DEC;

/// One of `clips`' conditions with probability `p` (uniformly), else clean (None).
fn draw_condition(rng: &mut Rng, clips: &Clips, p: f64) -> Option<usize> {
    if clips.conditions.is_empty() || p <= 0.0 {
        return None;
    }
    (rng.unit() < p).then(|| rng.below(clips.conditions.len()))
}

/// A text-only split (MELD dev or test) with an absent audio column of `audio`'s vectors, as a
/// model that also reads them takes it.
pub fn audio_absent(ds: &Dataset, audio: &str) -> Dataset {
    let n = ds.len() as i64;
    let mut meta = ds.meta.clone();
    meta.features = Features {
        visual: ds.meta.features.visual.clone(),
        ..features(ds.meta.features.text.clone(), audio, false)
    };
    Dataset {
        meta,
        offsets: ds.offsets.clone(),
        features: [
            ds.features[0].shallow_clone(),
            Tensor::zeros([n, 88], (Kind::Float, Device::Cpu)),
            ds.features[2].shallow_clone(),
        ],
        present: ds.present.shallow_clone(),
        speaker: ds.speaker.shallow_clone(),
        label: ds.label.shallow_clone(),
    }
}

/// Each of `speakers`' clips as `orders` random sequences heard clean, then
/// `condition_orders` more each through one of `clips`' conditions in turn; text absent (a
/// column of `text`'s kind, when given, as the data it is mixed with or the model that reads it
/// has), audio normalised online along the sequence.
pub fn speaker_sequences(
    clips: &Clips,
    speakers: &[String],
    norm: &SpeakerNorm,
    text: Option<&FeatureSpec>,
    orders: usize,
    seed: u64,
    condition_orders: usize,
) -> Dataset {
    let mut rng = Rng::new(seed);
    // The conditioned orders draw from their own stream: the clean ones are the same with or
    // without them.
    let mut cond_rng = Rng::new(seed ^ COND_STREAM);
    let mut b = Builder::new(text.cloned(), &clips.extractor, false);
    let conditioned = if clips.conditions.is_empty() {
        0
    } else {
        condition_orders
    };
    for s in speakers {
        for o in 0..orders + conditioned {
            let mut idx = clips.of(s);
            let cond = (o >= orders).then(|| (o - orders) % clips.conditions.len());
            if cond.is_some() {
                cond_rng.shuffle(&mut idx);
            } else {
                rng.shuffle(&mut idx);
            }
            let mut st = norm.fresh();
            for c in idx {
                let a = norm.apply(&mut st, clips.vector(c, cond));
                let label = clips.label[c].map_or(-1, |l| l as i64);
                b.row([None, Some(&a), None], 0, label);
            }
            b.end_dialogue(format!("emodb-{s}-{o}"), s.clone());
        }
    }
    b.finish(format!(
        "EmoDB speakers {} as sequences, online per-speaker normalisation",
        speakers.join(",")
    ))
}

/// Datasets with the same classes and features, one after the other.
pub fn concat(parts: &[&Dataset]) -> Dataset {
    let first = parts[0];
    let mut meta = first.meta.clone();
    meta.dialogues.clear();
    meta.groups.clear();
    meta.texts.clear();
    let mut offsets = vec![0i64];
    let keep_texts = parts.iter().all(|p| !p.meta.texts.is_empty());
    for p in parts {
        assert_eq!(p.meta.features, first.meta.features, "same features");
        let base = *offsets.last().expect("non-empty");
        offsets.extend(p.offsets[1..].iter().map(|o| o + base));
        meta.dialogues.extend(p.meta.dialogues.iter().cloned());
        meta.groups.extend(p.meta.groups.iter().cloned());
        if keep_texts {
            meta.texts.extend(p.meta.texts.iter().cloned());
        }
    }
    meta.source = parts
        .iter()
        .map(|p| p.meta.source.as_str())
        .collect::<Vec<_>>()
        .join(" + ");
    let cat = |f: &dyn Fn(&Dataset) -> &Tensor| {
        Tensor::cat(&parts.iter().map(|p| f(p)).collect::<Vec<_>>(), 0)
    };
    Dataset {
        meta,
        offsets,
        features: [
            cat(&|d| &d.features[0]),
            cat(&|d| &d.features[1]),
            cat(&|d| &d.features[2]),
        ],
        present: cat(&|d| &d.present),
        speaker: cat(&|d| &d.speaker),
        label: cat(&|d| &d.label),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AUDIO_EXTRACTOR;

    fn clips() -> Clips {
        // Two speakers, three clips each: anger, joy, boredom.
        let mut audio = Vec::new();
        let mut speaker = Vec::new();
        let mut label = Vec::new();
        for (s, base) in [("08", 0.0f32), ("09", 100.0)] {
            for (k, l) in [Some(6usize), Some(4), None].into_iter().enumerate() {
                audio.push(vec![base + k as f32; 88]);
                speaker.push(s.to_string());
                label.push(l);
            }
        }
        Clips {
            audio,
            speaker,
            label,
            conditions: Vec::new(),
            extractor: AUDIO_EXTRACTOR.into(),
        }
    }

    fn meld() -> Dataset {
        // One dialogue of four utterances, two speakers; labels anger, joy, surprise, unlabelled.
        let n = 4;
        Dataset {
            meta: Sidecar {
                format: FORMAT.into(),
                classes: meld_names(),
                features: Features {
                    text: Some(FeatureSpec {
                        extractor: crate::model::TEXT_EXTRACTOR.into(),
                        dim: 2,
                    }),
                    audio: None,
                    visual: None,
                },
                dialogues: vec!["d0".into()],
                groups: vec!["d0".into()],
                source: "test".into(),
                texts: vec![],
            },
            offsets: vec![0, n],
            features: [
                Tensor::ones([n, 2], (Kind::Float, Device::Cpu)),
                Tensor::zeros([n, 0], (Kind::Float, Device::Cpu)),
                Tensor::zeros([n, 0], (Kind::Float, Device::Cpu)),
            ],
            present: super::super::data::presence(n, [true, false, false]),
            speaker: Tensor::from_slice(&[0i64, 1, 0, 1]),
            label: Tensor::from_slice(&[6i64, 4, 1, -1]),
        }
    }

    #[test]
    fn conditions_replace_a_voice_for_a_whole_dialogue_and_draw_the_same_clips() {
        let clean = clips();
        // One condition: every vector plus 1000, so the raw values say which was drawn.
        let through: Vec<Vec<f32>> = clean
            .audio
            .iter()
            .map(|v| v.iter().map(|x| x + 1000.0).collect())
            .collect();
        let mut c = clips();
        c.conditions.push(("g711u".into(), through));
        let sp = c.speakers();
        let norm = SpeakerNorm {
            prior_weight: 1e9, // the prior alone: the output is the raw vector, shifted by 0
            mean: vec![0.0; 88],
            std: vec![1.0; 88],
        };
        let base = MixConfig {
            pair_probability: 1.0,
            ..MixConfig::default()
        };
        let raw = |ds: &Dataset| Vec::<f32>::try_from(ds.features[1].select(1, 0)).unwrap();
        let plain = raw(&pair_meld(&meld(), &clean, &sp, &norm, None, &base));
        let all = MixConfig {
            conditions: vec!["g711u".into()],
            condition_probability: 1.0,
            ..base.clone()
        };
        let heard = raw(&pair_meld(&meld(), &c, &sp, &norm, None, &all));
        // The same clips, each through the condition.
        assert_eq!(heard.len(), plain.len());
        for (h, p) in heard.iter().zip(&plain) {
            assert!((h - p - 1000.0).abs() < 1e-2, "{h} vs {p}");
        }
        // Probability 0, or no conditions loaded: clean.
        let none = MixConfig {
            condition_probability: 0.0,
            ..all.clone()
        };
        assert_eq!(raw(&pair_meld(&meld(), &c, &sp, &norm, None, &none)), plain);
        // Sequences: the clean orders as without conditions, then the extra ones, each wholly
        // through a condition.
        let clean_seq = raw(&speaker_sequences(&clean, &sp, &norm, None, 2, 3, 5));
        let seq = speaker_sequences(&c, &sp, &norm, None, 2, 3, 5);
        let v = raw(&seq);
        assert_eq!(seq.dialogues(), 2 * (2 + 5));
        let mut clean_rows = Vec::new();
        for d in 0..seq.dialogues() {
            let rows: Vec<usize> = (seq.offsets[d] as usize..seq.offsets[d + 1] as usize).collect();
            let through = d % 7 >= 2;
            for r in &rows {
                assert_eq!(v[*r] >= 500.0, through, "dialogue {d}");
            }
            if !through {
                clean_rows.extend(rows.iter().map(|r| v[*r]));
            }
        }
        assert_eq!(clean_rows, clean_seq);
    }

    #[test]
    fn always_paired_meld_gets_a_voice_of_the_same_emotion() {
        let c = clips();
        let sp = c.speakers();
        let norm = SpeakerNorm {
            prior_weight: 0.0,
            mean: vec![0.0; 88],
            std: vec![1.0; 88],
        };
        let cfg = MixConfig {
            pair_probability: 1.0,
            ..MixConfig::default()
        };
        let ds = pair_meld(&meld(), &c, &sp, &norm, None, &cfg);
        let present = Vec::<u8>::try_from(ds.present.to_kind(Kind::Uint8).view([-1])).unwrap();
        // Every utterance has text and audio.
        assert_eq!(present, vec![1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0]);
        assert_eq!(ds.features[1].size(), vec![4, 88]);
        // Prior weight 0: the first utterance of each speaker normalises to exactly 0.
        let a0 = ds.features[1].get(0).abs().max().double_value(&[]);
        assert_eq!(a0, 0.0);
        let never = pair_meld(
            &meld(),
            &c,
            &sp,
            &norm,
            None,
            &MixConfig {
                pair_probability: 0.0,
                ..cfg.clone()
            },
        );
        let audio_present = never.present.select(1, 1).any().int64_value(&[]);
        assert_eq!(audio_present, 0);
        let absent = audio_absent(&meld(), AUDIO_EXTRACTOR);
        assert_eq!(absent.meta.features, never.meta.features);
        assert!(absent.present.equal(&never.present));
        assert!(absent.features[1].equal(&never.features[1]));
        // The text column keeps its source's name (a tuned encoder's vectors stay tuned).
        assert_eq!(ds.meta.features.text, meld().meta.features.text);
        let mut tuned = meld();
        tuned.meta.features.mark_text_tuned();
        for d in [
            pair_meld(&tuned, &c, &sp, &norm, None, &cfg),
            audio_absent(&tuned, AUDIO_EXTRACTOR),
        ] {
            assert_eq!(d.meta.features.text, tuned.meta.features.text);
        }
    }

    #[test]
    fn sequences_hold_every_clip_once_per_order_with_boredom_unlabelled() {
        let c = clips();
        let norm = c.prior(&c.speakers(), 8.0);
        let text = FeatureSpec {
            extractor: crate::model::tuned_extractor(crate::model::TEXT_EXTRACTOR),
            dim: 2,
        };
        let ds = speaker_sequences(&c, &["09".to_string()], &norm, Some(&text), 3, 1, 0);
        // The absent text column is the kind the caller reads.
        assert_eq!(ds.meta.features.text.as_ref(), Some(&text));
        assert_eq!(ds.features[0].size(), vec![9, 2]);
        assert_eq!(ds.dialogues(), 3);
        assert_eq!(ds.len(), 9);
        let labels = Vec::<i64>::try_from(&ds.label).unwrap();
        assert_eq!(labels.iter().filter(|l| **l == -1).count(), 3);
        let text_present = ds.present.select(1, 0).any().int64_value(&[]);
        assert_eq!(text_present, 0);
        let both = concat(&[&ds, &ds]);
        assert_eq!(both.dialogues(), 6);
        assert_eq!(both.offsets.last(), Some(&18));
    }

    #[test]
    fn faces_of_the_utterance_emotion_join_without_changing_the_voices() {
        let c = clips();
        let sp = c.speakers();
        let norm = c.prior(&sp, 8.0);
        // One face per class, its vector filled with its class index.
        let mut faces = Faces::default();
        for l in 0..7 {
            faces.vectors.push(vec![l as f32; VISUAL_DIM as usize]);
            faces.label.push(l);
            faces.names.push(format!("{l}.png"));
        }
        let cfg = MixConfig {
            pair_probability: 0.5,
            face_probability: 1.0,
            ..MixConfig::default()
        };
        let with = pair_meld(&meld(), &c, &sp, &norm, Some(&faces), &cfg);
        let without = pair_meld(&meld(), &c, &sp, &norm, None, &cfg);
        assert_eq!(
            with.meta.features.visual,
            Some(super::super::faces::visual_spec())
        );
        assert!(with.features[1].equal(&without.features[1]));
        assert!(
            with.present
                .narrow(1, 0, 2)
                .equal(&without.present.narrow(1, 0, 2))
        );
        let labels = Vec::<i64>::try_from(&with.label).unwrap();
        for (r, l) in labels.iter().enumerate() {
            let seen = with.present.get(r as i64).get(2).int64_value(&[]) == 1;
            // Labelled utterances get a face of their class; the unlabelled one none.
            assert_eq!(seen, *l >= 0, "row {r}");
            if seen {
                assert_eq!(
                    with.features[2].get(r as i64).get(0).double_value(&[]),
                    *l as f64
                );
            }
        }
        // A split without faces, as a model with faces reads it; and one modality kept.
        let wide = visual_absent(&without);
        assert!(wide.meta.features.visual.is_some());
        assert_eq!(wide.features[2].size(), vec![4, VISUAL_DIM]);
        let face_only = only(&with, [false, false, true]);
        assert_eq!(face_only.present.select(1, 0).any().int64_value(&[]), 0);
    }
}
