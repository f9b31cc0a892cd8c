//! The inference engine: per-stream conversation state and one batched forward pass of the
//! causal student over the pending utterances of every stream. Owned by the model worker
//! thread in the daemon and called directly by `summerd replay`, so both run the same code.
//!
//! Inference is incremental: the student is causal, so an utterance's outputs never change
//! once computed. Per stream, a slot of the model's [`StepPool`] caches what the next
//! utterance reads (each layer's input and each branch's output at the last W - 1
//! utterances), and an utterance costs one query per layer, not a pass over its window. The
//! result equals the full-conversation forward pass (tested). Utterances carry their
//! conversation index as position (`min(index, W - 1)`), as in training. Speakers are numbered
//! by first appearance in the stream (the last index is shared beyond the model's speaker
//! count), and each speaker's audio vectors are normalised online by that speaker's own past
//! ([`crate::model::norm`]). Provisional utterances are scored in context but never join it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::acoustic::Band;
use crate::events::{EmotionEvent, Modalities, V, now_rfc3339};
use crate::model::norm::{SpeakerNorm, SpeakerStats};
use crate::model::{
    FeatureSpec, Features, Model, StepInput, StepPool, TEXT_EXTRACTOR, VISUAL_DIM, VISUAL_EXTRACTOR,
};
use crate::settings::Checker;
use crate::text::TextEncoder;

/// Errors loading or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model could not be loaded or does not fit.
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    /// The text encoder could not be loaded or failed.
    #[error("text encoder: {0}")]
    Text(#[from] crate::text::TextError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The model reads later utterances, which a live stream does not have yet.
    #[error(
        "model {0} is bidirectional (causal = false): it was trained to read later utterances, \
         which a live stream does not have yet; the daemon and replay run causal models only"
    )]
    NotCausal(String),
    /// `model.device` names a CUDA device libtorch cannot use.
    #[error("model.device = {wanted}, but libtorch sees {have} usable CUDA device(s)")]
    NoDevice {
        /// The device asked for.
        wanted: String,
        /// CUDA devices libtorch can use.
        have: usize,
    },
    /// A failure injected on purpose (`SUMMERD_FAILPOINT=model-worker-error`, fault tests).
    #[error("injected failure (SUMMERD_FAILPOINT=model-worker-error)")]
    Failpoint,
    /// A conversation checkpoint does not fit this model.
    #[error("conversation checkpoint: {0}")]
    Checkpoint(String),
}

/// `[model]`: which model the daemon runs, and where.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSource {
    /// Model directory holding `manifest.json` and its weights. Unset: no emotion inference
    /// (transcripts are still validated and counted, lifecycle events still published).
    pub path: Option<PathBuf>,
    /// `auto` (CUDA when usable, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceChoice,
}

impl Default for ModelSource {
    fn default() -> Self {
        Self {
            path: None,
            device: DeviceChoice::Auto,
        }
    }
}

impl ModelSource {
    /// Check the table: the model directory (resolved) when one is set and has a manifest.
    pub fn check(&self, c: &mut Checker) -> Option<PathBuf> {
        let p = c.resolve(self.path.as_ref()?);
        let manifest = p.join("manifest.json");
        if !manifest.is_file() {
            c.bad(
                "model.path",
                format!("'{}' does not exist", manifest.display()),
                "a model directory with manifest.json, or no model.path (no inference)",
            );
        }
        Some(p)
    }
}

/// Where the model runs: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch can use one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`); refused at start when it is not there.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("'{other}' is not a device: auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl DeviceChoice {
    /// The libtorch device: `auto` falls back to the CPU; an explicit CUDA device that
    /// libtorch cannot use is an error, never a silent fall-back.
    pub fn resolve(self) -> Result<Device, EngineError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let have = if tch::Cuda::is_available() {
                    tch::Cuda::device_count().max(0) as usize
                } else {
                    0
                };
                if n < have {
                    Ok(Device::Cuda(n))
                } else {
                    Err(EngineError::NoDevice {
                        wanted: self.to_string(),
                        have,
                    })
                }
            }
        }
    }
}

