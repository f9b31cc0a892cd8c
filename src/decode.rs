//! Decoding a whole media file's audio to mono f32 at its own rate, with GStreamer (any
//! container and codec the installed plugins decode), optionally through a telephone channel's
//! encoder and decoder ([`Channel`]) and with noise ([`Condition`]). For offline verbs and
//! tools; the daemon's live path is `ingest`.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// Errors decoding a file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file is not there.
    #[error("{path}: no such file")]
    Missing {
        /// The path.
        path: String,
    },
    /// GStreamer failed (no decoder, corrupt data...).
    #[error("{path}: {message}")]
    Gst {
        /// The path.
        path: String,
        /// What GStreamer said.
        message: String,
    },
    /// Babble for a recording needs recordings of other speakers at its rate.
    #[error(
        "{path}: no recording of another speaker at {rate} Hz to make babble from (babble is \
         made of the set's other speakers: give each clip its speaker)"
    )]
    NoBabble {
        /// The path.
        path: String,
        /// Its rate after the channel.
        rate: u32,
    },
}

/// A decoded recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub rate: u32,
    /// Mono samples in [-1, 1].
    pub samples: Vec<f32>,
}

/// Play `desc` (a launch line with a `filesrc name=src` and an `appsink name=sink`) on `path`.
fn play(path: &Path, desc: &str) -> Result<(gst::Pipeline, gst_app::AppSink), DecodeError> {
    let name = path.display().to_string();
    let fail = |message: String| DecodeError::Gst {
        path: name.clone(),
        message,
    };
    if !path.is_file() {
        return Err(DecodeError::Missing { path: name });
    }
    gst::init().map_err(|e| fail(e.to_string()))?;
    let pipeline = gst::parse::launch(desc)
        .map_err(|e| fail(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| fail("not a pipeline".into()))?;
    let src = pipeline
        .by_name("src")
        .ok_or_else(|| fail("no filesrc".into()))?;
    src.set_property("location", path.to_string_lossy().as_ref());
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| fail("no appsink".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| fail(e.to_string()))?;
    Ok((pipeline, sink))
}

/// What [`next_sample`] and [`stop`] say when the file has no stream of the kind the pipeline
/// decodes (decodebin found nothing its branch links to: GStreamer's `not-linked`).
const NOT_LINKED: &str = "no stream of that kind";

/// GStreamer's error in words, or [`NOT_LINKED`].
fn error_text(e: &gst::message::Error) -> String {
    if e.debug().is_some_and(|d| d.contains("not-linked")) {
        NOT_LINKED.to_string()
    } else {
        e.error().to_string()
    }
}

/// `message`, or "no KIND stream" where it is [`NOT_LINKED`].
fn no_stream(message: String, kind: &str) -> String {
    if message == NOT_LINKED {
        format!("no {kind} stream")
    } else {
        message
    }
}

/// The next sample; `Ok(None)` at the end; `Err` with GStreamer's message when the pipeline
/// fails (a file no decoder takes posts an error and never ends, so the bus is watched too).
fn next_sample(
    pipeline: &gst::Pipeline,
    sink: &gst_app::AppSink,
) -> Result<Option<gst::Sample>, String> {
    loop {
        if let Some(s) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            return Ok(Some(s));
        }
        if sink.is_eos() {
            return Ok(None);
        }
        if let Some(msg) = pipeline
            .bus()
            .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
            && let gst::MessageView::Error(e) = msg.view()
        {
            return Err(error_text(e));
        }
    }
}

/// Stop a pipeline; the first error it posted, if any.
fn stop(pipeline: &gst::Pipeline) -> Option<String> {
    let error = pipeline.bus().and_then(|bus| {
        bus.iter().find_map(|msg| match msg.view() {
            gst::MessageView::Error(e) => Some(error_text(e)),
            _ => None,
        })
    });
    let _ = pipeline.set_state(gst::State::Null);
    error
}

/// A telephone channel a recording can be passed through: a real encoder and decoder, as a
/// call's audio arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The recording as it is.
    Clean,
    /// G.711 mu-law at 8 kHz (`mulawenc` / `mulawdec`).
    G711u,
    /// G.711 A-law at 8 kHz (`alawenc` / `alawdec`).
    G711a,
    /// Opus at 16 kbit/s, 16 kHz (`opusenc` / `opusdec`).
    Opus16k,
    /// GSM 06.10 full rate at 8 kHz (`gsmenc` / `gsmdec`).
    Gsm,
}

