//! Call-level signals: per stream and speaker, a smoothed state over recent utterances, and an
//! `escalation` event when a speaker's negative emotions stay high (a pure core: events in,
//! events out; the model worker and `summerd replay` drive it the same way).
//!
//! For each final emotion event of a speaker, the mix is
//! `m = alpha * probs + (1 - alpha) * m_previous` (the first utterance starts it), and the
//! negative share is the sum of `m` over `negative` (anger, disgust, sadness, fear).
//! - Outside an episode, `sustain` utterances in a row with a share >= `on` start one: one
//!   `escalation` event, its `start` the first of those utterances.
//! - Inside, `release` utterances in a row with a share < `off` end it: one `deescalation`.
//!   `off` < `on`, so a share hovering near one threshold does not flap.
//! - A stream that is detached ends its open episodes (`reason: "detached"`).
//!
//! One angry line among calm ones moves the share by at most `alpha` and never starts an
//! episode on its own while `sustain` > 1. Provisional events are not counted.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::events::{EmotionEvent, Signal, SignalEvent, Smoothed, V, now_rfc3339};
use crate::settings::Checker;

/// `[escalation]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Smooth, annotate events with `smoothed` and publish escalation signals.
    pub enabled: bool,
    /// Weight of the newest utterance in the mix (0 < alpha <= 1).
    pub alpha: f32,
    /// The classes that count as negative.
    pub negative: Vec<String>,
    /// Negative share at or above which an utterance counts towards an episode.
    pub on: f32,
    /// Negative share below which an utterance counts towards its end (< `on`).
    pub off: f32,
    /// Utterances in a row at or above `on` that start an episode.
    pub sustain: u32,
    /// Utterances in a row below `off` that end it.
    pub release: u32,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            alpha: 0.5,
            negative: ["anger", "disgust", "sadness", "fear"]
                .map(String::from)
                .to_vec(),
            on: 0.5,
            off: 0.3,
            sustain: 3,
            release: 2,
        }
    }
}

impl EscalationConfig {
    /// Check the table.
    pub fn check(&self, c: &mut Checker) {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            c.bad(
                "escalation.alpha",
                format!("{} is out of range", self.alpha),
                "more than 0, at most 1",
            );
        }
        c.range("escalation.on", self.on as f64, 0.0, 1.0);
        c.range("escalation.off", self.off as f64, 0.0, 1.0);
        if self.off >= self.on {
            c.bad(
                "escalation.off",
                format!("{} is not below escalation.on ({})", self.off, self.on),
                "a value below escalation.on (hysteresis)",
            );
        }
        c.range("escalation.sustain", self.sustain, 1, 1000);
        c.range("escalation.release", self.release, 1, 1000);
        if self.negative.is_empty() {
            c.bad("escalation.negative", "is empty", "one or more class names");
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.negative {
            if !seen.insert(n) {
                c.bad(
                    "escalation.negative",
                    format!("'{n}' is listed twice"),
                    "each class once",
                );
            }
        }
    }

    /// Classes in `negative` that the model does not have (a model's classes are known only
    /// once it is loaded).
    pub fn unknown_classes(&self, classes: &[String]) -> Vec<String> {
        self.negative
            .iter()
            .filter(|n| !classes.contains(n))
            .cloned()
            .collect()
    }
}

/// One speaker's state.
#[derive(Debug, Clone, Default)]
struct Speaker {
    mix: Vec<(String, f32)>,
    /// Utterances in a row on the far side of the threshold that would change the state.
    run: u32,
    /// Start (media time) of the current run of utterances at or above `on`, and its highest
    /// share.
    run_start: f64,
    run_peak: f32,
    /// The open episode: its start and peak.
    episode: Option<(f64, f32)>,
    /// End (media time) of the speaker's last utterance.
    last_end: f64,
}

impl Speaker {
    /// The mix's share of the `negative` classes.
    fn negative_share(&self, negative: &[String]) -> f32 {
        self.mix
            .iter()
            .filter(|(k, _)| negative.contains(k))
            .map(|(_, m)| m)
            .sum()
    }

