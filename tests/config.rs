//! Config: the commented default parses to the defaults and mentions every key; `summerd
//! validate` accepts good files (exit 0) and names the key of every bad one (exit 2).

use std::path::{Path, PathBuf};
use std::process::Command;

use summerd::config::{Config, RawConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validate(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_summerd"))
        .args(["validate", "-c"])
        .arg(path)
        .output()
        .expect("run summerd validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A scratch directory with a pipelines dir holding `file.gst`, two valid CURVE keypairs
/// and an authorised-keys file.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        std::fs::write(
            dir.path().join("pipelines/file.gst"),
            "filesrc location={uri} ! fakesink\n",
        )
        .unwrap();
        // The shipped model: `summerd validate` loads it as start-up does.
        std::os::unix::fs::symlink(
            repo().join("models/summer-default"),
            dir.path().join("model"),
        )
        .unwrap();
        for name in ["server", "other"] {
            let pair = zmq::CurveKeyPair::new().unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                zmq::z85_encode(&pair.secret_key).unwrap(),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.pub")),
                zmq::z85_encode(&pair.public_key).unwrap(),
            )
            .unwrap();
        }
        let other = std::fs::read_to_string(dir.path().join("other.pub")).unwrap();
        std::fs::write(
            dir.path().join("clients"),
            format!("# ops laptop\n{other}\n"),
        )
        .unwrap();
        Scratch { dir }
    }

    fn write(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, toml).unwrap();
        p
    }
}

const STREAM: &str = r#"
[pipelines]
dir = "pipelines"
[[streams]]
id = "call-42"
uri = "file:///tmp/call.mp4"
template = "file"
speakers = { spk0 = "agent", spk1 = "customer" }
infer_speakers = ["customer"]
"#;

