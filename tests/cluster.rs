//! Cluster mode against real NATS servers (Debian's `nats-server` 2.9, JetStream): three
//! servers clustered on loopback with every bucket and stream at 3 replicas, three summerd
//! nodes with the default model, nine live audio-only RTP calls from gst-launch senders and
//! three RTSP calls with video from gst-rtsp-server, and the test as the ASR stand-in
//! publishing segments into JetStream.
//!
//! What it shows: the streams are balanced (4 a node); `kill -9` of a node moves its streams
//! to the others within 10 s; every segment sent gives exactly one emotion event in the
//! events stream, through the kill, a NATS server killed and restarted, and a rolling restart
//! of every node; a moved conversation goes on as it would have on one node (the events of a
//! moved stream equal, within 1e-4, those of a stream that never moved and heard the same
//! segments over the same steady source).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::nats::{
    Asr, Nats, Node, Setup, THREE_F32, attach_rtp_calls, cluster_attach, held_by, load, owners,
    summerd_cli, three_nodes,
};
use common::{free_port, http_get};
use serde_json::{Value, json};

/// (stream, seq) -> how many final emotion events the events stream holds.
fn emotion_counts(events: &[Value]) -> BTreeMap<(String, u64), usize> {
    let mut n = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["type"] == "emotion" && e["provisional"] != true)
    {
        let k = (
            e["stream"].as_str().unwrap().to_string(),
            e["seq"].as_u64().unwrap(),
        );
        *n.entry(k).or_default() += 1;
    }
    n
}

/// kill -9 a node; the time until every one of `its` streams is held by another node (with
/// `talking`, segments of those streams keep coming meanwhile, one round a half second).
fn kill_and_wait(
    node: &mut Node,
    its: &[String],
    admin: &Path,
    asr: &mut Asr,
    talking: &[String],
) -> Duration {
    assert!(!its.is_empty());
    let killed = Instant::now();
    node.kill9();
    while killed.elapsed() < Duration::from_secs(30) {
        if !talking.is_empty() {
            asr.round(talking);
        }
        let now = owners(admin);
        if its
            .iter()
            .all(|s| now[s].as_ref().is_some_and(|o| *o != node.name))
        {
            return killed.elapsed();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{its:?} were not taken over within 30 s");
}

/// The largest difference between two streams' class probabilities, seq by seq, over the
/// utterances whose spans both streams heard whole.
fn largest_difference(events: &[Value], a: &str, b: &str) -> f64 {
    let of = |s: &str| -> BTreeMap<u64, Value> {
        events
            .iter()
            .filter(|e| e["type"] == "emotion" && e["stream"] == s)
            .map(|e| (e["seq"].as_u64().unwrap(), e.clone()))
            .collect()
    };
    let (pa, pb) = (of(a), of(b));
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>());
    // A span that starts before its stream's first sample (a first utterance sent while the
    // pipeline was still coming up) hears less of the call: such pairs are not comparable.
    let whole = |e: &Value| e["start"].as_f64().is_some_and(|s| s >= 0.0);
    let mut worst = 0.0f64;
    let mut compared = 0;
    for (seq, ea) in &pa {
        let eb = &pb[seq];
        if !(whole(ea) && whole(eb)) {
            continue;
        }
        compared += 1;
        for (class, v) in ea["probs"].as_object().unwrap() {
            let d = (v.as_f64().unwrap() - eb["probs"][class].as_f64().unwrap()).abs();
            if d > 1e-4 && d > worst {
                eprintln!("{a} vs {b}, seq {seq}, {class} differs by {d:.2e}:\n  {ea}\n  {eb}");
            }
            worst = worst.max(d);
        }
    }
    assert!(
        compared > pa.len() / 2,
        "{a} vs {b}: only {compared} of {} comparable",
        pa.len()
    );
    worst
}

/// Whether, within `limit`, every one of `streams` has at least `secs` of audio ingested
/// (`summerd_ingest_audio_seconds_total`, summed over the nodes).
fn audio_flowing(nodes: &[Node], streams: &[String], secs: f64, limit: Duration) -> bool {
    common::eventually(limit, || {
        let bodies = nodes
            .iter()
            .map(|n| http_get(&n.metrics, "/metrics").ok().map(|(_, b)| b))
            .collect::<Option<Vec<String>>>()?;
        streams
            .iter()
            .all(|s| {
                let name = format!("summerd_ingest_audio_seconds_total{{stream=\"{s}\"}}");
                let heard: f64 = bodies.iter().filter_map(|b| common::metric(b, &name)).sum();
                heard >= secs
            })
            .then_some(())
    })
    .is_some()
}

/// Send rounds of segments for `secs` seconds, one a second a stream.
fn talk(asr: &mut Asr, streams: &[String], secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let t0 = Instant::now();
        asr.round(streams);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
    }
}

