//! `summerd report`: a picture of a whole call, from its events (what `summerd replay --out`
//! and `summerd tail --json` write, one JSON event a line).
//!
//! Pure: [`read`] turns the JSONL into a [`Call`] (the events grouped per stream), [`svg`]
//! draws it (a timeline per stream: one row per speaker, an utterance a rectangle coloured by
//! its label, escalation episodes as bands, lifecycle events as marks, the smoothed negative
//! share as a line) and [`html`] wraps the drawing in a self-contained page with per-speaker
//! summaries (time in each label, mean confidence, episodes, moments of change).
//!
//! The label colours are the live page's (`web/assets/labels.css`, classes `.l-<label>`; a
//! label outside the seven gets `.l-other`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::events::{EmotionEvent, Event, Lifecycle, LifecycleEvent, Signal, SignalEvent};

/// The label colours shared with the live page.
const LABELS_CSS: &str = include_str!("web/assets/labels.css");

/// The labels that have a colour class of their own.
const KNOWN: [&str; 7] = [
    "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise",
];

/// Why a log could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A line that is not a published event.
    #[error("line {line}: not an event: {error}")]
    NotAnEvent {
        /// Its number, from 1.
        line: usize,
        /// What the JSON reader said.
        error: serde_json::Error,
    },
    /// Nothing to draw.
    #[error("no emotion events")]
    NoEmotionEvents,
}

/// A whole call: its events grouped per stream, streams in order of first appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The streams.
    pub streams: Vec<StreamCall>,
}

/// One stream's events.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamCall {
    /// Stream id.
    pub id: String,
    /// Its final emotion events, by start time (ties in log order).
    pub utterances: Vec<EmotionEvent>,
    /// Its `stream.*` events that carry a `media_time`, in log order.
    pub lifecycle: Vec<LifecycleEvent>,
    /// Its escalation and de-escalation signals, in log order.
    pub signals: Vec<SignalEvent>,
    /// Its speakers, in order of first appearance (utterances and signals).
    pub speakers: Vec<String>,
    /// The end of its media as far as the log knows: the latest utterance end or lifecycle
    /// `media_time`, seconds.
    pub extent: f64,
}

/// One escalation episode of one speaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// Speaker label.
    pub speaker: String,
    /// Media time it began.
    pub start: f64,
    /// Media time it ended (the de-escalation's `end`); None if the log never ends it.
    pub end: Option<f64>,
    /// The highest smoothed negative share seen in its signals.
    pub peak: f32,
    /// The negative class named by the signal that opened it.
    pub label: String,
    /// Why it ended, where it was not the speaker's own utterances (`detached`).
    pub reason: Option<String>,
}

impl Episode {
    /// An open episode as signal `s` tells of it (an escalation, or a de-escalation whose
    /// escalation the log does not have).
    fn opened_by(s: &SignalEvent) -> Episode {
        Episode {
            speaker: s.speaker.clone(),
            start: s.start,
            end: None,
            peak: s.peak,
            label: s.label.clone(),
            reason: None,
        }
    }

    /// Its end, or `extent` (the end of the media) where it never ended.
    pub fn until(&self, extent: f64) -> f64 {
        self.end.unwrap_or(extent).max(self.start)
    }
}

/// A change of a speaker's label from their previous utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Start of the utterance with the new label, seconds.
    pub at: f64,
    /// The previous label.
    pub from: String,
    /// The new one.
    pub to: String,
}

/// What one speaker of one stream did.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerSummary {
    /// Final emotion events.
    pub utterances: usize,
    /// Sum of their durations, seconds.
    pub speaking: f64,
    /// Seconds per label (sum of the durations of the utterances with that label), most first.
    pub time_in_label: Vec<(String, f64)>,
    /// Mean confidence of their labels (0 without utterances).
    pub mean_confidence: f64,
    /// Escalation episodes, by start.
    pub episodes: Vec<Episode>,
    /// Where the label (the smoothed one where present, steadier) changes from the speaker's
    /// previous utterance.
    pub changes: Vec<Change>,
}

impl SpeakerSummary {
    /// `seconds` as a percentage of the speaking time (0 when there is none).
    pub fn percent(&self, seconds: f64) -> f64 {
        if self.speaking > 0.0 {
            100.0 * seconds / self.speaking
        } else {
            0.0
        }
    }
}

impl Call {
    /// Final emotion events of all streams.
    pub fn utterances(&self) -> usize {
        self.streams.iter().map(|s| s.utterances.len()).sum()
    }

    /// Signals of all streams.
    pub fn signals(&self) -> usize {
        self.streams.iter().map(|s| s.signals.len()).sum()
    }

    /// The stream ids, comma-separated.
    pub fn names(&self) -> String {
        let ids: Vec<&str> = self.streams.iter().map(|s| s.id.as_str()).collect();
        ids.join(", ")
    }
}

impl StreamCall {
    fn new(id: &str) -> Self {
        StreamCall {
            id: id.to_string(),
            utterances: Vec::new(),
            lifecycle: Vec::new(),
            signals: Vec::new(),
            speakers: Vec::new(),
            extent: 0.0,
        }
    }

    fn note_speaker(&mut self, speaker: &str) {
        if !self.speakers.iter().any(|s| s == speaker) {
            self.speakers.push(speaker.to_string());
        }
    }

    /// Its escalation episodes, by start: an escalation paired with the speaker's next
    /// de-escalation; one never de-escalated stays open (`end` None); a de-escalation without
    /// its escalation (a log that begins mid-episode) is an episode from its `start`.
    pub fn episodes(&self) -> Vec<Episode> {
        let mut open: Vec<Episode> = Vec::new();
        let mut done: Vec<Episode> = Vec::new();
        for s in &self.signals {
            let current = open.iter().position(|e| e.speaker == s.speaker);
            match s.kind {
                Signal::Escalation => {
                    if let Some(i) = current {
                        // A second opening without a close: the first ends where it begins.
                        let mut prev = open.remove(i);
                        prev.end = Some(s.start.max(prev.start));
                        done.push(prev);
                    }
                    open.push(Episode::opened_by(s));
                }
                Signal::Deescalation => {
                    let mut e = match current {
                        Some(i) => open.remove(i),
                        None => Episode::opened_by(s),
                    };
                    e.end = Some(s.end.max(e.start));
                    e.peak = e.peak.max(s.peak);
                    e.reason = s.reason.clone();
                    done.push(e);
                }
            }
        }
        done.append(&mut open);
        done.sort_by(|a, b| a.start.total_cmp(&b.start));
        done
    }