    /// The mix's most probable class among those `among` keeps.
    fn top(&self, among: impl Fn(&String) -> bool) -> String {
        self.mix
            .iter()
            .filter(|(k, _)| among(k))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }
}

/// The signal tracker of every stream and speaker.
pub struct Tracker {
    cfg: EscalationConfig,
    speakers: HashMap<(String, String), Speaker>,
}

impl Tracker {
    /// A tracker with no history.
    pub fn new(cfg: EscalationConfig) -> Tracker {
        Tracker {
            cfg,
            speakers: HashMap::new(),
        }
    }

    /// Count a published emotion event: set its `smoothed` state, and return the signal it
    /// decides, if any. Provisional events, events with a probability that is not a finite
    /// number in 0..=1 (they would poison the mix for the rest of the call), and everything
    /// when disabled, pass untouched.
    pub fn observe(&mut self, e: &mut EmotionEvent) -> Option<SignalEvent> {
        let sane = e.probs.values().all(|p| (0.0..=1.0).contains(p));
        if !self.cfg.enabled || e.provisional || !sane {
            return None;
        }
        let cfg = &self.cfg;
        let s = self
            .speakers
            .entry((e.stream.clone(), e.speaker.clone()))
            .or_default();
        s.last_end = s.last_end.max(e.end);
        if s.mix.is_empty() {
            s.mix = e.probs.iter().map(|(k, p)| (k.clone(), *p)).collect();
        } else {
            for (k, m) in s.mix.iter_mut() {
                let p = e.probs.get(k).copied().unwrap_or(0.0);
                *m = cfg.alpha * p + (1.0 - cfg.alpha) * *m;
            }
        }
        let negative = s.negative_share(&cfg.negative);
        let signal = match s.episode {
            None => {
                if negative >= cfg.on {
                    if s.run == 0 {
                        s.run_start = e.start;
                        s.run_peak = negative;
                    }
                    s.run += 1;
                    s.run_peak = s.run_peak.max(negative);
                } else {
                    s.run = 0;
                }
                (s.run >= cfg.sustain).then(|| {
                    s.episode = Some((s.run_start, s.run_peak));
                    s.run = 0;
                    Signal::Escalation
                })
            }
            Some((start, peak)) => {
                s.episode = Some((start, peak.max(negative)));
                s.run = if negative < cfg.off { s.run + 1 } else { 0 };
                (s.run >= cfg.release).then_some(Signal::Deescalation)
            }
        };
        let out = signal.map(|kind| {
            let (start, peak) = s.episode.unwrap_or((e.start, negative));
            if kind == Signal::Deescalation {
                s.episode = None;
                s.run = 0;
            }
            SignalEvent {
                v: V,
                kind,
                stream: e.stream.clone(),
                speaker: e.speaker.clone(),
                seq: e.seq,
                start,
                end: e.end,
                level: negative,
                peak,
                label: s.top(|k| cfg.negative.contains(k)),
                reason: None,
                emitted_at: now_rfc3339(),
            }
        });
        e.smoothed = Some(Smoothed {
            label: s.top(|_| true),
            negative,
            escalated: s.episode.is_some(),
        });
        out
    }

