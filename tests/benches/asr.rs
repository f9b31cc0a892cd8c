//! What the reference ASR worker costs and what its errors cost the model.
//!
//! Spoken MELD: whole dialogues of MELD's test split (at least 320 utterances), one espeak-ng
//! voice per speaker at one neutral prosody, dealt over 8 calls (tests/peers/meld_calls.py).
//! The daemon plays the 8 calls live (file template, real time, attached at once) with the
//! default model; the reference worker (asr/reference_worker.py, its defaults) listens to the
//! audio tap and sends transcripts; this process listens to the tap too (when each stretch of
//! audio reached a tap subscriber) and to the events.
//!
//! First the demo's sample call alone, live: its WER against the script and whether each line's
//! speaker is told apart.
//!
//! Reported:
//! - WER of the worker's text against MELD's (per call, all words in order);
//! - speaker-label accuracy: each segment's label mapped one-to-one to MELD's speakers of its
//!   call (most frequent pairs first), segments whose gold speaker it names;
//! - the default model's WF1 on the live events (ASR text, ASR times, the call's audio) against
//!   `summerd replay` of the same audio with MELD's text at the true times, both scored on every
//!   utterance (an utterance takes the label of the live event overlapping it most; one no event
//!   overlaps counts as wrong); and, to see what punctuation is worth to the model, the replay
//!   with MELD's text with every `!` made `.`, and without punctuation, beside how many lines
//!   carry `!` and `?` in MELD's text and in the worker's;
//! - end of speech -> segment sent: from when the audio up to the end of an utterance's speech
//!   reached a tap subscriber, to when the worker sent the segment that ends it (p50, p99), and
//!   the part of it that is segmentation (end of speech -> segment cut by the VAD);
//! - the worker's CPU per stream and peak RSS, the daemon's CPU and its own latency (p50, p99).
//!
//! Needs ../shared (MELD); without it the bench says SKIPPED and writes nothing.
//! Usage: `cargo bench --bench asr` (`make bench-asr`); figures printed and written to
//! target/bench/asr.json.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Daemon, overlap, percentile, process_cpu, repo, word_errors, words};
use serde_json::{Value, json};

const CLASSES: [&str; 7] = [
    "neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger",
];

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The spoken MELD calls (made once): calls.json.
fn calls(meld: &Path) -> Value {
    let dir = repo().join("target/bench/asr-meld");
    if !dir.join("calls.json").is_file() {
        let ok = Command::new(common::python())
            .arg(common::peer("meld_calls.py"))
            .arg(&dir)
            .arg("--meld")
            .arg(meld)
            .status()
            .unwrap()
            .success();
        assert!(ok, "meld_calls.py failed");
    }
    serde_json::from_str(&std::fs::read_to_string(dir.join("calls.json")).unwrap()).unwrap()
}

/// A SUB socket's messages on a thread until `stop`: (wall time, parts).
fn listen(
    endpoint: &str,
    prefix: &[u8],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, Vec<Vec<u8>>)>> {
    let (endpoint, prefix) = (endpoint.to_string(), prefix.to_vec());
    std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::SUB).unwrap();
        s.set_subscribe(&prefix).unwrap();
        s.set_rcvhwm(100_000).unwrap();
        s.set_rcvtimeo(100).unwrap();
        s.connect(&endpoint).unwrap();
        let mut got = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(parts) = s.recv_multipart(0) {
                got.push((now(), parts));
            }
        }
        got
    })
}

/// When the audio up to each media time reached the tap, per stream: (pts end, wall).
fn tap_times(tap: &[(f64, Vec<Vec<u8>>)]) -> HashMap<String, Vec<(f64, f64)>> {
    let mut out: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for (wall, parts) in tap {
        let Ok(h) = serde_json::from_slice::<Value>(&parts[1]) else {
            continue;
        };
        let end = h["pts"].as_f64().unwrap_or(0.0) + (parts[2].len() / 2) as f64 / 16_000.0;
        let id = h["stream"].as_str().unwrap_or_default().to_string();
        out.entry(id).or_default().push((end, *wall));
    }
    out
}

struct Live {
    events: Vec<Value>,
    journal: Vec<Value>,
    tap: HashMap<String, Vec<(f64, f64)>>,
    worker_cpu: f64,
    daemon_cpu: f64,
    seconds: f64,
    worker_peak_mib: f64,
    worker_said: String,
}

