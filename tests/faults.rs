//! Faults with a verdict, against the daemon with the shipped model (issue #10): the ASR
//! worker restarts, a stream floods malformed segments, subscribers are slow or absent, the
//! model worker fails (panics, or keeps failing), and SIGTERM arrives under load. The RTSP
//! server dying and returning is `tests/ingest.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Daemon, eventually, metric};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The model sections of a config (no vision: these streams are audio only; the text
/// encoder reads at most 32 tokens, which the short lines fit and the long ones are cut to).
fn model(extra: &str) -> String {
    let r = repo();
    format!(
        "[model]\npath = \"{}\"\ndevice = \"cpu\"\n[text_encoder]\ndir = \"{}\"\nmax_tokens = 32\n\
         [vision]\nenabled = false\n{extra}",
        r.join("models/summer-default").display(),
        r.join("models/third_party/all-minilm-l6-v2").display(),
    )
}

/// A daemon with the model and the two idle default streams (`call-42`, `call-7`).
fn daemon(extra: &str, env: &[(&str, &str)]) -> Daemon {
    let cfg = model(extra);
    Daemon::start_with(|_, _| cfg, env)
}

const LINES: [&str; 6] = [
    "I have been waiting for an hour and nobody called me back",
    "Thank you so much, that is exactly what I needed",
    "Could you tell me the reference number again please",
    "This is the third time I am explaining the same thing",
    "Oh wonderful, it works now",
    "I am not sure what happened to my order",
];

/// A valid segment on the idle streams' first two seconds.
fn segment(stream: &str, seq: u64) -> String {
    let start = (seq % 10) as f64 * 0.1;
    json!({"v": 1, "stream": stream, "seq": seq, "start": start, "end": start + 0.8,
           "speaker": "customer", "text": LINES[seq as usize % LINES.len()], "final": true})
    .to_string()
}

/// A valid segment with a long transcript (4,500 characters): large events.
fn long_segment(stream: &str, seq: u64) -> String {
    let mut v: Value = serde_json::from_str(&segment(stream, seq)).unwrap();
    let text = LINES.join(". ").repeat(20);
    v["text"] = json!(text[..4500].to_string());
    v.to_string()
}

/// Malformed segments of as many kinds as there are.
fn malformed(stream: &str, k: u64) -> String {
    match k % 6 {
        0 => "{not json".to_string(),
        1 => json!({"v": 1, "stream": stream, "seq": "seven", "start": 0.0, "end": 1.0,
                    "speaker": "a", "text": "x", "final": true})
        .to_string(),
        2 => json!({"v": 1, "stream": stream, "seq": k, "start": 2.0, "end": 1.0,
                    "speaker": "a", "text": "x", "final": true})
        .to_string(),
        3 => json!({"v": 9, "stream": stream, "seq": k, "start": 0.0, "end": 1.0,
                    "speaker": "a", "text": "x", "final": true})
        .to_string(),
        4 => json!({"v": 1, "stream": stream, "seq": k, "start": 0.0, "end": 1.0,
                    "speaker": "a", "text": 42, "final": true})
        .to_string(),
        _ => "\u{0}\u{1}binary".to_string(),
    }
}

/// A SUB socket on `prefixes`, connected and given time to join.
fn subscribe(d: &Daemon, prefixes: &[&str]) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::SUB).unwrap();
    for p in prefixes {
        s.set_subscribe(p.as_bytes()).unwrap();
    }
    s.set_rcvtimeo(100).unwrap();
    s.connect(&d.events).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (ctx, s)
}

/// (topic, body) pairs until `done` or `limit`.
fn collect(
    sub: &zmq::Socket,
    limit: Duration,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while Instant::now() < deadline && !done(&got) {
        if let Ok(parts) = sub.recv_multipart(0) {
            let topic = String::from_utf8_lossy(&parts[0]).to_string();
            got.push((topic, serde_json::from_slice(&parts[1]).unwrap()));
        }
    }
    got
}

