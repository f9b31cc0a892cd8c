//! The SUMMER network: per-modality branches (projection, speaker and position embeddings,
//! a Transformer over the conversation window, SDMoE), hierarchical cross-modal fusion with
//! DynAttn, a global SDMoE and the classifier. The text teacher is the text branch alone with
//! its own classifier.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::layers::{DynAttn, EncoderLayer, Routing, Sdmoe};

/// The three modalities, in the order of [`Batch::present`]'s last axis.
pub const MODALITIES: [&str; 3] = ["text", "audio", "visual"];

/// How the streams are fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// SUMMER: text attends to audio, the result attends to visual.
    #[default]
    TextAudioVisual,
    /// Text attends to visual, then to audio.
    TextVisualAudio,
    /// Audio attends to visual, then to text.
    AudioVisualText,
    /// No cross-attention: the branch outputs concatenated and projected.
    Concat,
}

impl Fusion {
    fn order(self) -> [usize; 3] {
        match self {
            Fusion::TextAudioVisual | Fusion::Concat => [0, 1, 2],
            Fusion::TextVisualAudio => [0, 2, 1],
            Fusion::AudioVisualText => [1, 2, 0],
        }
    }
}

/// The network's hyper-parameters (the `[model]` table of a recipe; stored in the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Width of every stream.
    pub d_model: i64,
    /// Attention heads.
    pub heads: i64,
    /// Transformer layers per modality branch.
    pub layers: i64,
    /// FFN width in the Transformer and DynAttn blocks.
    pub ffn_hidden: i64,
    /// Dropout in training.
    pub dropout: f64,
    /// Utterances an utterance can see (itself included).
    pub window: i64,
    /// Streaming: utterance t sees only utterances <= t. False: the bidirectional variant.
    pub causal: bool,
    /// Speaker embeddings (speaker indices at or over this share the last one).
    pub speakers: i64,
    /// Experts per SDMoE.
    pub experts: i64,
    /// Hidden width of each expert.
    pub expert_hidden: i64,
    /// Router softmax temperature (paper: 0.5).
    pub tau: f64,
    /// Expert selection.
    pub routing: Routing,
    /// Fusion order.
    pub fusion: Fusion,
    /// In hierarchical fusion, add each utterance's own representation of the modality being
    /// fused to its query first. Without it an utterance whose first modality is absent (audio
    /// alone) has a query that knows only its position and speaker, and sees its own voice no
    /// more than its neighbours'.
    pub own_residual: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            d_model: 256,
            heads: 4,
            layers: 1,
            ffn_hidden: 512,
            dropout: 0.1,
            window: 12,
            causal: true,
            speakers: 9,
            experts: 8,
            expert_hidden: 256,
            tau: 0.5,
            routing: Routing::default(),
            fusion: Fusion::default(),
            own_residual: false,
        }
    }
}

/// A batch of conversations, padded to the longest: B conversations x T utterances.
#[derive(Debug)]
pub struct Batch {
    /// Feature matrices [B, T, D_m] (D_m may be 0: the modality is not used).
    pub features: [Tensor; 3],
    /// Presence per modality [B, T, 3] (bool).
    pub present: Tensor,
    /// Real utterances, not padding [B, T] (bool).
    pub valid: Tensor,
    /// Speaker index within the conversation [B, T] (i64).
    pub speaker: Tensor,
    /// Labels [B, T] (i64; -1: none).
    pub label: Tensor,
    /// Conversation index of each row's first utterance [B] (i64), when a row is a window
    /// cut from a longer conversation (the daemon's sliding window); None: 0.
    pub offset: Option<Tensor>,
}

impl Batch {
    /// The attention mask [B, T, T]: the window (causal or not) over real utterances.
    pub fn window_mask(&self, window: i64, causal: bool) -> Tensor {
        let t = self.valid.size()[1];
        let idx = Tensor::arange(t, (Kind::Int64, self.valid.device()));
        let d = idx.unsqueeze(1) - idx.unsqueeze(0); // t - s
        let band = if causal {
            d.ge(0).logical_and(&d.lt(window))
        } else {
            d.abs().lt(window)
        };
        band.unsqueeze(0).logical_and(&self.valid.unsqueeze(1))
    }

    /// Position in the window of each utterance: min(conversation index, window - 1).
    pub fn positions(&self, window: i64) -> Tensor {
        let (b, t) = self.valid.size2().expect("[B, T]");
        let idx = Tensor::arange(t, (Kind::Int64, self.valid.device())).unsqueeze(0);
        match &self.offset {
            // (Left padding of right-aligned rows gives negative indices: clamped, never read.)
            Some(o) => (idx + o.unsqueeze(1)).clamp(0, window - 1),
            None => idx.clamp_max(window - 1).expand([b, t], false),
        }
    }
}