#[test]
fn default_config_parses_to_the_defaults() {
    let path = repo().join("config/summerd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let raw = summerd::config::parse_raw(&text, &path).unwrap();
    // The one value that is not a default: the shipped file names the shipped model (with no
    // [model] table a config means "no inference").
    let mut want = RawConfig::default();
    want.model.path = Some("../models/summer-default".into());
    assert_eq!(raw, want, "config/summerd.toml must hold every default");
    Config::load(&path).expect("the default config validates");
}

#[test]
fn default_config_mentions_every_key() {
    let text = std::fs::read_to_string(repo().join("config/summerd.toml")).unwrap();
    let mut full = RawConfig::default();
    // Optional keys are shown commented out; give them values so they serialise.
    full.curve.secret_key_file = Some("k".into());
    full.curve.public_key_file = Some("k".into());
    full.curve.authorized_keys_file = Some("k".into());
    full.model.path = Some("m".into());
    full.cluster = Some(summerd::config::ClusterConfig {
        user: Some("u".into()),
        password: Some("p".into()),
        token: Some("t".into()),
        nkey_seed_file: Some("k".into()),
        tls_ca: Some("k".into()),
        tls_cert: Some("k".into()),
        tls_key: Some("k".into()),
        ..Default::default()
    });
    let value = toml::Value::try_from(&full).unwrap();
    let mut missing = Vec::new();
    for (section, table) in value.as_table().unwrap() {
        let Some(table) = table.as_table() else {
            continue;
        };
        assert!(
            text.contains(&format!("[{section}]")),
            "section [{section}] missing"
        );
        for (key, v) in table {
            // A nested table is shown as its own [section.key] with its keys.
            let keys: Vec<String> = match v.as_table() {
                Some(sub) => {
                    if !text.contains(&format!("[{section}.{key}]")) {
                        missing.push(format!("[{section}.{key}]"));
                    }
                    sub.keys().map(|k| format!("{key}.{k}")).collect()
                }
                None => vec![key.clone()],
            };
            for k in keys {
                let last = k.rsplit('.').next().unwrap_or(&k);
                let shown = text.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{last} ="))
                });
                if !shown {
                    missing.push(format!("{section}.{k}"));
                }
            }
        }
    }
    for key in [
        "id",
        "uri",
        "template",
        "speakers",
        "infer_speakers",
        "publish_text",
        "channels",
    ] {
        if !text.contains(&format!("# {key} =")) {
            missing.push(format!("streams.{key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "keys not documented in config/summerd.toml: {missing:?}"
    );
}

#[test]
fn validate_accepts_the_default_and_a_full_file() {
    let (code, out) = validate(&repo().join("config/summerd.toml"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");

    let s = Scratch::new();
    let full = format!(
        r#"
[transcripts]
endpoint = "tcp://0.0.0.0:6555"
curve = true
[events]
endpoint = "ipc://{dir}/events.sock"
[audio_tap]
enabled = false
[curve]
secret_key_file = "server.key"
public_key_file = "server.pub"
authorized_keys_file = "clients"
[model]
path = "model"
device = "cpu"
[text_encoder]
dir = "{encoder}"
[vision]
detect_every = 3
mtcnn_dir = "{mtcnn}"
expression_file = "{expr}"
[vision.mtcnn]
min_face = 60.0
{STREAM}"#,
        dir = s.dir.path().display(),
        encoder = repo().join(summerd::text::DEFAULT_DIR).display(),
        mtcnn = repo().join(summerd::vision::MTCNN_DIR).display(),
        expr = repo().join(summerd::vision::EXPRESSION_FILE).display(),
    );
    let (code, out) = validate(&s.write("full.toml", &full));
    assert_eq!(code, 0, "{out}");
}

/// `summerd validate` refuses what start-up refuses: weights that fail their sha256, and a
/// CUDA device that is not there; both exit 2, as a config error does.
#[test]
fn validate_checks_the_model_as_start_up_does() {
    let s = Scratch::new();
    let bad = s.dir.path().join("bad-model");
    std::fs::create_dir(&bad).unwrap();
    for f in std::fs::read_dir(repo().join("models/summer-default")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, bad.join(f.file_name().unwrap())).unwrap();
        }
    }
    let weights = bad.join("weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let cfg = |model: &str, device: &str| {
        format!(
            "[model]\npath = \"{model}\"\ndevice = \"{device}\"\n[text_encoder]\ndir = \"{}\"\n[vision]\nenabled = false\n",
            repo().join(summerd::text::DEFAULT_DIR).display()
        )
    };
    let (code, out) = validate(&s.write("sha.toml", &cfg("bad-model", "cpu")));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("sha256"), "{out}");
    if !tch::Cuda::is_available() {
        let (code, out) = validate(&s.write("cuda.toml", &cfg("model", "cuda:0")));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("CUDA device"), "{out}");
    }
}

