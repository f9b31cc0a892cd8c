//! Messages the daemon publishes (INTERFACES.md, "Emotion events out" and "Audio tap out").
//!
//! Every message is multipart `[topic, JSON]` (the tap adds a third frame of PCM). Topics:
//! - `emotion.<stream>`: one [`EmotionEvent`] per utterance;
//! - `lifecycle.<stream>`: `stream.up` / `stream.down` / `stream.error` ([`LifecycleEvent`]);
//! - `lifecycle.daemon`: `daemon.up` once initialised, `daemon.stopping` when draining;
//! - `signal.<stream>`: `escalation` / `deescalation` of one speaker ([`SignalEvent`]).
//!
//! A subscriber that wants everything about one stream subscribes to its three prefixes.
//! [`Event::parse`] reads any of them back (for `summerd report` and `summerd tail`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::Multipart;

/// The wire version of every published message.
pub const V: u32 = 1;

/// Which modalities contributed to an inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modalities {
    /// Text (transcript or supplied embedding).
    pub text: bool,
    /// Acoustic descriptors.
    pub audio: bool,
    /// Face features.
    pub visual: bool,
}

/// One emotion estimate for one utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionEvent {
    /// Always 1.
    pub v: u32,
    /// Always "emotion".
    #[serde(rename = "type")]
    pub kind: String,
    /// Stream id.
    pub stream: String,
    /// Utterance number (the segment's seq).
    pub utterance: u64,
    /// The segment's seq.
    pub seq: u64,
    /// Speaker label as sent by the ASR worker.
    pub speaker: String,
    /// Span start, seconds on the stream's media timeline.
    pub start: f64,
    /// Span end.
    pub end: f64,
    /// Most probable class.
    pub label: String,
    /// Its probability.
    pub confidence: f32,
    /// Every class's probability.
    pub probs: BTreeMap<String, f32>,
    /// Which inputs were present.
    pub modalities: Modalities,
    /// `name@sha256-prefix` of the model.
    pub model: String,
    /// Milliseconds from the segment's arrival to publication.
    pub latency_ms: f64,
    /// RFC 3339 UTC time of publication.
    pub emitted_at: String,
    /// True for an estimate made from a partial (non-final) segment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
    /// Transcript text, only where `publish_text` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The speaker's facial expression over the span (the expression network's own estimate,
    /// separate from the model's), on streams whose video the vision stage watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face: Option<FaceEvent>,
    /// The speaker's smoothed state after this utterance (`[escalation]` on, final events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothed: Option<Smoothed>,
}

/// A speaker's state over their recent utterances: an exponentially weighted mix of the
/// label probabilities (`escalation.alpha` is the newest utterance's weight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Smoothed {
    /// The mix's most probable class.
    pub label: String,
    /// The mix's share of the negative classes (`escalation.negative`).
    pub negative: f32,
    /// Whether the speaker is in an escalation episode.
    pub escalated: bool,
}

/// Call-level signal kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// A speaker's negative share stayed above `escalation.on` for `escalation.sustain`
    /// utterances in a row: once per episode.
    #[serde(rename = "escalation")]
    Escalation,
    /// The episode ended: the share stayed below `escalation.off` for `escalation.release`
    /// utterances, or the stream was detached.
    #[serde(rename = "deescalation")]
    Deescalation,
}

impl Signal {
    /// Every kind's name, as its `type` (and `summerd_signals_total{kind}`) says it.
    pub const NAMES: [&'static str; 2] = ["escalation", "deescalation"];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Escalation => Self::NAMES[0],
            Signal::Deescalation => Self::NAMES[1],
        }
    }
}

/// An escalation or de-escalation of one speaker of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalEvent {
    /// Always 1.
    pub v: u32,
    /// Which signal.
    #[serde(rename = "type")]
    pub kind: Signal,
    /// Stream id.
    pub stream: String,
    /// Speaker label.
    pub speaker: String,
    /// The seq of the utterance that decided it.
    pub seq: u64,
    /// Media time the episode began (start of its first utterance above `escalation.on`).
    pub start: f64,
    /// Media time it was decided (end of the deciding utterance).
    pub end: f64,
    /// The smoothed negative share when it was decided.
    pub level: f32,
    /// The highest smoothed negative share of the episode.
    pub peak: f32,
    /// The negative class with the most weight in the mix when it was decided.
    pub label: String,
    /// Why, where it was not the speaker's own utterances (`detached`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339 UTC time of publication.
    pub emitted_at: String,
}

impl SignalEvent {
    /// The multipart message.
    pub fn to_message(&self) -> Multipart {
        vec![
            format!("signal.{}", self.stream).into_bytes(),
            to_json(self),
        ]
    }
}

/// Any published event, read back from its JSON (as `summerd tail --json` prints it and
/// `summerd replay` writes it).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `type: "emotion"`.
    Emotion(Box<EmotionEvent>),
    /// `type: "daemon.*"` or `"stream.*"`.
    Lifecycle(LifecycleEvent),
    /// `type: "escalation"` or `"deescalation"`.
    Signal(SignalEvent),
}

