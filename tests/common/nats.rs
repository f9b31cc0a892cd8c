//! Cluster mode's peers for the cluster test and benchmark: NATS servers (Debian's
//! `nats-server` with JetStream) clustered on loopback, summerd nodes that can be killed and
//! restarted, live G.711 RTP senders, and an ASR stand-in that publishes segments into
//! JetStream and reads the events stream back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{free_port, http_get, metric};

pub const TEXTS: &[&str] = &[
    "I have been waiting for forty minutes and nobody called me back.",
    "I'm sorry to hear that, let me look at your account right away.",
    "This is the third time I'm calling about the same problem!",
    "I understand. I can see the order here, it shipped yesterday.",
    "Oh, that's great news, thank you so much.",
    "You're welcome. Is there anything else I can help you with?",
    "No, that's all. Have a nice day.",
];

pub fn nats_server() -> PathBuf {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nats-server is not installed: run `make test` (tests/setup.sh installs it)");
}

/// Three NATS servers with JetStream, clustered on loopback.
pub struct Nats {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    pub servers: Vec<Option<Child>>,
}

impl Nats {
    /// `n` servers, clustered when more than one, open to anyone on loopback.
    pub fn start(n: usize) -> Nats {
        Nats::start_with(n, None)
    }

    /// `n` servers; with `auth`, one user (name, password) and no anonymous clients.
    pub fn start_with(n: usize, auth: Option<(&str, &str)>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for i in 0..n {
            let cluster = if n > 1 {
                format!(
                    "cluster {{ name: summerd-test\n listen: 127.0.0.1:{}\n routes: [{route_list}] }}\n",
                    routes[i]
                )
            } else {
                String::new()
            };
            let users = auth
                .map(|(u, p)| format!("authorization {{ user: \"{u}\", password: \"{p}\" }}\n"))
                .unwrap_or_default();
            let conf = format!(
                "server_name: s{i}\nlisten: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: \"{}\" }}\n{cluster}{users}",
                ports[i],
                dir.path().join(format!("js{i}")).display(),
            );
            std::fs::write(dir.path().join(format!("s{i}.conf")), conf).unwrap();
        }
        let mut nats = Nats {
            dir,
            ports,
            servers: Vec::new(),
        };
        for i in 0..n {
            let c = nats.spawn(i);
            nats.servers.push(Some(c));
        }
        nats
    }

    pub fn spawn(&self, i: usize) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("s{i}.log"))).unwrap();
        Command::new(nats_server())
            .arg("-c")
            .arg(self.dir.path().join(format!("s{i}.conf")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server")
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let c = self.spawn(i);
        self.servers[i] = Some(c);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// A summerd node: its config, its process, its log.
pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub metrics: String,
    pub child: Option<Child>,
    pub starts: usize,
}

/// What a node's config differs in.
pub struct Setup {
    pub replicas: usize,
    /// The tap on ZeroMQ (this port) and on core NATS subjects.
    pub tap: Option<u16>,
    /// `cluster.user` and `cluster.password`.
    pub auth: Option<(&'static str, &'static str)>,
    /// `text_encoder.precision`.
    pub text_precision: &'static str,
}

/// Three replicas, the text encoder as shipped (`auto`: bf16 where the CPU has it), as a
/// deployment runs.
pub const THREE: Setup = Setup {
    replicas: 3,
    tap: None,
    auth: None,
    text_precision: "auto",
};

/// [`THREE`] with the text encoder in f32: bf16 matrix products depend on the shapes of the
/// batch an utterance shares (other streams' texts, their padding) by up to a few 1e-3 in the
/// probabilities, so conversations are compared exactly only in f32.
pub const THREE_F32: Setup = Setup {
    text_precision: "f32",
    ..THREE
};

pub fn node_config(name: &str, urls: &[String], metrics: &str, setup: &Setup) -> String {
    let r = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[daemon]\nlog_level = \"info,summerd::cluster=debug\"\nshutdown_timeout = \"15s\"\n\
         [transcripts]\nendpoint = \"tcp://127.0.0.1:{}\"\n\
         [events]\nendpoint = \"tcp://127.0.0.1:{}\"\n\
         {}\
         [control]\nendpoint = \"tcp://127.0.0.1:{}\"\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [model]\npath = \"{}\"\ndevice = \"cpu\"\n\
         [text_encoder]\ndir = \"{}\"\nprecision = \"{}\"\n\
         [pipelines]\ndir = \"{}\"\n\
         [vision]\nenabled = false\n\
         [inference]\nfeature_wait = \"2s\"\n\
         [cluster]\nurls = [{urls}]\nnode = \"{name}\"\nreplicas = {}\nlease = \"3s\"\n\
         heartbeat = \"1s\"\nack_wait = \"4s\"\naudio_subjects = {}\n{}",
        free_port(),
        free_port(),
        match setup.tap {
            Some(p) => format!("[audio_tap]\nendpoint = \"tcp://127.0.0.1:{p}\"\n"),
            None => "[audio_tap]\nenabled = false\n".into(),
        },
        free_port(),
        r.join("models/summer-default").display(),
        r.join("models/third_party/all-minilm-l6-v2").display(),
        setup.text_precision,
        r.join("pipelines").display(),
        setup.replicas,
        setup.tap.is_some(),
        setup
            .auth
            .map(|(u, p)| format!("user = \"{u}\"\npassword = \"{p}\"\n"))
            .unwrap_or_default(),
    )
}

