//! Helpers for tests that run the real `summerd` binary against real peers.
#![allow(dead_code)]

pub mod nats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port that was free a moment ago, never the same twice in one test process. It is
/// drawn from 20000-32767, below Linux's ephemeral range (32768-60999): a port the kernel
/// hands out as the local end of some outgoing connection (a peer's, another test's) in the
/// meantime can then never be the one a daemon is about to bind.
pub fn free_port() -> u16 {
    static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        // splitmix64 of (time, pid, counter): different in every process and call.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut z = nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ SEQ
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let port = 20_000 + ((z ^ (z >> 31)) % 12_768) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.push(port);
            return port;
        }
    }
}

/// The venv python that carries pyzmq (set up by tests/setup.sh).
pub fn python() -> PathBuf {
    let p = std::env::var_os("SUMMERD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            let cache = std::env::var_os("SUMMERD_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(&home).join(".cache/summerd"));
            cache.join("venv/bin/python")
        });
    assert!(
        p.exists(),
        "pyzmq's python not found at {} (run tests/setup.sh, or set SUMMERD_PYTHON)",
        p.display()
    );
    p
}

/// The 3-line call of demo/make_call.py --short (espeak-ng voices over a real face), made in
/// `dir`: its call.json.
pub fn short_call(dir: &Path) -> serde_json::Value {
    make_call(dir, &["--short"])
}

/// demo/make_call.py's short call with each speaker on a channel of their own (agent 0,
/// customer 1).
pub fn short_stereo_call(dir: &Path) -> serde_json::Value {
    make_call(dir, &["--short", "--stereo"])
}

fn make_call(dir: &Path, args: &[&str]) -> serde_json::Value {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new(python())
        .arg(repo.join("demo/make_call.py"))
        .arg(dir)
        .args(args)
        .status()
        .expect("run demo/make_call.py")
        .success();
    assert!(
        ok,
        "demo/make_call.py failed (espeak-ng and GStreamer are set up by tests/setup.sh)"
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join("call.json")).unwrap()).unwrap()
}

