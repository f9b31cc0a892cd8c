//! Pitch smoothing: a Viterbi search over each frame's six candidate places plus an "unvoiced"
//! state, with the costs of openSMILE 2.6.0's smoother as eGeMAPS v02 configures it (see
//! [`PitchTracker::push`]). A frame is decided at the latest `lag` frames after it arrives
//! (openSMILE buffers 40); at the end of input the frames after the point where the best paths
//! last merged are reported as unsettled (see [`PitchTracker::flush`]).
//!
//! Measured on the 415 EmoDB clips at 16 kHz against openSMILE's own F0 level: fed openSMILE's
//! candidates, this search gives its F0 on all 80,925 frames; fed ours (`frame`, which are
//! openSMILE's candidates to 1e-6), so does the whole chain.

use std::collections::VecDeque;

use super::frame::{CANDIDATES, FrameOut};

const STATES: usize = CANDIDATES + 1;
/// The unvoiced state (after the candidate places).
const UNVOICED: usize = CANDIDATES;
const W_LOCAL: f64 = 2.0;
const W_THR: f64 = 4.0;
const W_RANGE: f64 = 1.0;
const W_TVV: f64 = 10.0;
const W_TVVD: f64 = 10.0;
const W_TVUV: f64 = 10.0;
const W_TUU: f64 = 1.0;
const EMPTY_PLACE: f64 = 999.0;
/// Voicing below this is unvoiced.
pub const VOICING_CUTOFF: f32 = 0.70;

#[derive(Clone, Copy, Default)]
struct Slot {
    freq: [f32; STATES],
    /// Natural logs of `freq` (0 for an empty place or unvoiced).
    ln: [f64; STATES],
    back: [u8; STATES],
}

/// The Viterbi pitch smoother of one stream.
pub struct PitchTracker {
    lag: usize,
    cum: [f64; STATES],
    /// The last voiced-to-voiced log step costed, carried from call to call (see `push`).
    last_change: f64,
    slots: VecDeque<Slot>,
}

/// Cost of a candidate's frequency: none between 100 and 350 Hz, rising outside.
fn range_cost(f: f32) -> f64 {
    let f = f as f64;
    if f <= 0.0 {
        2.0
    } else if f < 100.0 {
        1.0 - f / 100.0
    } else if f < 350.0 {
        0.0
    } else if f < 600.0 {
        (f - 350.0) / 250.0
    } else {
        1.2
    }
}

impl PitchTracker {
    /// A smoother that decides each frame at the latest `lag` frames after it arrives (at
    /// least 1).
    pub fn new(lag: usize) -> PitchTracker {
        let lag = lag.max(1);
        PitchTracker {
            lag,
            cum: [0.0; STATES],
            last_change: 1.0,
            slots: VecDeque::with_capacity(lag + 1),
        }
    }

    /// Frames held, not yet decided.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// Add a frame; returns the F0 (Hz, 0 for unvoiced) of the oldest frame once it is `lag`
    /// frames old.
    ///
    /// States: the six candidate places (an empty place has frequency 0) and unvoiced. A
    /// candidate costs `2 (-ln v + 4 [v < cut-off]) + range(f)` (v its voicing clamped to
    /// [0.01, 1]); unvoiced costs 8 when any candidate is voiced enough, else 0. Between two
    /// candidates: `10 |r| + 10 |r - r'|`, r the log step and r' the log step of the previous
    /// voiced-to-voiced transition costed (whichever pair of states that was, in the order
    /// below: openSMILE's smoother keeps it in one variable); into or out of an empty place
    /// 999; switching voicing 10 (and r' becomes 0); unvoiced to unvoiced 1. Measured against
    /// openSMILE 2.6.0 on EmoDB (see `tests/acoustic_report.py`).
    pub fn push(&mut self, f: &FrameOut) -> Option<f32> {
        let mut slot = Slot::default();
        let mut local = [0.0f64; STATES];
        let mut any_voiced = false;
        for (c, (place, cost)) in slot.freq.iter_mut().zip(local.iter_mut()).enumerate() {
            if c == UNVOICED {
                break;
            }
            let (freq, voicing) = if c < f.n_cand { f.cand[c] } else { (0.0, 0.0) };
            *place = freq;
            let v = (voicing as f64).clamp(0.01, 1.0);
            let thr = if v < VOICING_CUTOFF as f64 {
                W_THR
            } else {
                0.0
            };
            any_voiced |= voicing >= VOICING_CUTOFF;
            *cost = (-v.ln() + thr) * W_LOCAL + range_cost(freq) * W_RANGE;
        }
        local[UNVOICED] = if any_voiced { W_LOCAL * W_THR } else { 0.0 };
        slot.ln = slot
            .freq
            .map(|f| if f > 0.0 { (f as f64).ln() } else { 0.0 });
        // The previous frame is the newest held one; none after a flush or at the start.
        let mut cum = local;
        if let Some(prev) = self.slots.back().copied() {
            for s in 0..STATES {
                let mut best_cost = f64::MAX;
                let mut arg = 0u8;
                for p in 0..STATES {
                    let c = self.cum[p] + self.transition(&prev, p, &slot, s);
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
        let min = cum.iter().cloned().fold(f64::MAX, f64::min);
        for c in cum.iter_mut() {
            *c -= min;
        }
        self.cum = cum;
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

    fn transition(&mut self, a: &Slot, prev: usize, b: &Slot, cur: usize) -> f64 {
        match (prev == UNVOICED, cur == UNVOICED) {
            (true, true) => W_TUU,
            (false, false) => {
                if a.freq[prev] == 0.0 || b.freq[cur] == 0.0 {
                    return EMPTY_PLACE;
                }
                let r = b.ln[cur] - a.ln[prev];
                let x = W_TVV * r.abs() + W_TVVD * (r - self.last_change).abs();
                self.last_change = r;
                x
            }
            _ => {
                self.last_change = 0.0;
                W_TVUV
            }
        }
    }

    fn best(&self) -> usize {
        (0..STATES)
            .min_by(|a, b| self.cum[*a].total_cmp(&self.cum[*b]))
            .unwrap_or(0)
    }

    /// Decide every held frame (end of input), oldest first, and start afresh. `out` gets each
    /// frame's F0 and whether it was already settled before the end: openSMILE's smoother
    /// hands a frame on as soon as the best paths into every state of the newest frame agree
    /// on it (or at the lag), and its jitter stage, which everything voiced is read through,
    /// drops the frames that only the end of input decides. Those are the frames after the
    /// point where the paths last merged.
    pub fn flush(&mut self, out: &mut impl FnMut(f32, bool)) {
        let n = self.slots.len();
        if n > 0 {
            let mut s = self.best();
            let mut path = Vec::with_capacity(n);
            for k in (0..n).rev() {
                path.push(s);
                s = self.slots[k].back[s] as usize;
            }
            path.reverse();
            let settled = self.merged();
            for (k, st) in path.iter().enumerate() {
                out(self.slots[k].freq[*st], k < settled);
            }
        }
        self.slots.clear();
    }

    /// How many of the held frames, oldest first, the best paths into every state of the
    /// newest frame agree on.
    fn merged(&self) -> usize {
        let n = self.slots.len();
        // The state each path is in at slot k, walked back from the newest slot.
        let mut at: [usize; STATES] = std::array::from_fn(|s| s);
        for k in (0..n).rev() {
            if at.iter().all(|s| *s == at[0]) {
                return k + 1;
            }
            for s in at.iter_mut() {
                *s = self.slots[k].back[*s] as usize;
            }
        }
        0
    }
}
