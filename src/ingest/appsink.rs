//! The appsink callbacks, on GStreamer's streaming threads: each buffer is placed on the
//! stream's media timeline and handed on with `try_send`, audio into a bounded channel (full:
//! the chunk is dropped, counted and logged, never silently), video into the drop-oldest queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use gstreamer as gst;
use gstreamer_app as gst_app;

use super::Shared;
use super::audio::{AudioChunk, AudioMsg};
use super::queue::DropOldest;
use crate::events::Lifecycle;
use crate::streams::StreamState;
use crate::vision::Frame;

fn secs(t: Option<gst::ClockTime>) -> Option<f64> {
    t.map(|t| t.nseconds() as f64 / 1e9)
}

/// Mark the attempt up on its first buffer and place the buffer on the timeline.
fn place(shared: &Shared, pts: Option<f64>, duration: f64) -> (f64, bool) {
    shared.touch();
    let (t, gap) = shared
        .stream
        .timeline()
        .place(pts, duration, Instant::now());
    let first = !shared.attempt_up.swap(true, Ordering::Relaxed);
    if first {
        shared.ever_up.store(true, Ordering::Relaxed);
        shared.set_state(StreamState::Up);
        tracing::info!(stream = %shared.id(), media_time = t, "Stream is up");
        shared.lifecycle(Lifecycle::StreamUp, None, gap);
    }
    (t, first)
}

pub(super) fn audio_callbacks(
    shared: Arc<Shared>,
    tx: SyncSender<AudioMsg>,
) -> gst_app::AppSinkCallbacks {
    let eos = shared.clone();
    gst_app::AppSinkCallbacks::builder()
        .eos(move |_| eos.audio_eos.store(true, Ordering::Relaxed))
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let caps = sample.caps().and_then(|c| c.structure(0));
            let rate = caps.and_then(|c| c.get::<i32>("rate").ok()).unwrap_or(0) as u32;
            let channels = caps
                .and_then(|c| c.get::<i32>("channels").ok())
                .unwrap_or(1)
                .max(1) as u32;
            let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let samples: Vec<f32> = map
                .as_slice()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if rate == 0 || samples.is_empty() {
                return Ok(gst::FlowSuccess::Ok);
            }
            let duration = (samples.len() / channels as usize) as f64 / f64::from(rate);
            let (t, fresh) = place(&shared, secs(buffer.pts()), duration);
            let chunk = AudioChunk {
                t,
                rate,
                channels,
                samples,
                fresh,
            };
            match tx.try_send(AudioMsg::Chunk(chunk)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    shared.metrics.dropped_audio();
                    tracing::warn!(stream = %shared.id(), media_time = t, "Audio queue full; dropped a chunk");
                }
                Err(TrySendError::Disconnected(_)) => return Err(gst::FlowError::Flushing),
            }
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

pub(super) fn video_callbacks(
    shared: Arc<Shared>,
    q: Arc<DropOldest<Frame>>,
) -> gst_app::AppSinkCallbacks {
    let eos = shared.clone();
    gst_app::AppSinkCallbacks::builder()
        .eos(move |_| eos.video_eos.store(true, Ordering::Relaxed))
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let Some(s) = sample
                .caps()
                .and_then(|c| c.structure(0).map(|s| s.to_owned()))
            else {
                return Ok(gst::FlowSuccess::Ok);
            };
            let (w, h) = (
                s.get::<i32>("width").unwrap_or(0) as u32,
                s.get::<i32>("height").unwrap_or(0) as u32,
            );
            let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let row = (w as usize * 3).next_multiple_of(4);
            if w == 0 || h == 0 || map.len() < row * h as usize {
                return Ok(gst::FlowSuccess::Ok);
            }
            // GStreamer pads RGB rows to 4 bytes; repack tightly.
            let mut rgb = Vec::with_capacity(w as usize * 3 * h as usize);
            for y in 0..h as usize {
                rgb.extend_from_slice(&map[y * row..y * row + w as usize * 3]);
            }
            shared.video_seen.store(true, Ordering::Relaxed);
            let (t, _) = place(&shared, secs(buffer.pts()), 0.0);
            let Ok(image) = crate::vision::RgbImage::new(w, h, rgb) else {
                return Ok(gst::FlowSuccess::Ok);
            };
            if q.push(Frame { t, image }) {
                shared.metrics.dropped_video();
            }
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}
