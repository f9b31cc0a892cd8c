//! Capacity and soak (issue #10): how many live calls one machine carries in real time.
//!
//! `video` (`make bench-capacity`): N RTSP streams of the demo call scaled to 1280x720 25 fps
//! H.264 + AAC (made once from demo/make_call.py's call), served per client from its start in
//! real time by gst-rtsp-server on loopback (tests/peers/rtsp_file_server.py); the daemon with
//! the default model and the vision stage at its defaults; an ASR stand-in in this process
//! PUSHes each line's segments `ASR_DELAY` after they end on the stream's media clock (lines
//! over 4 s are two segments: 11 segments in the 38.9 s call, one per 3.5 s per stream). Calls start spread over
//! `min(0.5 N, 10)` seconds, not in lockstep. For each N: the daemon's CPU
//! and peak RSS, real time held (audio, frames, events), latency percentiles, and a bare
//! GStreamer decode of the same N streams (`uridecodebin ! fakesink` per stream) over the same
//! window for the CPU ratio.
//! `audio`: the same with N audio-only RTP streams (G.711 mu-law, as SIP trunks send it), all
//! fed by one gst-launch sender from the call's audio.
//! `soak`: 4 video streams for `--minutes` (default 30); each RTSP session replays the call and
//! ends, the stream reconnects and the call starts again, seqs keep counting; RSS and the
//! inference queue sampled every 10 s. Verdict: RSS growth after warm-up <= 5 %, every
//! segment exactly one event, no growing queue.
//!
//! Usage: `cargo bench --bench capacity -- video [N,N,...]`, `-- audio [N,...]`,
//! `-- soak [--minutes M]`. Figures printed and written to target/bench/capacity-{mode}.json.

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, free_port, metric, percentile, proc_mib, process_cpu};
use serde_json::{Value, json};

/// Seconds after a segment's end (media clock) that the ASR stand-in sends it;
/// SUMMERD_ASR_DELAY overrides.
const ASR_DELAY: f64 = 0.6;

