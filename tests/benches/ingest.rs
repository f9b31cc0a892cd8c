//! Ingest cost: CPU seconds per stream-second for summerd's ingest of a 720p25 H.264 + AAC
//! file, against a bare `gst-launch-1.0 uridecodebin ... ! fakesink` decode of the same file,
//! in the same run, both as fast as the machine allows, in alternating rounds (the median
//! ratio is the headline: one round is about a second of CPU, and the shared machine's noise
//! moves single rounds by 30 %). Prints the figures and writes target/bench/ingest.json.
//!
//! Run: `make bench-ingest`.

#[path = "../common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, eventually, process_cpu};
use serde_json::json;

const SECONDS: u32 = 30;
/// Rounds of (bare decode, summerd ingest).
const ROUNDS: usize = 5;

/// A 30 s 1280x720 25 fps H.264 + AAC (48 kHz stereo) mp4 of moving test patterns, made once.
fn fixture(dir: &Path) -> PathBuf {
    let p = dir.join("720p25-h264-i420-aac.mp4");
    if p.exists() {
        return p;
    }
    let frames = SECONDS * 25;
    let audio_buffers = SECONDS * 48_000 / 1024 + 1;
    let tmp = dir.join("fixture.tmp.mp4");
    let pipeline = format!(
        "videotestsrc num-buffers={frames} pattern=ball motion=sweep background-color=0xff305070 \
         ! video/x-raw,format=I420,width=1280,height=720,framerate=25/1 ! x264enc speed-preset=veryfast bitrate=3000 key-int-max=50 \
         ! h264parse ! queue ! mp4mux name=m ! filesink location={} \
         audiotestsrc num-buffers={audio_buffers} samplesperbuffer=1024 wave=pink-noise \
         ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse ! queue ! m.",
        tmp.display()
    );
    let ok = Command::new("gst-launch-1.0")
        .args(["-q", "-e"])
        .args(pipeline.split_whitespace())
        .status()
        .expect("gst-launch-1.0")
        .success();
    assert!(ok, "could not make the fixture");
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// CPU seconds (user + system) of the finished children so far.
fn children_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = fixture(&out);
    let uri = format!("file://{}", file.display());

    // summerd: one daemon; each round attaches the file (as fast as possible) as a new stream
    // and measures the daemon's CPU from attach to the end of the stream.
    let pipelines = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let d = Daemon::start_custom(
        |_, _| format!("[pipelines]\ndir = \"{}\"\n", pipelines.display()),
        &[],
        false,
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = d.child.id();

    // Rounds alternate the bare decode and summerd's ingest, so that the machine's slow
    // spells fall on both; the headline is the median of the rounds' ratios.
    let secs = f64::from(SECONDS);
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        // Bare decode, the same elements summerd's file template starts from.
        let before = children_cpu();
        let t0 = Instant::now();
        let ok = Command::new("gst-launch-1.0")
            .args(["-q", "uridecodebin", &format!("uri={uri}"), "name=d"])
            .args(["d.", "!", "queue", "!", "fakesink", "sync=false"])
            .args(["d.", "!", "queue", "!", "fakesink", "sync=false"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let bare_wall = t0.elapsed().as_secs_f64();
        let bare_cpu = children_cpu() - before;

        let id = format!("bench-{round}");
        let cpu0 = process_cpu(pid);
        let t0 = Instant::now();
        let r = d.control(json!({"cmd": "attach", "id": id, "uri": uri, "template": "file", "options": {"sync": "false"}}));
        assert_eq!(r["ok"], true, "{r}");
        let ended = eventually(Duration::from_secs(300), || {
            (d.stream_state(&id).as_deref() == Some("ended")).then_some(())
        });
        assert!(ended.is_some(), "stream did not end\n{}", d.log());
        let ours_wall = t0.elapsed().as_secs_f64();
        let ours_cpu = process_cpu(pid) - cpu0;
        let m = d.scrape();
        let audio = common::metric(
            &m,
            &format!("summerd_ingest_audio_seconds_total{{stream=\"{id}\"}}"),
        )
        .unwrap_or(0.0);
        let frames = common::metric(
            &m,
            &format!("summerd_ingest_video_frames_total{{stream=\"{id}\"}}"),
        )
        .unwrap_or(0.0);
        let r = d.control(json!({"cmd": "detach", "id": id}));
        assert_eq!(r["ok"], true, "{r}");
        println!(
            "round {round}: bare decode {bare_cpu:.2} CPU s ({bare_wall:.2} s), summerd {ours_cpu:.2} CPU s ({ours_wall:.2} s, audio {audio:.2} s, {frames} frames handed on): ratio {:.3}",
            ours_cpu / bare_cpu
        );
        rounds.push(json!({
            "bare_decode": {"cpu_s": bare_cpu, "wall_s": bare_wall, "cpu_per_stream_s": bare_cpu / secs},
            "summerd_ingest": {"cpu_s": ours_cpu, "wall_s": ours_wall, "cpu_per_stream_s": ours_cpu / secs,
                                "audio_s": audio, "video_frames": frames},
            "ratio": ours_cpu / bare_cpu,
        }));
    }
    let median = |key: &dyn Fn(&serde_json::Value) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(key).collect();
        v.sort_by(f64::total_cmp);
        common::percentile(&v, 50.0)
    };
    let ratio = median(&|r| r["ratio"].as_f64().unwrap());
    let bare_cpu = median(&|r| r["bare_decode"]["cpu_s"].as_f64().unwrap());
    let ours_cpu = median(&|r| r["summerd_ingest"]["cpu_s"].as_f64().unwrap());
    let (lo, hi) = rounds
        .iter()
        .map(|r| r["ratio"].as_f64().unwrap())
        .fold((f64::INFINITY, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    println!(
        "ingest of a {SECONDS} s 1280x720 25 fps H.264 (4:2:0) + AAC file, as fast as possible, {ROUNDS} rounds, medians"
    );
    println!("{:<28} {:>12} {:>16}", "", "CPU s", "CPU s / stream s");
    println!(
        "{:<28} {:>12.2} {:>16.4}",
        "bare gst-launch decode",
        bare_cpu,
        bare_cpu / secs
    );
    println!(
        "{:<28} {:>12.2} {:>16.4}",
        "summerd ingest",
        ours_cpu,
        ours_cpu / secs
    );
    println!(
        "ratio summerd / bare decode: {ratio:.3} (median of {ROUNDS} rounds; range {lo:.3}-{hi:.3})"
    );
    let report = json!({
        "fixture": {"seconds": SECONDS, "video": "1280x720 25 fps H.264 High, 4:2:0", "audio": "AAC 48 kHz stereo", "content": "GStreamer test patterns"},
        "daemon": "no model configured: GStreamer pipeline, supervisor, timeline, 16 kHz resampling; no vision, acoustic descriptors or inference (the capacity benchmark measures those)",
        "rounds": rounds,
        "bare_decode_cpu_s_median": bare_cpu,
        "summerd_ingest_cpu_s_median": ours_cpu,
        "ratio": ratio,
        "ratio_range": [lo, hi],
    });
    std::fs::write(
        out.join("ingest.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.join("ingest.json").display());
}