/// What a forward pass gives.
#[derive(Debug)]
pub struct Output {
    /// Class logits [B, T, C].
    pub logits: Tensor,
    /// The representation the classifier reads [B, T, d].
    pub feature: Tensor,
    /// Experts kept per token, per SDMoE ([B, T] each), named.
    pub active: Vec<(String, Tensor)>,
}

struct Branch {
    proj: nn::Linear,
    ln: nn::LayerNorm,
    spk: nn::Embedding,
    pos: nn::Embedding,
    layers: Vec<EncoderLayer>,
    moe: Sdmoe,
    mean: Tensor,
    std: Tensor,
}

impl Branch {
    fn new(p: nn::Path, dim: i64, c: &ModelConfig) -> Branch {
        let d = c.d_model;
        Branch {
            proj: nn::linear(&p / "proj", dim, d, Default::default()),
            ln: nn::layer_norm(&p / "ln", vec![d], Default::default()),
            spk: nn::embedding(&p / "speaker", c.speakers, d, Default::default()),
            pos: nn::embedding(&p / "position", c.window, d, Default::default()),
            layers: (0..c.layers)
                .map(|i| EncoderLayer::new(&p / "layers" / i, d, c.heads, c.ffn_hidden, c.dropout))
                .collect(),
            moe: Sdmoe::new(&p / "moe", d, c.experts, c.expert_hidden, c.tau, c.routing),
            mean: p.zeros_no_train("norm_mean", &[dim]),
            std: p.ones_no_train("norm_std", &[dim]),
        }
    }

    /// Standardised input projected (zero where absent) plus speaker and position, normalised.
    fn embed(&self, x: &Tensor, present: &Tensor, b: &Batch, c: &ModelConfig) -> Tensor {
        self.embed_rows(x, present, &b.speaker, &b.positions(c.window), c)
    }

    /// [`Branch::embed`] from speaker indices and window positions ([B, T] each).
    fn embed_rows(
        &self,
        x: &Tensor,
        present: &Tensor,
        speaker: &Tensor,
        positions: &Tensor,
        c: &ModelConfig,
    ) -> Tensor {
        let x = (x - &self.mean) / &self.std;
        let keep = present.unsqueeze(-1).to_kind(Kind::Float);
        let e = self.proj.forward(&x) * keep
            + self.spk.forward(&speaker.clamp(0, c.speakers - 1))
            + self.pos.forward(positions);
        self.ln.forward(&e)
    }

    fn forward(
        &self,
        x: &Tensor,
        present: &Tensor,
        b: &Batch,
        c: &ModelConfig,
        mask: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let mut h = self.embed(x, present, b, c).dropout(c.dropout, train);
        // A missing modality is no key for anyone.
        let mask = mask.logical_and(&present.unsqueeze(1));
        for l in &self.layers {
            h = l.forward(&h, &mask, train);
        }
        self.moe.forward(&h, train)
    }
}

/// One branch's output as the fusion reads it: at the query rows ([B, N], [B, N, d]) and at
/// the key positions ([B, S], [B, S, d]).
struct Fusing {
    present_q: Tensor,
    h_q: Tensor,
    present_k: Tensor,
    h_k: Tensor,
}

/// What a network is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetKind {
    /// The text branch alone with its classifier (the IKD teacher).
    TextTeacher,
    /// Every modality the dimensions name, fused (the student, or a multimodal teacher).
    Fused,
}

/// A SUMMER network (student or teacher) whose weights live in the given `VarStore` path.
pub struct Summer {
    cfg: ModelConfig,
    kind: NetKind,
    dims: [i64; 3],
    branches: Vec<(usize, Branch)>,
    fuse: Vec<DynAttn>,
    concat: Option<nn::Linear>,
    global: Option<Sdmoe>,
    cls: nn::Linear,
    classes: i64,
}

impl std::fmt::Debug for Summer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summer")
            .field("kind", &self.kind)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

