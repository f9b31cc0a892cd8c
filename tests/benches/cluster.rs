//! Cluster mode, measured on loopback: three NATS servers (JetStream, every bucket and stream
//! at 3 replicas) and three summerd nodes with the default model on this one machine.
//!
//! - **Handover**: 9 live audio-only calls; `kill -9` of a node holding streams, and the time
//!   until every one of its streams is claimed by another node (its lease created there and
//!   its pipeline started); the node is started again and the load evens out before the next
//!   kill. `SUMMERD_BENCH_KILLS` kills (default 20).
//! - **Events per second**: the events writer to JetStream (R3, `Nats-Msg-Id` on each, up to
//!   256 unacknowledged) against a ZeroMQ PUB socket with one subscriber, the same 20,000
//!   emotion events of a real size, on the same box.
//! - **Latency**: 8 live calls a node (24), one segment every 2 s a call published into
//!   JetStream; segment publish to event receipt (a core NATS subscription on the events
//!   subjects), p50 and p99, and the daemon's own `latency_ms` (segment arrival at the node to
//!   the end of its forward pass). Goal: p50 <= 20 ms, p99 <= 60 ms on 2 cores.
//!
//! Figures are printed and written to target/bench/cluster.json (`make bench-cluster`).

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats::{
    Asr, Nats, THREE, attach_rtp_calls, held_by, load, owners, three_nodes, unix_now,
};
use common::{free_port, percentile, repo};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Wait until every desired stream is held and no node holds more than `most`.
fn balanced(admin: &std::path::Path, total: usize, most: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let n = load(&owners(admin));
        if n.values().sum::<usize>() == total && n.values().all(|c| *c <= most) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn handover(kills: usize) -> Value {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let mut nodes = three_nodes(&urls, &THREE);
    let admin = nodes[0].config();
    let (_, senders) = attach_rtp_calls(&admin, "h", 9);
    assert!(
        balanced(&admin, 9, 3, Duration::from_secs(30)),
        "never balanced"
    );
    let mut times = Vec::new();
    for k in 0..kills {
        let victim = 1 + k % 2; // b and c in turn; a stays up to answer `cluster list`
        let its = held_by(&admin, &nodes[victim].name);
        if its.is_empty() {
            continue;
        }
        let killed = Instant::now();
        nodes[victim].kill9();
        let name = nodes[victim].name.clone();
        loop {
            let o = owners(&admin);
            if its
                .iter()
                .all(|s| o.get(s).cloned().flatten().is_some_and(|x| x != name))
            {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no handover");
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = killed.elapsed().as_secs_f64();
        println!(
            "kill {}: {} streams of {name} moved in {t:.2} s",
            k + 1,
            its.len()
        );
        times.push(t);
        nodes[victim].start();
        assert!(
            balanced(&admin, 9, 4, Duration::from_secs(30)),
            "never balanced again"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(senders);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    json!({
        "kills": times.len(),
        "lease_s": 3.0, "heartbeat_s": 1.0,
        "median_s": percentile(&sorted, 50.0),
        "max_s": sorted.last().copied().unwrap_or(f64::NAN),
        "times_s": times,
    })
}

/// A real emotion event's message, numbered.
fn event(i: usize) -> Vec<Vec<u8>> {
    let body = json!({"v": 1, "type": "emotion", "stream": format!("call-{}", i % 64), "utterance": i,
        "seq": i, "speaker": "customer", "start": 12.34, "end": 15.1, "label": "anger",
        "confidence": 0.61,
        "probs": {"anger": 0.61, "disgust": 0.02, "fear": 0.03, "joy": 0.04, "neutral": 0.2,
                  "sadness": 0.05, "surprise": 0.05},
        "modalities": {"text": true, "audio": true, "visual": false},
        "model": "summer-default@0cfc44fd4d2a", "latency_ms": 11.8,
        "emitted_at": "2026-12-06T12:00:00.000000Z"});
    vec![
        format!("emotion.call-{}", i % 64).into_bytes(),
        serde_json::to_vec(&body).unwrap(),
    ]
}

fn throughput(n: usize) -> Value {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bytes = event(0)[1].len();
    // JetStream R3 through summerd's events writer.
    let js_rate = rt.block_on(async {
        let mut cfg = summerd::cluster::ClusterConfig {
            urls: urls.clone(),
            ..Default::default()
        };
        cfg.node = "bench".into();
        let client = cfg.connect().await.unwrap();
        let layout = summerd::cluster::Layout {
            replicas: 3,
            ..summerd::cluster::Layout::of(&cfg)
        };
        let js = summerd::cluster::Js::open_patiently(client, layout, Duration::from_secs(30))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let metrics = Arc::new(summerd::metrics::Metrics::new(
            &summerd::version::VersionInfo::libraries(),
            summerd::metrics::LabelSets {
                reject_reasons: &[],
                utterance_outcomes: &[],
                signal_kinds: &[],
            },
        ));
        let acks = Arc::new(summerd::cluster::pump::Acks::new(false));
        let t0 = Instant::now();
        let writer = tokio::spawn(summerd::cluster::pump::publish_events(
            js.js.clone(),
            rx,
            acks,
            "bench".into(),
            metrics,
            tokio_util::sync::CancellationToken::new(),
        ));
        for i in 0..n {
            tx.send(event(i)).await.unwrap();
        }
        drop(tx);
        writer.await.unwrap();
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        let mut s = js.js.get_stream("SUMMERD_EVENTS").await.unwrap();
        let stored = s.info().await.unwrap().state.messages;
        assert_eq!(stored as usize, n, "every event stored once");
        rate
    });
    // ZeroMQ PUB to one SUB, on the same box.
    let ctx = zmq::Context::new();
    let port = free_port();
    let publ = ctx.socket(zmq::PUB).unwrap();
    publ.set_sndhwm(100_000).unwrap();
    publ.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(100_000).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let receiver = std::thread::spawn(move || {
        let mut got = 0;
        sub.set_rcvtimeo(5000).unwrap();
        while got < n {
            if sub.recv_multipart(0).is_err() {
                break;
            }
            got += 1;
        }
        got
    });
    let t0 = Instant::now();
    for i in 0..n {
        publ.send_multipart(event(i), 0).unwrap();
    }
    let got = receiver.join().unwrap();
    let zmq_rate = got as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(got, n, "ZeroMQ lost events to its one subscriber");
    json!({"events": n, "event_bytes": bytes, "jetstream_r3_per_s": js_rate, "zeromq_per_s": zmq_rate})
}

/// Events received: (stream, seq) -> (unix time of receipt, the event's `latency_ms`, its
/// size in bytes).
type Received = BTreeMap<(String, u64), (f64, f64, usize)>;

fn latency(per_node: usize, rounds: usize) -> Value {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let nodes = three_nodes(&urls, &THREE);
    let admin = nodes[0].config();
    let total = per_node * 3;
    let (ids, senders) = attach_rtp_calls(&admin, "l", total);
    assert!(
        balanced(&admin, total, per_node, Duration::from_secs(60)),
        "never balanced"
    );
    std::thread::sleep(Duration::from_secs(3));
    let asr = Asr::connect(&urls);
    // Receipt times of events, by (stream, seq), from a core subscription.
    let got: Arc<std::sync::Mutex<Received>> = Default::default();
    {
        let got = got.clone();
        let client = asr.client();
        asr.rt.spawn(async move {
            let mut sub = client.subscribe("summerd.events.>").await.unwrap();
            while let Some(m) = sub.next().await {
                let now = unix_now();
                if let Ok(e) = serde_json::from_slice::<Value>(&m.payload)
                    && e["type"] == "emotion"
                {
                    got.lock().unwrap().insert(
                        (
                            e["stream"].as_str().unwrap().to_string(),
                            e["seq"].as_u64().unwrap(),
                        ),
                        (
                            now,
                            e["latency_ms"].as_f64().unwrap_or(f64::NAN),
                            m.payload.len(),
                        ),
                    );
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut sent: BTreeMap<(String, u64), f64> = BTreeMap::new();
    for r in 0..rounds {
        let t0 = Instant::now();
        for (k, id) in ids.iter().enumerate() {
            // Spread over the 2 s: one call at a time, as calls talk independently.
            let due = Duration::from_secs_f64(2.0 * k as f64 / ids.len() as f64);
            std::thread::sleep(due.saturating_sub(t0.elapsed()));
            let at = unix_now();
            asr.publish_segment(id, r as u64, at - 2.0, at - 0.8);
            sent.insert((id.clone(), r as u64), at);
        }
        std::thread::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed()));
    }
    std::thread::sleep(Duration::from_secs(5));
    drop(senders);
    let got = got.lock().unwrap().clone();
    let mut through: Vec<f64> = Vec::new();
    let mut own: Vec<f64> = Vec::new();
    let mut event_bytes = 0usize;
    for (k, at) in &sent {
        if let Some((recv, l, b)) = got.get(k) {
            through.push((recv - at) * 1000.0);
            own.push(*l);
            event_bytes += b;
        }
    }
    let event_bytes = event_bytes as f64 / through.len().max(1) as f64;
    // What one utterance costs besides its event: the segment, and the conversation
    // checkpoint the owner writes after it.
    let segment_bytes = json!({"v": 1, "stream": &ids[0], "seq": 1_700_000_000_000u64 * 64,
        "clock": "unix", "start": 1.7e9, "end": 1.7e9, "speaker": "customer",
        "text": common::nats::TEXTS[0], "final": true, "lang": "en"})
    .to_string()
    .len();
    let checkpoint_bytes = asr.rt.block_on(async {
        let js = async_nats::jetstream::new(asr.client());
        let kv = js.get_key_value("summerd_state").await.ok()?;
        kv.get(ids[0].as_str())
            .await
            .ok()
            .flatten()
            .map(|v| v.len())
    });
    through.sort_by(f64::total_cmp);
    own.sort_by(f64::total_cmp);
    json!({
        "streams": total, "per_node": per_node, "segments": sent.len(), "events": through.len(),
        "segment_to_event_ms": {"p50": percentile(&through, 50.0), "p99": percentile(&through, 99.0),
                                 "max": through.last().copied().unwrap_or(f64::NAN)},
        "daemon_latency_ms": {"p50": percentile(&own, 50.0), "p99": percentile(&own, 99.0)},
        "bytes": {"event": event_bytes, "segment": segment_bytes, "checkpoint": checkpoint_bytes},
        "goal": {"p50_ms": 20.0, "p99_ms": 60.0},
    })
}

fn main() {
    let kills: usize = std::env::var("SUMMERD_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let t = throughput(20_000);
    println!(
        "events/s: JetStream R3 {:.0}, ZeroMQ {:.0} ({} B events)",
        t["jetstream_r3_per_s"].as_f64().unwrap(),
        t["zeromq_per_s"].as_f64().unwrap(),
        t["event_bytes"]
    );
    let l = latency(8, 15);
    println!(
        "latency, {} streams: segment -> event p50 {:.1} ms, p99 {:.1} ms ({} of {} events); daemon p50 {:.1} ms, p99 {:.1} ms",
        l["streams"],
        l["segment_to_event_ms"]["p50"].as_f64().unwrap(),
        l["segment_to_event_ms"]["p99"].as_f64().unwrap(),
        l["events"],
        l["segments"],
        l["daemon_latency_ms"]["p50"].as_f64().unwrap(),
        l["daemon_latency_ms"]["p99"].as_f64().unwrap(),
    );
    let h = handover(kills);
    println!(
        "handover over {} kills: median {:.2} s, max {:.2} s",
        h["kills"],
        h["median_s"].as_f64().unwrap(),
        h["max_s"].as_f64().unwrap()
    );
    let out = json!({
        "date": summerd::events::now_rfc3339(),
        "cores": cores,
        "nats_server": nats_version(),
        "replicas": 3,
        "handover": h,
        "throughput": t,
        "latency": l,
    });
    std::fs::create_dir_all(repo().join("target/bench")).unwrap();
    std::fs::write(
        repo().join("target/bench/cluster.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    println!("wrote target/bench/cluster.json");
}

fn nats_version() -> String {
    std::process::Command::new(common::nats::nats_server())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
