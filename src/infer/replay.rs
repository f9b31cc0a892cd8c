//! `summerd replay`: a recorded call through the daemon's stages, as fast as the machine
//! allows. The media's audio is decoded by GStreamer and pushed at its own rate through a
//! stream's [`AudioFeatures`] in 20 ms pieces, as the ingest's audio thread does; with the
//! vision stage on, the video is decoded at `ingest.video_fps`, scaled as the ingest scales it,
//! and every frame goes through the same [`VisionStage`]. The stream is put in a [`Registry`]
//! and every line of the transcript file goes through the daemon's utterance [`Core`]: the same
//! validation, speaker policy, clock placement and assembler, then the same [`Engine`].
//!
//! Only time differs: nothing waits for real time (so the face of a span is pooled over all
//! its frames, where the live daemon pools the frames processed by the time the utterance is
//! scored), and the wall clock of `clock: "unix"` lines is the recording's: `unix_epoch`, the
//! wall-clock time of the media's start, places them (without it they are rejected).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::core::{self, Core, Outcome};
use super::engine::{Engine, EngineError, Utterance};
use crate::acoustic::Band;
use crate::events::{EmotionEvent, Event};
use crate::signals::{EscalationConfig, Tracker};
use crate::streams::Descriptors;
use crate::streams::features::AudioFeatures;
use crate::streams::{Registry, Stream, StreamSpec};
use crate::transcripts::{Clock, Limits, validate};
use crate::vision::stage::{FrameFaces, SharedModels, VisionSettings, VisionStage};

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
    /// What became of the utterances, by outcome label (as `summerd_utterances_total`).
    pub outcomes: BTreeMap<&'static str, u64>,
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
    pub models: SharedModels,
    /// Detection cadence, tracking, history.
    pub settings: &'a VisionSettings,
    /// Frames per second looked at (`ingest.video_fps`).
    pub fps: u32,
    /// Frames are scaled to fit this (`ingest.video_max_width` x `video_max_height`).
    pub max_size: (u32, u32),
}

/// The media's video through the vision stage: each frame's faces, or None when the media
/// has no video.
fn watch(media: &Path, v: &ReplayVision<'_>) -> Result<Option<Vec<FrameFaces>>, ReplayError> {
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
        v.models.fork(),
        v.settings.cadence(),
        v.settings.track.clone(),
    );
    let seen = frames
        .iter()
        .map(|f| stage.process(f.t, &f.image))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(seen))
}

/// The media's audio as `spec`'s descriptors heard through `band`, as the ingest's audio thread
/// makes them: mixed to mono, or with a channel map, each mapped channel the media has whose
/// speaker the policy infers; and the media's length in seconds.
pub fn describe_stream_audio(
    media: &Path,
    spec: &StreamSpec,
    band: Band,
) -> Result<(Descriptors, f64), ReplayError> {
    if spec.channels.is_empty() {
        let (f, seconds) = describe_audio(media, band)?;
        return Ok((Descriptors::Mixed(Arc::new(f)), seconds));
    }
    let (audio, n) = crate::decode::decode_audio_channels(media)?;
    let n_frames = audio.samples.len() / n.max(1) as usize;
    let seconds = n_frames as f64 / f64::from(audio.rate.max(1));
    let mut stores = Vec::new();
    for (c, speaker) in spec.described_channels() {
        if c >= n as usize {
            continue;
        }
        let mut one = crate::decode::Audio {
            rate: audio.rate,
            samples: Vec::new(),
        };
        crate::resample::deinterleave(&audio.samples, c, n as usize, &mut one.samples);
        stores.push((c, speaker, Arc::new(describe(&one, band)?.0)));
    }
    Ok((Descriptors::Channels(stores), seconds))
}

/// The media's audio mixed to mono through a stream's descriptors, as the ingest's audio
/// thread feeds them, heard through `band`: the descriptors and the media's length in seconds.
pub fn describe_audio(media: &Path, band: Band) -> Result<(AudioFeatures, f64), ReplayError> {
    describe(&crate::decode::decode_audio(media)?, band)
}

fn describe(audio: &crate::decode::Audio, band: Band) -> Result<(AudioFeatures, f64), ReplayError> {
    let seconds = audio.samples.len() as f64 / f64::from(audio.rate.max(1));
    let features = AudioFeatures::new(crate::acoustic::Settings {
        history_frames: (seconds * 100.0) as usize + 100,
        band,
        ..Default::default()
    });
    // A rate the resamplers refuse is an error here, as in the ingest's audio thread.
    if audio.rate != crate::resample::TARGET_RATE {
        crate::resample::check(audio.rate, crate::resample::TARGET_RATE)?;
    }
    let piece = (audio.rate / 50).max(1) as usize;
    for (k, chunk) in audio.samples.chunks(piece).enumerate() {
        let t = (k * piece) as f64 / f64::from(audio.rate);
        features.push(t, audio.rate, chunk);
    }
    features.flush();
    Ok((features, seconds))
}

/// How a replay runs the utterance path: what the daemon's config says.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// `[transcripts]` limits.
    pub limits: Limits,
    /// `inference.max_batch`.
    pub max_batch: usize,
    /// `inference.provisional`.
    pub provisional: bool,
    /// `events.publish_text`.
    pub publish_text: bool,
    /// The wall-clock time (seconds since the Unix epoch) of the media's start, for
    /// `clock: "unix"` lines.
    pub unix_epoch: Option<f64>,
}