    /// A stream was detached: forget its speakers, ending their open episodes (one
    /// `deescalation` each, `reason: "detached"`, `end` the end of the speaker's last
    /// utterance).
    pub fn forget(&mut self, stream: &str) -> Vec<SignalEvent> {
        let mut out = Vec::new();
        let negative = &self.cfg.negative;
        self.speakers.retain(|(st, speaker), s| {
            if st != stream {
                return true;
            }
            if let Some((start, peak)) = s.episode {
                out.push(SignalEvent {
                    v: V,
                    kind: Signal::Deescalation,
                    stream: st.clone(),
                    speaker: speaker.clone(),
                    seq: 0,
                    start,
                    end: s.last_end.max(start),
                    level: s.negative_share(negative),
                    peak,
                    label: s.top(|k| negative.contains(k)),
                    reason: Some("detached".into()),
                    emitted_at: now_rfc3339(),
                });
            }
            false
        });
        out.sort_by(|a, b| a.speaker.cmp(&b.speaker));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Modalities;

    const CLASSES: [&str; 7] = [
        "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise",
    ];

    /// An utterance of `speaker` at `seq` (2 s each) whose most probable class is `label`
    /// with probability `p`, the rest spread evenly.
    fn utt(speaker: &str, seq: u64, label: &str, p: f32) -> EmotionEvent {
        let rest = (1.0 - p) / 6.0;
        EmotionEvent {
            v: V,
            kind: "emotion".into(),
            stream: "call".into(),
            utterance: seq,
            seq,
            speaker: speaker.into(),
            start: seq as f64 * 2.0,
            end: seq as f64 * 2.0 + 1.5,
            label: label.into(),
            confidence: p,
            probs: CLASSES
                .iter()
                .map(|c| (c.to_string(), if *c == label { p } else { rest }))
                .collect(),
            modalities: Modalities {
                text: true,
                audio: true,
                visual: false,
            },
            model: "m@1".into(),
            latency_ms: 1.0,
            emitted_at: now_rfc3339(),
            provisional: false,
            text: None,
            face: None,
            smoothed: None,
        }
    }

    /// Feed `script` (label, probability) to one speaker; the seqs at which each signal fired.
    fn run(t: &mut Tracker, script: &[(&str, f32)]) -> Vec<(u64, Signal)> {
        let mut fired = Vec::new();
        for (i, (label, p)) in script.iter().enumerate() {
            let mut e = utt("customer", i as u64 + 1, label, *p);
            if let Some(s) = t.observe(&mut e) {
                fired.push((s.seq, s.kind));
            }
            let sm = e.smoothed.expect("final events are annotated");
            assert!((0.0..=1.0001).contains(&sm.negative));
        }
        fired
    }

    #[test]
    fn an_episode_fires_once_when_sustained_and_ends_with_hysteresis() {
        let mut t = Tracker::new(EscalationConfig::default());
        // The negative share of the mix after each utterance, in the comments.
        let script = [
            ("neutral", 0.8), // 0.13
            ("joy", 0.7),     // 0.17
            ("anger", 0.9),   // 0.56 >= on (0.5): run 1
            ("anger", 0.9),   // 0.75: run 2
            ("anger", 0.8),   // 0.83: run 3, escalation
            ("anger", 0.9),   // 0.89: already escalated, nothing
            ("anger", 0.9),   // 0.92
            ("neutral", 0.9), // 0.49: between off and on, still escalated
            ("neutral", 0.9), // 0.28 < off (0.3): release 1
            ("neutral", 0.9), // 0.17: release 2, deescalation
            ("joy", 0.9),
            ("joy", 0.9),
        ];
        let fired = run(&mut t, &script);
        assert_eq!(
            fired,
            vec![(5, Signal::Escalation), (10, Signal::Deescalation)]
        );
    }

    #[test]
    fn one_noisy_angry_line_does_not_fire() {
        let mut t = Tracker::new(EscalationConfig::default());
        let script = [
            ("neutral", 0.9),
            ("neutral", 0.9),
            ("anger", 0.99),
            ("neutral", 0.9),
            ("neutral", 0.9),
            ("anger", 0.99),
            ("anger", 0.99),
            ("neutral", 0.9),
            ("joy", 0.9),
        ];
        assert!(run(&mut t, &script).is_empty());
    }

    #[test]
    fn a_share_hovering_at_the_threshold_does_not_flap() {
        let cfg = EscalationConfig {
            alpha: 1.0,
            sustain: 2,
            release: 1,
            ..Default::default()
        };
        let mut t = Tracker::new(cfg);
        // Shares 0.55, 0.55 (escalation), then 0.45, 0.55, 0.45: between off and on, no
        // change; 0.1: deescalation.
        let mix = |neg: f32| {
            let mut e = utt("customer", 0, "anger", neg);
            e.probs.insert("neutral".into(), 1.0 - neg);
            for c in ["disgust", "fear", "joy", "sadness", "surprise"] {
                e.probs.insert(c.into(), 0.0);
            }
            e
        };
        let mut fired = Vec::new();
        for (i, neg) in [0.55, 0.55, 0.45, 0.55, 0.45, 0.1].iter().enumerate() {
            let mut e = mix(*neg);
            e.seq = i as u64 + 1;
            if let Some(s) = t.observe(&mut e) {
                fired.push((s.seq, s.kind));
            }
        }
        assert_eq!(
            fired,
            vec![(2, Signal::Escalation), (6, Signal::Deescalation)]
        );
    }

    #[test]
    fn speakers_are_tracked_apart_and_detaching_ends_an_episode() {
        let mut t = Tracker::new(EscalationConfig::default());
        let mut fired = Vec::new();
        for seq in 1..=8 {
            // The agent stays calm between the customer's angry lines.
            let (speaker, label) = if seq % 2 == 0 {
                ("agent", "neutral")
            } else {
                ("customer", "anger")
            };
            let mut e = utt(speaker, seq, label, 0.95);
            if let Some(s) = t.observe(&mut e) {
                fired.push(s);
            }
            if speaker == "agent" {
                assert!(!e.smoothed.unwrap().escalated);
            }
        }
        assert_eq!(fired.len(), 1);
        let s = &fired[0];
        assert_eq!(
            (s.kind, s.speaker.as_str()),
            (Signal::Escalation, "customer")
        );
        assert_eq!(
            s.start, 2.0,
            "the episode starts at its first high utterance"
        );
        assert_eq!(s.label, "anger");
        let ended = t.forget("call");
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].kind, Signal::Deescalation);
        assert_eq!(ended[0].reason.as_deref(), Some("detached"));
        assert_eq!(ended[0].end, 15.5, "the end of the last utterance");
        assert!(t.forget("call").is_empty());
    }

    #[test]
    fn the_peak_counts_the_whole_run_and_a_nan_changes_nothing() {
        let mut t = Tracker::new(EscalationConfig {
            alpha: 1.0,
            ..Default::default()
        });
        // Shares 0.975, 0.85, 0.775: the escalation's peak is the first.
        let mut fired = None;
        for (seq, p) in [(1, 0.95), (2, 0.70), (3, 0.55)] {
            let mut e = utt("customer", seq, "anger", p);
            fired = fired.or(t.observe(&mut e));
        }
        let s = fired.expect("escalation");
        assert!((s.peak - s.level).abs() > 0.15, "{s:?}");
        assert!(s.peak > 0.95, "{s:?}");
        let mut bad = utt("customer", 4, "anger", 0.9);
        bad.probs.insert("joy".into(), f32::NAN);
        assert!(t.observe(&mut bad).is_none());
        assert!(bad.smoothed.is_none());
        let mut next = utt("customer", 5, "neutral", 0.9);
        t.observe(&mut next);
        assert!(next.smoothed.unwrap().negative.is_finite());
    }

    #[test]
    fn provisional_events_and_a_disabled_tracker_change_nothing() {
        let mut t = Tracker::new(EscalationConfig::default());
        let mut e = utt("customer", 1, "anger", 0.9);
        e.provisional = true;
        assert!(t.observe(&mut e).is_none());
        assert!(e.smoothed.is_none());
        let mut off = Tracker::new(EscalationConfig {
            enabled: false,
            ..Default::default()
        });
        let mut e = utt("customer", 1, "anger", 0.9);
        assert!(off.observe(&mut e).is_none());
        assert!(e.smoothed.is_none());
    }

    #[test]
    fn the_table_is_checked() {
        let mut c = Checker::new(std::path::PathBuf::new());
        EscalationConfig {
            on: 0.3,
            off: 0.4,
            negative: vec!["anger".into(), "anger".into()],
            alpha: 0.0,
            ..Default::default()
        }
        .check(&mut c);
        let text = format!("{:?}", c);
        for key in ["escalation.off", "escalation.negative", "escalation.alpha"] {
            assert!(text.contains(key), "{key} not reported: {text}");
        }
        let classes: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
        assert!(
            EscalationConfig::default()
                .unknown_classes(&classes)
                .is_empty()
        );
        let cfg = EscalationConfig {
            negative: vec!["rage".into()],
            ..Default::default()
        };
        assert_eq!(cfg.unknown_classes(&classes), vec!["rage".to_string()]);
    }
}