/// Wait until every segment sent has its event (or `limit` passes); the counts.
fn settle(asr: &Asr, limit: Duration) -> BTreeMap<(String, u64), usize> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = emotion_counts(&asr.events());
        let all = asr
            .sent
            .iter()
            .all(|(s, seqs)| seqs.iter().all(|q| counts.contains_key(&(s.clone(), *q))));
        if all || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_exactly_once(asr: &Asr, counts: &BTreeMap<(String, u64), usize>, nodes: &[Node]) {
    let mut missing = Vec::new();
    for (s, seqs) in &asr.sent {
        for q in seqs {
            if !counts.contains_key(&(s.clone(), *q)) {
                missing.push(format!("{s}/{q}"));
            }
        }
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let sent: usize = asr.sent.values().map(Vec::len).sum();
    if !missing.is_empty() || !doubled.is_empty() || counts.len() != sent {
        for n in nodes {
            eprintln!("==== node {} ====\n{}", n.name, n.log());
        }
        panic!(
            "{} segments sent, {} with events; missing {:?}; doubled {:?}",
            sent,
            counts.len(),
            missing,
            doubled
        );
    }
}

/// The two tests each run several daemons and NATS servers: one at a time on 2 cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn nodes_share_streams_and_lose_no_segment_through_kills_and_restarts() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut nats = Nats::start(3);
    let urls = nats.urls();
    let mut nodes = three_nodes(&urls, &THREE_F32);
    let admin = nodes[0].config();

    // Three RTSP calls with video (v0-v2, H.264 and AAC from one RTSP server) and nine
    // audio-only RTP calls of digital silence (s0-s8).
    let rtsp_port = free_port();
    let _rtsp = common::RtspServer::start(rtsp_port);
    let mut streams = Vec::new();
    for i in 0..3 {
        let id = format!("v{i}");
        cluster_attach(
            &admin,
            &json!({"id": id, "uri": format!("rtsp://127.0.0.1:{rtsp_port}/av"), "template": "rtsp"}),
        );
        streams.push(id);
    }
    let (calls, senders) = attach_rtp_calls(&admin, "s", 9);
    streams.extend(calls);
    // The same request twice is refused; so is a bad template, with the control socket's words.
    let again = summerd_cli(
        &admin,
        &[
            "attach",
            &json!({"id": "s0", "uri": "udp://127.0.0.1:1", "template": "rtp-pcmu"}).to_string(),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already attached"));
    let bad = summerd_cli(
        &admin,
        &[
            "attach",
            &json!({"id": "x", "uri": "udp://127.0.0.1:1", "template": "../etc/passwd"})
                .to_string(),
        ],
    );
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("attach.template"), "{said}");

    // Balanced: three each, within 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut held = BTreeMap::new();
    while Instant::now() < deadline {
        held = load(&owners(&admin));
        if held.values().sum::<usize>() == 12 && held.values().all(|n| *n == 4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        held.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4],
        "{held:?}"
    );

    // Every call's media flows before the first segment, whose span ends 0.2 s before it is
    // sent and lasts a second: each conversation then hears all of its utterances, so that
    // conversations can be compared exactly (an utterance's output depends on all before it).
    assert!(
        audio_flowing(&nodes, &streams, 1.5, Duration::from_secs(20)),
        "the calls' media did not flow"
    );
    let mut asr = Asr::connect(&urls);
    talk(&mut asr, &streams, 6);
    let counts = settle(&asr, Duration::from_secs(30));
    assert_exactly_once(&asr, &counts, &nodes);

    // Malformed segments on NATS are counted and dropped by the owner, like on ZeroMQ.
    let owner = owners(&admin)["s0"].clone().unwrap();
    let owner = nodes.iter().find(|n| n.name == owner).unwrap();
    asr.raw("summerd.transcripts.s0", "not json");
    asr.raw(
        "summerd.transcripts.s0",
        &json!({"v": 1, "stream": "s1", "seq": 1, "start": 0.0, "end": 1.0, "text": "x"})
            .to_string(),
    );
    let rejected = common::eventually(Duration::from_secs(10), || {
        let (_, body) = http_get(&owner.metrics, "/metrics").ok()?;
        let n: f64 = body
            .lines()
            .filter(|l| l.starts_with("summerd_transcripts_rejected_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (n >= 2.0).then_some(n)
    });
    assert!(
        rejected.is_some(),
        "the owner did not count the malformed segments"
    );

    // kill -9 of node b between utterances: its streams flow on a and c within 10 s, and
    // their conversations go on as if they had never moved.
    let b_streams = held_by(&admin, "b");
    let moved = kill_and_wait(&mut nodes[1], &b_streams, &admin, &mut asr, &[]);
    eprintln!("handover after kill -9 (quiet): {moved:?}");
    assert!(moved <= Duration::from_secs(10), "handover took {moved:?}");
    std::thread::sleep(Duration::from_secs(2));
    talk(&mut asr, &streams, 6);
    let counts = settle(&asr, Duration::from_secs(30));
    assert_exactly_once(&asr, &counts, &nodes);
    let events = asr.events();
    let claims: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "stream.claimed" && e["from"] == "b")
        .collect();
    assert_eq!(
        claims.len(),
        b_streams.len(),
        "every stream of b continued its conversation"
    );
    // The silent RTP calls: every node hears the same media on them.
    let silent = |s: &&String| s.starts_with('s');
    let still = held_by(&admin, "a");
    let reference = still
        .iter()
        .filter(silent)
        .find(|s| !b_streams.contains(s))
        .expect("a silent call that never moved");
    let moved: Vec<&String> = b_streams.iter().filter(silent).collect();
    assert!(!moved.is_empty(), "b held no silent call: {b_streams:?}");
    let worst = moved
        .iter()
        .map(|m| largest_difference(&events, m, reference))
        .fold(0.0f64, f64::max);
    eprintln!("moved vs never moved: largest probability difference {worst:.2e}");
    let unmoved: Vec<String> = owners(&admin)
        .keys()
        .filter(|s| s.starts_with('s') && !b_streams.contains(s))
        .cloned()
        .collect();
    eprintln!(
        "never moved {} vs {}: {:.2e}",
        unmoved[0],
        unmoved[1],
        largest_difference(&events, &unmoved[0], &unmoved[1])
    );
    assert!(worst <= 1e-4, "a moved conversation differs by {worst}");

    // Node b comes back; then kill -9 of node a while segments keep coming.
    nodes[1].start();
    talk(&mut asr, &streams, 4);
    let a_streams = held_by(&admin, "a");
    let moved = kill_and_wait(&mut nodes[0], &a_streams, &admin, &mut asr, &streams);
    eprintln!("handover after kill -9 (talking): {moved:?}");
    assert!(moved <= Duration::from_secs(10), "handover took {moved:?}");
    talk(&mut asr, &streams, 5);
    let counts = settle(&asr, Duration::from_secs(30));
    assert_exactly_once(&asr, &counts, &nodes);
    nodes[0].start();

    // One NATS server dies and comes back while segments keep coming.
    nats.kill(2);
    talk(&mut asr, &streams, 6);
    nats.restart(2);
    talk(&mut asr, &streams, 4);
    let counts = settle(&asr, Duration::from_secs(40));
    assert_exactly_once(&asr, &counts, &nodes);

    // A rolling restart of every node.
    for node in nodes.iter_mut() {
        node.stop();
        talk(&mut asr, &streams, 2);
        node.start();
        talk(&mut asr, &streams, 3);
    }
    let counts = settle(&asr, Duration::from_secs(40));
    assert_exactly_once(&asr, &counts, &nodes);
    std::thread::sleep(Duration::from_secs(4));
    let held = load(&owners(&admin));
    assert_eq!(held.values().sum::<usize>(), 12, "{held:?}");
    assert!(
        held.values().all(|n| *n <= 5),
        "uneven after the restarts: {held:?}"
    );

    // Detach from the cluster: the owner stops it.
    let out = summerd_cli(&admin, &["detach", "s8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!owners(&admin).contains_key("s8"));
    let nodes_out = summerd_cli(&admin, &["nodes", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&nodes_out.stdout).lines().count(),
        3
    );
    drop(senders);
}

#[test]
fn the_reference_worker_reads_the_tap_from_nats_and_sends_segments_into_jetstream() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // One server that admits one user: the node, the worker and `tail` all authenticate.
    let nats = Nats::start_with(1, Some(("summerd", "s3cret")));
    let urls = nats.urls();
    let with_user = urls[0].replace("nats://", "nats://summerd:s3cret@");
    let setup = Setup {
        replicas: 1,
        tap: Some(free_port()),
        auth: Some(("summerd", "s3cret")),
        text_precision: "auto",
    };
    let mut node = Node::new("solo", &urls, &setup);
    node.start();
    let dir = tempfile::tempdir().unwrap();
    let call = common::short_stereo_call(dir.path());
    let journal = dir.path().join("journal.jsonl");
    let log = dir.path().join("asr.log");
    let mut worker = common::start_worker(
        "tcp://127.0.0.1:1",
        "tcp://127.0.0.1:1",
        &[
            "--nats",
            &with_user,
            "--tap-nats",
            "--exit-after-idle",
            "2",
            "--min-silence-ms",
            "500",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &log,
    );
    let req = json!({"id": "stereo", "uri": format!("file://{}", call["media"].as_str().unwrap()),
                     "template": "file", "channels": {"0": "agent", "1": "customer"}});
    let out = summerd_cli(&node.config(), &["attach", &req.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waited = Instant::now();
    while worker.try_wait().unwrap().is_none() && waited.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = worker.kill();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let sent: Vec<Value> = std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        sent.len() >= 3,
        "the worker sent {} segments:\n{said}",
        sent.len()
    );
    let asr = Asr::connect_as(&urls, Some(("summerd", "s3cret")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut emotions = Vec::new();
    while Instant::now() < deadline {
        emotions = asr
            .events()
            .into_iter()
            .filter(|e| e["type"] == "emotion" && e["stream"] == "stereo")
            .collect();
        if emotions.len() >= sent.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let by_seq: BTreeMap<u64, &Value> = emotions
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect();
    assert_eq!(by_seq.len(), emotions.len(), "an event twice: {emotions:?}");
    for s in &sent {
        let e = by_seq
            .get(&s["seq"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no event for {s}:\n{}", node.log()));
        assert_eq!(e["speaker"], s["speaker"]);
        assert_eq!(e["modalities"]["audio"], true, "{e}");
    }
    let speakers: std::collections::BTreeSet<&str> = sent
        .iter()
        .map(|s| s["speaker"].as_str().unwrap())
        .collect();
    assert_eq!(
        speakers.into_iter().collect::<Vec<_>>(),
        vec!["agent", "customer"]
    );
    // tail --nats reads them back from the start of the events stream.
    let tail = Command::new(env!("CARGO_BIN_EXE_summerd"))
        .args(["tail", "-c"])
        .arg(node.config())
        .args([
            "--nats",
            &urls[0],
            "--from-start",
            "--stream",
            "stereo",
            "--json",
        ])
        .args(["--count", &sent.len().to_string()])
        .output()
        .unwrap();
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .filter(|l| l.contains("\"emotion\""))
        .count();
    assert_eq!(lines, sent.len());
    node.stop();
}
