//! A stream's audio thread: feeds what the appsink hands over to the stream's acoustic
//! descriptors at the media's own rate (their band front end takes it from there, as it does
//! for a file), resamples it to 16 kHz (rubato) and publishes the audio tap in `chunk_ms`
//! pieces on the same media timeline.
//!
//! Audio mixed to mono is one lane. A stream with a channel map has a lane per mapped channel
//! the media has, each with its own resampler and descriptors (none for a speaker the policy
//! excludes); the tap carries the lanes interleaved, with their speakers in its header. A map
//! naming more channels than the media has, or a channel count that changes, is a
//! `stream.error` event; the lanes the media has keep running.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::Shared;
use crate::bus::PublisherHandle;
use crate::events::{Lifecycle, tap_message, tap_message_channels};
use crate::resample::{Resample, TARGET_RATE, deinterleave, to_i16};
use crate::streams::Descriptors;
use crate::streams::features::AudioFeatures;

/// What the audio thread receives.
pub(super) enum AudioMsg {
    /// A buffer.
    Chunk(AudioChunk),
    /// The connection ended: push out what the resamplers still hold.
    Flush,
}

/// An audio buffer placed on the timeline.
pub(super) struct AudioChunk {
    pub(super) t: f64,
    pub(super) rate: u32,
    /// Channels interleaved in `samples` (1 unless the stream has a channel map).
    pub(super) channels: u32,
    pub(super) samples: Vec<f32>,
    /// First chunk of a new connection: the resamplers start afresh.
    pub(super) fresh: bool,
}

/// One channel on its way to 16 kHz.
struct Lane {
    /// Its index in the media's frames.
    channel: usize,
    features: Option<Arc<AudioFeatures>>,
    resampler: Resample,
    /// 16 kHz samples not yet on the tap.
    out16: Vec<f32>,
    /// This channel's samples of the chunk at hand.
    input: Vec<f32>,
}

/// The lanes of one connection and layout (rate, channels).
struct Lanes {
    rate: u32,
    channels: u32,
    lanes: Vec<Lane>,
    /// With a channel map: the lanes' speakers, as the tap names them.
    speakers: Option<Vec<String>>,
    /// Media time of every lane's `out16[0]`.
    t16: f64,
    /// Media time of the next input frame (the descriptors take the input at its own rate).
    t_in: f64,
}

impl Lanes {
    /// The lanes for audio of `channels` at `rate` starting at `t`: the mono mix, or each
    /// mapped channel the media has.
    fn new(
        map: &[(usize, String)],
        descriptors: &Descriptors,
        rate: u32,
        channels: u32,
        t: f64,
    ) -> Result<Lanes, crate::resample::ResampleError> {
        let wanted: Vec<(usize, Option<&String>)> = if map.is_empty() {
            vec![(0, None)]
        } else {
            map.iter()
                .filter(|(c, _)| *c < channels as usize)
                .map(|(c, s)| (*c, Some(s)))
                .collect()
        };
        let mut lanes = Vec::with_capacity(wanted.len());
        for (channel, speaker) in &wanted {
            lanes.push(Lane {
                channel: *channel,
                features: match speaker {
                    None => descriptors.mixed().cloned(),
                    Some(_) => descriptors.of_channel(*channel).cloned(),
                },
                resampler: Resample::to_16k(rate)?,
                out16: Vec::new(),
                input: Vec::new(),
            });
        }
        Ok(Lanes {
            rate,
            channels,
            lanes,
            speakers: (!map.is_empty())
                .then(|| wanted.iter().filter_map(|(_, s)| s.cloned()).collect()),
            t16: t,
            t_in: t,
        })
    }

    /// Describe an interleaved chunk in every lane (at the media's rate) and resample it to
    /// 16 kHz for the tap.
    fn push(&mut self, samples: &[f32]) {
        let n = self.channels as usize;
        for lane in &mut self.lanes {
            lane.input.clear();
            deinterleave(samples, lane.channel, n, &mut lane.input);
            if let Some(f) = &lane.features {
                f.push(self.t_in, self.rate, &lane.input);
            }
            lane.resampler.push(&lane.input, &mut lane.out16);
        }
        self.t_in += (samples.len() / n.max(1)) as f64 / f64::from(self.rate.max(1));
    }