impl Event {
    /// Read one event, by its `type`.
    pub fn parse(json: &[u8]) -> Result<Event, serde_json::Error> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: String,
        }
        let k: Kind = serde_json::from_slice(json)?;
        Ok(match k.kind.as_str() {
            "emotion" => Event::Emotion(Box::new(serde_json::from_slice(json)?)),
            "escalation" | "deescalation" => Event::Signal(serde_json::from_slice(json)?),
            _ => Event::Lifecycle(serde_json::from_slice(json)?),
        })
    }

    /// The stream it is about (None for the daemon's own lifecycle).
    pub fn stream(&self) -> Option<&str> {
        match self {
            Event::Emotion(e) => Some(&e.stream),
            Event::Lifecycle(e) => e.stream.as_deref(),
            Event::Signal(e) => Some(&e.stream),
        }
    }

    /// Its JSON, one line.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Event::Emotion(e) => to_json(e),
            Event::Lifecycle(e) => to_json(e),
            Event::Signal(e) => to_json(e),
        }
    }

    /// The multipart message it was published as.
    pub fn to_message(&self) -> Multipart {
        match self {
            Event::Emotion(e) => e.to_message(),
            Event::Lifecycle(e) => e.to_message(),
            Event::Signal(e) => e.to_message(),
        }
    }
}

/// The facial expression of an utterance's span (FER2013's 7 classes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceEvent {
    /// Whether the main face was seen in any frame of the span.
    pub present: bool,
    /// Share of the span's frames that showed it.
    pub fraction: f32,
    /// Frames of the span processed.
    pub frames: u32,
    /// Most probable expression (absent without a face).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its mean probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Mean probability of each expression (empty without a face).
    pub probs: BTreeMap<String, f32>,
}

impl From<&crate::vision::stage::VisualVector> for FaceEvent {
    fn from(v: &crate::vision::stage::VisualVector) -> Self {
        let top = v.top();
        FaceEvent {
            present: v.present,
            fraction: v.face_fraction,
            frames: v.frames,
            label: top.map(|(l, _)| l.to_string()),
            confidence: top.map(|(_, p)| p),
            probs: if v.present {
                crate::vision::expression::CLASSES
                    .iter()
                    .map(|c| c.to_string())
                    .zip(v.probs)
                    .collect()
            } else {
                BTreeMap::new()
            },
        }
    }
}

/// Lifecycle kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// The daemon is initialised and serving.
    #[serde(rename = "daemon.up")]
    DaemonUp,
    /// The daemon is draining and will exit.
    #[serde(rename = "daemon.stopping")]
    DaemonStopping,
    /// A stream's media is flowing.
    #[serde(rename = "stream.up")]
    StreamUp,
    /// A stream's media stopped (with a reason).
    #[serde(rename = "stream.down")]
    StreamDown,
    /// A stream failed (with a reason); it may be retried.
    #[serde(rename = "stream.error")]
    StreamError,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Always 1.
    pub v: u32,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: Lifecycle,
    /// The stream, for `stream.*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Why, where there is a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `stream.*`: the end of the stream's media timeline so far, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_time: Option<f64>,
    /// For `stream.up` after a reconnect: the media interval [start, end] that was missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<[f64; 2]>,
    /// RFC 3339 UTC time of publication.
    pub emitted_at: String,
}

impl LifecycleEvent {
    /// A daemon-wide event.
    pub fn daemon(kind: Lifecycle, reason: Option<String>) -> Self {
        LifecycleEvent {
            v: V,
            kind,
            stream: None,
            reason,
            media_time: None,
            gap: None,
            emitted_at: now_rfc3339(),
        }
    }

    /// A stream's event.
    pub fn stream(kind: Lifecycle, stream: &str, reason: Option<String>) -> Self {
        LifecycleEvent {
            stream: Some(stream.to_string()),
            ..Self::daemon(kind, reason)
        }
    }

    /// The multipart message.
    pub fn to_message(&self) -> Multipart {
        let topic = format!("lifecycle.{}", self.stream.as_deref().unwrap_or("daemon"));
        vec![topic.into_bytes(), to_json(self)]
    }
}

impl EmotionEvent {
    /// The multipart message.
    pub fn to_message(&self) -> Multipart {
        vec![
            format!("emotion.{}", self.stream).into_bytes(),
            to_json(self),
        ]
    }
}

/// Header of an audio-tap message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TapHeader {
    /// Always 1.
    pub v: u32,
    /// Stream id.
    pub stream: String,
    /// Media time of the first sample, seconds.
    pub pts: f64,
    /// Always 16000.
    pub rate: u32,
    /// 1; with a channel map, the channels carried, interleaved.
    pub channels: u32,
    /// Always "S16LE".
    pub format: String,
    /// With a channel map: each carried channel's speaker label, in order (absent on a
    /// stream mixed to mono).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speakers: Option<Vec<String>>,
}

/// Sample rate of the tap.
pub const TAP_RATE: u32 = 16_000;

