//! A stream's media timeline: seconds from its first sample, continuous across reconnects.
//!
//! Within one connection, a buffer's time is its PTS relative to the first PTS of that
//! connection. When a stream reconnects, the new connection starts where the last one ended
//! plus the wall-clock time it was down: live media kept happening while we were not
//! listening, so an ASR worker's `start`/`end` on the tap's timeline stay aligned with the
//! words. That interval is reported as a gap.

use std::time::Instant;

/// The timeline state of one stream.
#[derive(Debug, Clone)]
pub struct Timeline {
    base: f64,
    origin: Option<f64>,
    last_end: f64,
    down_at: Option<Instant>,
}

/// A discontinuity: media in [start, end) was not received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    /// Media time where the stream went down.
    pub start: f64,
    /// Media time where it came back.
    pub end: f64,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// A stream that has not received anything yet.
    pub fn new() -> Self {
        Timeline {
            base: 0.0,
            origin: None,
            last_end: 0.0,
            down_at: None,
        }
    }

    /// The connection ended at `now`; the next buffer starts a new connection.
    pub fn mark_down(&mut self, now: Instant) {
        if self.origin.is_some() {
            self.down_at = Some(now);
        }
        self.origin = None;
    }

    /// Media time of a buffer with presentation time `pts` (seconds, pipeline running time;
    /// None if unknown: it then follows the previous buffer) lasting `duration` seconds, and
    /// the gap it closes, if it is the first buffer after a reconnect.
    pub fn place(&mut self, pts: Option<f64>, duration: f64, now: Instant) -> (f64, Option<Gap>) {
        let mut gap = None;
        let t = match (self.origin, pts) {
            (Some(origin), Some(pts)) => self.base + (pts - origin).max(0.0),
            (Some(_), None) => self.last_end,
            (None, pts) => {
                if let Some(down) = self.down_at.take() {
                    let missed = now.saturating_duration_since(down).as_secs_f64();
                    gap = Some(Gap {
                        start: self.last_end,
                        end: self.last_end + missed,
                    });
                    self.base = self.last_end + missed;
                } else {
                    self.base = self.last_end;
                }
                self.origin = Some(pts.unwrap_or(0.0));
                self.base
            }
        };
        self.last_end = self.last_end.max(t + duration);
        (t, gap)
    }

    /// End of the latest buffer placed, media seconds.
    pub fn end(&self) -> f64 {
        self.last_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn starts_at_zero_and_follows_pts() {
        let mut tl = Timeline::new();
        let now = Instant::now();
        assert_eq!(tl.place(Some(5.0), 0.02, now), (0.0, None));
        assert!((tl.place(Some(5.02), 0.02, now).0 - 0.02).abs() < 1e-9);
        assert_eq!(tl.place(None, 0.02, now).0, tl.end() - 0.02);
    }

    #[test]
    fn reconnect_continues_after_the_wall_clock_gap() {
        let mut tl = Timeline::new();
        let t0 = Instant::now();
        tl.place(Some(100.0), 1.0, t0);
        tl.place(Some(101.0), 1.0, t0);
        assert_eq!(tl.end(), 2.0);
        tl.mark_down(t0);
        // The new connection's clock starts anew at 0.
        let (t, gap) = tl.place(Some(0.0), 1.0, t0 + Duration::from_millis(1500));
        assert_eq!(t, 3.5);
        assert_eq!(
            gap,
            Some(Gap {
                start: 2.0,
                end: 3.5
            })
        );
        assert_eq!(tl.place(Some(1.0), 1.0, t0).0, 4.5);
    }

    #[test]
    fn a_failed_attempt_with_no_media_is_not_a_gap_of_its_own() {
        let mut tl = Timeline::new();
        let t0 = Instant::now();
        tl.mark_down(t0);
        assert_eq!(
            tl.place(Some(3.0), 0.5, t0 + Duration::from_secs(2)),
            (0.0, None)
        );
    }
}