    /// The end of a connection or layout: the descriptors decide what they hold, and the
    /// resamplers' tails go to the tap.
    fn flush(&mut self) {
        for lane in &mut self.lanes {
            lane.resampler.flush(&mut lane.out16);
            if let Some(f) = &lane.features {
                f.flush();
            }
        }
    }

    /// Publish the lanes' full `chunk`-sample pieces (with `tail`, the rest as a last shorter
    /// piece), interleaved; without a tap, drop what was described.
    fn publish(
        &mut self,
        tap: Option<&(usize, PublisherHandle)>,
        id: &str,
        pcm: &mut Vec<i16>,
        tail: bool,
    ) {
        let have = self.lanes.iter().map(|l| l.out16.len()).min().unwrap_or(0);
        let Some((chunk, tap)) = tap else {
            self.t16 += secs16(have);
            self.drain(have);
            return;
        };
        let mut start = 0;
        while have - start >= *chunk || (tail && start < have) {
            let end = (start + chunk).min(have);
            pcm.clear();
            if let [one] = &self.lanes[..] {
                to_i16(&one.out16[start..end], pcm);
            } else {
                for i in start..end {
                    for l in &self.lanes {
                        to_i16(std::slice::from_ref(&l.out16[i]), pcm);
                    }
                }
            }
            tap.publish(match &self.speakers {
                None => tap_message(id, self.t16, pcm),
                Some(s) => tap_message_channels(id, self.t16, s, pcm),
            });
            self.t16 += secs16(end - start);
            start = end;
        }
        self.drain(start);
    }

    fn drain(&mut self, n: usize) {
        for lane in &mut self.lanes {
            let n = n.min(lane.out16.len());
            lane.out16.drain(..n);
        }
    }
}

pub(super) fn audio_loop(
    rx: Receiver<AudioMsg>,
    shared: Arc<Shared>,
    tap: Option<PublisherHandle>,
    chunk_ms: Option<u32>,
) {
    let map = shared.stream.spec().channel_map();
    let tap = chunk_ms
        .map(|ms| (TARGET_RATE * ms / 1000) as usize)
        .zip(tap);
    let mut lanes: Option<Lanes> = None;
    let mut pcm = Vec::new();
    // The media's channel count as last seen (across connections).
    let mut seen: Option<u32> = None;
    loop {
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let c = match msg {
            AudioMsg::Chunk(c) => c,
            AudioMsg::Flush => {
                if let Some(mut l) = lanes.take() {
                    l.flush();
                    l.publish(tap.as_ref(), shared.id(), &mut pcm, true);
                }
                continue;
            }
        };
        let frames = c.samples.len() / c.channels.max(1) as usize;
        shared
            .metrics
            .audio_seconds(frames as f64 / f64::from(c.rate));
        shared.stream.set_audio_channels(c.channels);
        if !map.is_empty() {
            if let Some(why) = channel_problem(&map, seen, c.channels, c.t) {
                tracing::warn!(stream = %shared.id(), "{why}");
                shared.lifecycle(Lifecycle::StreamError, Some(why), None);
            }
            seen = Some(c.channels);
        }
        if !shared.stream.features().any() && tap.is_none() {
            continue;
        }
        let same = lanes
            .as_ref()
            .is_some_and(|l| l.rate == c.rate && l.channels == c.channels);
        // A new connection or layout: start the lanes afresh at this chunk's time (a layout
        // change within a connection first pushes out what the old lanes hold).
        if c.fresh || !same {
            if let Some(mut old) = lanes.take()
                && !c.fresh
            {
                old.flush();
                old.publish(tap.as_ref(), shared.id(), &mut pcm, true);
            }
            match Lanes::new(&map, shared.stream.features(), c.rate, c.channels, c.t) {
                Ok(l) => lanes = Some(l),
                Err(e) => {
                    tracing::warn!(stream = %shared.id(), error = %e, "Cannot resample this stream");
                    continue;
                }
            }
        }
        let l = lanes.as_mut().expect("set above");
        l.push(&c.samples);
        l.publish(tap.as_ref(), shared.id(), &mut pcm, false);
    }
}