/// One utterance to score.
#[derive(Debug, Clone)]
pub struct Utterance {
    /// Stream id.
    pub stream: String,
    /// The segment's seq.
    pub seq: u64,
    /// Speaker label as the ASR worker gave it.
    pub speaker: String,
    /// Span on the media timeline.
    pub start: f64,
    /// End of the span.
    pub end: f64,
    /// Transcript text.
    pub text: String,
    /// A text vector supplied by the ASR worker (used when its length fits the model).
    pub embedding: Option<Vec<f32>>,
    /// The span's raw 88 eGeMAPS functionals, if the audio covered it.
    pub audio: Option<Vec<f32>>,
    /// The span's pooled face expression, on streams the vision stage watches.
    pub face: Option<crate::vision::stage::VisualVector>,
    /// From a partial segment.
    pub provisional: bool,
    /// Put the text into the event.
    pub publish_text: bool,
    /// When the segment arrived.
    pub arrival: Instant,
}

/// One utterance of a batch, ready for the network.
struct Row {
    slot: i64,
    /// min(conversation index, W - 1).
    position: i64,
    speaker: i64,
    text: Option<Vec<f32>>,
    audio: Option<Vec<f32>>,
    visual: Option<Vec<f32>>,
    provisional: bool,
}

/// Speaker labels remembered per stream; beyond it the least recently heard is forgotten (an
/// ASR worker that invents labels cannot grow a stream's state without bound).
pub const MAX_SPEAKERS: usize = 64;

struct Conversation {
    /// The stream's slot in the model's [`StepPool`].
    slot: i64,
    /// Utterances so far (conversation index of the next one).
    count: i64,
    /// Label -> (index by first appearance, conversation index when last heard).
    speakers: HashMap<String, (i64, i64)>,
    next_speaker: i64,
    norms: HashMap<String, SpeakerStats>,
    /// The seqs of the last [`SCORED_SEQS`] final utterances, oldest first.
    seqs: VecDeque<u64>,
}

/// Final seqs a conversation remembers (and a checkpoint carries), so that a segment
/// delivered again after a handover is not scored into the conversation twice.
pub const SCORED_SEQS: usize = 256;

impl Conversation {
    fn new(slot: i64) -> Self {
        Conversation {
            slot,
            count: 0,
            speakers: HashMap::new(),
            next_speaker: 0,
            norms: HashMap::new(),
            seqs: VecDeque::new(),
        }
    }

    /// The speaker's index, remembering that they were heard now.
    fn speaker(&mut self, label: &str) -> i64 {
        if !self.speakers.contains_key(label) && self.speakers.len() >= MAX_SPEAKERS {
            let oldest = self
                .speakers
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.speakers.remove(&k);
                self.norms.remove(&k);
            }
        }
        let now = self.count;
        let next = self.next_speaker;
        let e = self
            .speakers
            .entry(label.to_string())
            .or_insert_with(|| (next, now));
        e.1 = now;
        if e.0 == next {
            self.next_speaker += 1;
        }
        e.0
    }
}

/// The features the daemon makes, as a model manifest names them, with the audio heard through
/// `band`.
pub fn daemon_features(text_dim: i64, tuned: bool, band: Band) -> Features {
    let mut text = TEXT_EXTRACTOR.to_string();
    if tuned {
        text = crate::model::tuned_extractor(&text);
    }
    Features {
        text: Some(FeatureSpec {
            extractor: text,
            dim: text_dim,
        }),
        audio: Some(FeatureSpec {
            extractor: band.extractor().into(),
            dim: 88,
        }),
        visual: Some(FeatureSpec {
            extractor: VISUAL_EXTRACTOR.into(),
            dim: VISUAL_DIM,
        }),
    }
}

/// A stream's conversation as the next owner of the stream needs it to go on exactly where
/// it stopped (cluster mode): the utterance count, the speakers and their normalisation
/// statistics, the last scored seqs, and the model's cached context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version: 1.
    pub v: u32,
    /// The model's `name@sha256-prefix`; a checkpoint only fits the model that made it.
    pub model: String,
    /// Final utterances so far.
    pub count: i64,
    /// Speaker label, index by first appearance, conversation index when last heard.
    pub speakers: Vec<(String, i64, i64)>,
    /// The next speaker's index.
    pub next_speaker: i64,
    /// Each speaker's normalisation statistics.
    pub norms: Vec<(String, SpeakerStats)>,
    /// The last final seqs scored, oldest first.
    pub seqs: Vec<u64>,
    /// The cached context ([`crate::model::net::StepPool::export_slot`]).
    pub cache: Vec<f32>,
}