/// What [`replay_lines`] gives.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Events in the order they were scored.
    pub events: Vec<EmotionEvent>,
    /// Non-empty lines read.
    pub lines: usize,
    /// Lines rejected (line number, reason).
    pub rejected: Vec<(usize, String)>,
    /// Outcomes by label.
    pub outcomes: BTreeMap<&'static str, u64>,
}

/// Transcript lines through the utterance core over streams whose media is all there.
pub fn replay_lines(
    engine: &mut Engine,
    streams: &Registry,
    jsonl: &str,
    opts: &ReplayOptions,
) -> Result<Replayed, EngineError> {
    let mut core = Core::new(Duration::ZERO, opts.provisional, opts.publish_text);
    let mut out = Replayed::default();
    let mut counted = Vec::new();
    let mut jobs = Vec::new();
    for (n, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.lines += 1;
        // The recording's wall clock when its media is all there: where a unix-clock line is
        // placed from (as the live daemon places it from the newest media). A line's "now" is
        // when it would have arrived live: when its own end was played, at the latest that.
        let (stream, end) = stream_and_end(line);
        let all_there = stream
            .as_deref()
            .and_then(|s| Some(opts.unix_epoch? + streams.media_end(s)?));
        let arrived = end.zip(all_there).map(|(end, all)| end.min(all));
        let now = arrived.or(all_there).unwrap_or(f64::NAN);
        match validate(
            line.as_bytes(),
            &opts.limits,
            &|s| streams.media_end(s),
            now,
        ) {
            Ok(t) if t.clock == Clock::Unix && now.is_nan() => out.rejected.push((
                n + 1,
                "clock \"unix\" needs the wall-clock time of the media's start (--unix-epoch)"
                    .into(),
            )),
            Ok(t) => {
                let unix_now = all_there.unwrap_or(f64::NAN);
                core.offer(t, streams, Instant::now(), unix_now, &mut counted);
                jobs.extend(core.poll(streams, Instant::now(), &mut counted));
            }
            Err(e) => out.rejected.push((n + 1, e.to_string())),
        }
    }
    // Anything still waiting (a span beyond the media) goes as the daemon's would after its
    // wait: without what is missing.
    jobs.extend(core.poll(
        streams,
        Instant::now() + Duration::from_secs(3600),
        &mut counted,
    ));
    let batch: Vec<Utterance> = jobs.into_iter().map(core::Job::resolve).collect();
    for chunk in batch.chunks(opts.max_batch.max(1)) {
        for e in core::score(engine, chunk)? {
            counted.extend(Outcome::of_event(&e));
            out.events.push(e);
        }
    }
    for o in counted {
        *out.outcomes.entry(o.label()).or_default() += 1;
    }
    Ok(out)
}

/// Scored events as the daemon publishes them: each through the call-level signal
/// [`Tracker`] (its speaker's smoothed state), followed by the signal it decides.
pub fn with_signals(events: Vec<EmotionEvent>, cfg: &EscalationConfig) -> Vec<Event> {
    let mut tracker = Tracker::new(cfg.clone());
    let mut out = Vec::with_capacity(events.len());
    for mut e in events {
        let signal = tracker.observe(&mut e);
        out.push(Event::Emotion(Box::new(e)));
        out.extend(signal.map(Event::Signal));
    }
    out
}

/// The `stream` and `end` fields of a line, where it has them.
fn stream_and_end(line: &str) -> (Option<String>, Option<f64>) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return (None, None);
    };
    (
        v.get("stream").and_then(|s| Some(s.as_str()?.to_string())),
        v.get("end").and_then(serde_json::Value::as_f64),
    )
}

/// Replay `media` as stream `spec` (None: a stream named by the first line, with no roles)
/// with the transcript lines `jsonl`; events in the order they were scored.
pub fn replay(
    engine: &mut Engine,
    media: &Path,
    jsonl: &str,
    spec: Option<StreamSpec>,
    opts: &ReplayOptions,
    vision: Option<ReplayVision<'_>>,
) -> Result<(Vec<EmotionEvent>, ReplayStats), ReplayError> {
    let tv = Instant::now();
    let faces = match &vision {
        Some(v) => watch(media, v)?,
        None => None,
    };
    let vision_seconds = tv.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let spec = spec.unwrap_or_else(|| {
        let first = jsonl.lines().find_map(|l| stream_and_end(l).0);
        StreamSpec::for_file(first.unwrap_or_else(|| "replay".into()), media)
    });
    let (features, media_seconds) = describe_stream_audio(media, &spec, engine.audio_band())?;
    let audio_seconds = t0.elapsed().as_secs_f64();
    let stream = Stream::with_features(spec, features, faces.as_ref().map(|_| f64::INFINITY));
    stream
        .timeline()
        .place(Some(0.0), media_seconds, Instant::now());
    if let (Some(v), Some(frames)) = (stream.visual(), &faces) {
        for f in frames {
            v.push(f);
        }
    }
    let streams = Registry::new();
    streams
        .insert(Arc::new(stream))
        .expect("a new registry is empty");
    let t1 = Instant::now();
    let r = replay_lines(engine, &streams, jsonl, opts)?;
    let stats = ReplayStats {
        media_seconds,
        lines: r.lines,
        rejected: r.rejected,
        outcomes: r.outcomes,
        events: r.events.len(),
        audio_seconds,
        inference_seconds: t1.elapsed().as_secs_f64(),
        vision_seconds,
    };
    Ok((r.events, stats))
}
