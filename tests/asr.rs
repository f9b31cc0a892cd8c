//! The reference ASR worker (asr/reference_worker.py) on its own: its parts' unit tests
//! (asr/test_parts.py), its models checked at start, and a burst of audio from 8 streams is worked off in bounded memory, every segment
//! delivered in order. (The worker against a live daemon is in tests/e2e.rs.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, peer, python, repo, short_call};
use serde_json::Value;

fn worker() -> Command {
    let mut c = Command::new(python());
    c.arg(repo().join("asr/reference_worker.py"));
    c
}

/// The worker's exit status and what it said, given these arguments (it must exit by itself).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let tap = format!("tcp://127.0.0.1:{}", free_port());
    let mut child = worker()
        .args(["--tap", &tap, "--transcripts", &tap])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn whisper_dir() -> std::path::PathBuf {
    repo().join("models/third_party/whisper-tiny-en")
}

/// A copy of the Whisper model directory (links) with model.bin replaced or left out.
fn broken_whisper(dir: &Path, model_bin: Option<&[u8]>) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json", "vocabulary.txt"] {
        std::os::unix::fs::symlink(whisper_dir().join(f), dir.join(f)).unwrap();
    }
    if let Some(bytes) = model_bin {
        std::fs::write(dir.join("model.bin"), bytes).unwrap();
    }
}

#[test]
fn the_workers_parts_pass_their_unit_tests() {
    let out = Command::new(python())
        .args(["-m", "unittest", "discover", "-s"])
        .arg(repo().join("asr"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("OK"), "{said}");
}

#[test]
fn a_missing_or_corrupt_model_is_a_clear_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let no_bin = tmp.path().join("no-bin");
    broken_whisper(&no_bin, None);
    let (code, said) = refused(&["--whisper", no_bin.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("missing model.bin"), "{said}");
    assert!(!said.contains("listening"), "{said}");

    // A model.bin cut short (the first 64 kB of the real one).
    let real = std::fs::read(whisper_dir().join("model.bin")).unwrap();
    let cut = tmp.path().join("cut");
    broken_whisper(&cut, Some(&real[..65_536]));
    let (code, said) = refused(&["--whisper", cut.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("cannot be loaded"), "{said}");
    assert!(
        said.contains(cut.to_str().unwrap()),
        "names the model: {said}"
    );

    let onnx = tmp.path().join("embedder.onnx");
    std::fs::write(&onnx, b"not an onnx model").unwrap();
    let (code, said) = refused(&["--embedder", onnx.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("not a readable ONNX model"), "{said}");

    let gone = tmp.path().join("gone.onnx");
    let (code, said) = refused(&["--embedder", gone.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("is missing"), "{said}");
}

/// Publish `seconds` of the call's speech on 8 streams `prefix-1..8` as fast as possible.
fn burst(tap: &str, wav: &Path, prefix: &str, seconds: f64) -> std::process::Child {
    Command::new(python())
        .arg(peer("tap_burst.py"))
        .args([
            tap,
            wav.to_str().unwrap(),
            "--streams",
            "8",
            "--prefix",
            prefix,
        ])
        .arg("--seconds")
        .arg(seconds.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Segments received per stream, while `until` says more are due (and `limit` allows),
/// sampling the worker's RSS; with the peak RSS seen.
fn receive(
    pull: &zmq::Socket,
    pid: u32,
    segments: &mut BTreeMap<String, Vec<Value>>,
    limit: Duration,
    until: impl Fn(&BTreeMap<String, Vec<Value>>) -> bool,
) -> f64 {
    let deadline = Instant::now() + limit;
    let mut peak: f64 = 0.0;
    let mut quiet = Instant::now();
    while Instant::now() < deadline && (until(segments) || quiet.elapsed() < Duration::from_secs(2))
    {
        peak = peak.max(common::proc_mib(pid, "VmRSS"));
        if let Ok(m) = pull.recv_bytes(0) {
            let v: Value = serde_json::from_slice(&m).unwrap();
            segments
                .entry(v["stream"].as_str().unwrap().to_string())
                .or_default()
                .push(v);
            quiet = Instant::now();
        }
    }
    peak
}

#[test]
fn a_burst_from_8_streams_is_worked_off_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let call = short_call(dir.path());
    let wav = dir.path().join("call.wav");
    let lines_per_call = call["lines"].as_array().unwrap().len();
    let call_s = call["seconds"].as_f64().unwrap();
    let (tap, transcripts) = (
        format!("tcp://127.0.0.1:{}", free_port()),
        format!("tcp://127.0.0.1:{}", free_port()),
    );
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL).unwrap();
    pull.set_rcvtimeo(200).unwrap();
    pull.bind(&transcripts).unwrap();
    let log = dir.path().join("worker.log");
    let mut w = common::start_worker(&tap, &transcripts, &["--max-pending", "4"], &log);
    let due = |prefix: &'static str, seconds: f64| {
        let n = (seconds / call_s).floor() as usize * lines_per_call;
        move |s: &BTreeMap<String, Vec<Value>>| {
            (1..=8).any(|k| s.get(&format!("{prefix}-{k}")).map_or(0, Vec::len) < n)
        }
    };
    // A first, short burst: every model allocates what it needs.
    let mut segments = BTreeMap::new();
    let mut warm = burst(&tap, &wav, "warm", 2.0 * call_s);
    let base = receive(
        &pull,
        w.id(),
        &mut segments,
        Duration::from_secs(120),
        due("warm", 2.0 * call_s),
    );
    let _ = warm.wait();
    // Then 8 x 60 s in a few seconds: far more than the recogniser keeps up with.
    let seconds = 60.0;
    let mut big = burst(&tap, &wav, "burst", seconds);
    let peak = receive(
        &pull,
        w.id(),
        &mut segments,
        Duration::from_secs(300),
        due("burst", seconds),
    );
    let _ = big.wait();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let status = w.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {said}");
    let burst: Vec<(&String, &Vec<Value>)> = segments
        .iter()
        .filter(|(id, _)| id.starts_with("burst-"))
        .collect();
    assert_eq!(burst.len(), 8, "every stream: {said}");
    let expected = (seconds / call_s).floor() as usize * lines_per_call;
    for (id, segs) in &burst {
        let seqs: Vec<u64> = segs.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=segs.len() as u64).collect::<Vec<_>>(),
            "{id}: in order"
        );
        let starts: Vec<f64> = segs.iter().map(|s| s["start"].as_f64().unwrap()).collect();
        assert!(
            starts.windows(2).all(|w| w[0] <= w[1]),
            "{id}: in time order: {starts:?}"
        );
        assert!(segs.len() >= expected, "{id}: {} < {expected}", segs.len());
        for s in segs.iter() {
            let (a, b) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
            assert!(0.0 <= a && a < b && b <= seconds + 0.1, "{s}");
        }
    }
    let with_text = burst
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|s| !s["text"].as_str().unwrap().is_empty())
        .count();
    // The queue was full and said so, and the recogniser still transcribed what it took.
    let overflowed: usize = said
        .split(" sent without text (queue full)")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(overflowed > 0, "{said}");
    assert!(with_text >= 8, "{with_text} segments with text: {said}");
    eprintln!(
        "burst: {} segments, {with_text} with text, {overflowed} without; RSS after warm-up \
         {base:.0} MiB, peak {peak:.0} MiB",
        burst.iter().map(|(_, s)| s.len()).sum::<usize>()
    );
    assert!(
        peak - base < 120.0,
        "RSS grew {base:.0} -> {peak:.0} MiB over a burst of 8 x {seconds} s"
    );
}
