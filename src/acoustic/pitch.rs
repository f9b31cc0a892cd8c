//! Pitch smoothing: a Viterbi search over each frame's candidates plus an "unvoiced" state,
//! decided with a fixed lag (openSMILE's smoother buffers 40 frames; ours is configurable).
//!
//! Costs: a voiced state costs `2 * (1 - its voicing)`, plus 4 when its voicing is under the
//! cut-off (0.7); the unvoiced state costs 4 when the frame's best voicing is over it. Moving
//! between two voiced states costs `|octaves between them|`, switching voicing costs 4, staying
//! unvoiced 0. These weights are ours, chosen by measurement: fed openSMILE's own candidates
//! (read back from its SHS level) for 42 EmoDB clips, this search reproduces its smoothed F0
//! in 98.9 % of frames and its voicing in 99.6 % (openSMILE's documented weights, read as
//! above with transitions of 10, give 95.7 %).

use std::collections::VecDeque;

use super::frame::{CANDIDATES, FrameOut};

const STATES: usize = CANDIDATES + 1;
const W_LOCAL: f32 = 2.0;
const W_THR: f32 = 4.0;
const W_TVV: f32 = 1.0;
const W_TVUV: f32 = 4.0;
/// Voicing below this is unvoiced.
pub const VOICING_CUTOFF: f32 = 0.70;

#[derive(Clone, Copy, Default)]
struct Slot {
    freq: [f32; STATES],
    n: usize,
    back: [u8; STATES],
}

/// The fixed-lag Viterbi pitch smoother of one stream.
pub struct PitchTracker {
    lag: usize,
    cum: [f32; STATES],
    n_prev: usize,
    freq_prev: [f32; STATES],
    slots: VecDeque<Slot>,
}

impl PitchTracker {
    /// A smoother that decides each frame `lag` frames after it arrives (at least 1).
    pub fn new(lag: usize) -> PitchTracker {
        let lag = lag.max(1);
        PitchTracker {
            lag,
            cum: [0.0; STATES],
            n_prev: 0,
            freq_prev: [0.0; STATES],
            slots: VecDeque::with_capacity(lag + 1),
        }
    }

    /// Frames held, not yet decided.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// Add a frame; returns the F0 (Hz, 0 for unvoiced) of the oldest frame once it is `lag`
    /// frames old.
    pub fn push(&mut self, f: &FrameOut) -> Option<f32> {
        let mut slot = Slot {
            n: f.n_cand + 1,
            ..Slot::default()
        };
        let mut local = [0.0f32; STATES];
        local[0] = if f.voicing >= VOICING_CUTOFF {
            W_THR
        } else {
            0.0
        };
        for c in 0..f.n_cand {
            let (freq, voicing) = f.cand[c];
            slot.freq[c + 1] = freq;
            local[c + 1] =
                W_LOCAL * (1.0 - voicing) + if voicing < VOICING_CUTOFF { W_THR } else { 0.0 };
        }
        let mut cum = [f32::MAX; STATES];
        if self.slots.is_empty() && self.n_prev == 0 {
            cum[..slot.n].copy_from_slice(&local[..slot.n]);
        } else {
            for s in 0..slot.n {
                let mut best_cost = f32::MAX;
                let mut arg = 0u8;
                for p in 0..self.n_prev {
                    let trans = match (p, s) {
                        (0, 0) => 0.0,
                        (0, _) | (_, 0) => W_TVUV,
                        _ => W_TVV * (slot.freq[s] / self.freq_prev[p]).log2().abs(),
                    };
                    let c = self.cum[p] + trans;
                    if c < best_cost {
                        best_cost = c;
                        arg = p as u8;
                    }
                }
                cum[s] = best_cost + local[s];
                slot.back[s] = arg;
            }
        }
        // Keep the numbers small.
        let min = cum[..slot.n].iter().cloned().fold(f32::MAX, f32::min);
        for c in cum[..slot.n].iter_mut() {
            *c -= min;
        }
        self.cum = cum;
        self.n_prev = slot.n;
        self.freq_prev = slot.freq;
        self.slots.push_back(slot);
        if self.slots.len() > self.lag {
            let mut s = self.best();
            for k in (1..self.slots.len()).rev() {
                s = self.slots[k].back[s] as usize;
            }
            let first = self.slots.pop_front().expect("non-empty");
            return Some(first.freq[s]);
        }
        None
    }

    fn best(&self) -> usize {
        (0..self.n_prev)
            .min_by(|a, b| self.cum[*a].total_cmp(&self.cum[*b]))
            .unwrap_or(0)
    }

    /// Decide every held frame (end of input), oldest first, and start afresh.
    pub fn flush(&mut self, out: &mut impl FnMut(f32)) {
        let n = self.slots.len();
        if n > 0 {
            let mut s = self.best();
            let mut path = Vec::with_capacity(n);
            for k in (0..n).rev() {
                path.push(s);
                s = self.slots[k].back[s] as usize;
            }
            for (k, st) in path.iter().rev().enumerate() {
                out(self.slots[k].freq[*st]);
            }
        }
        self.slots.clear();
        self.n_prev = 0;
        self.cum = [0.0; STATES];
    }
}