/// Each bad config, and fragments its message must contain (the key and what is wrong).
const BAD: &[(&str, &str, &[&str])] = &[
    (
        "vision key misspelt in a nested table",
        "[vision.mtcnn]\nmin_fase = 40.0\n",
        &["min_fase", "unknown field", "min_face"],
    ),
    (
        "vision values out of range",
        "[vision]\ndetect_every = 0\n[vision.mtcnn]\nmin_face = 4.0\n",
        &["vision.detect_every", "vision.mtcnn.min_face"],
    ),
    (
        "slow cadence faster than the fast one",
        "[vision]\ndetect_every = 10\ndetect_every_tracked = 5\n",
        &["vision.detect_every_tracked", "10 to 100"],
    ),
    (
        "vision weights missing",
        "[model]\npath = \"model\"\n[vision]\nmtcnn_dir = \"/nonexistent/mtcnn\"\n",
        &[
            "vision.mtcnn_dir",
            "/nonexistent/mtcnn/pnet.safetensors",
            "vision.enabled = false",
        ],
    ),
    (
        "unknown key",
        "[daemon]\nlog_levle = \"info\"\n",
        &["log_levle", "unknown field", "log_level"],
    ),
    (
        "unknown section",
        "[deamon]\n",
        &["deamon", "unknown field"],
    ),
    (
        "wrong type",
        "[transcripts]\nmax_message_bytes = \"big\"\n",
        &["transcripts.max_message_bytes", "invalid type"],
    ),
    (
        "bad duration",
        "[daemon]\nshutdown_timeout = \"ten seconds\"\n",
        &["daemon.shutdown_timeout", "duration"],
    ),
    (
        "bad enum",
        "[daemon]\nlog_format = \"xml\"\n",
        &["daemon.log_format", "xml", "text", "json"],
    ),
    (
        "bad endpoint scheme",
        "[events]\nendpoint = \"udp://127.0.0.1:5556\"\n",
        &["`events.endpoint`", "neither tcp:// nor ipc://"],
    ),
    (
        "bad endpoint port",
        "[transcripts]\nendpoint = \"tcp://127.0.0.1:99999\"\n",
        &["`transcripts.endpoint`", "not 1-65535"],
    ),
    (
        "bad endpoint host",
        "[transcripts]\nendpoint = \"tcp://call-host:5555\"\n",
        &["`transcripts.endpoint`", "not an IP address"],
    ),
    (
        "non-loopback without CURVE",
        "[transcripts]\nendpoint = \"tcp://0.0.0.0:5555\"\n",
        &["`transcripts.endpoint`", "no CURVE", "insecure = true"],
    ),
    (
        "curve without keys",
        "[events]\ncurve = true\n",
        &["`events.curve`", "curve.secret_key_file"],
    ),
    (
        "missing key file",
        "[curve]\nsecret_key_file = \"nope.key\"\npublic_key_file = \"server.pub\"\n",
        &["`curve.secret_key_file`", "nope.key"],
    ),
    (
        "half a keypair",
        "[curve]\nsecret_key_file = \"server.key\"\n",
        &["`curve.public_key_file`", "both"],
    ),
    (
        "mismatched keypair",
        "[curve]\nsecret_key_file = \"server.key\"\npublic_key_file = \"other.pub\"\n",
        &["`curve.public_key_file`", "does not match"],
    ),
    (
        "not a key",
        "[curve]\nsecret_key_file = \"pipelines/file.gst\"\npublic_key_file = \"server.pub\"\n",
        &["`curve.secret_key_file`", "Z85"],
    ),
    (
        "duplicate endpoint",
        "[audio_tap]\nendpoint = \"tcp://127.0.0.1:5556\"\n",
        &["`audio_tap.endpoint`", "already used by events.endpoint"],
    ),
    (
        "missing model file",
        "[model]\npath = \"no-such-model\"\n",
        &["`model.path`", "manifest.json", "does not exist"],
    ),
    (
        "missing text encoder",
        "[model]\npath = \"model\"\n[text_encoder]\ndir = \"no-encoder\"\n",
        &["`text_encoder.dir`", "no-encoder/config.json"],
    ),
    (
        "text encoder length",
        "[text_encoder]\nmax_tokens = 1024\n",
        &["`text_encoder.max_tokens`", "2 to 512"],
    ),
    (
        "bad device",
        "[model]\ndevice = \"tpu\"\n",
        &["`model.device`", "auto, cpu, cuda or cuda:N"],
    ),
    (
        "out of range",
        "[audio_tap]\nchunk_ms = 5\n",
        &["`audio_tap.chunk_ms`", "20 to 100"],
    ),
    (
        "metrics bad address",
        "[metrics]\nlisten = \"localhost\"\n",
        &["`metrics.listen`", "IP:PORT"],
    ),
    (
        "metrics exposed",
        "[metrics]\nlisten = \"0.0.0.0:9187\"\n",
        &["`metrics.listen`", "metrics.insecure"],
    ),
    (
        "bad log filter",
        "[daemon]\nlog_level = \"summerd=loud\"\n",
        &["`daemon.log_level`"],
    ),
    (
        "span filter in log level",
        "[daemon]\nlog_level = \"[ingest{stream=a.*}]=debug\"\n",
        &["`daemon.log_level`", "no span or field filters"],
    ),
    (
        "duplicate stream id",
        "[pipelines]\ndir = \"pipelines\"\n[[streams]]\nid = \"a\"\nuri = \"file:///a\"\ntemplate = \"file\"\n[[streams]]\nid = \"a\"\nuri = \"file:///b\"\ntemplate = \"file\"\n",
        &["`streams[1].id`", "duplicate"],
    ),
    (
        "bad stream id",
        "[pipelines]\ndir = \"pipelines\"\n[[streams]]\nid = \"call 42/x\"\nuri = \"file:///a\"\ntemplate = \"file\"\n",
        &["`streams[0].id`", "A-Z a-z 0-9"],
    ),
    (
        "unknown template",
        "[pipelines]\ndir = \"pipelines\"\n[[streams]]\nid = \"a\"\nuri = \"file:///a\"\ntemplate = \"webrtc\"\n",
        &["`streams[0].template`", "webrtc.gst", "one of: file"],
    ),
    (
        "stream missing uri",
        "[pipelines]\ndir = \"pipelines\"\n[[streams]]\nid = \"a\"\ntemplate = \"file\"\n",
        &["streams[0]", "missing field `uri`"],
    ),
    (
        "stream unknown key",
        "[pipelines]\ndir = \"pipelines\"\n[[streams]]\nid = \"a\"\nuri = \"file:///a\"\ntemplate = \"file\"\nroles = []\n",
        &["streams[0].roles", "unknown field"],
    ),
    (
        "events high-water mark below a batch",
        "[events]\nsndhwm = 4\n[inference]\nmax_batch = 32\n",
        &["events.sndhwm", "inference.max_batch (32)"],
    ),
    (
        "not toml",
        "[transcripts\nendpoint = 1\n",
        &["TOML parse error", "line 1"],
    ),
];

