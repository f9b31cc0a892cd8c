//! What the fuzzers check, shared by the fuzz targets and the regression test
//! (`tests/fuzz_regressions.rs` replays every saved input through these).

// Each fuzz target uses one of the two.
#![allow(dead_code)]

use std::path::Path;

use summerd::transcripts::{Clock, Limits, validate};

/// Any bytes as a transcript message: `validate` returns a transcript or a reject, never
/// panics, and what it accepts obeys the contract.
pub fn transcript(data: &[u8]) {
    let limits = Limits::from(&summerd::config::TranscriptsConfig::default());
    // Two streams whose newest media is at 60 s.
    let media_end = |s: &str| (s == "call-42" || s == "a").then_some(60.0);
    // A fixed wall clock: the staleness rule is exercised, runs stay reproducible.
    let now = 1.8e9;
    if let Ok(t) = validate(data, &limits, &media_end, now) {
        assert!(media_end(&t.stream).is_some());
        assert!(t.start.is_finite() && t.end.is_finite() && t.end >= t.start);
        assert!(t.end - t.start <= limits.max_segment.as_secs_f64());
        let newest = if t.clock == Clock::Media { 60.0 } else { now };
        assert!(t.start <= newest + limits.max_ahead.as_secs_f64());
        if t.clock == Clock::Media {
            assert!(t.start >= 0.0);
        }
        assert!(t.text.chars().count() <= limits.max_text_chars);
        assert!(!t.speaker.is_empty() && t.speaker.chars().count() <= 128);
        if let Some(e) = &t.embedding {
            assert!(!e.is_empty() && e.len() <= limits.max_embedding_dim);
            assert!(e.iter().all(|v| v.is_finite()));
        }
        assert!(data.len() <= limits.max_message_bytes);
    }
}

/// Any text as a config file: parsing and validation give a config or errors with a message,
/// never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative paths resolve under it and are missing, so
    // the checks run without touching the machine's files.
    let path = Path::new("/nonexistent-summerd-fuzz/summerd.toml");
    match summerd::config::parse_raw(text, path) {
        Ok(raw) => {
            if let Err(e) = summerd::config::validate(raw, path) {
                assert!(!e.to_string().is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