/// The multipart tap message `[stream, header, PCM S16LE]` for `samples` starting at `pts`.
pub fn tap_message(stream: &str, pts: f64, samples: &[i16]) -> Multipart {
    tap_message_of(stream, pts, None, samples)
}

/// The tap message of a stream with a channel map: `interleaved` holds one sample of each of
/// `speakers`' channels per frame.
pub fn tap_message_channels(
    stream: &str,
    pts: f64,
    speakers: &[String],
    interleaved: &[i16],
) -> Multipart {
    tap_message_of(stream, pts, Some(speakers.to_vec()), interleaved)
}

fn tap_message_of(
    stream: &str,
    pts: f64,
    speakers: Option<Vec<String>>,
    samples: &[i16],
) -> Multipart {
    let header = TapHeader {
        v: V,
        stream: stream.to_string(),
        pts,
        rate: TAP_RATE,
        channels: speakers.as_ref().map_or(1, |s| s.len() as u32),
        format: "S16LE".into(),
        speakers,
    };
    let mut pcm = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        pcm.extend_from_slice(&s.to_le_bytes());
    }
    vec![stream.as_bytes().to_vec(), to_json(&header), pcm]
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types have string keys and finite floats checked upstream; serialisation of
    // them cannot fail.
    serde_json::to_vec(v).expect("event types serialise")
}

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-28T10:15:02.113Z`).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_topic_and_json() {
        let e = LifecycleEvent::daemon(Lifecycle::DaemonUp, None);
        let m = e.to_message();
        assert_eq!(m[0], b"lifecycle.daemon");
        let v: serde_json::Value = serde_json::from_slice(&m[1]).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "daemon.up");
        assert!(v.get("stream").is_none());
        assert!(v["emitted_at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn tap_message_is_little_endian_pcm() {
        let m = tap_message("call-42", 12.3, &[1, -2, i16::MAX]);
        assert_eq!(m[0], b"call-42");
        let h: TapHeader = serde_json::from_slice(&m[1]).unwrap();
        assert_eq!((h.rate, h.channels, h.format.as_str()), (16000, 1, "S16LE"));
        assert_eq!(m[2], vec![1, 0, 0xfe, 0xff, 0xff, 0x7f]);
        assert!(!String::from_utf8_lossy(&m[1]).contains("speakers"));
        let two = ["agent".to_string(), "customer".to_string()];
        let m = tap_message_channels("call-1", 0.5, &two, &[1, -2]);
        let h: TapHeader = serde_json::from_slice(&m[1]).unwrap();
        assert_eq!((h.channels, h.speakers.as_deref()), (2, Some(&two[..])));
        assert_eq!(m[2], vec![1, 0, 0xfe, 0xff]);
    }

    #[test]
    fn emotion_event_matches_the_contract() {
        let e = EmotionEvent {
            v: V,
            kind: "emotion".into(),
            stream: "call-42".into(),
            utterance: 17,
            seq: 17,
            speaker: "customer".into(),
            start: 12.34,
            end: 15.1,
            label: "anger".into(),
            confidence: 0.71,
            probs: [("anger".to_string(), 0.71), ("neutral".to_string(), 0.29)].into(),
            modalities: Modalities {
                text: true,
                audio: true,
                visual: false,
            },
            model: "summer-default@abcdef12".into(),
            latency_ms: 8.4,
            emitted_at: now_rfc3339(),
            provisional: false,
            text: None,
            face: None,
            smoothed: None,
        };
        let m = e.to_message();
        assert_eq!(m[0], b"emotion.call-42");
        let v: serde_json::Value = serde_json::from_slice(&m[1]).unwrap();
        for key in [
            "v",
            "type",
            "stream",
            "utterance",
            "seq",
            "speaker",
            "start",
            "end",
            "label",
            "confidence",
            "probs",
            "modalities",
            "model",
            "latency_ms",
            "emitted_at",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(
            v.get("text").is_none(),
            "text must not ride unless publish_text"
        );
        assert!(v.get("provisional").is_none());
        assert!(
            v.get("face").is_none(),
            "no face field without a vision stage"
        );
    }

    #[test]
    fn the_face_field_says_what_was_seen_and_nothing_more() {
        use crate::vision::stage::VisualVector;
        let seen = VisualVector {
            present: true,
            face_fraction: 0.75,
            frames: 8,
            probs: [0.1, 0.0, 0.0, 0.7, 0.1, 0.0, 0.1],
            embedding: vec![0.0; 128],
        };
        let f = serde_json::to_value(FaceEvent::from(&seen)).unwrap();
        assert_eq!(f["present"], true);
        assert_eq!(f["label"], "happy");
        assert_eq!(f["frames"], 8);
        assert_eq!(f["probs"].as_object().unwrap().len(), 7);
        let none = VisualVector {
            present: false,
            face_fraction: 0.0,
            frames: 8,
            probs: [0.0; 7],
            embedding: vec![0.0; 128],
        };
        let f = serde_json::to_value(FaceEvent::from(&none)).unwrap();
        assert_eq!(f["present"], false);
        assert!(f.get("label").is_none() && f.get("confidence").is_none());
        assert!(f["probs"].as_object().unwrap().is_empty());
    }
}