/// The calls live at once through the daemon and the worker.
fn live(calls: &Value, scratch: &Path) -> Live {
    let d = Daemon::start_custom(|_, p| common::model_config(Some(p.1)), &[], false);
    let stop = Arc::new(AtomicBool::new(false));
    let tap = listen(&d.tap, b"", stop.clone());
    let events = listen(&d.events, b"emotion.", stop.clone());
    let (journal, log) = (scratch.join("journal.jsonl"), scratch.join("worker.log"));
    let mut worker = common::start_worker(
        &d.tap,
        &d.transcripts,
        &["--journal", journal.to_str().unwrap()],
        &log,
    );
    std::thread::sleep(Duration::from_millis(500));
    let (w0, d0, t0) = (
        process_cpu(worker.id()),
        process_cpu(d.child.id()),
        Instant::now(),
    );
    let mut longest: f64 = 0.0;
    for (id, c) in calls.as_object().unwrap() {
        let req = json!({"cmd": "attach", "id": id, "template": "file",
            "uri": format!("file://{}", c["media"].as_str().unwrap())});
        let r = d.control(req);
        assert_eq!(r["ok"], true, "attach {id}: {r}");
        longest = longest.max(c["seconds"].as_f64().unwrap());
    }
    eprintln!(
        "asr: {} call(s) live, {longest:.0} s",
        calls.as_object().unwrap().len()
    );
    std::thread::sleep(Duration::from_secs_f64(longest + 4.0));
    let seconds = t0.elapsed().as_secs_f64();
    let (worker_cpu, daemon_cpu) = (
        process_cpu(worker.id()) - w0,
        process_cpu(d.child.id()) - d0,
    );
    let worker_peak_mib = common::proc_mib(worker.id(), "VmHWM");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let tap = tap_times(&tap.join().unwrap());
    let events = events
        .join()
        .unwrap()
        .iter()
        .filter_map(|(_, p)| serde_json::from_slice(&p[1]).ok())
        .collect();
    let journal = std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Live {
        events,
        journal,
        tap,
        worker_cpu,
        daemon_cpu,
        seconds,
        worker_peak_mib,
        worker_said: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// How MELD's text is given to the model in a gold replay.
#[derive(Clone, Copy)]
enum GoldText {
    /// As MELD has it.
    Meld,
    /// Every exclamation mark made a full stop.
    NoExclamation,
    /// Without `.,!?;:` (and dashes and quotes).
    NoPunctuation,
}

impl GoldText {
    fn apply(self, text: &str) -> String {
        match self {
            Self::Meld => text.to_string(),
            Self::NoExclamation => text.replace('!', "."),
            Self::NoPunctuation => text
                .chars()
                .filter(|c| !".,!?;:\"\u{2014}\u{2026}".contains(*c))
                .collect(),
        }
    }
}

/// `summerd replay` of each call with MELD's text (as `how` says) at the true times: events
/// per stream.
fn gold(calls: &Value, scratch: &Path, how: GoldText) -> HashMap<String, Vec<Value>> {
    let cfg = scratch.join("replay.toml");
    std::fs::write(&cfg, common::model_config(None)).unwrap();
    let mut out = HashMap::new();
    for (id, c) in calls.as_object().unwrap() {
        let segs = scratch.join(format!("{id}.gold.jsonl"));
        let mut told = c.clone();
        for l in told["lines"].as_array_mut().unwrap() {
            l["text"] = json!(how.apply(l["text"].as_str().unwrap()));
        }
        let lines = common::call_segments(&told, id);
        std::fs::write(&segs, lines.join("\n") + "\n").unwrap();
        let o = common::succeed(&mut common::replay(
            c["media"].as_str().unwrap(),
            &segs,
            &cfg,
        ));
        let ev: Vec<Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "emotion")
            .collect();
        out.insert(id.clone(), ev);
    }
    out
}

fn class(label: &Value) -> i64 {
    CLASSES
        .iter()
        .position(|c| label.as_str() == Some(c))
        .map_or(CLASSES.len() as i64, |i| i as i64)
}

/// WER over all calls (each call's words in order).
fn wer(calls: &Value, journal: &[Value]) -> (f64, usize) {
    let (mut errors, mut n) = (0, 0);
    for (id, c) in calls.as_object().unwrap() {
        let reference: Vec<String> = c["lines"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| words(l["text"].as_str().unwrap()))
            .collect();
        let hyp: Vec<String> = journal
            .iter()
            .filter(|j| j["stream"] == id.as_str())
            .flat_map(|j| words(j["text"].as_str().unwrap_or_default()))
            .collect();
        errors += word_errors(&reference, &hyp);
        n += reference.len();
    }
    (100.0 * errors as f64 / n as f64, n)
}

/// Of `spans`, the one `span` overlaps most, if any.
fn most_overlapped<'a>(
    spans: impl IntoIterator<Item = &'a Value>,
    span: &Value,
) -> Option<&'a Value> {
    spans
        .into_iter()
        .map(|l| (overlap(l, span), l))
        .filter(|(o, _)| *o > 0.0)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, l)| l)
}