#[test]
fn validate_names_the_key_of_every_bad_config() {
    let s = Scratch::new();
    let mut failures = Vec::new();
    for (i, (what, toml, expected)) in BAD.iter().enumerate() {
        let path = s.write(&format!("bad{i}.toml"), toml);
        let (code, out) = validate(&path);
        if code != 2 {
            failures.push(format!("{what}: exit {code}, expected 2\n{out}"));
            continue;
        }
        for frag in *expected {
            if !out.contains(frag) {
                failures.push(format!("{what}: message lacks {frag:?}:\n{out}"));
            }
        }
    }
    assert!(BAD.len() >= 12);
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let s = Scratch::new();
    let path = s.write(
        "many.toml",
        "[events]\nendpoint = \"tcp://0.0.0.0:1\"\n[model]\ndevice = \"tpu\"\n[audio_tap]\nchunk_ms = 1000\n",
    );
    let err = Config::load(&path).unwrap_err();
    let keys: Vec<_> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["model.device", "events.endpoint", "audio_tap.chunk_ms"],
        "{err}"
    );
    // Every unknown key, not only the first, with the values the checks refuse.
    let path = s.write(
        "unknown.toml",
        "[daemon]\nlog_levle = \"info\"\n[ingest]\nvideo_fsp = 5\n[vision]\nhistory_s = nan\n\
         [vision.mtcnn]\nfactor = 0.95\n[[streams]]\nid = \"daemon\"\nuri = \"file:///a\"\n\
         template = \"file\"\ncolour = \"blue\"\n",
    );
    let err = Config::load(&path).unwrap_err();
    let keys: Vec<_> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "daemon.log_levle",
        "ingest.video_fsp",
        "streams[0].colour",
        "vision.history_s",
        "vision.mtcnn.factor",
        "streams[0].id",
    ] {
        assert!(keys.contains(&k), "{k} not reported: {err}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, out) = validate(Path::new("/nonexistent/summerd.toml"));
    assert_eq!(code, 2);
    assert!(
        out.contains("cannot read config file '/nonexistent/summerd.toml'"),
        "{out}"
    );
}
