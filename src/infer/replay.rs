//! `summerd replay`: a recorded call through the daemon's stages, as fast as the machine
//! allows. The media's audio is decoded by GStreamer, resampled to 16 kHz and pushed through
//! a stream's [`AudioFeatures`] in 20 ms pieces, as the ingest's audio thread does; every
//! line of the transcript file is validated as a transcript message, offered to the
//! [`Assembler`] and released once the descriptors cover it; the [`Engine`] scores them in
//! batches. With the vision stage on, the video is decoded at `ingest.video_fps` and scaled as
//! the ingest scales it, and every frame goes through the same [`VisionStage`]. Only the clock
//! differs: nothing waits for real time (so the face of a span is pooled over all its frames,
//! where the live daemon pools the frames processed by the time the utterance is scored).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::assembler::Assembler;
use super::engine::{Engine, EngineError, Utterance};
use crate::events::EmotionEvent;
use crate::ingest::features::AudioFeatures;
use crate::transcripts::{Limits, validate};
use crate::vision::stage::{VisionModels, VisionSettings, VisionStage, VisualTimeline};

/// Errors replaying.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The media could not be decoded.
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
    /// The media's rate cannot be resampled.
    #[error(transparent)]
    Resample(#[from] crate::resample::ResampleError),
    /// Inference failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The vision stage failed.
    #[error(transparent)]
    Vision(#[from] crate::vision::VisionError),
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayStats {
    /// Seconds of media.
    pub media_seconds: f64,
    /// Transcript lines read.
    pub lines: usize,
    /// Lines rejected (line number, reason).
    pub rejected: Vec<(usize, String)>,
    /// Events written.
    pub events: usize,
    /// Seconds decoding and describing the audio.
    pub audio_seconds: f64,
    /// Seconds scoring.
    pub inference_seconds: f64,
    /// Seconds decoding the video and running the vision stage (0 without).
    pub vision_seconds: f64,
}

/// The vision stage for a replay, as the daemon would run it on the stream.
pub struct ReplayVision<'a> {
    /// The networks.
    pub models: std::sync::Arc<VisionModels>,
    /// Detection cadence, tracking, history.
    pub settings: &'a VisionSettings,
    /// Frames per second looked at (`ingest.video_fps`).
    pub fps: u32,
    /// Frames are scaled to fit this (`ingest.video_max_width` x `video_max_height`).
    pub max_size: (u32, u32),
}

/// The media's video through the vision stage: the timeline to pool from, or None when the
/// media has no video.
fn watch(media: &Path, v: &ReplayVision<'_>) -> Result<Option<VisualTimeline>, ReplayError> {
    let frames = match crate::decode::decode_video(
        media,
        crate::decode::VideoRequest {
            fps: Some(v.fps),
            max_size: Some(v.max_size),
            max_frames: usize::MAX,
        },
    ) {
        Ok(f) => f,
        Err(crate::decode::DecodeError::Gst { message, .. }) if message == "no video stream" => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut stage = VisionStage::new(
        v.models.clone(),
        v.settings.cadence(),
        v.settings.track.clone(),
    );
    let mut timeline = VisualTimeline::new(f64::INFINITY);
    for f in &frames {
        timeline.push(&stage.process(f.t, &f.image)?);
    }
    Ok(Some(timeline))
}

/// Replay `media` with the transcript lines `jsonl`; events in transcript order.
pub fn replay(
    engine: &mut Engine,
    media: &Path,
    jsonl: &str,
    limits: &Limits,
    max_batch: usize,
    publish_text: bool,
    vision: Option<ReplayVision<'_>>,
) -> Result<(Vec<EmotionEvent>, ReplayStats), ReplayError> {
    let tv = Instant::now();
    let faces = match &vision {
        Some(v) => watch(media, v)?,
        None => None,
    };
    let vision_seconds = tv.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let audio = crate::decode::decode_audio(media)?;
    let features = AudioFeatures::new(crate::acoustic::Settings {
        history_frames: (audio.samples.len() as f64 / f64::from(audio.rate.max(1)) * 100.0)
            as usize
            + 100,
        ..Default::default()
    });
    let mut to16 = crate::resample::To16k::new(audio.rate)?;
    let mut out16 = Vec::new();
    let piece = (audio.rate / 50).max(1) as usize;
    let mut t16 = 0.0;
    for chunk in audio.samples.chunks(piece) {
        out16.clear();
        to16.push(chunk, &mut out16);
        features.push(t16, &out16);
        t16 += out16.len() as f64 / 16_000.0;
    }
    out16.clear();
    to16.flush(&mut out16);
    features.push(t16, &out16);
    features.flush();
    let audio_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut asm = Assembler::new(std::time::Duration::ZERO, false);
    let mut rejected = Vec::new();
    let mut lines = 0;
    let covered = features.covered_until();
    let mut ready = Vec::new();
    for (n, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        match validate(line.as_bytes(), limits, &|_| true, f64::MAX) {
            Ok(t) => {
                asm.offer(t, Instant::now());
                ready.extend(asm.poll(Instant::now(), |_| covered));
            }
            Err(e) => rejected.push((n + 1, e.to_string())),
        }
    }
    let mut events = Vec::new();
    for chunk in ready.chunks(max_batch.max(1)) {
        let batch: Vec<Utterance> = chunk
            .iter()
            .map(|r| {
                let s = &r.segment;
                Utterance {
                    stream: s.stream.clone(),
                    seq: s.seq,
                    speaker: s.speaker.clone(),
                    start: s.start,
                    end: s.end,
                    text: s.text.clone(),
                    embedding: s.embedding.clone(),
                    audio: features
                        .functionals(s.start, s.end)
                        .ok()
                        .map(|f| f.values.to_vec()),
                    face: faces.as_ref().map(|tl| tl.pool(s.start, s.end)),
                    provisional: false,
                    publish_text,
                    arrival: r.arrival,
                }
            })
            .collect();
        for (mut e, u) in engine.infer(&batch)?.into_iter().zip(&batch) {
            e.latency_ms = u.arrival.elapsed().as_secs_f64() * 1e3;
            events.push(e);
        }
    }
    let stats = ReplayStats {
        media_seconds: audio.samples.len() as f64 / f64::from(audio.rate.max(1)),
        lines,
        rejected,
        events: events.len(),
        audio_seconds,
        inference_seconds: t1.elapsed().as_secs_f64(),
        vision_seconds,
    };
    Ok((events, stats))
}