impl Summer {
    /// Build under `p` for input dimensions `dims` (text, audio, visual; 0 = not used) and
    /// `classes` outputs. Weight names are stable: `text.proj.weight`, `fuse.0.gate.weight`,
    /// `global.w1`, `cls.weight`, ...
    pub fn new(
        p: &nn::Path,
        kind: NetKind,
        dims: [i64; 3],
        classes: i64,
        cfg: &ModelConfig,
    ) -> Summer {
        let d = cfg.d_model;
        let used: Vec<usize> = match kind {
            NetKind::TextTeacher => vec![0],
            NetKind::Fused => cfg
                .fusion
                .order()
                .into_iter()
                .filter(|m| dims[*m] > 0)
                .collect(),
        };
        let branches = used
            .iter()
            .map(|m| (*m, Branch::new(p / MODALITIES[*m], dims[*m], cfg)))
            .collect::<Vec<_>>();
        let fused = kind == NetKind::Fused;
        let (fuse, concat) = if fused && cfg.fusion == Fusion::Concat {
            let n = branches.len() as i64;
            (
                Vec::new(),
                Some(nn::linear(p / "concat", n * d, d, Default::default())),
            )
        } else if fused {
            let fuse = (1..branches.len())
                .map(|i| {
                    DynAttn::new(
                        p / "fuse" / (i - 1),
                        d,
                        cfg.heads,
                        cfg.ffn_hidden,
                        cfg.dropout,
                    )
                })
                .collect();
            (fuse, None)
        } else {
            (Vec::new(), None)
        };
        let global = fused.then(|| {
            Sdmoe::new(
                p / "global",
                d,
                cfg.experts,
                cfg.expert_hidden,
                cfg.tau,
                cfg.routing,
            )
        });
        Summer {
            cfg: cfg.clone(),
            kind,
            dims,
            branches,
            fuse,
            concat,
            global,
            cls: nn::linear(p / "cls", d, classes, Default::default()),
            classes,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Number of classes.
    pub fn classes(&self) -> i64 {
        self.classes
    }

    /// Set a branch's input standardisation (mean, std per feature), e.g. from training data.
    pub fn set_normalisation(&mut self, modality: usize, mean: &Tensor, std: &Tensor) {
        if let Some((_, b)) = self.branches.iter_mut().find(|(m, _)| *m == modality) {
            tch::no_grad(|| {
                b.mean.copy_(mean);
                b.std.copy_(&std.clamp_min(1e-6));
            });
        }
    }

    /// The classifier alone (for Cross-KD: a student feature through the teacher's classifier).
    pub fn classify(&self, feature: &Tensor) -> Tensor {
        self.cls.forward(feature)
    }

    /// Incremental inference for causal models: the next utterance of each of B streams,
    /// logits [B, C], equal to that utterance's position of [`Summer::forward`] over the whole
    /// conversation (not training). Each stream's past is read from its slot in `pool`; the
    /// new utterances are computed at their own position only (one query per layer against
    /// the cached layer inputs of the W - 1 before it). [`StepPool::commit`] then appends them
    /// (a provisional utterance is scored and never committed). Slots must be distinct.
    pub fn step(&self, pool: &StepPool, x: &StepInput) -> (Tensor, StepRows) {
        let c = &self.cfg;
        let slots = &x.slots;
        let ones = Tensor::ones([slots.size()[0], 1], (Kind::Bool, slots.device()));
        let valid_k = Tensor::cat(&[pool.valid.index_select(0, slots), ones], 1);
        let mut outs = Vec::with_capacity(self.branches.len());
        let mut rows = StepRows {
            slots: slots.shallow_clone(),
            branches: Vec::with_capacity(self.branches.len()),
        };
        for (i, (m, br)) in self.branches.iter().enumerate() {
            let cache = &pool.branches[i];
            let present = x.present.select(1, *m as i64).unsqueeze(1);
            let present_k = Tensor::cat(
                &[
                    cache.present.index_select(0, slots),
                    present.shallow_clone(),
                ],
                1,
            );
            // A missing modality is no key for anyone.
            let mask = present_k.unsqueeze(1);
            let mut h = br.embed_rows(
                &x.features[*m].unsqueeze(1),
                &present,
                &x.speaker.unsqueeze(1),
                &x.position.unsqueeze(1),
                c,
            );
            let mut inputs = Vec::with_capacity(br.layers.len());
            for (l, layer) in br.layers.iter().enumerate() {
                let keys = Tensor::cat(
                    &[cache.layers[l].index_select(0, slots), h.shallow_clone()],
                    1,
                );
                let next = layer.forward_q(&h, &keys, &mask, false);
                inputs.push(h);
                h = next;
            }
            let out = br.moe.forward(&h, false).0;
            let h_k = Tensor::cat(&[cache.out.index_select(0, slots), out.shallow_clone()], 1);
            rows.branches.push(BranchRows {
                layers: inputs,
                out: out.shallow_clone(),
                present: present.shallow_clone(),
            });
            outs.push(Fusing {
                present_q: present,
                h_q: out,
                present_k,
                h_k,
            });
        }
        let (h, _) = self.head(&outs, &valid_k.unsqueeze(1), false);
        (self.cls.forward(&h).squeeze_dim(1), rows)
    }

    /// An empty pool of `capacity` stream slots for [`Summer::step`], on `device`.
    pub fn step_pool(&self, capacity: i64, device: tch::Device) -> StepPool {
        let (w1, d) = (self.cfg.window.max(1) - 1, self.cfg.d_model);
        let f = |n: i64| Tensor::zeros([n, w1, d], (Kind::Float, device));
        let mut pool = StepPool {
            valid: Tensor::zeros([0, w1], (Kind::Bool, device)),
            branches: self
                .branches
                .iter()
                .map(|(_, br)| BranchCache {
                    layers: br.layers.iter().map(|_| f(0)).collect(),
                    out: f(0),
                    present: Tensor::zeros([0, w1], (Kind::Bool, device)),
                })
                .collect(),
        };
        pool.grow(capacity);
        pool
    }

    /// HCMF (or the concatenation) over the branches' outputs, then the global SDMoE: the fused
    /// representation at the query rows and the global SDMoE's expert counts. `rows` [B, N, S]
    /// is the window mask of the N query rows over the S key positions.
    fn head(&self, outs: &[Fusing], rows: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        let own = |o: &Fusing| &o.h_q * o.present_q.unsqueeze(-1).to_kind(Kind::Float);
        let h = if let Some(lin) = &self.concat {
            let parts: Vec<Tensor> = outs.iter().map(own).collect();
            lin.forward(&Tensor::cat(&parts, -1))
        } else {
            let (first, rest) = outs.split_first().expect("at least the text branch");
            let mut q = first.h_q.shallow_clone();
            for (f, o) in self.fuse.iter().zip(rest) {
                let m = rows.logical_and(&o.present_k.unsqueeze(1));
                if self.cfg.own_residual {
                    q += own(o);
                }
                q = f.forward(&q, &o.h_k, &m, train);
            }
            q
        };
        match &self.global {
            Some(g) => {
                let (y, a) = g.forward(&h, train);
                (y, Some(a))
            }
            None => (h, None),
        }
    }

    /// Forward over a batch.
    pub fn forward(&self, b: &Batch, train: bool) -> Output {
        let c = &self.cfg;
        let mask = b.window_mask(c.window, c.causal);
        let mut active = Vec::new();
        let mut outs = Vec::new();
        for (m, br) in &self.branches {
            let present = b.present.select(2, *m as i64).logical_and(&b.valid);
            let (h, a) = br.forward(&b.features[*m], &present, b, c, &mask, train);
            active.push((MODALITIES[*m].to_string(), a));
            outs.push(Fusing {
                present_q: present.shallow_clone(),
                h_q: h.shallow_clone(),
                present_k: present,
                h_k: h,
            });
        }
        let (h, global) = self.head(&outs, &mask, train);
        if let Some(a) = global {
            active.push(("global".to_string(), a));
        }
        Output {
            logits: self.cls.forward(&h),
            feature: h,
            active,
        }
    }
}

/// The next utterance of each of B streams for [`Summer::step`].
#[derive(Debug)]
pub struct StepInput {
    /// Each stream's slot in the [`StepPool`] [B] (i64, distinct).
    pub slots: Tensor,
    /// Feature vectors [B, D_m] (zeros where absent).
    pub features: [Tensor; 3],
    /// Presence per modality [B, 3] (bool).
    pub present: Tensor,
    /// Speaker index within the conversation [B] (i64).
    pub speaker: Tensor,
    /// Position in the window: min(conversation index, window - 1) [B] (i64).
    pub position: Tensor,
}

/// What [`Summer::step`] computed for the new utterances, to append to their slots.
#[derive(Debug)]
pub struct StepRows {
    slots: Tensor,
    branches: Vec<BranchRows>,
}

#[derive(Debug)]
struct BranchRows {
    /// Each layer's input at the new utterance [B, 1, d].
    layers: Vec<Tensor>,
    /// The branch's output [B, 1, d].
    out: Tensor,
    /// The modality was present [B, 1].
    present: Tensor,
}

/// Per-stream caches of incremental inference, one slot per stream, on the model's device:
/// for each branch, every layer's input and the branch output at the stream's last W - 1
/// utterances (oldest first), which of them had the modality, and which are real (a young
/// conversation has fewer). Gathered and updated with one indexed operation per tensor,
/// whatever the batch.
#[derive(Debug)]
pub struct StepPool {
    valid: Tensor,
    branches: Vec<BranchCache>,
}

#[derive(Debug)]
struct BranchCache {
    layers: Vec<Tensor>,
    out: Tensor,
    present: Tensor,
}

/// Drop each row's oldest entry and append `new` ([B, 1, ...]) along the window axis.
fn shifted(old: &Tensor, new: &Tensor) -> Tensor {
    let w1 = old.size()[1];
    if w1 == 0 {
        return old.shallow_clone();
    }
    Tensor::cat(&[old.narrow(1, 1, w1 - 1), new.shallow_clone()], 1)
}

impl StepPool {
    /// Slots the pool holds.
    pub fn capacity(&self) -> i64 {
        self.valid.size()[0]
    }

    /// Add slots (empty) until there are `capacity`.
    pub fn grow(&mut self, capacity: i64) {
        let more = capacity - self.capacity();
        if more <= 0 {
            return;
        }
        let grow = |t: &mut Tensor| {
            let mut shape = t.size();
            shape[0] = more;
            *t = Tensor::cat(
                &[
                    t.shallow_clone(),
                    Tensor::zeros(shape, (t.kind(), t.device())),
                ],
                0,
            );
        };
        grow(&mut self.valid);
        for b in &mut self.branches {
            b.layers.iter_mut().for_each(&grow);
            grow(&mut b.out);
            grow(&mut b.present);
        }
    }

    /// Every cached tensor, in one fixed order (the order of [`Self::export_slot`]).
    fn tensors(&mut self) -> Vec<&mut Tensor> {
        let mut all = vec![&mut self.valid];
        for b in &mut self.branches {
            all.extend(b.layers.iter_mut());
            all.push(&mut b.out);
            all.push(&mut b.present);
        }
        all
    }

    /// A slot's caches as one flat vector (booleans as 0 and 1), for a checkpoint.
    pub fn export_slot(&mut self, slot: i64) -> Vec<f32> {
        let mut out = Vec::new();
        for t in self.tensors() {
            let row = t
                .get(slot)
                .to_kind(Kind::Float)
                .to_device(tch::Device::Cpu)
                .contiguous()
                .view([-1]);
            out.extend(Vec::<f32>::try_from(row).unwrap_or_default());
        }
        out
    }

    /// Put an exported slot back (into this slot); an error when its size does not fit.
    pub fn import_slot(&mut self, slot: i64, data: &[f32]) -> Result<(), String> {
        let mut at = 0usize;
        let mut rows = Vec::new();
        for t in self.tensors() {
            let row = t.get(slot);
            let n = row.numel();
            let Some(part) = data.get(at..at + n) else {
                return Err(format!("{} values where more are needed", data.len()));
            };
            rows.push((row, part));
            at += n;
        }
        if at != data.len() {
            return Err(format!("{} values where {at} are needed", data.len()));
        }
        for (mut row, part) in rows {
            let src = Tensor::from_slice(part)
                .view(row.size().as_slice())
                .to_kind(row.kind())
                .to_device(row.device());
            row.copy_(&src);
        }
        Ok(())
    }

    /// Empty a slot (a stream ended; the slot may be reused).
    pub fn clear(&mut self, slot: i64) {
        let _ = self.valid.get(slot).fill_(0);
        for b in &mut self.branches {
            for t in b.layers.iter_mut().chain([&mut b.out, &mut b.present]) {
                let _ = t.get(slot).zero_();
            }
        }
    }

    /// Append the step's utterances whose `keep` is true (one per row) to their slots.
    pub fn commit(&mut self, rows: &StepRows, keep: &[bool]) {
        let idx: Vec<i64> = (0..keep.len() as i64)
            .filter(|i| keep[*i as usize])
            .collect();
        if idx.is_empty() {
            return;
        }
        let idx = Tensor::from_slice(&idx).to_device(rows.slots.device());
        let slots = rows.slots.index_select(0, &idx);
        let put = |t: &mut Tensor, new: &Tensor| {
            let old = t.index_select(0, &slots);
            let _ = t.index_copy_(0, &slots, &shifted(&old, &new.index_select(0, &idx)));
        };
        let real = Tensor::ones([rows.slots.size()[0], 1], (Kind::Bool, slots.device()));
        put(&mut self.valid, &real);
        for (cache, new) in self.branches.iter_mut().zip(&rows.branches) {
            for (t, n) in cache.layers.iter_mut().zip(&new.layers) {
                put(t, n);
            }
            put(&mut cache.out, &new.out);
            put(&mut cache.present, &new.present);
        }
    }
}