/// Config with the default model, its text encoder, the vision stage and the repository's
/// templates, text published; with `events_port`, the events endpoint too (a daemon's config;
/// replay needs none).
pub fn model_config(events_port: Option<u16>) -> String {
    let r = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let endpoint = events_port
        .map(|p| format!("endpoint = \"tcp://127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[model]\npath = \"{}\"\ndevice = \"cpu\"\n[text_encoder]\ndir = \"{}\"\n\
         [pipelines]\ndir = \"{}\"\n[events]\n{endpoint}publish_text = true\n\
         [vision]\nmtcnn_dir = \"{}\"\nexpression_file = \"{}\"\n",
        r.join("models/summer-default").display(),
        r.join("models/third_party/all-minilm-l6-v2").display(),
        r.join("pipelines").display(),
        r.join(summerd::vision::MTCNN_DIR).display(),
        r.join(summerd::vision::EXPRESSION_FILE).display()
    )
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary, run from the repository root (its default paths are relative to it).
pub fn summerd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_summerd"));
    c.current_dir(repo());
    c
}

/// `summerd replay MEDIA --transcript SEGMENTS -c CONFIG`, to add arguments to and run.
pub fn replay(media: &str, segments: &Path, config: &Path) -> Command {
    let mut c = summerd();
    c.args(["replay", media, "--transcript"])
        .arg(segments)
        .arg("-c")
        .arg(config);
    c
}

/// The transcript segments of a call made by demo/make_call.py (its call.json) for stream
/// `id`, as JSON lines.
pub fn call_segments(call: &serde_json::Value, id: &str) -> Vec<String> {
    call["lines"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(k, l)| {
            serde_json::json!({"v": 1, "stream": id, "seq": k + 1, "start": l["start"],
                "end": l["end"], "speaker": l["speaker"], "text": l["text"], "final": true})
            .to_string()
        })
        .collect()
}

/// A peer script under tests/peers.
pub fn peer(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A running daemon with its own config, ports and scratch directory.
pub struct Daemon {
    pub child: Child,
    /// The control endpoint.
    pub control: String,
    pub dir: tempfile::TempDir,
    pub transcripts: String,
    pub events: String,
    pub tap: String,
    /// The HTTP listener, reachable from here.
    pub metrics: String,
    /// The `[web]` bearer token, where the config sets one.
    pub token: Option<String>,
}

impl Daemon {
    /// Start `summerd run` on free loopback ports. `extra` is appended to the generated
    /// config; where it has its own `[transcripts]`, `[events]` or `[audio_tap]` section, the
    /// generated one is left out.
    pub fn start(extra: &str) -> Daemon {
        Self::start_with(|_, _| extra.to_string(), &[])
    }

    /// Like `start`, but the extra text is built knowing the scratch dir and the ports
    /// (transcripts, events, audio tap) that the daemon's endpoints must use.
    /// `env` is added to the daemon's environment.
    pub fn start_with(
        extra: impl FnOnce(&Path, (u16, u16, u16)) -> String,
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::start_custom(extra, env, true)
    }

    /// With `default_streams`, two silent live streams (`call-42`, `call-7`, from a scratch
    /// `idle.gst` template) are attached so that transcripts for them are accepted; without,
    /// none (and `extra` may set `[pipelines]` itself).
    pub fn start_custom(
        extra: impl FnOnce(&Path, (u16, u16, u16)) -> String,
        env: &[(&str, &str)],
        default_streams: bool,
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        std::fs::write(
            dir.path().join("pipelines/idle.gst"),
            "# schemes: test\naudiotestsrc is-live=true wave=silence samplesperbuffer=1600 \
             ! audio/x-raw,rate=16000 ! audioconvert \
             ! audio/x-raw,format=F32LE,channels=1,layout=interleaved \
             ! appsink name=audio sync=false async=false\n",
        )
        .unwrap();
        let (t, e, a, m) = (free_port(), free_port(), free_port(), free_port());
        let extra = extra(dir.path(), (t, e, a));
        let has = |section: &str| extra.contains(&format!("[{section}]"));
        let mut cfg = String::new();
        if !has("daemon") {
            cfg += "[daemon]\nlog_level = \"info\"\nshutdown_timeout = \"5s\"\n";
        }
        if !has("transcripts") {
            cfg += &format!("[transcripts]\nendpoint = \"tcp://127.0.0.1:{t}\"\n");
        }
        if !has("events") {
            cfg += &format!("[events]\nendpoint = \"tcp://127.0.0.1:{e}\"\n");
        }
        if !has("audio_tap") {
            cfg += &format!("[audio_tap]\nendpoint = \"tcp://127.0.0.1:{a}\"\n");
        }
        // With its own [metrics], the listener is where it says (reached over loopback).
        let metrics = match extra
            .split("[metrics]\nlisten = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            Some(listen) => listen.replace("0.0.0.0", "127.0.0.1"),
            None => {
                cfg += &format!("[metrics]\nlisten = \"127.0.0.1:{m}\"\n");
                format!("127.0.0.1:{m}")
            }
        };
        let token = extra
            .split("[web]\ntoken = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_string);
        if !has("pipelines") {
            cfg += "[pipelines]\ndir = \"pipelines\"\n";
        }
        if !has("control") {
            cfg += &format!(
                "[control]\nendpoint = \"tcp://127.0.0.1:{}\"\n",
                free_port()
            );
        }
        cfg += &extra;
        if default_streams {
            cfg += "[[streams]]\nid = \"call-42\"\nuri = \"test://idle\"\ntemplate = \"idle\"\n";
            cfg += "[[streams]]\nid = \"call-7\"\nuri = \"test://idle\"\ntemplate = \"idle\"\n";
        }
        let path = dir.path().join("summerd.toml");
        std::fs::write(&path, &cfg).unwrap();
        // stderr goes to a file: a pipe nobody reads would fill and block the daemon.
        let log = std::fs::File::create(dir.path().join("summerd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_summerd"))
            .args(["run", "-c"])
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start summerd");
        let control = cfg
            .split("[control]\nendpoint = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let mut d = Daemon {
            child,
            control,
            dir,
            transcripts: format!("tcp://127.0.0.1:{t}"),
            events: format!("tcp://127.0.0.1:{e}"),
            tap: format!("tcp://127.0.0.1:{a}"),
            metrics,
            token,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("summerd exited early with {status}:\n{}", self.log());
            }
            if let Ok((_, body)) = http_get_with(&self.metrics, "/metrics", self.token.as_deref())
                && metric(&body, "summerd_ready") == Some(1.0)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("summerd did not become ready within 30 s");
    }

    /// One control request (JSON) and its reply.
    pub fn control(&self, req: serde_json::Value) -> serde_json::Value {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::REQ).unwrap();
        s.set_linger(0).unwrap();
        s.set_rcvtimeo(30_000).unwrap();
        s.connect(&self.control).unwrap();
        s.send(req.to_string().as_bytes(), 0).unwrap();
        let reply = s.recv_bytes(0).expect("control reply");
        serde_json::from_slice(&reply).unwrap()
    }

    /// The state of a stream as `list` reports it.
    pub fn stream_state(&self, id: &str) -> Option<String> {
        let r = self.control(serde_json::json!({"cmd": "list"}));
        r["streams"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == id)
            .and_then(|s| s["state"].as_str().map(str::to_string))
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("summerd.log")).unwrap_or_default()
    }

    /// The current metrics text.
    pub fn scrape(&self) -> String {
        http_get_with(&self.metrics, "/metrics", self.token.as_deref())
            .expect("scrape metrics")
            .1
    }

    /// Send a signal (`TERM`, `INT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for exit; returns (exit code, log).
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("summerd did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over plain HTTP/1.1; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, None)
}

/// GET with a bearer token, if given.
pub fn http_get_with(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of a sample line `name{labels} value` (labels as written, or none).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A python peer running in the background, with its stdout readable line by line.
pub struct Peer {
    pub child: Child,
    pub out: BufReader<ChildStdout>,
}

impl Peer {
    pub fn spawn(script: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(python())
            .arg(peer(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python peer");
        let out = BufReader::new(child.stdout.take().unwrap());
        Peer { child, out }
    }

    pub fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.out.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end().to_string()),
        }
    }

    /// Every remaining line, after the peer exits.
    pub fn finish(mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(l) = self.line() {
            lines.push(l);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peer {status}");
        lines
    }
}

/// Run a python peer to completion (killed, and the test failed, after 120 s); returns its
/// stdout, asserting success.
pub fn run_peer(script: &str, args: &[&str]) -> String {
    use std::io::Read;
    let mut child = Command::new(python())
        .arg(peer(script))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python peer");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python peer") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!(
            "peer {script} did not finish in 120 s (killed): {}",
            String::from_utf8_lossy(&err)
        );
    };
    assert!(
        status.success(),
        "peer {script} failed: {}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8(out).unwrap()
}

/// Poll `f` until it returns Some or `limit` passes.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What sentence-transformers makes of `texts` (tests/peers/text_reference.py): token ids,
/// embeddings and, with `bench`, its timings.
pub struct TextReference {
    pub ids: Vec<Vec<i64>>,
    pub embeddings: Vec<Vec<f32>>,
    pub json: serde_json::Value,
}

pub fn text_reference(
    texts: &[String],
    max_tokens: usize,
    threads: i32,
    bench: bool,
) -> TextReference {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    let output = dir.path().join("out.json");
    std::fs::write(&input, serde_json::to_string(texts).unwrap()).unwrap();
    let mut args = vec![
        input.to_str().unwrap().to_string(),
        output.to_str().unwrap().to_string(),
        "--max-tokens".into(),
        max_tokens.to_string(),
        "--threads".into(),
        threads.to_string(),
    ];
    if bench {
        args.push("--bench".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_peer("text_reference.py", &refs);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let ids = serde_json::from_value(json["ids"].clone()).unwrap();
    let embeddings = serde_json::from_value(json["embeddings"].clone()).unwrap();
    TextReference {
        ids,
        embeddings,
        json,
    }
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The repository's default text encoder (fetched by tests/setup.sh).
pub fn text_encoder() -> summerd::text::TextEncoder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(summerd::text::DEFAULT_DIR);
    summerd::text::TextEncoder::load(&dir, summerd::text::DEFAULT_MAX_TOKENS, tch::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The first `n` utterances of MELD's test split, or None (with a loud note) without assets.
pub fn meld_test_utterances(n: usize) -> Option<Vec<String>> {
    let Some(dir) = summerd::assets::dir() else {
        eprintln!(
            "SKIPPED: ../shared (or $SUMMERD_ASSETS) is absent; MELD parity needs data/meld/test_sent_emo.csv"
        );
        return None;
    };
    let rows =
        summerd::assets::read_meld(&dir.join("data/meld/test_sent_emo.csv")).expect("MELD CSV");
    Some(rows.into_iter().take(n).map(|r| r.utterance).collect())
}

/// Run tests/peers/push_segments.py once, a pyzmq ASR worker process that PUSHes `lines`
/// (JSON segments) to `endpoint` and exits; panics with its stderr if it fails.
pub fn push_segments(endpoint: &str, lines: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("segments.jsonl");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    succeed(
        Command::new(python())
            .arg(peer("push_segments.py"))
            .arg(endpoint)
            .stdin(std::fs::File::open(&f).unwrap()),
    );
}

/// CPU seconds (user + system) a running process has used, from /proc (0 if it is gone).
pub fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    (t(11) + t(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The nearest-rank percentile `p` (0-100) of sorted values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Extra daemon configuration (TOML tables) for a benchmark run, from SUMMERD_BENCH_CONFIG
/// (e.g. `[daemon]\nmalloc_arenas = 2`), so that settings can be compared without editing the
/// bench; empty when unset.
pub fn bench_config() -> String {
    std::env::var("SUMMERD_BENCH_CONFIG")
        .map(|c| format!("\n{c}\n"))
        .unwrap_or_default()
}

/// The words of a transcript for scoring: lower case, typographic apostrophes made plain,
/// hyphens and every other punctuation mark a word break.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace(['\u{2019}', '\u{2018}'], "'")
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word edit distance (substitutions, deletions, insertions) of `hyp` against `reference`.
pub fn word_errors(reference: &[String], hyp: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=hyp.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, h) in hyp.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(r != h));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[hyp.len()]
}

/// Seconds two [start, end] spans (JSON objects with `start` and `end`) have in common.
pub fn overlap(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    (f(a, "end").min(f(b, "end")) - f(a, "start").max(f(b, "start"))).max(0.0)
}

/// The demo's sample call (demo/make_call.py, made once in target/bench/e2e-call): its
/// call.json.
pub fn demo_call() -> serde_json::Value {
    let dir = repo().join("target/bench/e2e-call");
    if !dir.join("call.json").is_file() {
        let ok = Command::new(python())
            .arg(repo().join("demo/make_call.py"))
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "demo/make_call.py failed");
    }
    serde_json::from_str(&std::fs::read_to_string(dir.join("call.json")).unwrap()).unwrap()
}

/// A /proc/PID/status field (VmRSS, VmHWM) in MiB; NaN when the process is gone.
pub fn proc_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Run `cmd` to the end; its output, after asserting that it succeeded (its stderr shown if not).
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The reference ASR worker (asr/reference_worker.py) on `tap` and `transcripts` with `args`,
/// its stderr in `log`, once it says it is listening (or what it said instead).
pub fn start_worker(tap: &str, transcripts: &str, args: &[&str], log: &Path) -> Child {
    let child = Command::new(python())
        .arg(repo().join("asr/reference_worker.py"))
        .args(["--tap", tap, "--transcripts", transcripts])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start the reference ASR worker");
    let said = eventually(Duration::from_secs(120), || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|l| l.contains("listening") || l.contains("error:"))
    })
    .unwrap_or_default();
    assert!(
        said.contains("listening"),
        "the ASR worker did not start:\n{said}"
    );
    child
}

/// A daemon with the default model (`model_config`), its events endpoint set, no streams.
pub fn model_daemon() -> Daemon {
    Daemon::start_custom(|_, p| model_config(Some(p.1)), &[], false)
}

/// A SUB socket on the daemon's events, subscribed to `prefix` (`emotion.`, `lifecycle.`).
pub fn subscribe(d: &Daemon, prefix: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::SUB).unwrap();
    s.set_subscribe(prefix.as_bytes()).unwrap();
    s.set_rcvtimeo(100).unwrap();
    s.connect(&d.events).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (ctx, s)
}

/// Events received until `done` says so or `limit` passes.
pub fn collect(
    sub: &zmq::Socket,
    limit: Duration,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while Instant::now() < deadline && !done(&got) {
        if let Ok(parts) = sub.recv_multipart(0) {
            got.push(serde_json::from_slice(&parts[1]).unwrap());
        }
    }
    got
}

/// Attach `spec` (an attach request without its `cmd`) over the control socket; it must be
/// taken.
pub fn attach(d: &Daemon, spec: serde_json::Value) {
    let mut req = spec;
    req["cmd"] = serde_json::json!("attach");
    let r = d.control(req.clone());
    assert_eq!(r["ok"], true, "attach {req}: {r}");
}

/// A call through the reference ASR worker: the worker listening on `d`'s tap before `spec` is
/// attached (`dir` holds its log), the emotion events of `n` lines (and any more within 2 s of
/// the worker's exit), and what the worker said.
pub fn through_worker(
    d: &Daemon,
    dir: &Path,
    spec: serde_json::Value,
    n: usize,
) -> (Vec<serde_json::Value>, String) {
    let (_ctx, sub) = subscribe(d, "emotion.");
    let log = dir.join("asr.log");
    let mut asr = start_worker(
        &d.tap,
        &d.transcripts,
        &["--exit-after-idle", "2", "--min-silence-ms", "500"],
        &log,
    );
    std::thread::sleep(Duration::from_millis(500));
    attach(d, spec);
    let mut events = collect(&sub, Duration::from_secs(90), |g| g.len() >= n);
    let waited = Instant::now();
    while asr.try_wait().unwrap().is_none() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = asr.kill();
    events.extend(collect(&sub, Duration::from_secs(2), |_| false));
    (events, std::fs::read_to_string(&log).unwrap_or_default())
}

/// The RTSP server peer (tests/peers/rtsp_server.py): `/av` (H.264 + AAC) and `/audio`.
pub struct RtspServer(pub Child);

impl RtspServer {
    /// Start it on `port` and wait until it listens.
    pub fn start(port: u16) -> RtspServer {
        let mut child = Command::new("/usr/bin/python3")
            .arg(peer("rtsp_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with gi (Debian python3-gi, gir1.2-gst-rtsp-server-1.0)");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "RTSP server did not start");
        RtspServer(child)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gst-launch-1.0 -q LINE` in the background, quiet.
pub fn gst_launch(line: &str) -> Child {
    Command::new("gst-launch-1.0")
        .arg("-q")
        .args(line.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0")
}
