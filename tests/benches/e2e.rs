//! Segment arrival -> emotion event publication, with 8 live streams at once, on the CPU.
//!
//! The daemon (release binary, default model, `model.device = "cpu"`) ingests 8 copies of the
//! demo's sample call (demo/make_call.py: 39 s, 7 spoken lines, H.264 + AAC) in real time,
//! started 0.5 s apart; two rounds (each stream is detached and attached again). An ASR
//! stand-in in this process PUSHes each line's final segment `ASR_DELAY` after the line ends
//! on that stream's media clock (a real ASR needs at least its end-of-speech silence), and a
//! SUB socket collects the events. `latency_ms` is what the daemon measured from the
//! segment's arrival to the event's publication. Figures are printed and written to
//! target/bench/e2e.json. Run with `make bench-e2e`. SUMMERD_BENCH_THREADS,
//! SUMMERD_BENCH_TEXT_PRECISION and SUMMERD_BENCH_CONFIG (extra TOML tables for the daemon)
//! vary the settings, SUMMERD_BENCH_STREAMS the number of streams (8), SUMMERD_BENCH_MODEL
//! the model directory (default models/summer-default; another model's figures go to
//! `e2e-model.json` (`e2e-page-model.json` with readers), with the count of events that read
//! a face).
//!
//! With SUMMERD_BENCH_PAGE=N, N readers hold the live page's event feed open
//! (`GET /events`, server-sent events, as a browser's EventSource does) for the whole run, and
//! each must receive every emotion event; the figures go to target/bench/e2e-page.json
//! (`make bench-e2e-page`); with other than 8 streams the file names end in `-N`.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Daemon, metric, percentile, process_cpu};
use serde_json::{Value, json};

const ROUNDS: usize = 2;
const ASR_DELAY: f64 = 0.6;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reader of the live page's event feed: the emotion events it received, when stopped.
fn feed_reader(addr: String, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the page's feed");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let (mut buf, mut carry, mut emotions) = (vec![0u8; 65536], String::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    carry.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // Whole SSE messages only; the rest waits for the next read.
                    if let Some(end) = carry.rfind("\n\n") {
                        emotions += carry[..end].matches("event: emotion\n").count();
                        carry.drain(..end + 2);
                    }
                }
                Err(_) => continue,
            }
        }
        emotions
    })
}