/// Speaker-label accuracy (%) over segments that overlap a line, and segments scored.
fn speaker_accuracy(calls: &Value, journal: &[Value]) -> (f64, usize) {
    let (mut right, mut n) = (0, 0);
    for (id, c) in calls.as_object().unwrap() {
        let lines = c["lines"].as_array().unwrap();
        let pairs: Vec<(String, String)> = journal
            .iter()
            .filter(|j| j["stream"] == id.as_str())
            .filter_map(|j| {
                let l = most_overlapped(lines, j)?;
                Some((
                    j["speaker"].as_str()?.to_string(),
                    l["speaker"].as_str()?.to_string(),
                ))
            })
            .collect();
        let mut counts: HashMap<&(String, String), usize> = HashMap::new();
        for p in &pairs {
            *counts.entry(p).or_default() += 1;
        }
        let mut ranked: Vec<_> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut map: HashMap<&str, &str> = HashMap::new();
        for ((label, who), _) in ranked {
            if !map.contains_key(label.as_str()) && !map.values().any(|w| *w == who) {
                map.insert(label, who);
            }
        }
        right += pairs
            .iter()
            .filter(|(l, w)| map.get(l.as_str()) == Some(&w.as_str()))
            .count();
        n += pairs.len();
    }
    (100.0 * right as f64 / n.max(1) as f64, n)
}

/// WF1 of the live events (ASR) and of the replay (gold text) over every utterance.
fn wf1(calls: &Value, events: &[Value], gold: &HashMap<String, Vec<Value>>) -> (f64, f64, usize) {
    let (mut truth, mut asr, mut with_gold) = (Vec::new(), Vec::new(), Vec::new());
    for (id, c) in calls.as_object().unwrap() {
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["stream"] == id.as_str())
            .collect();
        for (k, l) in c["lines"].as_array().unwrap().iter().enumerate() {
            truth.push(class(&l["emotion"]));
            let live = most_overlapped(mine.iter().copied(), l);
            asr.push(live.map_or(CLASSES.len() as i64, |e| class(&e["label"])));
            let g = gold[id].iter().find(|e| e["seq"] == k as u64 + 1);
            with_gold.push(g.map_or(CLASSES.len() as i64, |e| class(&e["label"])));
        }
    }
    let k = CLASSES.len() + 1; // the last class: no event
    let m = |p: &[i64]| summerd::train::metrics::compute(&truth, p, k).wf1;
    (m(&asr), m(&with_gold), truth.len())
}

/// End of speech -> segment sent, and -> segment cut, seconds, sorted.
fn delays(calls: &Value, live: &Live) -> (Vec<f64>, Vec<f64>) {
    let (mut sent, mut cut) = (Vec::new(), Vec::new());
    for j in &live.journal {
        let id = j["stream"].as_str().unwrap_or_default();
        let (Some(c), Some(tap)) = (calls.get(id), live.tap.get(id)) else {
            continue;
        };
        let Some(l) = most_overlapped(c["lines"].as_array().unwrap(), j) else {
            continue;
        };
        // Only the segment that ends the line: its end is past the line's speech.
        let eos = l["end"].as_f64().unwrap();
        if j["end"].as_f64().unwrap() + 0.3 < eos {
            continue;
        }
        let Some(&(_, wall)) = tap.iter().find(|(end, _)| *end >= eos) else {
            continue;
        };
        sent.push(j["sent"].as_f64().unwrap() - wall);
        cut.push(j["cut"].as_f64().unwrap() - wall);
    }
    sent.sort_by(f64::total_cmp);
    cut.sort_by(f64::total_cmp);
    (sent, cut)
}