fn asr_delay() -> f64 {
    std::env::var("SUMMERD_ASR_DELAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ASR_DELAY)
}
/// Measurement window per level, seconds (the call is 38.9 s).
const WINDOW: f64 = 30.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo call (made once) and its 720p version.
fn call() -> (Value, PathBuf, PathBuf) {
    let dir = repo().join("target/bench/e2e-call");
    let call = common::demo_call();
    let media = PathBuf::from(call["media"].as_str().unwrap());
    let hd = dir.join("call-720p-i420.mp4");
    if !hd.is_file() {
        let tmp = dir.join("call-720p-i420.tmp.mp4");
        let p = format!(
            "filesrc location={} ! qtdemux name=d d.video_0 ! queue ! decodebin ! videoconvert \
             ! videoscale add-borders=true ! video/x-raw,format=I420,width=1280,height=720,pixel-aspect-ratio=1/1 \
             ! x264enc speed-preset=veryfast bitrate=2500 key-int-max=50 ! h264parse ! queue \
             ! mp4mux name=m ! filesink location={} d.audio_0 ! queue ! aacparse ! m.",
            media.display(),
            tmp.display()
        );
        let ok = Command::new("gst-launch-1.0")
            .args(["-q", "-e"])
            .args(p.split_whitespace())
            .status()
            .unwrap()
            .success();
        assert!(ok, "could not make the 720p call");
        std::fs::rename(&tmp, &hd).unwrap();
    }
    (call, media.with_file_name("call.wav"), hd)
}

/// (start, end, text) segments of the call: lines over 4 s are split in two at the middle.
fn segments(call: &Value) -> Vec<(f64, f64, String, String)> {
    let mut out = Vec::new();
    for l in call["lines"].as_array().unwrap() {
        let (s, e) = (l["start"].as_f64().unwrap(), l["end"].as_f64().unwrap());
        let text = l["text"].as_str().unwrap();
        let speaker = l["speaker"].as_str().unwrap().to_string();
        if e - s > 4.0 {
            let words: Vec<&str> = text.split_whitespace().collect();
            let (a, b) = words.split_at(words.len() / 2);
            let m = (s + e) / 2.0;
            out.push((s, m, a.join(" "), speaker.clone()));
            out.push((m, e, b.join(" "), speaker));
        } else {
            out.push((s, e, text.to_string(), speaker));
        }
    }
    out
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rtsp_server(port: u16, file: &Path) -> Peer {
    let mut child = Command::new("/usr/bin/python3")
        .arg(common::peer("rtsp_file_server.py"))
        .arg(port.to_string())
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with gi (tests/setup.sh installs it)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "RTSP server did not start");
    Peer(child)
}

/// Calls do not start in lockstep: stream i of N starts `i * stagger(N) / N` seconds in.
fn stagger(n: usize) -> f64 {
    (0.5 * n as f64).min(10.0)
}

/// One gst-launch process sending the call's audio as G.711 RTP to every port, in real time,
/// each port's copy delayed by its share of the stagger (a queue that holds that much first).
fn rtp_sender(wav: &Path, ports: &[u16]) -> Peer {
    let mut p = format!(
        "filesrc location={} ! wavparse ! audioconvert ! audioresample \
         ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay ! identity sync=true ! tee name=t",
        wav.display()
    );
    let n = ports.len();
    for (i, port) in ports.iter().enumerate() {
        let delay_ns = (i as f64 * stagger(n) / n as f64 * 1e9) as u64;
        p += &format!(
            " t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 min-threshold-time={delay_ns} \
             ! udpsink host=127.0.0.1 port={port} sync=false async=false"
        );
    }
    Peer(
        Command::new("gst-launch-1.0")
            .arg("-q")
            .args(p.split_whitespace())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn daemon(vision: bool) -> Daemon {
    let r = repo();
    let vision = if vision {
        format!(
            "[vision]\nmtcnn_dir = \"{}\"\nexpression_file = \"{}\"\n",
            r.join(summerd::vision::MTCNN_DIR).display(),
            r.join(summerd::vision::EXPRESSION_FILE).display()
        )
    } else {
        "[vision]\nenabled = false\n".into()
    };
    Daemon::start_custom(
        |_, p| {
            format!(
                "[model]\npath = \"{}\"\ndevice = \"cpu\"\n[text_encoder]\ndir = \"{}\"\n\
                 [pipelines]\ndir = \"{}\"\n[events]\nendpoint = \"tcp://127.0.0.1:{}\"\n\
                 sndhwm = 100000\n{vision}{}",
                r.join("models/summer-default").display(),
                r.join("models/third_party/all-minilm-l6-v2").display(),
                r.join("pipelines").display(),
                p.1,
                common::bench_config(),
            )
        },
        &[],
        false,
    )
}

/// The ASR stand-in and event collector for a run.
struct Traffic {
    _ctx: zmq::Context,
    sub: zmq::Socket,
    push: zmq::Socket,
    segs: Vec<(f64, f64, String, String)>,
    pending: Vec<(Instant, String, u64, String)>,
    /// Per stream: the seqs actually sent.
    sent_seqs: HashMap<String, Vec<u64>>,
    /// Per stream: the next seq, and seq -> events received.
    next_seq: HashMap<String, u64>,
    got: BTreeMap<String, BTreeMap<u64, usize>>,
    sent: usize,
    latencies: Vec<f64>,
    /// The slowest event: latency, stream, seq and span end.
    slowest: Value,
    ups: usize,
}

impl Traffic {
    fn new(d: &Daemon, call: &Value) -> Traffic {
        let ctx = zmq::Context::new();
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_subscribe(b"").unwrap();
        sub.set_rcvtimeo(2).unwrap();
        sub.set_rcvhwm(0).unwrap();
        sub.connect(&d.events).unwrap();
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.connect(&d.transcripts).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Traffic {
            _ctx: ctx,
            sub,
            push,
            segs: segments(call),
            pending: Vec::new(),
            sent_seqs: HashMap::new(),
            next_seq: HashMap::new(),
            got: BTreeMap::new(),
            sent: 0,
            latencies: Vec::new(),
            slowest: Value::Null,
            ups: 0,
        }
    }

    /// Send what is due, take in what arrived (for up to a few ms).
    fn pump(&mut self) {
        let now = Instant::now();
        self.pending.sort_by_key(|p| p.0);
        while self.pending.first().is_some_and(|p| p.0 <= now) {
            let (_, id, seq, msg) = self.pending.remove(0);
            self.push.send(msg.as_bytes(), 0).unwrap();
            self.sent_seqs.entry(id).or_default().push(seq);
            self.sent += 1;
        }
        let Ok(parts) = self.sub.recv_multipart(0) else {
            return;
        };
        let body: Value = serde_json::from_slice(&parts[1]).unwrap();
        let topic = String::from_utf8_lossy(&parts[0]).to_string();
        if topic.starts_with("lifecycle.") && body["type"] == "stream.up" {
            // The stream's media clock reads `media_time` now: its call starts here.
            self.ups += 1;
            let id = body["stream"].as_str().unwrap().to_string();
            let base = body["media_time"].as_f64().unwrap_or(0.0);
            let up = Instant::now();
            for (s, e, text, speaker) in &self.segs {
                let next = self.next_seq.entry(id.clone()).or_insert(1);
                let seq = *next;
                *next += 1;
                let msg = json!({"v": 1, "stream": id, "seq": seq, "start": base + s,
                    "end": base + e, "speaker": speaker, "text": text, "final": true});
                self.pending.push((
                    up + Duration::from_secs_f64(e + asr_delay()),
                    id.clone(),
                    seq,
                    msg.to_string(),
                ));
            }
        } else if topic.starts_with("emotion.") {
            let ms = body["latency_ms"].as_f64().unwrap();
            if ms > self.slowest["latency_ms"].as_f64().unwrap_or(0.0) {
                self.slowest = json!({"latency_ms": ms, "stream": body["stream"],
                    "seq": body["seq"], "end": body["end"]});
            }
            self.latencies.push(ms);
            *self
                .got
                .entry(body["stream"].as_str().unwrap().to_string())
                .or_default()
                .entry(body["seq"].as_u64().unwrap())
                .or_default() += 1;
        }
    }

    fn received(&self) -> usize {
        self.got.values().map(|m| m.values().sum::<usize>()).sum()
    }

    /// Segments sent that got no event, and events beyond one per segment.
    fn lost_and_extra(&self) -> (usize, usize) {
        let mut lost = 0;
        let mut extra = 0;
        for (id, seqs) in &self.sent_seqs {
            let m = self.got.get(id);
            for seq in seqs {
                match m.and_then(|m| m.get(seq)).copied().unwrap_or(0) {
                    0 => lost += 1,
                    n => extra += n - 1,
                }
            }
        }
        // Events for seqs never sent.
        for (id, m) in &self.got {
            let sent = self.sent_seqs.get(id);
            extra += m
                .iter()
                .filter(|(seq, _)| !sent.is_some_and(|s| s.contains(seq)))
                .map(|(_, n)| n)
                .sum::<usize>();
        }
        (lost, extra)
    }
}

fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One level: N streams for one call. Returns its figures.
fn level(mode: &str, n: usize, call: &Value, wav: &Path, hd: &Path) -> Value {
    let video = mode == "video";
    let d = daemon(video);
    let pid = d.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let rss_base = proc_mib(pid, "VmRSS");
    let mut traffic = Traffic::new(&d, call);
    let ids: Vec<String> = (0..n).map(|i| format!("{mode}-{i}")).collect();
    let _source: Peer;
    if video {
        let port = free_port();
        _source = rtsp_server(port, hd);
        let t0 = Instant::now();
        for (i, id) in ids.iter().enumerate() {
            let at = t0 + Duration::from_secs_f64(i as f64 * stagger(n) / n as f64);
            while Instant::now() < at {
                traffic.pump();
            }
            let r = d.control(json!({"cmd": "attach", "id": id,
                "uri": format!("rtsp://127.0.0.1:{port}/call"), "template": "rtsp"}));
            assert_eq!(r["ok"], true, "{r}");
        }
    } else {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        for (id, port) in ids.iter().zip(&ports) {
            let r = d.control(json!({"cmd": "attach", "id": id,
                "uri": format!("udp://127.0.0.1:{port}"), "template": "rtp-pcmu"}));
            assert_eq!(r["ok"], true, "{r}");
        }
        _source = rtp_sender(wav, &ports);
    }
    // Up, then 2 s to settle; then the window.
    let t_attach = Instant::now();
    while traffic.ups < n && t_attach.elapsed() < Duration::from_secs(40) {
        traffic.pump();
    }
    let up_s = t_attach.elapsed().as_secs_f64();
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        traffic.pump();
    }
    let m0 = d.scrape();
    let cpu0 = process_cpu(pid);
    let w0 = Instant::now();
    // The window ends before the first call does (a stream whose call ended is not live).
    let call_left = call["seconds"].as_f64().unwrap() - t_attach.elapsed().as_secs_f64() - 1.0;
    let window_end = w0 + Duration::from_secs_f64(WINDOW.min(call_left));
    while Instant::now() < window_end {
        traffic.pump();
    }
    let wall = w0.elapsed().as_secs_f64();
    let cpu = process_cpu(pid) - cpu0;
    let m1 = d.scrape();
    // The rest of the call's segments.
    let tail_end = Instant::now() + Duration::from_secs(25);
    while Instant::now() < tail_end
        && !(traffic.pending.is_empty() && traffic.received() >= traffic.sent)
    {
        traffic.pump();
    }
    let rss_peak = proc_mib(pid, "VmHWM");
    let delta = |name: &str, id: &str| {
        let key = format!("{name}{{stream=\"{id}\"}}");
        metric(&m1, &key).unwrap_or(0.0) - metric(&m0, &key).unwrap_or(0.0)
    };
    let audio_ratio: Vec<f64> = ids
        .iter()
        .map(|id| delta("summerd_ingest_audio_seconds_total", id) / wall)
        .collect();
    let min_audio = audio_ratio.iter().copied().fold(f64::INFINITY, f64::min);
    let dropped = sum_metric(&m1, "summerd_ingest_dropped_total")
        - sum_metric(&m0, "summerd_ingest_dropped_total");
    let frames: f64 = ids
        .iter()
        .map(|id| delta("summerd_ingest_video_frames_total", id))
        .sum();
    let vision = metric(&m1, "summerd_vision_frame_seconds_count").unwrap_or(0.0)
        - metric(&m0, "summerd_vision_frame_seconds_count").unwrap_or(0.0);
    // Segments that went on without their descriptors after `inference.feature_wait`.
    let outcome = |o: &str| format!("summerd_utterances_total{{outcome=\"{o}\"}}");
    let expired = metric(&m1, &outcome("feature_wait_expired")).unwrap_or(0.0)
        - metric(&m0, &outcome("feature_wait_expired")).unwrap_or(0.0);
    let (lost, extra) = traffic.lost_and_extra();
    let mut lat = traffic.latencies.clone();
    let slowest = traffic.slowest.clone();
    lat.sort_by(f64::total_cmp);
    let p99 = percentile(&lat, 99.0);
    let held = min_audio >= 0.97
        && lost == 0
        && extra == 0
        && p99 <= 100.0
        && (!video || (frames > 0.0 && vision >= 0.9 * frames));

    let sent = traffic.sent;
    // Bare decode of the same N streams over a window of the same length.
    let bare = if video {
        drop(traffic);
        drop(d);
        let port = free_port();
        let _server = rtsp_server(port, hd);
        let uri = format!("rtsp://127.0.0.1:{port}/call");
        let procs: Vec<Peer> = (0..n)
            .map(|_| {
                Peer(
                    Command::new("gst-launch-1.0")
                        .args(["-q", "uridecodebin", &format!("uri={uri}"), "name=d"])
                        .args(["d.", "!", "queue", "!", "fakesink", "sync=false"])
                        .args(["d.", "!", "queue", "!", "fakesink", "sync=false"])
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(up_s.min(10.0) + 2.0));
        let c0: f64 = procs.iter().map(|p| process_cpu(p.0.id())).sum();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(WINDOW));
        let c1: f64 = procs.iter().map(|p| process_cpu(p.0.id())).sum();
        Some((c1 - c0) / t0.elapsed().as_secs_f64())
    } else {
        None
    };
    let cores = cpu / wall;
    let f = json!({
        "streams": n, "held": held, "stagger_s": stagger(n),
        "daemon_cpu_cores": cores, "cpu_per_stream": cores / n as f64,
        "bare_decode_cpu_cores": bare, "cpu_ratio_vs_bare": bare.map(|b| cores / b),
        "rss_base_mib": rss_base, "rss_peak_mib": rss_peak,
        "rss_peak_per_stream_mib": rss_peak / n as f64,
        "rss_added_per_stream_mib": (rss_peak - rss_base) / n as f64,
        "min_audio_realtime": min_audio, "dropped_chunks_or_frames": dropped,
        "video_frames_handed": frames, "video_frames_processed": vision,
        "segments": sent, "feature_wait_expired": expired, "slowest": slowest,
        "latency_ms": {"p50": percentile(&lat, 50.0), "p90": percentile(&lat, 90.0),
                       "p99": p99, "max": lat.last().copied().unwrap_or(f64::NAN)},
        "lost": lost, "extra": extra, "events": lat.len(), "up_s": up_s, "window_s": wall,
    });
    println!("capacity {mode} {n}: {f}");
    f
}

/// The soak: 4 video streams for `minutes`; RSS and the queue every 10 s.
fn soak(minutes: f64, call: &Value, hd: &Path) -> Value {
    let n = 4;
    let d = daemon(true);
    let pid = d.child.id();
    let mut traffic = Traffic::new(&d, call);
    let port = free_port();
    let _server = rtsp_server(port, hd);
    for i in 0..n {
        let r = d.control(json!({"cmd": "attach", "id": format!("soak-{i}"),
            "uri": format!("rtsp://127.0.0.1:{port}/call"), "template": "rtsp"}));
        assert_eq!(r["ok"], true, "{r}");
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    let mut next_sample = t0;
    while Instant::now() < end {
        traffic.pump();
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(10);
            let m = d.scrape();
            let s = json!({"t_s": t0.elapsed().as_secs_f64(), "rss_mib": proc_mib(pid, "VmRSS"),
                "queue": metric(&m, "summerd_inference_queue").unwrap_or(f64::NAN),
                "events": traffic.received(), "sent": traffic.sent});
            println!("soak: {s}");
            samples.push(s);
        }
    }
    // Stop sending new calls' segments; let the last ones come in.
    let tail = Instant::now() + Duration::from_secs(10);
    traffic.pending.retain(|p| p.0 <= tail);
    while Instant::now() < tail + Duration::from_secs(5) {
        traffic.pump();
    }
    let (lost, extra) = traffic.lost_and_extra();
    let m = d.scrape();
    let restarts = sum_metric(&m, "summerd_stream_restarts_total");
    // Warm-up: the first 2 minutes (or the first fifth of a shorter run).
    let warm = (120.0f64).min(minutes * 60.0 / 5.0);
    let after: Vec<&Value> = samples
        .iter()
        .filter(|s| s["t_s"].as_f64().unwrap() >= warm)
        .collect();
    let rss_warm = after
        .first()
        .map_or(f64::NAN, |s| s["rss_mib"].as_f64().unwrap());
    let rss_end = after
        .last()
        .map_or(f64::NAN, |s| s["rss_mib"].as_f64().unwrap());
    let rss_max = after
        .iter()
        .map(|s| s["rss_mib"].as_f64().unwrap())
        .fold(f64::NAN, f64::max);
    let queue_max = samples
        .iter()
        .map(|s| s["queue"].as_f64().unwrap())
        .fold(f64::NAN, f64::max);
    let growth = (rss_end - rss_warm) / rss_warm * 100.0;
    let mut lat = traffic.latencies.clone();
    lat.sort_by(f64::total_cmp);
    let pass = growth <= 5.0 && lost == 0 && extra == 0 && queue_max < 64.0;
    json!({
        "streams": n, "minutes": minutes, "pass": pass,
        "rss_after_warmup_mib": rss_warm, "rss_end_mib": rss_end, "rss_max_mib": rss_max,
        "rss_growth_pct": growth, "queue_max": queue_max,
        "segments": traffic.sent, "events": traffic.received(), "lost": lost, "extra": extra,
        "stream_restarts": restarts,
        "latency_ms": {"p50": percentile(&lat, 50.0), "p99": percentile(&lat, 99.0),
                       "max": lat.last().copied().unwrap_or(f64::NAN)},
        "samples": samples,
    })
}

fn main() {
    // cargo bench passes --bench; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().map_or("video", String::as_str).to_string();
    let (call, wav, hd) = call();
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let date = String::from_utf8(
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let segs = segments(&call);
    let rate = call["seconds"].as_f64().unwrap() / segs.len() as f64;
    let mut out = json!({
        "mode": mode, "date": date, "cores": cores, "device": "cpu",
        "command": format!("cargo bench --bench capacity -- {}", args.join(" ")),
        "call_s": call["seconds"], "seconds_per_segment": rate, "asr_delay_s": asr_delay(),
    });
    match mode.as_str() {
        "video" | "audio" => {
            let default = if mode == "video" {
                "4,8,10"
            } else {
                "50,100,150"
            };
            let levels: Vec<usize> = args
                .get(1)
                .map_or(default, String::as_str)
                .split(',')
                .map(|v| v.parse().expect("levels: N,N,..."))
                .collect();
            let results: Vec<Value> = levels
                .iter()
                .map(|&n| level(&mode, n, &call, &wav, &hd))
                .collect();
            let best = results
                .iter()
                .filter(|r| r["held"] == true)
                .map(|r| r["streams"].as_u64().unwrap())
                .max();
            println!(
                "capacity {mode}: largest N held at real time with p99 <= 100 ms: {best:?} (of {levels:?})"
            );
            out["levels"] = json!(results);
            out["largest_held"] = json!(best);
            out["goal"] = if mode == "video" {
                json!({"streams": 8, "cpu_ratio_vs_bare": 1.5, "rss_per_stream_mib": 40, "p99_ms": 100})
            } else {
                json!({"streams": 100, "p99_ms": 100})
            };
        }
        "soak" => {
            let minutes = args
                .iter()
                .position(|a| a == "--minutes")
                .and_then(|i| args.get(i + 1))
                .map_or(30.0, |v| v.parse().expect("--minutes M"));
            let r = soak(minutes, &call, &hd);
            println!(
                "soak: {}",
                json!({"pass": r["pass"], "rss_growth_pct": r["rss_growth_pct"], "lost": r["lost"], "extra": r["extra"], "queue_max": r["queue_max"], "segments": r["segments"], "restarts": r["stream_restarts"]})
            );
            out["soak"] = r;
            out["goal"] = json!({"rss_growth_pct": 5.0, "lost": 0});
        }
        other => panic!("mode {other}: video, audio or soak"),
    }
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("capacity-{mode}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    println!("wrote {}", path.display());
}
