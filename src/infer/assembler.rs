//! The utterance assembler: a pure state machine between the transcript receiver and the
//! model worker. It holds each stream's segments until the acoustic descriptors cover the
//! segment's end (or `feature_wait` has passed since it arrived), then releases them in
//! arrival order, per stream.
//!
//! Rules (each outcome is counted: [`super::core::Outcome`]):
//! - **Duplicate**: a final segment whose `seq` was already accepted as final for the stream
//!   (the last 4096 are remembered) is dropped.
//! - **Out of order**: a final segment with a lower `seq` than one already accepted is still
//!   accepted and joins the conversation in arrival order (late ASR output is news too).
//! - **Overlapping**: a final segment that starts before the previous final one ended is
//!   accepted (people talk over each other).
//! - **Partial** (`final: false`): with `provisional` on, released as a provisional estimate
//!   that does not join the conversation; a newer partial of the same `seq` replaces a pending
//!   one, and a partial for a `seq` already final is dropped. With `provisional` off, dropped.
//! - **Forgotten streams**: [`Assembler::forget`] (detach) drops the stream's pending segments.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::transcripts::Transcript;

/// Final seqs remembered per stream for duplicate detection.
const REMEMBERED: usize = 4096;

/// What became of an offered segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Queued; its seq is lower than one already accepted.
    OutOfOrder,
    /// Queued; it starts before the previous final segment ended.
    Overlapping,
    /// Queued as a provisional estimate.
    Provisional,
    /// Replaced a pending partial of the same seq.
    Replaced,
    /// Dropped: the seq was already accepted as final.
    Duplicate,
    /// Dropped: partials are not used, or the seq is already final.
    PartialIgnored,
}

/// A segment released to the model worker.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The segment.
    pub segment: Transcript,
    /// When it arrived.
    pub arrival: Instant,
    /// From a partial segment.
    pub provisional: bool,
    /// The descriptors covered its end when released.
    pub covered: bool,
}

#[derive(Default)]
struct StreamQ {
    pending: VecDeque<(Transcript, Instant)>,
    max_seq: Option<u64>,
    last_end: Option<f64>,
    finals: HashSet<u64>,
    order: VecDeque<u64>,
}

/// The assembler of every stream.
pub struct Assembler {
    wait: Duration,
    provisional: bool,
    streams: HashMap<String, StreamQ>,
}

impl Assembler {
    /// Wait at most `wait` for features; use partials when `provisional`.
    pub fn new(wait: Duration, provisional: bool) -> Assembler {
        Assembler {
            wait,
            provisional,
            streams: HashMap::new(),
        }
    }

    /// Segments waiting.
    pub fn pending(&self) -> usize {
        self.streams.values().map(|q| q.pending.len()).sum()
    }

    /// Take a segment that arrived at `now`.
    pub fn offer(&mut self, seg: Transcript, now: Instant) -> Offer {
        let q = self.streams.entry(seg.stream.clone()).or_default();
        if !seg.is_final {
            if !self.provisional || q.finals.contains(&seg.seq) {
                return Offer::PartialIgnored;
            }
            if let Some(p) = q
                .pending
                .iter_mut()
                .find(|(t, _)| !t.is_final && t.seq == seg.seq)
            {
                *p = (seg, now);
                return Offer::Replaced;
            }
            q.pending.push_back((seg, now));
            return Offer::Provisional;
        }
        if q.finals.contains(&seg.seq) {
            return Offer::Duplicate;
        }
        q.finals.insert(seg.seq);
        q.order.push_back(seg.seq);
        if q.order.len() > REMEMBERED
            && let Some(old) = q.order.pop_front()
        {
            q.finals.remove(&old);
        }
        // A pending partial of this seq is superseded.
        q.pending.retain(|(t, _)| t.is_final || t.seq != seg.seq);
        let mut outcome = Offer::Queued;
        if q.last_end.is_some_and(|e| seg.start < e) {
            outcome = Offer::Overlapping;
        }
        if q.max_seq.is_some_and(|m| seg.seq < m) {
            outcome = Offer::OutOfOrder;
        }
        q.max_seq = Some(q.max_seq.map_or(seg.seq, |m| m.max(seg.seq)));
        q.last_end = Some(q.last_end.map_or(seg.end, |e| e.max(seg.end)));
        q.pending.push_back((seg, now));
        outcome
    }

    /// Release what is ready at `now`, given how far each stream's descriptors reach
    /// (`covered(stream, speaker)`: the descriptors of that speaker's spans; None: no audio
    /// yet). Per stream, in arrival order: a segment waits while the one before it waits.
    pub fn poll(
        &mut self,
        now: Instant,
        covered: impl Fn(&str, &str) -> Option<f64>,
    ) -> Vec<Ready> {
        let mut out = Vec::new();
        for (id, q) in self.streams.iter_mut() {
            while let Some((seg, at)) = q.pending.front() {
                let is_covered = covered(id, &seg.speaker).is_some_and(|r| r >= seg.end);
                let expired = now.saturating_duration_since(*at) >= self.wait;
                if !is_covered && !expired {
                    break;
                }
                let (segment, arrival) = q.pending.pop_front().expect("front exists");
                out.push(Ready {
                    provisional: !segment.is_final,
                    segment,
                    arrival,
                    covered: is_covered,
                });
            }
        }
        out.sort_by_key(|r| r.arrival);
        out
    }