fn main() {
    let Some(shared) = summerd::assets::dir() else {
        eprintln!("SKIPPED: ../shared (or $SUMMERD_ASSETS) is absent; the ASR bench needs MELD");
        return;
    };
    let calls = calls(&shared.join("data/meld"));
    let scratch = repo().join("target/bench/asr-run");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("demo")).unwrap();
    // The demo call alone first: its WER and speakers (the README's demo).
    let demo = json!({"sample-call": common::demo_call()});
    let demo_live = live(&demo, &scratch.join("demo"));
    let (demo_wer, demo_words) = wer(&demo, &demo_live.journal);
    let (demo_spk, _) = speaker_accuracy(&demo, &demo_live.journal);
    let live = live(&calls, &scratch);
    let gold_of = |how| gold(&calls, &scratch, how);
    let (gold, no_excl, no_punct) = (
        gold_of(GoldText::Meld),
        gold_of(GoldText::NoExclamation),
        gold_of(GoldText::NoPunctuation),
    );
    let streams = calls.as_object().unwrap().len();
    let (wer, words) = wer(&calls, &live.journal);
    let (spk, segs) = speaker_accuracy(&calls, &live.journal);
    let (wf1_asr, wf1_gold, utterances) = wf1(&calls, &live.events, &gold);
    let (_, wf1_no_excl, _) = wf1(&calls, &live.events, &no_excl);
    let (_, wf1_no_punct, _) = wf1(&calls, &live.events, &no_punct);
    let count = |c: char, texts: &mut dyn Iterator<Item = &Value>| {
        texts
            .filter(|t| t.as_str().is_some_and(|t| t.contains(c)))
            .count()
    };
    let meld_lines = || {
        calls
            .as_object()
            .unwrap()
            .values()
            .flat_map(|c| c["lines"].as_array().unwrap())
            .map(|l| &l["text"])
    };
    let marks = json!({
        "meld_exclamation": count('!', &mut meld_lines()),
        "meld_question": count('?', &mut meld_lines()),
        "asr_exclamation": count('!', &mut live.journal.iter().map(|j| &j["text"])),
        "asr_question": count('?', &mut live.journal.iter().map(|j| &j["text"])),
    });
    let (sent, cut) = delays(&calls, &live);
    let mut lat: Vec<f64> = live
        .events
        .iter()
        .filter_map(|e| e["latency_ms"].as_f64())
        .collect();
    lat.sort_by(f64::total_cmp);
    let summary = live
        .worker_said
        .lines()
        .find(|l| l.contains("done:"))
        .unwrap_or("(no summary)")
        .to_string();
    let out = json!({
        "bench": "asr",
        "command": "cargo bench --bench asr",
        "demo": {"wer_pct": demo_wer, "words": demo_words, "speaker_accuracy_pct": demo_spk,
            "segments": demo_live.journal.iter().map(|j| json!({"speaker": j["speaker"],
                "start": j["start"], "end": j["end"], "text": j["text"]})).collect::<Vec<_>>()},
        "streams": streams,
        "utterances": utterances,
        "segments": live.journal.len(),
        "events": live.events.len(),
        "words": words,
        "wer_pct": wer,
        "speaker_accuracy_pct": spk,
        "speaker_segments": segs,
        "wf1_asr": wf1_asr,
        "wf1_gold": wf1_gold,
        "wf1_gap": wf1_gold - wf1_asr,
        "wf1_gold_no_exclamation": wf1_no_excl,
        "wf1_gold_no_punctuation": wf1_no_punct,
        "marks": marks,
        "eos_to_segment_s": {"p50": percentile(&sent, 50.0), "p90": percentile(&sent, 90.0),
            "p99": percentile(&sent, 99.0), "max": sent.last().copied().unwrap_or(f64::NAN),
            "n": sent.len()},
        "eos_to_cut_s": {"p50": percentile(&cut, 50.0), "p99": percentile(&cut, 99.0)},
        "daemon_latency_ms": {"p50": percentile(&lat, 50.0), "p99": percentile(&lat, 99.0)},
        "seconds": live.seconds,
        "worker_cpu_pct_per_stream": 100.0 * live.worker_cpu / live.seconds / streams as f64,
        "worker_cpu_pct": 100.0 * live.worker_cpu / live.seconds,
        "daemon_cpu_pct": 100.0 * live.daemon_cpu / live.seconds,
        "worker_peak_rss_mib": live.worker_peak_mib,
        "worker_summary": summary,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "goal": {"wer_demo_pct": 10.0, "wf1_gap": 5.0, "eos_p50_s": 1.0, "eos_p99_s": 2.5,
            "daemon_p50_ms": 15.0},
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    let path: PathBuf = repo().join("target/bench/asr.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    println!("wrote target/bench/asr.json");
}