impl Node {
    pub fn new(name: &str, urls: &[String], setup: &Setup) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let metrics = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.path().join("summerd.toml"),
            node_config(name, urls, &metrics, setup),
        )
        .unwrap();
        Node {
            name: name.into(),
            dir,
            metrics,
            child: None,
            starts: 0,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("summerd.toml")
    }

    pub fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("summerd-{n}.log"))
    }

    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_summerd"))
            .args(["run", "-c"])
            .arg(self.config())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start summerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node {} exited early with {s}:\n{}", self.name, self.log());
            }
            if let Ok((_, body)) = http_get(&self.metrics, "/metrics")
                && metric(&body, "summerd_ready") == Some(1.0)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node {} not ready within 60 s:\n{}", self.name, self.log());
    }

    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                assert!(
                    s.success(),
                    "node {} exited with {s}:\n{}",
                    self.name,
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "node {} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A live G.711 RTP sender of digital silence to a UDP port; stopped when dropped (a test
/// that fails leaves none behind).
pub struct Sender(Child);

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a [`Sender`] to `port`.
pub fn sender(port: u16) -> Sender {
    let line = format!(
        "audiotestsrc is-live=true wave=silence samplesperbuffer=160 \
         ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay \
         ! udpsink host=127.0.0.1 port={port}"
    );
    Sender(super::gst_launch(&line))
}

pub fn summerd_cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_summerd"))
        .args(["cluster", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The ASR stand-in: segments into JetStream, every one stored (JetStream acknowledges it).
pub struct Asr {
    pub rt: tokio::runtime::Runtime,
    pub js: async_nats::jetstream::Context,
    pub sent: BTreeMap<String, Vec<u64>>,
}

impl Asr {
    pub fn connect(urls: &[String]) -> Asr {
        Asr::connect_as(urls, None)
    }

    /// Connected as a user (name, password).
    pub fn connect_as(urls: &[String], user: Option<(&str, &str)>) -> Asr {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
        let mut opts = async_nats::ConnectOptions::new().retry_on_initial_connect();
        if let Some((u, p)) = user {
            opts = opts.user_and_password(u.into(), p.into());
        }
        let client = rt.block_on(opts.connect(addrs)).unwrap();
        Asr {
            rt,
            js: async_nats::jetstream::new(client),
            sent: BTreeMap::new(),
        }
    }

    pub fn segment(stream: &str, seq: u64) -> Value {
        let now = unix_now();
        json!({"v": 1, "stream": stream, "seq": seq, "clock": "unix",
               "start": now - 1.2, "end": now - 0.2,
               "speaker": if seq.is_multiple_of(2) { "customer" } else { "agent" },
               "text": TEXTS[seq as usize % TEXTS.len()], "final": true})
    }

    /// Publish the next segment of every stream; retried until JetStream stores it (a server
    /// may be down).
    pub fn round(&mut self, streams: &[String]) {
        for s in streams {
            let seq = self.sent.get(s).map_or(0, |v| v.len() as u64);
            let body = Self::segment(s, seq).to_string();
            let subject = format!("summerd.transcripts.{s}");
            let js = self.js.clone();
            let mut tries = 0;
            loop {
                let r = self.rt.block_on(async {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("{s}/{seq}").as_str());
                    match js
                        .publish_with_headers(subject.clone(), h, body.clone().into())
                        .await
                    {
                        Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                });
                match r {
                    Ok(()) => break,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < 50, "segment {s}/{seq} not stored: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            self.sent.entry(s.clone()).or_default().push(seq);
        }
    }

    /// The NATS client.
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// Publish one segment of `stream` with this seq and span (unix clock), stored by
    /// JetStream; not recorded in `sent`.
    pub fn publish_segment(&self, stream: &str, seq: u64, start: f64, end: f64) {
        let body = json!({"v": 1, "stream": stream, "seq": seq, "clock": "unix",
               "start": start, "end": end, "speaker": "customer",
               "text": TEXTS[seq as usize % TEXTS.len()], "final": true})
        .to_string();
        self.raw(&format!("summerd.transcripts.{stream}"), &body);
    }

    /// Publish any payload on a subject, stored by JetStream.
    pub fn raw(&self, subject: &str, payload: &str) {
        let js = self.js.clone();
        self.rt
            .block_on(async move {
                js.publish(subject.to_string(), payload.to_string().into())
                    .await
                    .unwrap()
                    .await
            })
            .unwrap();
    }

    /// Every event in the events stream, in order.
    pub fn events(&self) -> Vec<Value> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull};
        self.rt.block_on(async {
            let mut s = self.js.get_stream("SUMMERD_EVENTS").await.unwrap();
            let total = s.info().await.unwrap().state.messages;
            let c = s
                .create_consumer(pull::OrderedConfig {
                    filter_subject: "summerd.events.>".into(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut m = c.messages().await.unwrap();
            let mut out = Vec::new();
            while (out.len() as u64) < total {
                match tokio::time::timeout(Duration::from_secs(10), m.next()).await {
                    Ok(Some(Ok(msg))) => out.push(serde_json::from_slice(&msg.payload).unwrap()),
                    _ => break,
                }
            }
            out
        })
    }
}

/// Three nodes (a, b, c) on `urls` set up as `setup`, started.
pub fn three_nodes(urls: &[String], setup: &Setup) -> Vec<Node> {
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::new(n, urls, setup))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    nodes
}

/// `summerd cluster attach` of `req`; it must be taken.
pub fn cluster_attach(admin: &Path, req: &Value) {
    let out = summerd_cli(admin, &["attach", &req.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` live silent RTP calls `<prefix>0`.. attached to the cluster; their ids and senders.
pub fn attach_rtp_calls(admin: &Path, prefix: &str, n: usize) -> (Vec<String>, Vec<Sender>) {
    let mut ids = Vec::new();
    let mut senders = Vec::new();
    for i in 0..n {
        let port = free_port();
        senders.push(sender(port));
        let id = format!("{prefix}{i}");
        cluster_attach(
            admin,
            &json!({"id": id, "uri": format!("udp://127.0.0.1:{port}"), "template": "rtp-pcmu"}),
        );
        ids.push(id);
    }
    (ids, senders)
}

/// Every desired stream and the node holding it, from `summerd cluster list --json`.
pub fn owners(admin: &Path) -> BTreeMap<String, Option<String>> {
    let out = summerd_cli(admin, &["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["spec"]["id"].as_str().unwrap().to_string(),
                v["owner"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Streams held, by node.
pub fn load(owners: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for o in owners.values().flatten() {
        *n.entry(o.clone()).or_default() += 1;
    }
    n
}

/// The streams `node` holds.
pub fn held_by(admin: &Path, node: &str) -> Vec<String> {
    owners(admin)
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some(node))
        .map(|(s, _)| s)
        .collect()
}