impl Channel {
    /// Every channel, clean first.
    pub const ALL: [Channel; 5] = [
        Channel::Clean,
        Channel::G711u,
        Channel::G711a,
        Channel::Opus16k,
        Channel::Gsm,
    ];

    /// Its name, as the command line takes it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Clean => "clean",
            Channel::G711u => "g711u",
            Channel::G711a => "g711a",
            Channel::Opus16k => "opus16k",
            Channel::Gsm => "gsm",
        }
    }

    /// The launch-line elements that encode and decode (after `audioconvert`).
    fn chain(self) -> String {
        let (rate, encoder, decoder) = match self {
            Channel::Clean => return String::new(),
            Channel::G711u => (8000, "mulawenc", "mulawdec"),
            Channel::G711a => (8000, "alawenc", "alawdec"),
            Channel::Opus16k => (16000, "opusenc bitrate=16000", "opusdec"),
            Channel::Gsm => (8000, "gsmenc", "gsmdec"),
        };
        format!(
            "audioresample ! audio/x-raw,format=S16LE,rate={rate},channels=1 ! {encoder} ! \
             {decoder} ! audioconvert ! "
        )
    }
}

/// What a recording goes through before the daemon's path: a telephone channel, then noise
/// added at the decoder's rate ([`crate::acoustic::noise`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Condition {
    /// The channel's encoder and decoder.
    pub channel: Channel,
    /// Noise at an SNR, or none.
    pub noise: Option<Noise>,
}

impl Condition {
    /// The recording as it is.
    pub const CLEAN: Condition = Condition {
        channel: Channel::Clean,
        noise: None,
    };

    /// Its name in file and table names: `clean`, `g711u`, `pink10`, `gsm+babble5`.
    pub fn name(&self) -> String {
        match (self.channel, self.noise) {
            (c, None) => c.name().to_string(),
            (Channel::Clean, Some(n)) => n.name(),
            (c, Some(n)) => format!("{}+{}", c.name(), n.name()),
        }
    }
}

/// Decode `path`'s first audio stream to mono f32 at its native rate.
pub fn decode_audio(path: &Path) -> Result<Audio, DecodeError> {
    decode_audio_through(path, Channel::Clean)
}

/// Decode `path`'s first audio stream through `channel` (its encoder and decoder) to mono f32
/// at the rate the channel's decoder gives (the file's own when clean).
pub fn decode_audio_through(path: &Path, channel: Channel) -> Result<Audio, DecodeError> {
    decode_with(path, &channel.chain(), "channels=1,").map(|(a, _)| a)
}

/// Decode `path`'s first audio stream keeping its channels: the samples interleaved, and how
/// many channels there are.
pub fn decode_audio_channels(path: &Path) -> Result<(Audio, u32), DecodeError> {
    decode_with(path, "", "")
}

fn decode_with(path: &Path, chain: &str, channels: &str) -> Result<(Audio, u32), DecodeError> {
    let fail = |message: String| DecodeError::Gst {
        path: path.display().to_string(),
        message: no_stream(message, "audio"),
    };
    let (pipeline, sink) = play(
        path,
        &format!(
            "filesrc name=src ! decodebin ! audioconvert ! {chain}\
             audio/x-raw,format=F32LE,{channels}layout=interleaved ! appsink name=sink sync=false"
        ),
    )?;
    let mut rate = 0u32;
    let mut count = 1u32;
    let mut samples = Vec::new();
    while let Some(sample) = next_sample(&pipeline, &sink).map_err(|e| {
        let _ = pipeline.set_state(gst::State::Null);
        fail(e)
    })? {
        if let Some(s) = sample.caps().and_then(|c| c.structure(0)) {
            rate = s.get::<i32>("rate").map_or(rate, |r| r as u32);
            count = s.get::<i32>("channels").map_or(count, |c| c.max(1) as u32);
        }
        if let Some(buf) = sample.buffer()
            && let Ok(map) = buf.map_readable()
        {
            samples.extend(
                map.as_slice()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
    }
    if let Some(e) = stop(&pipeline) {
        return Err(fail(e));
    }
    if rate == 0 {
        return Err(fail("no audio stream".into()));
    }
    Ok((Audio { rate, samples }, count))
}

/// Decode every file of a labelled set through `cond`, in order; `speakers[i]` is file `i`'s
/// speaker. Noise is added after the channel's decoder: pink noise seeded by the file's name,
/// babble from the set's recordings of *other* speakers (at the same rate), seeded likewise.
pub fn decode_set(
    files: &[std::path::PathBuf],
    speakers: &[String],
    cond: Condition,
) -> Result<Vec<Audio>, DecodeError> {
    let clean = files
        .iter()
        .map(|f| decode_audio_through(f, cond.channel))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(noise) = cond.noise else {
        return Ok(clean);
    };
    use crate::acoustic::noise::{NoiseKind, active_power, babble, mix_at_snr, pink};
    let power: Vec<f64> = clean
        .iter()
        .map(|a| active_power(&a.samples, a.rate))
        .collect();
    clean
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = files[i].file_name().unwrap_or_default().to_string_lossy();
            let seed = fnv1a(name.as_bytes()) ^ u64::from(noise.snr_db.to_bits());
            let n = a.samples.len();
            if n == 0 {
                return Ok(a.clone());
            }
            let sound = match noise.kind {
                NoiseKind::Pink => pink(n, seed),
                NoiseKind::Babble => {
                    let others: Vec<(&[f32], f64)> = (0..clean.len())
                        .filter(|j| speakers[*j] != speakers[i] && clean[*j].rate == a.rate)
                        .map(|j| (&clean[j].samples[..], power[j]))
                        .collect();
                    babble(&others, n, seed).ok_or_else(|| DecodeError::NoBabble {
                        path: files[i].display().to_string(),
                        rate: a.rate,
                    })?
                }
            };
            Ok(Audio {
                rate: a.rate,
                samples: mix_at_snr(&a.samples, a.rate, &sound, noise.snr_db),
            })
        })
        .collect()
}