/// Emotion events per stream: seq -> how many times.
fn seqs(events: &[(String, Value)]) -> BTreeMap<String, BTreeMap<u64, usize>> {
    let mut m: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    for (topic, e) in events {
        if topic.starts_with("emotion.") {
            *m.entry(e["stream"].as_str().unwrap().to_string())
                .or_default()
                .entry(e["seq"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    m
}

fn exactly_once(range: std::ops::RangeInclusive<u64>) -> BTreeMap<u64, usize> {
    range.map(|s| (s, 1)).collect()
}

fn outcome(d: &Daemon, o: &str) -> f64 {
    metric(
        &d.scrape(),
        &format!("summerd_utterances_total{{outcome=\"{o}\"}}"),
    )
    .unwrap_or(0.0)
}

/// The ASR worker process dies and a new one takes over; between them a stream floods
/// malformed segments. Every valid segment gets exactly one event, every bad one is
/// rejected and counted, and the daemon never stops serving.
#[test]
fn asr_worker_restart_and_a_malformed_flood_lose_no_valid_segment() {
    let d = daemon("", &[]);
    let (_ctx, sub) = subscribe(&d, &["emotion."]);
    std::thread::sleep(Duration::from_secs(1)); // the idle streams' audio covers the spans

    // The first worker sends 20 segments and exits.
    common::push_segments(
        &d.transcripts,
        &(1..=20).map(|s| segment("call-42", s)).collect::<Vec<_>>(),
    );
    // The restarted worker: 100 malformed lines for call-7 around each valid segment.
    let mut flood = Vec::new();
    let mut bad = 0;
    for s in 21..=40 {
        for k in 0..100 {
            flood.push(malformed("call-7", s * 100 + k));
            bad += 1;
        }
        flood.push(segment("call-42", s));
        flood.push(segment("call-7", s));
    }
    common::push_segments(&d.transcripts, &flood);

    let events = collect(&sub, Duration::from_secs(60), |g| g.len() >= 60);
    let events = [events, collect(&sub, Duration::from_secs(1), |_| false)].concat();
    let got = seqs(&events);
    assert_eq!(got["call-42"], exactly_once(1..=40), "{}", d.log());
    assert_eq!(got["call-7"], exactly_once(21..=40), "{}", d.log());
    let m = d.scrape();
    let rejected: f64 = summerd::transcripts::Reject::REASONS
        .iter()
        .filter_map(|r| {
            metric(
                &m,
                &format!("summerd_transcripts_rejected_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(rejected, bad as f64, "every malformed segment is counted");
    assert_eq!(outcome(&d, "published"), 60.0);
}

/// No subscriber, then one that never reads beside one that does: the daemon publishes
/// every event at its own pace; the reader gets them all; the stuck one only loses its own
/// (libzmq drops for it at the high-water mark).
#[test]
fn slow_and_absent_subscribers_never_hold_the_daemon_back() {
    let d = Daemon::start_with(
        |_, p| {
            model(&format!(
                "[events]\nendpoint = \"tcp://127.0.0.1:{}\"\nsndhwm = 64\npublish_text = true\n",
                p.1
            ))
        },
        &[],
    );
    std::thread::sleep(Duration::from_secs(1));
    // Nobody listens.
    common::push_segments(
        &d.transcripts,
        &(1..=30).map(|s| segment("call-42", s)).collect::<Vec<_>>(),
    );
    let absent = eventually(Duration::from_secs(30), || {
        (outcome(&d, "published") >= 30.0).then_some(())
    });
    assert!(absent.is_some(), "events without a subscriber\n{}", d.log());

    // A subscriber that never reads, with the smallest buffers it can ask for.
    let ctx = zmq::Context::new();
    let stuck = ctx.socket(zmq::SUB).unwrap();
    stuck.set_rcvhwm(1).unwrap();
    stuck.set_rcvbuf(4096).unwrap();
    stuck.set_subscribe(b"emotion.").unwrap();
    stuck.connect(&d.events).unwrap();
    let (_c, reader) = subscribe(&d, &["emotion."]);
    // Events of about 5 kB: 1,200 of them are more than the kernel's socket buffers (4 MB at
    // most here) and libzmq's high-water mark hold for the stuck subscriber.
    let n = 1200;
    let lines: Vec<String> = (31..31 + n).map(|s| long_segment("call-7", s)).collect();
    let t0 = Instant::now();
    common::push_segments(&d.transcripts, &lines);
    let events = collect(&reader, Duration::from_secs(180), |g| g.len() >= n as usize);
    let took = t0.elapsed();
    assert_eq!(
        seqs(&events)["call-7"],
        exactly_once(31..=30 + n),
        "{}",
        d.log()
    );
    // Only now does the stuck subscriber read: it got what fitted its buffers.
    stuck.set_rcvtimeo(200).unwrap();
    let mut stuck_got = 0;
    while stuck.recv_multipart(0).is_ok() {
        stuck_got += 1;
    }
    eprintln!(
        "{n} events in {took:?} to the reader; the stuck subscriber held {stuck_got} of them"
    );
    assert!(
        stuck_got < n as usize,
        "the stuck subscriber should have lost events"
    );
    assert_eq!(outcome(&d, "published"), 30.0 + n as f64);
}

/// Policy: a model worker that panics, or whose forward passes fail
/// `inference.max_failed_batches` times in a row, stops the daemon: it drains, publishes
/// `daemon.stopping` with the reason and exits 1, for systemd (`Restart=on-failure`) to
/// restart it. A single failed pass is counted and survived.
/// Needs the fault injection of the `failpoints` feature (`make test` enables it).
#[cfg(feature = "failpoints")]
#[test]
fn a_failing_model_worker_stops_the_daemon_for_systemd_to_restart() {
    // Failures in a row: the first is survived, the second is fatal.
    let d = daemon(
        "[inference]\nmax_failed_batches = 2\n",
        &[("SUMMERD_FAILPOINT", "model-worker-error")],
    );
    let (_ctx, sub) = subscribe(&d, &["lifecycle.daemon"]);
    common::push_segments(&d.transcripts, &[segment("call-42", 1)]);
    let first = eventually(Duration::from_secs(10), || {
        (outcome(&d, "error") >= 1.0).then_some(())
    });
    assert!(first.is_some(), "{}", d.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&d.scrape(), "summerd_ready"),
        Some(1.0),
        "one failure is survived"
    );
    common::push_segments(&d.transcripts, &[segment("call-42", 2)]);
    let stopping = collect(&sub, Duration::from_secs(10), |g| !g.is_empty());
    let (code, log) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("2 forward passes failed in a row"),
        "the reason is logged: {log}"
    );
    assert_eq!(stopping.len(), 1, "{log}");
    assert_eq!(stopping[0].1["type"], "daemon.stopping");
    assert!(
        stopping[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("failed in a row"),
        "{:?}",
        stopping[0]
    );

    // A panic: fatal at once.
    let d = daemon("", &[("SUMMERD_FAILPOINT", "model-worker-panic")]);
    common::push_segments(&d.transcripts, &[segment("call-42", 1)]);
    let (code, log) = d.wait(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("the model worker panicked"), "{log}");
    assert!(log.contains("stopped after a fatal fault"), "{log}");
}

/// SIGTERM right after a burst from two streams: every segment the daemon had received gets
/// its event before it exits 0, within the drain limit.
#[test]
fn sigterm_under_load_publishes_every_segment_received() {
    let d = daemon("", &[]);
    let (_ctx, sub) = subscribe(&d, &["emotion.", "lifecycle.daemon"]);
    std::thread::sleep(Duration::from_secs(1));
    let n = 150;
    let lines: Vec<String> = (1..=n)
        .flat_map(|s| [segment("call-42", s), segment("call-7", s)])
        .collect();
    common::push_segments(&d.transcripts, &lines);
    let received = eventually(Duration::from_secs(10), || {
        (metric(&d.scrape(), "summerd_transcripts_accepted_total")? >= 2.0 * n as f64).then_some(())
    });
    assert!(received.is_some(), "{}", d.log());
    let published_before = outcome(&d, "published");
    let t0 = Instant::now();
    d.signal("TERM");
    let events = collect(&sub, Duration::from_secs(15), |g| {
        g.iter().any(|(t, _)| t == "lifecycle.daemon")
    });
    let (code, log) = d.wait(Duration::from_secs(10));
    eprintln!(
        "SIGTERM with {} of {} events still to publish: drained and exited in {:?}",
        2.0 * n as f64 - published_before,
        2 * n,
        t0.elapsed()
    );
    assert_eq!(code, Some(0), "{log}");
    let got = seqs(&events);
    assert_eq!(got["call-42"], exactly_once(1..=n), "{log}");
    assert_eq!(got["call-7"], exactly_once(1..=n), "{log}");
    assert_eq!(
        events.last().map(|(_, e)| e["type"].clone()),
        Some(json!("daemon.stopping")),
        "daemon.stopping comes last"
    );
}
