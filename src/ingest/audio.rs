//! A stream's audio thread: resamples what the appsink hands over to 16 kHz (rubato), feeds
//! the stream's acoustic descriptors and publishes the audio tap in `chunk_ms` pieces on the
//! same media timeline.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::Shared;
use crate::bus::PublisherHandle;
use crate::events::tap_message;
use crate::resample::{TARGET_RATE, To16k, to_i16};

/// What the audio thread receives.
pub(super) enum AudioMsg {
    /// A buffer.
    Chunk(AudioChunk),
    /// The connection ended: push out what the resampler still holds.
    Flush,
}

/// An audio buffer placed on the timeline.
pub(super) struct AudioChunk {
    pub(super) t: f64,
    pub(super) rate: u32,
    pub(super) samples: Vec<f32>,
    /// First chunk of a new connection: the resampler starts afresh.
    pub(super) fresh: bool,
}

pub(super) fn audio_loop(
    rx: Receiver<AudioMsg>,
    shared: Arc<Shared>,
    tap: Option<PublisherHandle>,
    chunk_ms: Option<u32>,
) {
    let mut resampler: Option<(u32, To16k)> = None;
    let mut out16 = Vec::new();
    let mut pcm = Vec::new();
    // Media time of out16[0].
    let mut t16 = 0.0;
    let chunk = chunk_ms.map(|ms| (TARGET_RATE * ms / 1000) as usize);
    loop {
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let c = match msg {
            AudioMsg::Chunk(c) => c,
            AudioMsg::Flush => {
                if let Some((_, r)) = resampler.as_mut() {
                    let before = out16.len();
                    r.flush(&mut out16);
                    if let Some(f) = shared.stream.features() {
                        f.push(t16 + secs16(before), &out16[before..]);
                        f.flush();
                    }
                    match (chunk, &tap) {
                        (Some(chunk), Some(tap)) => {
                            publish_tap(tap, shared.id(), &mut out16, t16, chunk, &mut pcm, true);
                        }
                        _ => out16.clear(),
                    }
                }
                resampler = None;
                continue;
            }
        };
        shared
            .metrics
            .audio_seconds(c.samples.len() as f64 / f64::from(c.rate));
        if shared.stream.features().is_none() && (chunk.is_none() || tap.is_none()) {
            continue;
        }
        // A new connection or rate: start the resampler afresh at this chunk's time.
        if c.fresh || resampler.as_ref().is_none_or(|(r, _)| *r != c.rate) {
            match To16k::new(c.rate) {
                Ok(r) => resampler = Some((c.rate, r)),
                Err(e) => {
                    tracing::warn!(stream = %shared.id(), error = %e, "Cannot resample this stream");
                    continue;
                }
            }
            out16.clear();
            t16 = c.t;
        }
        let (_, r) = resampler.as_mut().expect("set above");
        let before = out16.len();
        r.push(&c.samples, &mut out16);
        if let Some(f) = shared.stream.features() {
            f.push(t16 + secs16(before), &out16[before..]);
        }
        match (chunk, &tap) {
            (Some(chunk), Some(tap)) => {
                t16 = publish_tap(tap, shared.id(), &mut out16, t16, chunk, &mut pcm, false);
            }
            _ => {
                t16 += secs16(out16.len());
                out16.clear();
            }
        }
    }
}

fn secs16(samples: usize) -> f64 {
    samples as f64 / f64::from(TARGET_RATE)
}

/// Publish the full `chunk`-sample pieces of `out16` (and, with `tail`, the rest as a last
/// shorter piece); returns the media time of what remains.
fn publish_tap(
    tap: &PublisherHandle,
    id: &str,
    out16: &mut Vec<f32>,
    mut t16: f64,
    chunk: usize,
    pcm: &mut Vec<i16>,
    tail: bool,
) -> f64 {
    let mut start = 0;
    while out16.len() - start >= chunk || (tail && start < out16.len()) {
        let end = (start + chunk).min(out16.len());
        pcm.clear();
        to_i16(&out16[start..end], pcm);
        tap.publish(tap_message(id, t16, pcm));
        t16 += (end - start) as f64 / f64::from(TARGET_RATE);
        start = end;
    }
    out16.drain(..start);
    t16
}