impl Checkpoint {
    /// Its bytes: a JSON header line, then the cache as little-endian f32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let head = Checkpoint {
            cache: Vec::new(),
            ..self.clone()
        };
        let mut out = serde_json::to_vec(&head).expect("a checkpoint serialises");
        out.push(b'\n');
        out.reserve(self.cache.len() * 4);
        for v in &self.cache {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Read [`Self::to_bytes`] back.
    pub fn from_bytes(b: &[u8]) -> Result<Checkpoint, String> {
        let nl = b.iter().position(|c| *c == b'\n').ok_or("no header line")?;
        let mut cp: Checkpoint =
            serde_json::from_slice(&b[..nl]).map_err(|e| format!("header: {e}"))?;
        let raw = &b[nl + 1..];
        if !raw.len().is_multiple_of(4) {
            return Err(format!("cache of {} bytes is not whole f32s", raw.len()));
        }
        cp.cache = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(cp)
    }
}

/// The model, the text encoder and every stream's conversation.
pub struct Engine {
    model: Model,
    encoder: TextEncoder,
    device: Device,
    name: String,
    convs: HashMap<String, Conversation>,
    pool: StepPool,
    /// Slots of forgotten streams, reused before the pool grows.
    free: Vec<i64>,
    /// Element type of the text encoder's matrix products.
    text_kind: Kind,
    dims: [i64; 3],
    speakers: i64,
    norm: Option<SpeakerNorm>,
    band: Band,
}