fn main() {
    let streams: usize = std::env::var("SUMMERD_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let readers: usize = std::env::var("SUMMERD_BENCH_PAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let call = common::demo_call();
    let lines = call["lines"].as_array().unwrap().clone();
    let media = call["media"].as_str().unwrap().to_string();
    let r = repo();
    // The model worker's libtorch threads (`inference.threads`); SUMMERD_BENCH_THREADS sets it.
    let threads: usize = std::env::var("SUMMERD_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // `text_encoder.precision` (f32, bf16, auto); SUMMERD_BENCH_TEXT_PRECISION sets it.
    let precision = std::env::var("SUMMERD_BENCH_TEXT_PRECISION").unwrap_or_else(|_| "auto".into());
    let matmul = <summerd::text::Precision as clap::ValueEnum>::from_str(&precision, true)
        .expect("SUMMERD_BENCH_TEXT_PRECISION: f32, bf16 or auto")
        .kind(tch::Device::Cpu);
    // Another model (SUMMERD_BENCH_MODEL), e.g. one that reads faces.
    let model_env = std::env::var("SUMMERD_BENCH_MODEL").ok();
    let model = model_env
        .as_ref()
        .map_or_else(|| r.join("models/summer-default"), |p| r.join(p));
    let d = Daemon::start_custom(
        |_, p| {
            format!(
                "[model]\npath = \"{}\"\ndevice = \"cpu\"\n[text_encoder]\ndir = \"{}\"\nprecision = \"{precision}\"\n\
                 [pipelines]\ndir = \"{}\"\n[events]\nendpoint = \"tcp://127.0.0.1:{}\"\n\
                 sndhwm = 100000\n[inference]\nthreads = {threads}\n\
                 [vision]\nmtcnn_dir = \"{}\"\nexpression_file = \"{}\"\n{}",
                model.display(),
                r.join("models/third_party/all-minilm-l6-v2").display(),
                r.join("pipelines").display(),
                p.1,
                r.join(summerd::vision::MTCNN_DIR).display(),
                r.join(summerd::vision::EXPRESSION_FILE).display(),
                common::bench_config(),
            )
        },
        &[],
        false,
    );
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.set_rcvtimeo(2).unwrap();
    sub.connect(&d.events).unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&d.transcripts).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stop = Arc::new(AtomicBool::new(false));
    let feeds: Vec<JoinHandle<usize>> = (0..readers)
        .map(|_| feed_reader(d.metrics.clone(), stop.clone()))
        .collect();

    let cpu0 = process_cpu(d.child.id());
    let t_run = Instant::now();
    let mut latencies = Vec::new();
    let mut audio_present = 0;
    let mut visual_present = 0;
    let mut per_stream: HashMap<String, usize> = HashMap::new();
    for round in 0..ROUNDS {
        let ids: Vec<String> = (0..streams).map(|i| format!("live-{i}")).collect();
        let mut pending: Vec<(Instant, String)> = Vec::new();
        let mut next_attach = 0;
        let t0 = Instant::now();
        let want = streams * lines.len();
        let mut got = 0;
        let deadline = t0 + Duration::from_secs(call["seconds"].as_f64().unwrap() as u64 + 30);
        while got < want && Instant::now() < deadline {
            if next_attach < streams
                && t0.elapsed() >= Duration::from_millis(500 * next_attach as u64)
            {
                let reply = d.control(json!({"cmd": "attach", "id": ids[next_attach],
                    "uri": format!("file://{media}"), "template": "file"}));
                assert_eq!(reply["ok"], true, "{reply}");
                next_attach += 1;
            }
            let now = Instant::now();
            pending.sort_by_key(|(at, _)| *at);
            while pending.first().is_some_and(|(at, _)| *at <= now) {
                let (_, msg) = pending.remove(0);
                push.send(msg.as_bytes(), 0).unwrap();
            }
            let Ok(parts) = sub.recv_multipart(0) else {
                continue;
            };
            let body: Value = serde_json::from_slice(&parts[1]).unwrap();
            let topic = String::from_utf8_lossy(&parts[0]).to_string();
            if topic.starts_with("lifecycle.") && body["type"] == "stream.up" {
                // Media time 0 of this stream is now: schedule its lines.
                let id = body["stream"].as_str().unwrap().to_string();
                let up = Instant::now();
                for (k, l) in lines.iter().enumerate() {
                    let end = l["end"].as_f64().unwrap();
                    let msg = json!({"v": 1, "stream": id, "seq": round * 100 + k + 1,
                        "start": l["start"], "end": end, "speaker": l["speaker"],
                        "text": l["text"], "final": true});
                    pending.push((
                        up + Duration::from_secs_f64(end + ASR_DELAY),
                        msg.to_string(),
                    ));
                }
            } else if topic.starts_with("emotion.") {
                got += 1;
                latencies.push(body["latency_ms"].as_f64().unwrap());
                if body["modalities"]["audio"] == true {
                    audio_present += 1;
                }
                if body["modalities"]["visual"] == true {
                    visual_present += 1;
                }
                *per_stream
                    .entry(body["stream"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        assert_eq!(
            got,
            want,
            "round {round}: {got} of {want} events\n{}",
            d.log()
        );
        for id in &ids {
            let reply = d.control(json!({"cmd": "detach", "id": id}));
            assert_eq!(reply["ok"], true, "{reply}");
        }
    }
    let wall = t_run.elapsed().as_secs_f64();
    let cpu = process_cpu(d.child.id()) - cpu0;
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let fed: Vec<usize> = feeds.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, f) in fed.iter().enumerate() {
        assert_eq!(*f, latencies.len(), "feed reader {i} missed events");
    }
    let m = d.scrape();
    let expired = metric(
        &m,
        "summerd_utterances_total{outcome=\"feature_wait_expired\"}",
    )
    .unwrap_or(0.0);
    // The engine's own time per batch (Prometheus histogram sum / count).
    let mean_of = |name: &str| {
        metric(&m, &format!("{name}_sum")).unwrap_or(f64::NAN)
            / metric(&m, &format!("{name}_count")).unwrap_or(f64::NAN)
    };
    let engine_ms = mean_of("summerd_inference_seconds") * 1e3;
    let batch = mean_of("summerd_inference_batch_size");
    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    let (p50, p90, p99) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
    );
    let mean = latencies.iter().sum::<f64>() / n.max(1) as f64;
    let max = latencies.last().copied().unwrap_or(f64::NAN);
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    println!(
        "e2e: {streams} live streams x {ROUNDS} rounds, {n} events on {cores} cores (CPU, {threads} inference thread(s), text {matmul:?}): \
         latency p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, mean {mean:.1} ms; \
         audio present {audio_present}/{n}, face read {visual_present}/{n}; feature_wait expired {expired}; \
         engine {engine_ms:.1} ms a batch of {batch:.2} on average; \
         daemon CPU {:.2} cores over {wall:.0} s; {readers} page feed reader(s), each got {fed:?} emotion events",
        cpu / wall
    );
    let out = json!({
        "streams": streams, "rounds": ROUNDS, "inference_threads": threads, "text_matmul": format!("{matmul:?}"), "events": n, "cores": cores, "device": "cpu",
        "asr_delay_s": ASR_DELAY,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max, "mean": mean},
        "audio_present": audio_present, "visual_present": visual_present, "feature_wait_expired": expired,
        "model": model.display().to_string(),
        "engine_ms_per_batch": engine_ms, "mean_batch": batch,
        "daemon_cpu_cores": cpu / wall, "wall_s": wall,
        "per_stream_events": per_stream,
        "page_feed_readers": readers, "page_feed_events": fed,
        "goal": {"p50_ms": 15.0, "p99_ms": 50.0},
    });
    std::fs::create_dir_all(repo().join("target/bench")).unwrap();
    // e2e.json; -page with feed readers; -model with another model; -N with other than 8
    // streams.
    let mut name = String::from(if readers > 0 { "e2e-page" } else { "e2e" });
    if model_env.is_some() {
        name.push_str("-model");
    }
    if streams != 8 {
        name.push_str(&format!("-{streams}"));
    }
    std::fs::write(
        repo().join(format!("target/bench/{name}.json")),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    println!("wrote target/bench/{name}.json");
}