/// FNV-1a: a seed from a name, the same on every machine.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub use crate::acoustic::noise::Noise;
pub use crate::vision::Frame;

/// How to decode a video for [`decode_video`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoRequest {
    /// Frames per second to deliver (GStreamer's videorate drops or repeats); `None`: all.
    pub fps: Option<u32>,
    /// Scale down (keeping the aspect ratio) to fit this box; `None`: native size.
    pub max_size: Option<(u32, u32)>,
    /// Stop after this many frames.
    pub max_frames: usize,
}

/// Decode `path`'s first video stream (or a still image) to packed RGB frames.
pub fn decode_video(path: &Path, req: VideoRequest) -> Result<Vec<Frame>, DecodeError> {
    let fail = |message: String| DecodeError::Gst {
        path: path.display().to_string(),
        message: no_stream(message, "video"),
    };
    let rate = req
        .fps
        .map(|f| format!("videorate ! video/x-raw,framerate={f}/1 ! "))
        .unwrap_or_default();
    let (scale, size) = match req.max_size {
        Some((w, h)) => (
            "videoscale ! ",
            format!(",width=(int)[16,{w}],height=(int)[16,{h}],pixel-aspect-ratio=(fraction)1/1"),
        ),
        None => ("", String::new()),
    };
    // A still image is one buffer with no framerate: imagefreeze would loop it; it is taken
    // as it comes (one frame).
    let desc = format!(
        "filesrc name=src ! decodebin ! videoconvert ! {scale}video/x-raw,format=RGB{size} ! \
         {rate}appsink name=sink sync=false max-buffers=8"
    );
    let (pipeline, sink) = play(path, &desc)?;
    let mut frames = Vec::new();
    let mut bad = None;
    while frames.len() < req.max_frames {
        let sample = match next_sample(&pipeline, &sink) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) => {
                bad = Some(e);
                break;
            }
        };
        let caps = sample
            .caps()
            .and_then(|c| c.structure(0).map(|s| s.to_owned()));
        let (Some(w), Some(h)) = (
            caps.as_ref().and_then(|s| s.get::<i32>("width").ok()),
            caps.as_ref().and_then(|s| s.get::<i32>("height").ok()),
        ) else {
            bad = Some("a frame without a size".to_string());
            break;
        };
        let Some(buf) = sample.buffer() else { continue };
        let t = buf.pts().map_or(0.0, |p| p.nseconds() as f64 / 1e9);
        let Ok(map) = buf.map_readable() else {
            continue;
        };
        // GStreamer pads RGB rows to 4 bytes: the stride is the buffer over the rows.
        let stride = map.size() / (h.max(1) as usize);
        match (crate::vision::Image {
            data: map.as_slice(),
            width: w as u32,
            height: h as u32,
            stride,
            format: crate::vision::PixelFormat::Rgb,
        })
        .to_rgb()
        {
            Ok(image) => frames.push(Frame { t, image }),
            Err(e) => {
                bad = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(e) = stop(&pipeline).or(bad) {
        return Err(fail(e));
    }
    if frames.is_empty() {
        return Err(fail("no video stream".into()));
    }
    Ok(frames)
}