/// What is wrong with audio of `now` channels on a stream mapping `map`, when it was `before`
/// (None: the first audio): a changed count, or mapped channels the media lacks. None when
/// nothing changed or the first audio covers the map.
fn channel_problem(
    map: &[(usize, String)],
    before: Option<u32>,
    now: u32,
    t: f64,
) -> Option<String> {
    if before == Some(now) {
        return None;
    }
    let missing: Vec<String> = map
        .iter()
        .filter(|(c, _)| *c >= now as usize)
        .map(|(c, s)| format!("{s} (channel {c})"))
        .collect();
    let lacking = if missing.is_empty() {
        String::new()
    } else {
        format!(
            "; {} get(s) no descriptors and no tap audio until the channel is there",
            missing.join(", ")
        )
    };
    match before {
        Some(b) => Some(format!(
            "audio channels changed from {b} to {now} at {t:.2} s{}",
            if missing.is_empty() {
                "; every mapped channel is still there".to_string()
            } else {
                lacking
            }
        )),
        None if !missing.is_empty() => Some(format!(
            "the audio has {now} channel(s), fewer than the channel map names{lacking}"
        )),
        None => None,
    }
}

fn secs16(samples: usize) -> f64 {
    samples as f64 / f64::from(TARGET_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Vec<(usize, String)> {
        vec![(0, "agent".into()), (1, "customer".into())]
    }

    #[test]
    fn channel_problems_are_named_once_per_change() {
        assert_eq!(channel_problem(&map(), None, 2, 0.0), None);
        assert_eq!(channel_problem(&map(), Some(2), 2, 1.0), None);
        let fewer = channel_problem(&map(), None, 1, 0.0).unwrap();
        assert!(
            fewer.contains("1 channel(s)") && fewer.contains("customer (channel 1)"),
            "{fewer}"
        );
        let changed = channel_problem(&map(), Some(2), 1, 12.345).unwrap();
        assert!(
            changed.contains("from 2 to 1 at 12.35 s") && changed.contains("customer"),
            "{changed}"
        );
        let back = channel_problem(&map(), Some(1), 2, 20.0).unwrap();
        assert!(
            back.contains("every mapped channel is still there"),
            "{back}"
        );
        assert!(channel_problem(&map(), Some(2), 3, 1.0).is_some());
    }

    #[test]
    fn lanes_split_channels_and_interleave_the_tap_in_map_order() {
        let descriptors = Descriptors::None;
        // Three media channels, the map names 0 and 2.
        let m = vec![(0, "agent".to_string()), (2, "customer".to_string())];
        let mut l = Lanes::new(&m, &descriptors, 16_000, 3, 1.0).unwrap();
        assert_eq!(l.speakers.as_deref().unwrap(), ["agent", "customer"]);
        let frames = 4_000;
        let samples: Vec<f32> = (0..frames).flat_map(|_| [0.25f32, 0.5, -0.5]).collect();
        l.push(&samples);
        l.flush();
        let a = &l.lanes[0].out16;
        let b = &l.lanes[1].out16;
        assert_eq!(a.len(), b.len());
        assert!(a.len() >= frames - 64, "{}", a.len());
        // Away from the resampler's edges each lane holds its own channel.
        assert!((a[a.len() / 2] - 0.25).abs() < 1e-3 && (b[b.len() / 2] + 0.5).abs() < 1e-3);
        // Without a tap the lanes are drained and time moves on.
        let n = a.len();
        l.publish(None, "s", &mut Vec::new(), true);
        assert!((l.t16 - (1.0 + n as f64 / 16_000.0)).abs() < 1e-9);
        assert!(l.lanes.iter().all(|x| x.out16.is_empty()));
        // Fewer media channels than the map: only the lanes the media has.
        let one = Lanes::new(&m, &descriptors, 8_000, 1, 0.0).unwrap();
        assert_eq!(one.lanes.len(), 1);
        assert_eq!(one.speakers.as_deref().unwrap(), ["agent"]);
    }
}