    /// What `speaker` did in this stream.
    pub fn summary(&self, speaker: &str) -> SpeakerSummary {
        let utts: Vec<&EmotionEvent> = self
            .utterances
            .iter()
            .filter(|u| u.speaker == speaker)
            .collect();
        let mut by_label: BTreeMap<&str, f64> = BTreeMap::new();
        let mut speaking = 0.0;
        let mut confidence = 0.0;
        let mut changes = Vec::new();
        let mut prev: Option<&str> = None;
        for u in &utts {
            let d = duration(u);
            speaking += d;
            confidence += f64::from(u.confidence);
            *by_label.entry(u.label.as_str()).or_default() += d;
            let steady = u.smoothed.as_ref().map_or(u.label.as_str(), |s| &s.label);
            if let Some(p) = prev.filter(|p| *p != steady) {
                changes.push(Change {
                    at: u.start,
                    from: p.to_string(),
                    to: steady.to_string(),
                });
            }
            prev = Some(steady);
        }
        let mut time_in_label: Vec<(String, f64)> = by_label
            .into_iter()
            .map(|(l, s)| (l.to_string(), s))
            .collect();
        time_in_label.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        SpeakerSummary {
            utterances: utts.len(),
            speaking,
            time_in_label,
            mean_confidence: if utts.is_empty() {
                0.0
            } else {
                confidence / utts.len() as f64
            },
            episodes: self
                .episodes()
                .into_iter()
                .filter(|e| e.speaker == speaker)
                .collect(),
            changes,
        }
    }
}

fn duration(u: &EmotionEvent) -> f64 {
    (u.end - u.start).max(0.0)
}

/// Read a log: one event JSON per line, blank lines skipped. Provisional emotion events
/// (`provisional: true`) are left out: the final event of the same seq supersedes them. The
/// daemon's own lifecycle (`daemon.*`) and `stream.*` events without a `media_time` are left
/// out too (they have no place on a stream's timeline).
///
/// Errors: a line that is not an event (its number named), or no emotion event at all.
pub fn read(jsonl: &str) -> Result<Call, ReportError> {
    let mut streams: Vec<StreamCall> = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let event = Event::parse(line.as_bytes())
            .map_err(|error| ReportError::NotAnEvent { line: i + 1, error })?;
        let keep = match &event {
            Event::Emotion(e) => !e.provisional,
            Event::Lifecycle(e) => e.media_time.is_some(),
            Event::Signal(_) => true,
        };
        let Some(id) = event.stream().filter(|_| keep) else {
            continue;
        };
        let s = match streams.iter().position(|s| s.id == id) {
            Some(k) => &mut streams[k],
            None => {
                streams.push(StreamCall::new(id));
                let last = streams.len() - 1;
                &mut streams[last]
            }
        };
        match event {
            Event::Emotion(e) => {
                s.note_speaker(&e.speaker);
                s.utterances.push(*e);
            }
            Event::Lifecycle(e) => s.lifecycle.push(e),
            Event::Signal(e) => {
                s.note_speaker(&e.speaker);
                s.signals.push(e);
            }
        }
    }
    for s in &mut streams {
        s.utterances.sort_by(|a, b| a.start.total_cmp(&b.start));
        let ends = s.utterances.iter().map(|u| u.end.max(u.start));
        let marks = s.lifecycle.iter().filter_map(|l| l.media_time);
        s.extent = ends
            .chain(marks)
            .filter(|t| t.is_finite())
            .fold(0.0, f64::max);
    }
    let call = Call { streams };
    if call.utterances() == 0 {
        return Err(ReportError::NoEmotionEvents);
    }
    Ok(call)
}

/// `s` escaped for XML and HTML text and attribute values (`& < > " '`); the characters XML
/// 1.0 forbids (controls other than tab, newline, return; U+FFFE, U+FFFF) become U+FFFD.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as `m:ss` (minutes past 59 stay minutes: `75:02`).
pub fn clock(t: f64) -> String {
    let s = (if t.is_finite() {
        t.max(0.0).round()
    } else {
        0.0
    }) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// The colour class of a label: `l-<label>` for the seven, `l-other` for anything else.
pub fn label_class(label: &str) -> &'static str {
    match label {
        "anger" => "l-anger",
        "disgust" => "l-disgust",
        "fear" => "l-fear",
        "joy" => "l-joy",
        "neutral" => "l-neutral",
        "sadness" => "l-sadness",
        "surprise" => "l-surprise",
        _ => "l-other",
    }
}

/// The colour of a class from `labels.css` (`--anger: #d62728;`), for viewers without CSS
/// variables (the class's rule wins where they have them).
fn colour(class: &str) -> &'static str {
    let name = class.trim_start_matches("l-");
    LABELS_CSS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim() == name)
        .map_or("#555555", |(_, v)| v.trim().trim_end_matches(';').trim())
}

fn lifecycle_kind(k: Lifecycle) -> (&'static str, &'static str) {
    match k {
        Lifecycle::DaemonUp => ("daemon.up", "daemon up"),
        Lifecycle::DaemonStopping => ("daemon.stopping", "stopping"),
        Lifecycle::StreamUp => ("stream.up", "up"),
        Lifecycle::StreamDown => ("stream.down", "down"),
        Lifecycle::StreamError => ("stream.error", "error"),
    }
}