impl Engine {
    /// Load the model in `model_dir` and the text encoder in `encoder_dir` (with the model's
    /// fine-tuned layers, if it has any, its matrix products at `precision`), checking that the
    /// model reads what the daemon makes.
    pub fn load(
        model_dir: &Path,
        encoder_dir: &Path,
        max_tokens: usize,
        precision: crate::text::Precision,
        device: Device,
    ) -> Result<Engine, EngineError> {
        let model = Model::load(model_dir, device)?;
        if !model.manifest.config.causal {
            return Err(EngineError::NotCausal(model_dir.display().to_string()));
        }
        let tuned = model
            .manifest
            .text_tuned
            .as_ref()
            .map(|t| model_dir.join(&t.file));
        let mut encoder =
            TextEncoder::load_tuned(encoder_dir, max_tokens, device, tuned.as_deref())?;
        let text_kind = encoder.set_precision(precision);
        let band = Band::of_model(&model.manifest.features);
        let have = daemon_features(encoder.dim() as i64, tuned.is_some(), band);
        model.manifest.features.check_against(&have)?;
        let dir_name = model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "model".into());
        let sha = &model.manifest.weights_sha256;
        let name = format!("{dir_name}@{}", &sha[..sha.len().min(12)]);
        let mut engine = Engine {
            dims: model.manifest.features.dims(),
            pool: model.net.step_pool(16, device),
            free: Vec::new(),
            text_kind,
            speakers: model.manifest.config.speakers.max(1),
            norm: model.manifest.speaker_norm.clone(),
            band,
            model,
            encoder,
            device,
            name,
            convs: HashMap::new(),
        };
        engine.warm_up()?;
        Ok(engine)
    }

    /// One throwaway utterance through every stage, so that libtorch's first-call costs
    /// (allocations, kernel selection) are paid at load and not by a caller's first utterance.
    fn warm_up(&mut self) -> Result<(), EngineError> {
        let stream = "\u{0}warm-up".to_string();
        let u = Utterance {
            stream: stream.clone(),
            seq: 0,
            speaker: "warm-up".into(),
            start: 0.0,
            end: 1.0,
            text: "warming up".into(),
            embedding: None,
            audio: Some(vec![0.0; 88]),
            face: None,
            provisional: false,
            publish_text: false,
            arrival: Instant::now(),
        };
        for _ in 0..2 {
            self.infer(std::slice::from_ref(&u))?;
        }
        self.forget(&stream);
        Ok(())
    }

    /// Element type of the text encoder's matrix products (from the precision at load).
    pub fn text_matmul(&self) -> Kind {
        self.text_kind
    }

    /// `name@sha256-prefix`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's classes.
    pub fn classes(&self) -> &[String] {
        &self.model.manifest.classes
    }

    /// The band the model hears voices through: the streams' descriptors must be made so.
    pub fn audio_band(&self) -> Band {
        self.band
    }

    /// Whether the model reads the visual modality.
    pub fn uses_visual(&self) -> bool {
        self.dims[2] > 0
    }

    /// Forget a stream's conversation (detached).
    pub fn forget(&mut self, stream: &str) {
        if let Some(c) = self.convs.remove(stream) {
            self.pool.clear(c.slot);
            self.free.push(c.slot);
        }
    }

    /// A slot for a new stream: a freed one, else the next (the pool doubles when full). With
    /// none free, the streams hold exactly the slots handed out so far: 0 to len - 1.
    fn take_slot(&mut self) -> i64 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.convs.len() as i64;
        if s >= self.pool.capacity() {
            self.pool.grow((2 * self.pool.capacity()).max(s + 1));
        }
        s
    }

    /// Whether a final utterance with this seq is already part of the stream's conversation
    /// (among the last [`SCORED_SEQS`]).
    pub fn scored(&self, stream: &str, seq: u64) -> bool {
        self.convs
            .get(stream)
            .is_some_and(|c| c.seqs.contains(&seq))
    }

    /// Whether the stream has a conversation.
    pub fn has(&self, stream: &str) -> bool {
        self.convs.contains_key(stream)
    }

    /// Everything needed to continue the stream's conversation elsewhere.
    pub fn checkpoint(&mut self, stream: &str) -> Option<Checkpoint> {
        let c = self.convs.get(stream)?;
        let mut speakers: Vec<(String, i64, i64)> = c
            .speakers
            .iter()
            .map(|(k, (i, h))| (k.clone(), *i, *h))
            .collect();
        speakers.sort();
        let mut norms: Vec<(String, SpeakerStats)> = c
            .norms
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        norms.sort_by(|a, b| a.0.cmp(&b.0));
        let (slot, count, next_speaker) = (c.slot, c.count, c.next_speaker);
        let seqs = c.seqs.iter().copied().collect();
        Some(Checkpoint {
            v: 1,
            model: self.name.clone(),
            count,
            speakers,
            next_speaker,
            norms,
            seqs,
            cache: self.pool.export_slot(slot),
        })
    }

    /// Continue a conversation from a checkpoint, replacing the stream's own if it has one.
    /// Refused when it was made by another model or does not fit this one's caches.
    pub fn restore(&mut self, stream: &str, cp: &Checkpoint) -> Result<(), EngineError> {
        if cp.model != self.name {
            return Err(EngineError::Checkpoint(format!(
                "made by model {}, this is {}",
                cp.model, self.name
            )));
        }
        self.check(cp).map_err(EngineError::Checkpoint)?;
        self.forget(stream);
        let slot = self.take_slot();
        if let Err(e) = self.pool.import_slot(slot, &cp.cache) {
            self.pool.clear(slot);
            self.free.push(slot);
            return Err(EngineError::Checkpoint(e));
        }
        let mut conv = Conversation::new(slot);
        conv.count = cp.count;
        conv.next_speaker = cp.next_speaker;
        conv.speakers = cp
            .speakers
            .iter()
            .map(|(k, i, h)| (k.clone(), (*i, *h)))
            .collect();
        conv.norms = cp.norms.iter().cloned().collect();
        let skip = cp.seqs.len().saturating_sub(SCORED_SEQS);
        conv.seqs = cp.seqs.iter().skip(skip).copied().collect();
        self.convs.insert(stream.to_string(), conv);
        Ok(())
    }

    /// Whether a checkpoint (made elsewhere) is one this engine could have made: its format,
    /// counts, speaker indices, normalisation statistics and a finite cache.
    fn check(&self, cp: &Checkpoint) -> Result<(), String> {
        if cp.v != 1 {
            return Err(format!("format {} (this summerd reads 1)", cp.v));
        }
        if cp.count < 0 || cp.next_speaker < 0 || cp.speakers.len() > MAX_SPEAKERS {
            return Err("negative counts or too many speakers".into());
        }
        if cp
            .speakers
            .iter()
            .any(|(_, i, h)| *i < 0 || *i >= cp.next_speaker.max(1) || *h < 0 || *h > cp.count)
        {
            return Err("a speaker index out of range".into());
        }
        if let Some(n) = &self.norm {
            if cp.norms.iter().any(|(_, st)| !n.fits(st)) {
                return Err("normalisation statistics that do not fit the model".into());
            }
        } else if !cp.norms.is_empty() {
            return Err("normalisation statistics for a model without normalisation".into());
        }
        if cp.cache.iter().any(|v| !v.is_finite()) {
            return Err("a cache value that is not finite".into());
        }
        Ok(())
    }

    /// Streams with a conversation.
    pub fn streams(&self) -> Vec<String> {
        self.convs.keys().cloned().collect()
    }

    /// Speaker labels remembered for a stream.
    pub fn speakers_of(&self, stream: &str) -> Option<usize> {
        self.convs.get(stream).map(|c| c.speakers.len())
    }

    /// Score `batch` (any streams, in arrival order) in one forward pass; one event each, in
    /// the same order, stamped `emitted_at` now (`latency_ms` is set by [`super::core::score`]).
    pub fn infer(&mut self, batch: &[Utterance]) -> Result<Vec<EmotionEvent>, EngineError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let _g = tch::no_grad_guard();
        let text = self.text_vectors(batch)?;
        let window = self.model.manifest.config.window.max(1);
        let mut rows: Vec<Row> = Vec::with_capacity(batch.len());
        for (u, t) in batch.iter().zip(text) {
            if !self.convs.contains_key(&u.stream) {
                let slot = self.take_slot();
                self.convs.insert(u.stream.clone(), Conversation::new(slot));
            }
            let conv = self.convs.get_mut(&u.stream).expect("inserted above");
            let spk = conv.speaker(&u.speaker).min(self.speakers - 1);
            let audio = match (&u.audio, &self.norm) {
                (Some(a), Some(n)) => {
                    let stats = conv
                        .norms
                        .entry(u.speaker.clone())
                        .or_insert_with(|| n.fresh());
                    Some(if u.provisional {
                        n.apply(&mut stats.clone(), a)
                    } else {
                        n.apply(stats, a)
                    })
                }
                (None, _) => None,
                (Some(a), None) => Some(a.clone()),
            };
            rows.push(Row {
                slot: conv.slot,
                position: conv.count.min(window - 1),
                speaker: spk,
                text: t,
                audio: audio.filter(|_| self.dims[1] > 0),
                visual: u
                    .face
                    .as_ref()
                    .filter(|_| self.dims[2] > 0)
                    .and_then(|f| f.model_input()),
                provisional: u.provisional,
            });
            if !u.provisional {
                conv.count += 1;
                while conv.seqs.len() >= SCORED_SEQS {
                    conv.seqs.pop_front();
                }
                conv.seqs.push_back(u.seq);
            }
        }
        // Waves: a stream's k-th utterance of this batch goes in wave k, after the ones before
        // it are in its slot.
        let mut wave_of = Vec::with_capacity(rows.len());
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for r in &rows {
            let k = seen.entry(r.slot).or_insert(0);
            wave_of.push(*k);
            *k += 1;
        }
        let mut probs: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
        for wave in 0..=wave_of.iter().copied().max().unwrap_or(0) {
            let members: Vec<usize> = (0..rows.len()).filter(|i| wave_of[*i] == wave).collect();
            let picked: Vec<&Row> = members.iter().map(|i| &rows[*i]).collect();
            for (i, p) in members.iter().zip(self.step(&picked)?) {
                probs[*i] = p;
            }
        }
        let classes = &self.model.manifest.classes;
        Ok(batch
            .iter()
            .zip(rows)
            .zip(probs)
            .map(|((u, last), p)| {
                let (best, conf) =
                    p.iter().enumerate().fold(
                        (0, f32::MIN),
                        |a, (i, v)| if *v > a.1 { (i, *v) } else { a },
                    );
                EmotionEvent {
                    v: V,
                    kind: "emotion".into(),
                    stream: u.stream.clone(),
                    utterance: u.seq,
                    seq: u.seq,
                    speaker: u.speaker.clone(),
                    start: u.start,
                    end: u.end,
                    label: classes[best].clone(),
                    confidence: conf,
                    probs: classes.iter().cloned().zip(p.iter().copied()).collect(),
                    modalities: Modalities {
                        text: last.text.is_some(),
                        audio: last.audio.is_some(),
                        visual: last.visual.is_some(),
                    },
                    model: self.name.clone(),
                    latency_ms: 0.0,
                    emitted_at: now_rfc3339(),
                    provisional: u.provisional,
                    text: u.publish_text.then(|| u.text.clone()),
                    face: u.face.as_ref().map(Into::into),
                    smoothed: None,
                }
            })
            .collect())
    }

    /// Text vectors: the supplied embedding where it fits, else the encoder (one batch);
    /// None for empty text.
    fn text_vectors(&self, batch: &[Utterance]) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        let dim = self.dims[0] as usize;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
        let mut todo = Vec::new();
        for (i, u) in batch.iter().enumerate() {
            match &u.embedding {
                Some(e) if e.len() == dim => out[i] = Some(e.clone()),
                _ if u.text.trim().is_empty() => {}
                _ => todo.push(i),
            }
        }
        if dim > 0 && !todo.is_empty() {
            let texts: Vec<&str> = todo.iter().map(|i| batch[*i].text.as_str()).collect();
            for (i, v) in todo.iter().zip(self.encoder.encode(&texts)?) {
                out[*i] = Some(v);
            }
        }
        Ok(out)
    }

    /// One step of the network for utterances of distinct streams; the final ones join
    /// their stream's context. Class probabilities per row.
    fn step(&mut self, rows: &[&Row]) -> Result<Vec<Vec<f32>>, EngineError> {
        let b = rows.len() as i64;
        let [dt, da, dv] = self.dims;
        let (mut text, mut audio) = (vec![0f32; (b * dt) as usize], vec![0f32; (b * da) as usize]);
        let mut visual = vec![0f32; (b * dv) as usize];
        let mut present = vec![0u8; (b * 3) as usize];
        for (r, row) in rows.iter().enumerate() {
            if let Some(v) = &row.text {
                text[r * dt as usize..(r + 1) * dt as usize].copy_from_slice(v);
                present[r * 3] = 1;
            }
            if let Some(v) = &row.audio {
                audio[r * da as usize..(r + 1) * da as usize].copy_from_slice(v);
                present[r * 3 + 1] = 1;
            }
            if let Some(v) = &row.visual {
                visual[r * dv as usize..(r + 1) * dv as usize].copy_from_slice(v);
                present[r * 3 + 2] = 1;
            }
        }
        let dev = self.device;
        let ints = |f: fn(&Row) -> i64| {
            let v: Vec<i64> = rows.iter().map(|r| f(r)).collect();
            Tensor::from_slice(&v).to_device(dev)
        };
        let input = StepInput {
            slots: ints(|r| r.slot),
            features: [
                Tensor::from_slice(&text).view([b, dt]).to_device(dev),
                Tensor::from_slice(&audio).view([b, da]).to_device(dev),
                Tensor::from_slice(&visual).view([b, dv]).to_device(dev),
            ],
            present: Tensor::from_slice(&present)
                .view([b, 3])
                .to_kind(Kind::Bool)
                .to_device(dev),
            speaker: ints(|r| r.speaker),
            position: ints(|r| r.position),
        };
        let (logits, new) = self.model.net.step(&self.pool, &input);
        let keep: Vec<bool> = rows.iter().map(|r| !r.provisional).collect();
        self.pool.commit(&new, &keep);
        let c = logits.size()[1];
        let picked = logits
            .softmax(-1, Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        let flat = Vec::<f32>::try_from(picked.view([-1]))?;
        Ok(flat.chunks(c as usize).map(<[f32]>::to_vec).collect())
    }
}