    /// When the next pending segment times out (None: nothing pending).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.streams
            .values()
            .filter_map(|q| q.pending.front().map(|(_, at)| *at + self.wait))
            .min()
    }

    /// Drop a stream's state (detached).
    pub fn forget(&mut self, stream: &str) -> usize {
        self.streams.remove(stream).map_or(0, |q| q.pending.len())
    }

    /// Streams with state.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.streams.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(stream: &str, seq: u64, start: f64, end: f64, fin: bool) -> Transcript {
        Transcript {
            stream: stream.into(),
            seq,
            start,
            end,
            speaker: "customer".into(),
            text: format!("segment {seq}"),
            is_final: fin,
            lang: None,
            clock: crate::transcripts::Clock::Media,
            embedding: None,
        }
    }

    #[test]
    fn waits_for_coverage_then_releases_in_order() {
        let mut a = Assembler::new(Duration::from_millis(500), false);
        let t0 = Instant::now();
        assert_eq!(a.offer(seg("s", 1, 0.0, 2.0, true), t0), Offer::Queued);
        assert_eq!(a.offer(seg("s", 2, 2.0, 3.0, true), t0), Offer::Queued);
        assert!(a.poll(t0, |_, _| Some(1.9)).is_empty());
        let r = a.poll(t0, |_, _| Some(2.5));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].segment.seq, 1);
        assert!(r[0].covered);
        let r = a.poll(t0, |_, _| Some(3.0));
        assert_eq!(r[0].segment.seq, 2);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn gives_up_waiting_after_feature_wait() {
        let mut a = Assembler::new(Duration::from_millis(500), false);
        let t0 = Instant::now();
        a.offer(seg("s", 1, 0.0, 2.0, true), t0);
        assert!(
            a.poll(t0 + Duration::from_millis(499), |_, _| None)
                .is_empty()
        );
        assert_eq!(a.next_deadline(), Some(t0 + Duration::from_millis(500)));
        let r = a.poll(t0 + Duration::from_millis(500), |_, _| None);
        assert_eq!(r.len(), 1);
        assert!(!r[0].covered);
    }

    #[test]
    fn duplicates_out_of_order_and_overlaps_follow_the_rules() {
        let mut a = Assembler::new(Duration::ZERO, false);
        let t0 = Instant::now();
        assert_eq!(a.offer(seg("s", 5, 10.0, 12.0, true), t0), Offer::Queued);
        assert_eq!(a.offer(seg("s", 5, 10.0, 12.0, true), t0), Offer::Duplicate);
        assert_eq!(
            a.offer(seg("s", 6, 11.0, 13.0, true), t0),
            Offer::Overlapping
        );
        assert_eq!(
            a.offer(seg("s", 4, 14.0, 15.0, true), t0),
            Offer::OutOfOrder
        );
        // Another stream's seq 5 is not a duplicate.
        assert_eq!(a.offer(seg("t", 5, 0.0, 1.0, true), t0), Offer::Queued);
        let r = a.poll(t0, |_, _| None);
        let s: Vec<u64> = r
            .iter()
            .filter(|r| r.segment.stream == "s")
            .map(|r| r.segment.seq)
            .collect();
        assert_eq!(s, vec![5, 6, 4]);
    }

    #[test]
    fn partials_are_provisional_only_when_asked_and_never_after_the_final() {
        let t0 = Instant::now();
        let mut off = Assembler::new(Duration::ZERO, false);
        assert_eq!(
            off.offer(seg("s", 1, 0.0, 1.0, false), t0),
            Offer::PartialIgnored
        );
        let mut on = Assembler::new(Duration::from_secs(1), true);
        assert_eq!(
            on.offer(seg("s", 1, 0.0, 1.0, false), t0),
            Offer::Provisional
        );
        assert_eq!(on.offer(seg("s", 1, 0.0, 1.5, false), t0), Offer::Replaced);
        assert_eq!(on.pending(), 1);
        // The final supersedes the pending partial; later partials of seq 1 are dropped.
        assert_eq!(on.offer(seg("s", 1, 0.0, 2.0, true), t0), Offer::Queued);
        assert_eq!(on.pending(), 1);
        assert_eq!(
            on.offer(seg("s", 1, 0.0, 2.0, false), t0),
            Offer::PartialIgnored
        );
        let r = on.poll(t0, |_, _| Some(5.0));
        assert_eq!(r.len(), 1);
        assert!(!r[0].provisional);
    }

    #[test]
    fn forgetting_a_stream_drops_its_pending_segments() {
        let mut a = Assembler::new(Duration::from_secs(5), false);
        let t0 = Instant::now();
        a.offer(seg("s", 1, 0.0, 1.0, true), t0);
        a.offer(seg("s", 2, 1.0, 2.0, true), t0);
        assert_eq!(a.forget("s"), 2);
        assert_eq!(a.pending(), 0);
        assert!(a.poll(t0 + Duration::from_secs(10), |_, _| None).is_empty());
        // Remembered seqs went with it: the stream may start over.
        assert_eq!(a.offer(seg("s", 1, 0.0, 1.0, true), t0), Offer::Queued);
    }
}
