//! The utterance path exists once: the daemon's drivers (the transcript consumer task and the
//! model worker thread, publishing on a real ZeroMQ socket) and `summerd replay`'s driver run
//! the same core. One recorded call (made by demo/make_call.py: espeak-ng voices over a real
//! face) with media-clock and unix-clock lines, a speaker policy, a duplicate, an out-of-order
//! line, a partial and a line for another stream gives the same events through both, and the
//! same count of every outcome. No GStreamer pipeline runs here: the stream's descriptors come
//! from the recording, as replay makes them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use summerd::infer::engine::Engine;
use summerd::infer::replay::{ReplayOptions, describe_audio, replay_lines};
use summerd::infer::{self, InferenceConfig, core::Outcome};
use summerd::streams::{Registry, Stream, StreamSpec};
use summerd::transcripts::{Limits, TranscriptsConfig, validate};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine() -> Engine {
    Engine::load(
        &repo().join("models/summer-default"),
        &repo().join(summerd::text::DEFAULT_DIR),
        summerd::text::DEFAULT_MAX_TOKENS,
        summerd::text::Precision::F32,
        tch::Device::Cpu,
    )
    .expect("the default model and text encoder (tests/setup.sh fetches the encoder)")
}

/// The wall clock both drivers see: the recording's start plus its length, as if its newest
/// media had just arrived.
static NOW: OnceLock<f64> = OnceLock::new();
const EPOCH: f64 = 1_765_000_000.0;

fn clock() -> f64 {
    *NOW.get().expect("set before the consumer starts")
}

/// The transcript lines: every line of the call, agents labelled `A` and customers `C`, the
/// customer's on the unix clock; then that line again (a duplicate), as a partial, and under
/// a lower seq (out of order), and a line for a stream that is not there.
fn lines(call: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let said = call["lines"].as_array().unwrap();
    for (k, l) in said.iter().enumerate() {
        let (start, end) = (l["start"].as_f64().unwrap(), l["end"].as_f64().unwrap());
        let label = if l["speaker"] == "agent" { "A" } else { "C" };
        let mut m = json!({"v": 1, "stream": "call", "seq": k + 1, "start": start, "end": end,
                           "speaker": label, "text": l["text"], "final": true});
        if k == 1 {
            m["clock"] = json!("unix");
            m["start"] = json!(EPOCH + start);
            m["end"] = json!(EPOCH + end);
        }
        out.push(m.to_string());
    }
    let customer: Value = serde_json::from_str(&out[1]).unwrap();
    out.push(customer.to_string());
    let mut partial = customer.clone();
    partial["seq"] = json!(9);
    partial["final"] = json!(false);
    out.push(partial.to_string());
    let mut late = customer.clone();
    late["seq"] = json!(0);
    out.push(late.to_string());
    let mut other: Value = serde_json::from_str(&out[0]).unwrap();
    other["stream"] = json!("elsewhere");
    out.push(other.to_string());
    out
}

fn registry(wav: &Path) -> Arc<Registry> {
    let (features, seconds) = describe_audio(wav, engine().audio_band()).unwrap();
    let spec = StreamSpec {
        id: "call".into(),
        uri: format!("file://{}", wav.display()),
        template: "file".into(),
        speakers: BTreeMap::from([
            ("A".into(), "agent".into()),
            ("C".into(), "customer".into()),
        ]),
        infer_speakers: vec!["customer".into()],
        publish_text: Some(true),
        options: BTreeMap::new(),
        channels: BTreeMap::new(),
    };
    let stream = Stream::with_features(
        spec,
        summerd::streams::Descriptors::Mixed(Arc::new(features)),
        None,
    );
    stream.timeline().place(Some(0.0), seconds, Instant::now());
    NOW.get_or_init(|| EPOCH + seconds);
    let r = Registry::new();
    r.insert(Arc::new(stream)).unwrap();
    Arc::new(r)
}

