//! `summerd tail`: a person's view of a daemon's events, one line per event.
//!
//! ```text
//! 10:15:02.113 call-42 customer    anger    0.71 █████████████▊       neutral ▌ 0.08  joy ▏ 0.02  [T A -]  8.4 ms
//! ```
//! Per emotion event: time, stream, speaker, label, confidence as a bar, the next two classes,
//! the modalities used (T text, A audio, V visual), the latency, and the text when published.
//! Lifecycle events and escalation signals get a line of their own.

use crate::events::{EmotionEvent, LifecycleEvent, Signal, SignalEvent};

const BAR: usize = 20;

fn bar(p: f32, width: usize) -> String {
    let eighths = (p.clamp(0.0, 1.0) * (width * 8) as f32).round() as usize;
    let full = eighths / 8;
    let part = eighths % 8;
    let mut s: String = "█".repeat(full);
    if part > 0 {
        s.push([' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'][part]);
    }
    s
}

fn clock(rfc3339: &str) -> &str {
    rfc3339
        .split_once('T')
        .map_or(rfc3339, |(_, t)| t.trim_end_matches('Z'))
}

/// One line for an emotion event.
pub fn emotion_line(e: &EmotionEvent) -> String {
    let mut others: Vec<(&String, &f32)> = e.probs.iter().filter(|(k, _)| **k != e.label).collect();
    others.sort_by(|a, b| b.1.total_cmp(a.1));
    let rest: Vec<String> = others
        .iter()
        .take(2)
        .map(|(k, p)| format!("{k} {} {:.2}", bar(**p, 4), p))
        .collect();
    let m = e.modalities;
    let flags = format!(
        "[{} {} {}]",
        if m.text { 'T' } else { '-' },
        if m.audio { 'A' } else { '-' },
        if m.visual { 'V' } else { '-' }
    );
    let mut line = format!(
        "{} {} {:<10} {:<8} {:.2} {:<width$} {}  {} {:.1} ms{}",
        clock(&e.emitted_at),
        e.stream,
        e.speaker,
        e.label,
        e.confidence,
        bar(e.confidence, BAR),
        rest.join("  "),
        flags,
        e.latency_ms,
        if e.provisional { " (provisional)" } else { "" },
        width = BAR,
    );
    // The face's expression, where the stream has video: its own estimate, shown apart.
    if let Some(f) = &e.face {
        match (&f.label, f.confidence) {
            (Some(l), Some(c)) => line.push_str(&format!("  face {l} {c:.2}")),
            _ => line.push_str("  face -"),
        }
    }
    if let Some(t) = &e.text {
        line.push_str(&format!("  \"{t}\""));
    }
    line
}

/// One line for a lifecycle event.
pub fn lifecycle_line(e: &LifecycleEvent) -> String {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut line = format!(
        "{} {} {}",
        clock(&e.emitted_at),
        e.stream.as_deref().unwrap_or("daemon"),
        kind
    );
    if let Some(r) = &e.reason {
        line.push_str(&format!(": {r}"));
    }
    if let Some(t) = e.media_time {
        line.push_str(&format!(" (media {t:.1} s)"));
    }
    line
}

/// One line for an escalation signal.
pub fn signal_line(e: &SignalEvent) -> String {
    let kind = match e.kind {
        Signal::Escalation => "ESCALATION",
        Signal::Deescalation => "deescalation",
    };
    let mut line = format!(
        "{} {} {:<10} {kind} {} level {:.2} (peak {:.2}) media {:.1}-{:.1} s",
        clock(&e.emitted_at),
        e.stream,
        e.speaker,
        e.label,
        e.level,
        e.peak,
        e.start,
        e.end
    );
    if let Some(r) = &e.reason {
        line.push_str(&format!(": {r}"));
    }
    line
}

/// The line for a message `[topic, json]`, or why it could not be read.
pub fn render(topic: &[u8], json: &[u8]) -> String {
    if topic.starts_with(b"signal.") {
        return match serde_json::from_slice::<SignalEvent>(json) {
            Ok(e) => signal_line(&e),
            Err(err) => format!("(unreadable signal: {err})"),
        };
    }
    if topic.starts_with(b"emotion.") {
        match serde_json::from_slice::<EmotionEvent>(json) {
            Ok(e) => emotion_line(&e),
            Err(err) => format!("(unreadable emotion event: {err})"),
        }
    } else {
        match serde_json::from_slice::<LifecycleEvent>(json) {
            Ok(e) => lifecycle_line(&e),
            Err(err) => format!("(unreadable event: {err})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_have_eighth_resolution() {
        assert_eq!(bar(1.0, 2), "██");
        assert_eq!(bar(0.0, 2), "");
        assert_eq!(bar(0.5, 1), "▌");
    }

    #[test]
    fn an_emotion_line_names_stream_speaker_label_and_the_next_classes() {
        let json = br#"{"v":1,"type":"emotion","stream":"call-42","utterance":17,"seq":17,
            "speaker":"customer","start":12.34,"end":15.1,"label":"anger","confidence":0.71,
            "probs":{"neutral":0.08,"joy":0.02,"anger":0.71,"sadness":0.19},
            "modalities":{"text":true,"audio":true,"visual":false},"model":"m@1",
            "latency_ms":8.4,"emitted_at":"2026-11-28T10:15:02.113Z","text":"hello"}"#;
        let line = render(b"emotion.call-42", json);
        for want in [
            "10:15:02.113",
            "call-42",
            "customer",
            "anger",
            "0.71",
            "sadness",
            "neutral",
            "[T A -]",
            "8.4 ms",
            "\"hello\"",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        // The third class (joy) is not shown.
        assert!(!line.contains("joy"), "{line}");
        assert!(!line.contains("face"), "no video, no face: {line}");
        let with_face = String::from_utf8_lossy(json).replace(
            r#""text":"hello""#,
            r#""text":"hello","face":{"present":true,"fraction":1.0,"frames":9,"label":"happy","confidence":0.93,"probs":{"happy":0.93}}"#,
        );
        let line = render(b"emotion.call-42", with_face.as_bytes());
        assert!(line.contains("face happy 0.93"), "{line}");
        let no_face = String::from_utf8_lossy(json).replace(
            r#""text":"hello""#,
            r#""text":"hello","face":{"present":false,"fraction":0.0,"frames":3,"probs":{}}"#,
        );
        let line = render(b"emotion.call-42", no_face.as_bytes());
        assert!(line.contains("face -"), "{line}");
    }

    #[test]
    fn lifecycle_and_garbage_are_readable() {
        let json = br#"{"v":1,"type":"stream.down","stream":"s1","reason":"end of stream","media_time":4.2,"emitted_at":"2026-11-28T10:15:02.113Z"}"#;
        assert_eq!(
            render(b"lifecycle.s1", json),
            "10:15:02.113 s1 stream.down: end of stream (media 4.2 s)"
        );
        assert!(render(b"emotion.x", b"nope").starts_with("(unreadable"));
        assert!(render(b"signal.x", b"{}").starts_with("(unreadable"));
    }

    #[test]
    fn an_escalation_stands_out() {
        let json = br#"{"v":1,"type":"escalation","stream":"call-42","speaker":"customer","seq":9,
            "start":61.2,"end":80.5,"level":0.71,"peak":0.71,"label":"anger",
            "emitted_at":"2026-11-28T10:15:02.113Z"}"#;
        assert_eq!(
            render(b"signal.call-42", json),
            "10:15:02.113 call-42 customer   ESCALATION anger level 0.71 (peak 0.71) media 61.2-80.5 s"
        );
    }
}