/// The labels present in the call, the seven in their order first, then the others by name.
fn labels_present(call: &Call) -> Vec<&str> {
    let mut others: Vec<&str> = Vec::new();
    let mut known = [false; KNOWN.len()];
    for u in call.streams.iter().flat_map(|s| &s.utterances) {
        match KNOWN.iter().position(|k| *k == u.label) {
            Some(i) => known[i] = true,
            None if !others.contains(&u.label.as_str()) => others.push(&u.label),
            None => {}
        }
    }
    others.sort_unstable();
    let mut out: Vec<&str> = KNOWN
        .iter()
        .zip(known)
        .filter(|(_, k)| *k)
        .map(|(l, _)| *l)
        .collect();
    out.extend(others);
    out
}

// The drawing's geometry, in SVG user units (px at 100 %).
const WIDTH: f64 = 1200.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 30.0;
const ROW: f64 = 44.0;
const TOP: f64 = 84.0;
/// Heading and tick labels above a section's first row.
const SECTION_HEAD: f64 = 60.0;
/// Lifecycle labels (two staggered lines) and space below a section's last row.
const SECTION_FOOT: f64 = 50.0;

const SVG_CSS: &str = r#"
.summerd-report { font-family: "Helvetica Neue", Helvetica, Arial, "DejaVu Sans", sans-serif; }
.summerd-report .bg { fill: #ffffff; }
.summerd-report text { fill: #1a1a1a; font-size: 13px; }
.summerd-report .title { font-size: 20px; font-weight: 600; }
.summerd-report .stream-id { font-size: 17px; font-weight: 600; }
.summerd-report .speaker-name { font-size: 14px; text-anchor: end; }
.summerd-report .tick text { font-size: 12px; fill: #333333; text-anchor: middle; }
.summerd-report .axis { stroke: #333333; stroke-width: 1; }
.summerd-report .tick line { stroke: #333333; stroke-width: 1; }
.summerd-report .tick .grid { stroke: #e4e4e4; stroke-width: 1; }
.summerd-report .row-sep { stroke: #cccccc; stroke-width: 1; }
.summerd-report .utt { stroke: #ffffff; stroke-width: 0.5; }
.summerd-report .episode, .summerd-report .key-episode { fill: #d62728; fill-opacity: 0.14; stroke: #b00000; stroke-opacity: 0.7; stroke-dasharray: 4 3; }
.summerd-report .ep-mark { fill: #b00000; }
.summerd-report .life line { stroke: #222222; stroke-width: 1.2; stroke-dasharray: 3 2; }
.summerd-report .life text { font-size: 12px; text-anchor: middle; }
.summerd-report .life .gap { fill: #777777; fill-opacity: 0.18; }
.summerd-report .negline, .summerd-report .key-negline { fill: none; stroke: #111111; stroke-width: 1.5; stroke-linejoin: round; }
.summerd-report .legend text { font-size: 13px; }
.summerd-report .swatch { stroke: #333333; stroke-width: 0.5; }
"#;

/// Media seconds to x.
struct Scale {
    extent: f64,
}

impl Scale {
    fn x(&self, t: f64) -> f64 {
        let t = if t.is_finite() {
            t.clamp(0.0, self.extent)
        } else {
            0.0
        };
        LEFT + t / self.extent * (WIDTH - LEFT - RIGHT)
    }
}

/// The step between ticks: the first that gives at most 12 of them.
fn tick_step(extent: f64) -> f64 {
    const STEPS: [f64; 14] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    ];
    STEPS
        .into_iter()
        .find(|s| extent / s <= 12.0)
        .unwrap_or(STEPS[STEPS.len() - 1])
}

fn section_height(s: &StreamCall) -> f64 {
    SECTION_HEAD + s.speakers.len().max(1) as f64 * ROW + SECTION_FOOT
}

/// The whole call as one standalone SVG document (its CSS embedded): a title, a legend of the
/// labels present (`g.legend-item`), then per stream a section (`g.stream[data-stream]`: its id,
/// a time axis in m:ss with `g.tick`s, a row per speaker with its name at the left) holding
/// - per final emotion event one `rect.utt.l-<label>` (`data-stream`, `data-seq`,
///   `data-speaker`, `data-label`, `data-confidence`, `data-start`, `data-end`) over its span,
///   its fill opacity 0.25 + 0.75 x confidence, its `<title>` "speaker · #seq · label 0.71 ·
///   runner-up neutral 0.12 · text";
/// - per escalation episode one `rect.episode` (`data-speaker`, `data-start`, `data-end`,
///   `data-open`) over the speaker's row, to the end of the media where it never ended, with
///   `path.ep-start` / `path.ep-end` markers;
/// - per lifecycle event one `g.life` (`data-kind`, `data-media-time`): a vertical line and a
///   short label;
/// - per speaker with a smoothed state one `polyline.negline` (`data-speaker`): the negative
///   share after each utterance, bottom to top of the row.
pub fn svg(call: &Call) -> String {
    let height = TOP + call.streams.iter().map(section_height).sum::<f64>();
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="summerd-report" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="summerd report: {names}">"#,
        names = esc(&call.names())
    );
    let _ = write!(
        o,
        "\n<style><![CDATA[\n{LABELS_CSS}\n{SVG_CSS}]]></style>\n<rect class=\"bg\" x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>\n"
    );
    let _ = writeln!(
        o,
        r#"<text class="title" x="16" y="30">summerd report: {}</text>"#,
        esc(&call.names())
    );
    legend(call, &mut o);
    let mut y = TOP;
    for s in &call.streams {
        section(s, y, &mut o);
        y += section_height(s);
    }
    o.push_str("</svg>\n");
    o
}

fn legend(call: &Call, o: &mut String) {
    // (the mark, its width, the name)
    let mut items: Vec<(String, f64, String)> = labels_present(call)
        .into_iter()
        .map(|l| {
            let class = label_class(l);
            let swatch = format!(
                r#"<rect class="swatch {class}" fill="{}" x="0" y="-11" width="14" height="14"/>"#,
                colour(class)
            );
            (swatch, 14.0, l.to_string())
        })
        .collect();
    if call.streams.iter().any(|s| !s.signals.is_empty()) {
        let band = r#"<rect class="key-episode" x="0" y="-11" width="22" height="14"/>"#;
        items.push((band.to_string(), 22.0, "escalation episode".to_string()));
    }
    let smoothed = call
        .streams
        .iter()
        .flat_map(|s| &s.utterances)
        .any(|u| u.smoothed.is_some());
    if smoothed {
        let line = r#"<polyline class="key-negline" points="0,2 8,-8 14,-2 22,-10"/>"#;
        let name = "negative share (smoothed)";
        items.push((line.to_string(), 22.0, name.to_string()));
    }
    o.push_str("<g class=\"legend\">\n");
    let (mut x, mut y) = (16.0, 58.0);
    for (mark, mark_w, name) in items {
        let w = mark_w + 6.0 + 7.5 * name.chars().count() as f64 + 22.0;
        if x + w > WIDTH - RIGHT && x > 16.0 {
            x = 16.0;
            y += 20.0;
        }
        let _ = writeln!(
            o,
            r#"<g class="legend-item" transform="translate({x:.1},{y:.1})">{mark}<text x="{:.1}" y="1">{}</text></g>"#,
            mark_w + 6.0,
            esc(&name)
        );
        x += w;
    }
    o.push_str("</g>\n");
}

/// Long speaker names are cut for the row label (the full name is in its tooltip).
fn short(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let cut: String = name.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

fn section(s: &StreamCall, y0: f64, o: &mut String) {
    let scale = Scale {
        extent: if s.extent > 0.0 { s.extent } else { 1.0 },
    };
    let top = y0 + SECTION_HEAD;
    let bottom = top + s.speakers.len().max(1) as f64 * ROW;
    let row_top = |speaker: &str| {
        s.speakers
            .iter()
            .position(|n| n == speaker)
            .map(|i| top + i as f64 * ROW)
    };
    let _ = writeln!(
        o,
        r#"<g class="stream" data-stream="{id}">
<text class="stream-id" x="16" y="{:.1}">{id}</text>"#,
        y0 + 24.0,
        id = esc(&s.id)
    );
    axis(&scale, top, bottom, o);
    for (i, name) in s.speakers.iter().enumerate() {
        let y = top + i as f64 * ROW;
        let _ = writeln!(
            o,
            r#"<text class="speaker-name" x="{:.1}" y="{:.1}"><title>{n}</title>{}</text>
<line class="row-sep" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/>"#,
            LEFT - 10.0,
            y + ROW / 2.0 + 5.0,
            esc(&short(name, 20)),
            WIDTH - RIGHT,
            y + ROW,
            y + ROW,
            n = esc(name)
        );
    }
    for e in s.episodes() {
        if let Some(y) = row_top(&e.speaker) {
            episode(&e, &scale, y, o);
        }
    }
    for u in &s.utterances {
        if let Some(y) = row_top(&u.speaker) {
            utterance(u, &scale, y, o);
        }
    }
    for name in &s.speakers {
        if let Some(y) = row_top(name) {
            negline(s, name, &scale, y, o);
        }
    }
    lifecycle(s, &scale, top, bottom, o);
    o.push_str("</g>\n");
}

fn axis(scale: &Scale, top: f64, bottom: f64, o: &mut String) {
    let step = tick_step(scale.extent);
    let _ = writeln!(
        o,
        r#"<line class="axis" x1="{LEFT}" x2="{:.1}" y1="{top:.1}" y2="{top:.1}"/>"#,
        WIDTH - RIGHT
    );
    let mut k = 0u32;
    loop {
        let t = f64::from(k) * step;
        if t > scale.extent + 1e-9 {
            break;
        }
        let x = scale.x(t);
        let _ = writeln!(
            o,
            r#"<g class="tick"><line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{top:.1}" y2="{bottom:.1}"/><line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{top:.1}"/><text x="{x:.1}" y="{:.1}">{}</text></g>"#,
            top - 5.0,
            top - 9.0,
            clock(t)
        );
        k += 1;
    }
}

fn utterance(u: &EmotionEvent, scale: &Scale, row_top: f64, o: &mut String) {
    let (x0, x1) = (scale.x(u.start), scale.x(u.end.max(u.start)));
    let class = label_class(&u.label);
    let confidence = u.confidence.clamp(0.0, 1.0);
    let runner_up = u
        .probs
        .iter()
        .filter(|(k, _)| **k != u.label)
        .max_by(|a, b| a.1.total_cmp(b.1));
    let mut title = format!(
        "{} · #{} · {} {:.2}",
        u.speaker, u.seq, u.label, u.confidence
    );
    if let Some((l, p)) = runner_up {
        let _ = write!(title, " · runner-up {l} {p:.2}");
    }
    if let Some(t) = &u.text {
        let _ = write!(title, " · {t}");
    }
    let _ = writeln!(
        o,
        r#"<rect class="utt {class}" fill="{fill}" fill-opacity="{:.2}" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" data-stream="{}" data-seq="{}" data-speaker="{}" data-label="{}" data-confidence="{:.2}" data-start="{:.2}" data-end="{:.2}"><title>{}</title></rect>"#,
        0.25 + 0.75 * confidence,
        row_top + 6.0,
        (x1 - x0).max(1.0),
        ROW - 12.0,
        esc(&u.stream),
        u.seq,
        esc(&u.speaker),
        esc(&u.label),
        u.confidence,
        u.start,
        u.end,
        esc(&title),
        fill = colour(class),
    );
}

fn episode(e: &Episode, scale: &Scale, row_top: f64, o: &mut String) {
    let until = e.until(scale.extent);
    let (x0, x1) = (scale.x(e.start), scale.x(until));
    let end = match e.end {
        Some(t) => clock(t),
        None => "(not ended)".to_string(),
    };
    let mut title = format!(
        "{} · escalation {}–{} · peak {:.2} · {}",
        e.speaker,
        clock(e.start),
        end,
        e.peak,
        e.label
    );
    if let Some(r) = &e.reason {
        let _ = write!(title, " · {r}");
    }
    let _ = write!(
        o,
        r#"<g class="episode-group"><rect class="episode" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" data-speaker="{}" data-start="{:.2}" data-end="{:.2}" data-open="{}"><title>{}</title></rect>"#,
        row_top + 1.0,
        (x1 - x0).max(2.0),
        ROW - 2.0,
        esc(&e.speaker),
        e.start,
        until,
        e.end.is_none(),
        esc(&title)
    );
    // Markers: a downward triangle where it began, an upward one where it ended.
    let _ = write!(
        o,
        r#"<path class="ep-mark ep-start" d="M{:.1},{:.1} l5,-6 h-10 z"/>"#,
        x0,
        row_top + 7.0
    );
    if e.end.is_some() {
        let _ = write!(
            o,
            r#"<path class="ep-mark ep-end" d="M{:.1},{:.1} l5,6 h-10 z"/>"#,
            x1,
            row_top + ROW - 7.0
        );
    }
    o.push_str("</g>\n");
}

fn negline(s: &StreamCall, speaker: &str, scale: &Scale, row_top: f64, o: &mut String) {
    let points: Vec<String> = s
        .utterances
        .iter()
        .filter(|u| u.speaker == speaker)
        .filter_map(|u| {
            let n = f64::from(u.smoothed.as_ref()?.negative.clamp(0.0, 1.0));
            let y = row_top + ROW - 3.0 - n * (ROW - 6.0);
            Some(format!("{:.1},{y:.1}", scale.x(u.end.max(u.start))))
        })
        .collect();
    if points.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        r#"<polyline class="negline" data-speaker="{}" points="{}"><title>{} · negative share (smoothed)</title></polyline>"#,
        esc(speaker),
        points.join(" "),
        esc(speaker)
    );
}

fn lifecycle(s: &StreamCall, scale: &Scale, top: f64, bottom: f64, o: &mut String) {
    // Labels of marks close together go on a second line.
    let mut last = [f64::NEG_INFINITY; 2];
    for l in &s.lifecycle {
        let Some(t) = l.media_time else { continue };
        let (kind, short) = lifecycle_kind(l.kind);
        let x = scale.x(t);
        let level = if x - last[0] >= 44.0 || x - last[1] < 44.0 {
            0
        } else {
            1
        };
        last[level] = x;
        let mut title = format!("{kind} at {}", clock(t));
        if let Some(r) = &l.reason {
            let _ = write!(title, " · {r}");
        }
        let _ = write!(
            o,
            r#"<g class="life" data-kind="{kind}" data-media-time="{t:.2}"><title>{}</title>"#,
            esc(&title)
        );
        if let Some([a, b]) = l.gap {
            let (xa, xb) = (scale.x(a), scale.x(b));
            let _ = write!(
                o,
                r#"<rect class="gap" x="{xa:.1}" y="{top:.1}" width="{:.1}" height="{:.1}"/>"#,
                (xb - xa).max(0.0),
                bottom - top
            );
        }
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}"/><text x="{x:.1}" y="{:.1}">{short}</text></g>"#,
            top - 2.0,
            bottom + 4.0,
            bottom + 18.0 + 14.0 * level as f64
        );
    }
}

const PAGE_CSS: &str = r#"
body { background: #ffffff; color: #1a1a1a; font: 15px/1.45 "Helvetica Neue", Helvetica, Arial, "DejaVu Sans", sans-serif; margin: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 28px 0 8px; border-bottom: 1px solid #cccccc; }
h3 { font-size: 16px; margin: 0 0 6px; }
h4 { font-size: 14px; margin: 10px 0 4px; }
figure.timeline { margin: 16px 0; }
figure.timeline svg { width: 100%; height: auto; display: block; }
.speakers { display: grid; grid-template-columns: repeat(auto-fill, minmax(24em, 1fr)); gap: 16px 28px; }
.speaker { border: 1px solid #dddddd; border-radius: 4px; padding: 10px 14px; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { text-align: left; padding: 2px 10px 2px 0; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { border-bottom: 1px solid #999999; }
span.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; vertical-align: -0.1em; border: 1px solid #333333; }
ul { margin: 2px 0; padding-left: 1.2em; }
.none { color: #555555; }
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@media print {
  @page { size: A4 landscape; margin: 10mm; }
  body { margin: 0; font-size: 10pt; }
  h1 { font-size: 15pt; }
  h2 { font-size: 13pt; break-after: avoid; }
  h3 { font-size: 11pt; }
  h4 { font-size: 10pt; }
  figure.timeline { margin: 0 0 6mm; }
  .speakers { grid-template-columns: repeat(3, 1fr); gap: 4mm 6mm; }
  .speaker { break-inside: avoid; border-color: #999999; }
}
"#;

/// The call as a self-contained HTML5 page (no external asset, no script): the [`svg`] inline,
/// then per stream and speaker a summary: utterances, speaking time, time in each label
/// (seconds and share of the speaking time), mean confidence, escalation episodes and the
/// moments the label changed. Prints on A4 landscape.
pub fn html(call: &Call) -> String {
    let title = esc(&format!("summerd report: {}", call.names()));
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<style>\n{LABELS_CSS}\n{PAGE_CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    let _ = writeln!(
        o,
        "<p>{} of {}, {}.</p>",
        plural(call.utterances(), "utterance"),
        plural(call.streams.len(), "stream"),
        plural(call.signals(), "signal")
    );
    let _ = write!(o, "<figure class=\"timeline\">\n{}</figure>\n", svg(call));
    for s in &call.streams {
        stream_summary(s, &mut o);
    }
    o.push_str("</body>\n</html>\n");
    o
}

/// `n thing` or `n things`.
pub fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("{n} {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn stream_summary(s: &StreamCall, o: &mut String) {
    let _ = writeln!(
        o,
        "<section class=\"stream\">\n<h2>Stream {}</h2>\n<p>Media {} · {} · {}.</p>",
        esc(&s.id),
        clock(s.extent),
        plural(s.speakers.len(), "speaker"),
        plural(s.utterances.len(), "utterance")
    );
    if !s.lifecycle.is_empty() {
        let marks: Vec<String> = s
            .lifecycle
            .iter()
            .map(|l| {
                let mut m = format!(
                    "{} {}",
                    lifecycle_kind(l.kind).0,
                    clock(l.media_time.unwrap_or(0.0))
                );
                if let Some(r) = &l.reason {
                    let _ = write!(m, " ({r})");
                }
                esc(&m)
            })
            .collect();
        let _ = writeln!(o, "<p>Lifecycle: {}.</p>", marks.join("; "));
    }
    o.push_str("<div class=\"speakers\">\n");
    for name in &s.speakers {
        speaker_summary(name, &s.summary(name), o);
    }
    o.push_str("</div>\n</section>\n");
}

fn speaker_summary(name: &str, sum: &SpeakerSummary, o: &mut String) {
    let _ = writeln!(
        o,
        "<div class=\"speaker\" data-speaker=\"{n}\">\n<h3>{n}</h3>\n<table class=\"summary\">\n<tr><th>Utterances</th><td class=\"num\">{}</td></tr>\n<tr><th>Speaking time</th><td class=\"num\">{:.1} s</td></tr>\n<tr><th>Mean confidence</th><td class=\"num\">{:.2}</td></tr>\n</table>",
        sum.utterances,
        sum.speaking,
        sum.mean_confidence,
        n = esc(name)
    );
    if !sum.time_in_label.is_empty() {
        o.push_str("<h4>Time in each label</h4>\n<table class=\"labels\">\n<thead><tr><th>Label</th><th class=\"num\">Seconds</th><th class=\"num\">%</th></tr></thead>\n<tbody>\n");
        for (label, secs) in &sum.time_in_label {
            let _ = writeln!(
                o,
                "<tr data-label=\"{l}\"><td><span class=\"swatch {}\"></span>{l}</td><td class=\"num\">{secs:.1}</td><td class=\"num\">{:.0}%</td></tr>",
                label_class(label),
                sum.percent(*secs),
                l = esc(label)
            );
        }
        o.push_str("</tbody>\n</table>\n");
    }
    o.push_str("<h4>Escalation episodes</h4>\n");
    let episodes: Vec<String> = sum
        .episodes
        .iter()
        .map(|e| {
            let end = e.end.map_or("not ended".to_string(), clock);
            let mut line = format!("{}–{end}: peak {:.2}, {}", clock(e.start), e.peak, e.label);
            if let Some(r) = &e.reason {
                let _ = write!(line, " ({r})");
            }
            line
        })
        .collect();
    list("episodes", &episodes, o);
    o.push_str("<h4>Moments of change</h4>\n");
    let changes: Vec<String> = sum
        .changes
        .iter()
        .map(|c| format!("{} {} → {}", clock(c.at), c.from, c.to))
        .collect();
    list("changes", &changes, o);
    o.push_str("</div>\n");
}

fn list(class: &str, items: &[String], o: &mut String) {
    if items.is_empty() {
        let _ = writeln!(o, "<p class=\"{class} none\">None.</p>");
        return;
    }
    let _ = writeln!(o, "<ul class=\"{class}\">");
    for i in items {
        let _ = writeln!(o, "<li>{}</li>", esc(i));
    }
    o.push_str("</ul>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn emo(stream: &str, seq: u64, speaker: &str, span: (f64, f64), label: &str, p: f32) -> Value {
        let rest = if label == "neutral" { "joy" } else { "neutral" };
        json!({"v":1,"type":"emotion","stream":stream,"utterance":seq,"seq":seq,
            "speaker":speaker,"start":span.0,"end":span.1,"label":label,"confidence":p,
            "probs":{label:p, rest:(1.0 - p) * 0.75, "surprise":(1.0 - p) * 0.25},
            "modalities":{"text":true,"audio":true,"visual":false},"model":"m@1",
            "latency_ms":8.4,"emitted_at":"2026-11-28T10:15:02.113Z"})
    }

    fn signal(kind: &str, speaker: &str, start: f64, end: f64) -> Value {
        json!({"v":1,"type":kind,"stream":"s1","speaker":speaker,"seq":9,"start":start,
            "end":end,"level":0.6,"peak":0.8,"label":"anger",
            "emitted_at":"2026-11-28T10:15:02.113Z"})
    }

    fn life(kind: &str, t: f64) -> Value {
        json!({"v":1,"type":kind,"stream":"s1","media_time":t,
            "emitted_at":"2026-11-28T10:15:02.113Z"})
    }

    fn log(events: &[Value]) -> String {
        events.iter().map(|e| format!("{e}\n")).collect()
    }

    /// The values of `attr` on the elements whose class starts with `class`.
    fn attrs(svg: &str, class: &str, attr: &str) -> Vec<String> {
        svg.split(&format!("class=\"{class}"))
            .skip(1)
            .map(|rest| {
                let tag = &rest[..rest.find('>').unwrap()];
                let from = tag.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3;
                tag[from..from + tag[from..].find('"').unwrap()].to_string()
            })
            .collect()
    }

    fn call() -> Call {
        read(&log(&[
            life("stream.up", 0.0),
            emo("s1", 1, "agent", (0.5, 2.5), "neutral", 0.9),
            emo("s1", 2, "customer", (3.0, 6.0), "anger", 0.71),
            emo("s1", 3, "agent", (6.5, 7.5), "joy", 0.6),
            emo("s1", 4, "customer", (8.0, 9.0), "anger", 0.8),
            signal("escalation", "customer", 3.0, 9.0),
            emo("s1", 5, "customer", (10.0, 14.0), "sadness", 0.5),
            life("stream.down", 15.0),
        ]))
        .unwrap()
    }

    #[test]
    fn read_errors_name_the_line() {
        let text = format!(
            "{}\n\n{}\nnot json\n",
            emo("s1", 1, "a", (0.0, 1.0), "joy", 0.5),
            emo("s1", 2, "a", (1.0, 2.0), "joy", 0.5)
        );
        let err = read(&text).unwrap_err();
        assert!(
            matches!(err, ReportError::NotAnEvent { line: 4, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("line 4:"), "{err}");
        let odd = r#"{"v":1,"type":"stream.sideways","emitted_at":"x"}"#;
        let err = read(&format!("\n{odd}\n")).unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        let only_life = log(&[life("stream.up", 0.0)]);
        assert_eq!(
            read(&only_life).unwrap_err().to_string(),
            "no emotion events"
        );
        assert_eq!(read("\n \n").unwrap_err().to_string(), "no emotion events");
    }

    #[test]
    fn provisional_events_are_left_out() {
        let mut p = emo("s1", 1, "a", (0.0, 1.0), "anger", 0.5);
        p["provisional"] = json!(true);
        let c = read(&log(&[
            p.clone(),
            emo("s1", 1, "a", (0.0, 1.2), "joy", 0.7),
        ]))
        .unwrap();
        assert_eq!(c.utterances(), 1);
        assert_eq!(c.streams[0].utterances[0].label, "joy");
        assert_eq!(
            read(&log(&[p])).unwrap_err().to_string(),
            "no emotion events"
        );
    }

    #[test]
    fn events_are_grouped_per_stream_with_speakers_and_extent() {
        let c = read(&log(&[
            emo("s2", 1, "x", (5.0, 6.0), "joy", 0.5),
            emo("s1", 1, "b", (1.0, 3.0), "joy", 0.5),
            json!({"v":1,"type":"daemon.up","emitted_at":"x"}),
            emo("s1", 2, "a", (0.0, 1.0), "joy", 0.5),
            life("stream.down", 20.0),
        ]))
        .unwrap();
        assert_eq!(c.names(), "s2, s1");
        let s1 = &c.streams[1];
        assert_eq!(s1.speakers, ["b", "a"]);
        // By start time.
        assert_eq!(s1.utterances[0].seq, 2);
        assert_eq!(s1.extent, 20.0);
        assert_eq!(c.streams[0].extent, 6.0);
    }

    #[test]
    fn one_utterance_rect_per_final_event_with_its_label() {
        let mut p = emo("s1", 6, "agent", (15.0, 16.0), "fear", 0.5);
        p["provisional"] = json!(true);
        let mut text = log(&[p]);
        text.push_str(&log(&[emo("s1", 7, "agent", (16.0, 17.0), "boredom", 0.4)]));
        let c = read(&format!(
            "{}{text}",
            log(&call().streams[0]
                .utterances
                .iter()
                .map(|u| json!(u))
                .collect::<Vec<_>>())
        ))
        .unwrap();
        let svg = svg(&c);
        assert_eq!(svg.matches("class=\"utt ").count(), 6);
        assert_eq!(
            attrs(&svg, "utt ", "data-label"),
            ["neutral", "anger", "joy", "anger", "sadness", "boredom"]
        );
        assert_eq!(
            attrs(&svg, "utt ", "data-seq"),
            ["1", "2", "3", "4", "5", "7"]
        );
        assert_eq!(attrs(&svg, "utt ", "data-confidence")[1], "0.71");
        assert!(svg.contains(r#"class="utt l-other""#), "an unknown label");
        assert!(svg.contains(r#"class="utt l-anger""#));
        assert!(svg.contains("<title>customer · #2 · anger 0.71 · runner-up neutral 0.22</title>"));
        // Standalone: the label colours embedded, one root element.
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains(".l-anger { fill: var(--anger)"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // The legend names the labels present, the seven first.
        let legend: Vec<&str> = svg
            .split("<g class=\"legend-item\"")
            .skip(1)
            .map(|g| {
                let t = &g[g.find("<text").unwrap()..];
                &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()]
            })
            .collect();
        assert_eq!(legend, ["anger", "joy", "neutral", "sadness", "boredom"]);
    }

    #[test]
    fn the_title_carries_the_text_where_there_is_one() {
        let mut e = emo("s1", 1, "a", (0.0, 1.0), "joy", 0.6);
        e["text"] = json!("hi <there>");
        let svg = svg(&read(&log(&[e])).unwrap());
        assert!(svg.contains(
            "<title>a · #1 · joy 0.60 · runner-up neutral 0.30 · hi &lt;there&gt;</title>"
        ));
    }

    #[test]
    fn everything_user_given_is_escaped() {
        assert_eq!(esc(r#"<&>"'"#), "&lt;&amp;&gt;&quot;&#39;");
        assert_eq!(esc("a\u{1}b\tc\u{ffff}"), "a\u{fffd}b\tc\u{fffd}");
        let nasty = r#"<b>"Tom" & 'Jerry'</b>"#;
        let mut e = emo(nasty, 1, nasty, (0.0, 1.0), nasty, 0.5);
        e["text"] = json!(nasty);
        let c = read(&log(&[e])).unwrap();
        for doc in [svg(&c), html(&c)] {
            assert!(!doc.contains(nasty));
            assert!(!doc.contains("<b>"), "no raw markup from the input");
            assert!(doc.contains("&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt;"));
        }
        let svg = svg(&c);
        assert_eq!(attrs(&svg, "utt ", "data-speaker"), [esc(nasty)]);
        assert!(svg.contains("class=\"utt l-other\""));
    }

    #[test]
    fn an_escalation_draws_a_band_ended_or_not() {
        // Not de-escalated: the band runs to the end of the media.
        let c = call();
        let eps = c.streams[0].episodes();
        assert_eq!(eps.len(), 1);
        assert_eq!((eps[0].start, eps[0].end), (3.0, None));
        let doc = svg(&c);
        assert_eq!(attrs(&doc, "episode\"", "data-speaker"), ["customer"]);
        assert_eq!(attrs(&doc, "episode\"", "data-end"), ["15.00"]);
        assert_eq!(attrs(&doc, "episode\"", "data-open"), ["true"]);
        assert_eq!(doc.matches("ep-mark ep-start").count(), 1);
        assert_eq!(doc.matches("ep-mark ep-end").count(), 0);
        // De-escalated.
        let mut events: Vec<Value> = c.streams[0].utterances.iter().map(|u| json!(u)).collect();
        events.push(signal("escalation", "customer", 3.0, 9.0));
        events.push(signal("deescalation", "customer", 3.0, 12.5));
        events.push(signal("deescalation", "agent", 1.0, 2.0));
        let c = read(&log(&events)).unwrap();
        let doc = svg(&c);
        assert_eq!(
            attrs(&doc, "episode\"", "data-speaker"),
            ["agent", "customer"]
        );
        assert_eq!(attrs(&doc, "episode\"", "data-start"), ["1.00", "3.00"]);
        assert_eq!(attrs(&doc, "episode\"", "data-end"), ["2.00", "12.50"]);
        assert_eq!(attrs(&doc, "episode\"", "data-open"), ["false", "false"]);
        assert_eq!(doc.matches("ep-mark ep-end").count(), 2);
        let page = html(&c);
        assert!(
            page.contains("<li>0:03–0:13: peak 0.80, anger</li>"),
            "{page}"
        );
    }

    #[test]
    fn lifecycle_events_are_marked() {
        let svg = svg(&call());
        assert_eq!(svg.matches("<g class=\"life\"").count(), 2);
        assert_eq!(
            attrs(&svg, "life\"", "data-kind"),
            ["stream.up", "stream.down"]
        );
        assert_eq!(attrs(&svg, "life\"", "data-media-time"), ["0.00", "15.00"]);
    }

    #[test]
    fn the_smoothed_share_is_a_line_per_speaker() {
        assert!(!svg(&call()).contains("class=\"negline\" data-speaker"));
        let mut events = Vec::new();
        for (i, n) in [0.2, 0.5, 0.7].into_iter().enumerate() {
            let mut e = emo(
                "s1",
                i as u64,
                "c",
                (i as f64, i as f64 + 1.0),
                "anger",
                0.6,
            );
            e["smoothed"] = json!({"label":"anger","negative":n,"escalated":false});
            events.push(e);
        }
        events.push(emo("s1", 9, "d", (4.0, 5.0), "joy", 0.6));
        let svg = svg(&read(&log(&events)).unwrap());
        assert_eq!(attrs(&svg, "negline\"", "data-speaker"), ["c"]);
        let points = &attrs(&svg, "negline\"", "points")[0];
        assert_eq!(points.split(' ').count(), 3);
    }

    #[test]
    fn time_in_label_and_moments_of_change() {
        let c = call();
        let s = c.streams[0].summary("customer");
        assert_eq!(s.utterances, 3);
        assert_eq!(s.speaking, 8.0);
        assert_eq!(
            s.time_in_label,
            [("anger".to_string(), 4.0), ("sadness".to_string(), 4.0)]
        );
        assert_eq!(s.percent(4.0), 50.0);
        assert!((s.mean_confidence - (0.71 + 0.8 + 0.5) / 3.0).abs() < 1e-6);
        assert_eq!(
            s.changes,
            [Change {
                at: 10.0,
                from: "anger".into(),
                to: "sadness".into()
            }]
        );
        let a = c.streams[0].summary("agent");
        assert_eq!(a.speaking, 3.0);
        assert_eq!(a.time_in_label[0], ("neutral".to_string(), 2.0));
        // The smoothed label, where present, is the one that counts for changes.
        let mut events = Vec::new();
        for (i, (label, steady)) in [("joy", "joy"), ("anger", "joy"), ("anger", "anger")]
            .into_iter()
            .enumerate()
        {
            let mut e = emo(
                "s1",
                i as u64,
                "c",
                (i as f64 * 60.0, i as f64 * 60.0 + 1.0),
                label,
                0.6,
            );
            e["smoothed"] = json!({"label":steady,"negative":0.5,"escalated":false});
            events.push(e);
        }
        let c = read(&log(&events)).unwrap();
        let s = c.streams[0].summary("c");
        assert_eq!(s.changes.len(), 1);
        assert_eq!(s.changes[0].at, 120.0);
        assert!(html(&c).contains("<li>2:00 joy → anger</li>"));
    }

    #[test]
    fn the_page_is_self_contained_and_summarises_each_speaker() {
        let page = html(&call());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>summerd report: s1</title>"));
        assert!(page.contains("@page { size: A4 landscape"));
        assert!(!page.contains("<script"));
        assert!(!page.contains(" src=") && !page.contains("<link"));
        assert_eq!(page.matches("<svg ").count(), 1);
        assert_eq!(page.matches("<div class=\"speaker\"").count(), 2);
        assert!(page.contains(
            "<tr data-label=\"anger\"><td><span class=\"swatch l-anger\"></span>anger</td><td class=\"num\">4.0</td><td class=\"num\">50%</td></tr>"
        ));
        assert!(page.contains("<li>0:03–not ended: peak 0.80, anger</li>"));
        assert!(page.contains("<li>0:10 anger → sadness</li>"));
    }

    #[test]
    fn ticks_are_in_minutes_and_seconds_at_sensible_steps() {
        assert_eq!(clock(0.0), "0:00");
        assert_eq!(clock(75.4), "1:15");
        assert_eq!(clock(3725.0), "62:05");
        assert_eq!(tick_step(15.0), 2.0);
        assert_eq!(tick_step(600.0), 60.0);
        assert_eq!(tick_step(3000.0), 300.0);
        let svg = svg(&call());
        assert_eq!(svg.matches("<g class=\"tick\">").count(), 8);
        assert!(svg.contains(">0:14</text></g>"));
    }

    #[test]
    fn colours_come_from_the_shared_css() {
        assert_eq!(colour("l-anger"), "#d62728");
        assert_eq!(colour("l-other"), "#555555");
        assert_eq!(label_class("boredom"), "l-other");
    }
}