/// The daemon's way: the receiver's validation, the consumer task, the model worker and the
/// events publisher on a real PUB socket; events read off a SUB socket.
fn through_the_daemon(streams: Arc<Registry>, lines: &[String]) -> (Vec<Value>, String) {
    let labels = summerd::metrics::LabelSets {
        reject_reasons: &summerd::transcripts::Reject::REASONS,
        utterance_outcomes: Outcome::LABELS,
        signal_kinds: &summerd::events::Signal::NAMES,
    };
    let metrics = Arc::new(summerd::metrics::Metrics::new(
        &summerd::version::VersionInfo::libraries(),
        labels,
    ));
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.bind("inproc://events").unwrap();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.connect("inproc://events").unwrap();
    sub.set_subscribe(b"emotion.").unwrap();
    sub.set_rcvtimeo(100).unwrap();
    let hb = summerd::health::Heartbeat::new("events");
    let settings = summerd::bus::PublisherSettings {
        queue: 64,
        linger: Duration::from_secs(1),
        feed: None,
        mirror: None,
    };
    let (events, publishing) =
        summerd::bus::spawn_publisher("events", publisher, settings, metrics.clone(), hb).unwrap();
    let cfg = InferenceConfig::default();
    let (wtx, wrx) = std::sync::mpsc::sync_channel(cfg.queue);
    let worker = infer::spawn_worker(
        engine(),
        wrx,
        events.clone(),
        metrics.clone(),
        summerd::health::Heartbeat::new("model-worker"),
        infer::WorkerPolicy {
            max_batch: cfg.max_batch,
            max_wait: cfg.max_wait.0,
            max_failed_batches: cfg.max_failed_batches,
            fatal: Default::default(),
            checkpoints: None,
        },
        summerd::signals::Tracker::new(Default::default()),
    )
    .unwrap();
    let limits = Limits::from(&TranscriptsConfig::default());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut rejected = 0;
    for l in lines {
        match validate(l.as_bytes(), &limits, &|s| streams.media_end(s), clock()) {
            Ok(t) => tx.try_send(t).unwrap(),
            Err(_) => rejected += 1,
        }
    }
    drop(tx);
    let consumer = infer::ConsumerCtx {
        cfg,
        publish_text: false,
        streams: streams.clone(),
        metrics: metrics.clone(),
        clock,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(infer::consume(rx, wtx, consumer));
    worker.join().unwrap();
    drop(events);
    publishing.join().unwrap();
    let mut got = Vec::new();
    while let Ok(parts) = sub.recv_multipart(0) {
        got.push(serde_json::from_slice(&parts[1]).unwrap());
    }
    assert_eq!(rejected, 1, "the line for another stream");
    (got, metrics.render())
}

#[test]
fn one_call_gives_the_same_events_through_the_daemon_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let call = common::short_call(dir.path());
    let wav = dir.path().join("call.wav");
    let lines = lines(&call);
    let streams = registry(&wav);

    let opts = ReplayOptions {
        limits: Limits::from(&TranscriptsConfig::default()),
        max_batch: InferenceConfig::default().max_batch,
        provisional: false,
        publish_text: false,
        unix_epoch: Some(EPOCH),
    };
    let replayed =
        replay_lines(&mut engine(), &streams, &(lines.join("\n") + "\n"), &opts).expect("replay");
    let (live, metrics) = through_the_daemon(streams, &lines);

    // Customers only (infer_speakers): seq 2 (unix clock) and the late seq 0; the agent's
    // lines are excluded, the duplicate dropped, the partial ignored; the other stream's line
    // is refused.
    let seqs = |evs: Vec<Value>| {
        evs.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let replayed_json: Vec<Value> = replayed
        .events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(seqs(replayed_json.clone()), [2, 0]);
    assert_eq!(replayed.rejected.len(), 1, "{:?}", replayed.rejected);
    assert_eq!(live.len(), replayed_json.len(), "{live:#?}");
    for (r, l) in replayed_json.iter().zip(&live) {
        for k in [
            "stream",
            "seq",
            "speaker",
            "start",
            "end",
            "label",
            "text",
            "modalities",
            "provisional",
        ] {
            assert_eq!(r[k], l[k], "{k}: replay {r}\nlive {l}");
        }
        for (k, v) in r["probs"].as_object().unwrap() {
            let (a, b) = (v.as_f64().unwrap(), l["probs"][k].as_f64().unwrap());
            assert!((a - b).abs() < 1e-5, "{k}: replay {a} live {b}");
        }
    }
    // The unix-clock line landed where its media is.
    let said = call["lines"].as_array().unwrap();
    let e2 = &replayed_json[0];
    assert!((e2["start"].as_f64().unwrap() - said[1]["start"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(e2["modalities"]["audio"], true);
    // Every outcome counted alike.
    for (label, n) in &replayed.outcomes {
        let series = format!("summerd_utterances_total{{outcome=\"{label}\"}}");
        assert_eq!(
            common::metric(&metrics, &series),
            Some(*n as f64),
            "{label}\n{metrics}"
        );
    }
    assert_eq!(replayed.outcomes.get("excluded"), Some(&2));
    assert_eq!(replayed.outcomes.get("duplicate"), Some(&1));
    assert_eq!(replayed.outcomes.get("partial_ignored"), Some(&1));

    // Replay judges a unix-clock line stale against when it would have arrived live (its own
    // end), not against the end of the recording.
    let strict = ReplayOptions {
        limits: Limits {
            max_segment_age: Duration::from_secs(1),
            ..opts.limits.clone()
        },
        ..opts
    };
    let again = replay_lines(
        &mut engine(),
        &registry(&wav),
        &(lines.join("\n") + "\n"),
        &strict,
    )
    .expect("replay");
    assert_eq!(again.rejected.len(), 1, "{:?}", again.rejected);
    assert_eq!(again.events.len(), 2);
    assert_eq!(replayed.outcomes.get("published"), Some(&2));
}
