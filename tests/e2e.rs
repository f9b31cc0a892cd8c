//! End to end with real parts: a call made by espeak-ng and GStreamer (demo/make_call.py), the
//! daemon with the shipped default model, the reference ASR worker (silero-vad, Whisper and speaker d-vectors)
//! on the audio tap, a pyzmq ASR stand-in for three streams at once, events read off the bus,
//! and `summerd replay` on the same call.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    Daemon, attach, call_segments, collect, eventually, metric, replay, repo, short_call, summerd,
};
use serde_json::{Value, json};

fn config(events_port: Option<u16>) -> String {
    common::model_config(events_port)
}

/// The `[vision]` table naming the repository's converted weights.
fn vision() -> String {
    format!(
        "[vision]\nmtcnn_dir = \"{}\"\nexpression_file = \"{}\"\n",
        repo().join(summerd::vision::MTCNN_DIR).display(),
        repo().join(summerd::vision::EXPRESSION_FILE).display()
    )
}

fn daemon() -> Daemon {
    common::model_daemon()
}

fn subscribe(d: &Daemon) -> (zmq::Context, zmq::Socket) {
    common::subscribe(d, "emotion.")
}

#[test]
fn a_spoken_call_through_the_reference_asr_gives_one_event_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let call = short_call(dir.path());
    let lines = call["lines"].as_array().unwrap().clone();
    let d = daemon();
    // The reference ASR worker, listening before the call starts; real time: the call lasts
    // about 10 s.
    let media = call["media"].as_str().unwrap();
    let n = lines.len();
    let (events, asr_said) = common::through_worker(
        &d,
        dir.path(),
        json!({"id": "call-1", "uri": format!("file://{media}"), "template": "file"}),
        n,
    );
    assert_eq!(
        events.len(),
        n,
        "one event per spoken line\nevents: {events:#?}\nASR: {asr_said}\ndaemon: {}",
        d.log()
    );
    for (k, (e, l)) in events.iter().zip(&lines).enumerate() {
        assert_eq!(e["seq"], k as u64 + 1, "in order: {e}");
        assert_eq!(e["stream"], "call-1");
        for edge in ["start", "end"] {
            let (got, want) = (e[edge].as_f64().unwrap(), l[edge].as_f64().unwrap());
            assert!(
                (got - want).abs() <= 0.3,
                "line {k} {edge}: event {got:.2} s, speech {want:.2} s\n{e}\nASR: {asr_said}"
            );
        }
        let latency = e["latency_ms"].as_f64().unwrap();
        assert!(latency > 0.0 && latency < 5_000.0, "{e}");
        assert_eq!(e["modalities"]["audio"], true, "{e}");
        // The face, live: frames processed while the line was spoken.
        assert_eq!(e["face"]["present"], true, "{e}");
        let p: f64 = e["probs"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 1e-3, "{e}");
        eprintln!(
            "line {k} ({}): {} {:.2}, face {} {:.2}, latency {latency:.1} ms, heard {:?}",
            l["emotion"],
            e["label"],
            e["confidence"].as_f64().unwrap(),
            e["face"]["label"],
            e["face"]["fraction"],
            e["text"]
        );
    }
    // Two voices, told apart by the worker: the agent's lines share a label, the customer's
    // differs.
    let who: Vec<&str> = events
        .iter()
        .map(|e| e["speaker"].as_str().unwrap())
        .collect();
    assert!(
        who[0] == who[2] && who[0] != who[1],
        "speakers {who:?}\nASR: {asr_said}"
    );
    // Whisper's words: at most 15 % word errors against the script.
    let script: Vec<String> = lines
        .iter()
        .flat_map(|l| common::words(l["text"].as_str().unwrap()))
        .collect();
    let heard: Vec<String> = events
        .iter()
        .flat_map(|e| common::words(e["text"].as_str().unwrap()))
        .collect();
    let wer = common::word_errors(&script, &heard) as f64 / script.len() as f64;
    assert!(wer <= 0.15, "WER {wer:.2}: {heard:?}\nASR: {asr_said}");
    let m = d.scrape();
    assert_eq!(
        metric(&m, "summerd_utterances_total{outcome=\"published\"}"),
        Some(n as f64)
    );
}

#[test]
fn three_streams_at_once_one_audio_only_with_roles_honoured_and_replay_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let call = short_call(dir.path());
    let media = call["media"].as_str().unwrap().to_string();
    let wav = Path::new(&media).with_file_name("call.wav");
    let d = daemon();
    let (_ctx, sub) = subscribe(&d);
    let fast = json!({"sync": "false"});
    // a: agents are excluded (EU AI Act); b: audio and video; c: audio only.
    attach(
        &d,
        json!({"id": "a", "uri": format!("file://{media}"), "template": "file",
                      "infer_speakers": ["customer"], "options": fast}),
    );
    attach(
        &d,
        json!({"id": "b", "uri": format!("file://{media}"), "template": "file", "options": fast}),
    );
    attach(
        &d,
        json!({"id": "c", "uri": format!("file://{}", wav.display()), "template": "file", "options": fast}),
    );
    for id in ["a", "b", "c"] {
        let ended = eventually(Duration::from_secs(60), || {
            (d.stream_state(id).as_deref() == Some("ended")).then_some(())
        });
        assert!(ended.is_some(), "stream {id} did not end:\n{}", d.log());
    }
    let mut all = Vec::new();
    for id in ["a", "b", "c"] {
        all.extend(call_segments(&call, id));
    }
    common::push_segments(&d.transcripts, &all);
    let want = 1 + 3 + 3;
    let mut events = collect(&sub, Duration::from_secs(60), |g| g.len() >= want);
    events.extend(collect(&sub, Duration::from_secs(1), |_| false));
    assert_eq!(events.len(), want, "{events:#?}\n{}", d.log());
    for id in ["a", "b", "c"] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e["stream"] == id)
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        let expect: Vec<u64> = if id == "a" { vec![2] } else { vec![1, 2, 3] };
        assert_eq!(seqs, expect, "stream {id}");
    }
    for e in &events {
        assert_eq!(e["modalities"]["text"], true, "{e}");
        assert_eq!(e["modalities"]["audio"], true, "{e}");
        assert_eq!(e["modalities"]["visual"], false, "{e}");
        assert!(
            e["model"].as_str().unwrap().starts_with("summer-default@"),
            "{e}"
        );
        assert!(e["text"].is_string(), "publish_text is on: {e}");
        // The vision stage watched the streams with video (the astronaut's face, smiling)
        // and says nothing of the audio-only one. (sync = false: the file plays much faster
        // than real time, the video queue keeps only the newest frames, so a span may have
        // no processed frame: then it says so. The real-time test checks every line.)
        if e["stream"] == "c" {
            assert!(e.get("face").is_none(), "{e}");
        } else {
            let f = &e["face"];
            let frames = f["frames"].as_u64().unwrap();
            assert_eq!(f["present"], frames > 0, "{e}");
            if frames > 0 {
                assert!(f["fraction"].as_f64().unwrap() > 0.9, "{e}");
                assert_eq!(f["label"], "happy", "{e}");
            }
        }
    }
    let m = d.scrape();
    assert!(metric(&m, "summerd_vision_faces_total").unwrap_or(0.0) > 0.0);
    assert_eq!(
        metric(&m, "summerd_utterances_total{outcome=\"excluded\"}"),
        Some(2.0)
    );

    // The same call through `summerd replay` gives the same estimates as stream b.
    let seg_file = dir.path().join("b.jsonl");
    std::fs::write(&seg_file, call_segments(&call, "b").join("\n") + "\n").unwrap();
    let cfg = dir.path().join("replay.toml");
    std::fs::write(&cfg, config(None)).unwrap();
    let out = common::succeed(&mut replay(&media, &seg_file, &cfg));
    let replayed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let live: Vec<&Value> = events.iter().filter(|e| e["stream"] == "b").collect();
    assert_eq!(replayed.len(), 3);
    for (r, l) in replayed.iter().zip(live) {
        assert_eq!(r["seq"], l["seq"]);
        assert_eq!(r["label"], l["label"], "replay {r}\nlive {l}");
        // The replay pools every frame of the span (no real-time drops).
        assert_eq!(r["face"]["present"], true, "{r}");
        assert_eq!(r["face"]["label"], "happy", "{r}");
        for (k, v) in r["probs"].as_object().unwrap() {
            let (a, b) = (v.as_f64().unwrap(), l["probs"][k].as_f64().unwrap());
            assert!((a - b).abs() < 0.02, "{k}: replay {a} live {b}");
        }
    }
}

#[test]
fn bad_transcripts_and_a_missing_model_get_clear_errors() {
    // A model directory without weights: the daemon refuses to start, naming the file, with
    // the exit code of a configuration error; `summerd validate` says the same.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("model");
    std::fs::create_dir(&m).unwrap();
    std::fs::copy(
        repo().join("models/summer-default/manifest.json"),
        m.join("manifest.json"),
    )
    .unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\npath = \"{}\"\n[text_encoder]\ndir = \"{}\"\n[metrics]\nenabled = false\n[control]\nenabled = false\n{}",
            m.display(),
            repo().join("models/third_party/all-minilm-l6-v2").display(),
            vision()
        ),
    )
    .unwrap();
    for verb in ["run", "validate"] {
        let out = summerd().args([verb, "-c"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{verb}: {err}");
        assert!(err.contains("weights.safetensors"), "{verb}: {err}");
    }

    // A replay with a malformed line: the good lines still give events, the bad one is named.
    let call = short_call(dir.path());
    let mut lines = call_segments(&call, "x");
    lines.insert(1, "{\"v\": 1, \"stream\": \"x\", \"seq\": \"two\"}".into());
    let seg = dir.path().join("x.jsonl");
    std::fs::write(&seg, lines.join("\n")).unwrap();
    let rcfg = dir.path().join("replay.toml");
    std::fs::write(&rcfg, config(None)).unwrap();
    let out = replay(call["media"].as_str().unwrap(), &seg, &rcfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.jsonl:2: rejected"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn eval_runs_the_shipped_model_on_labelled_wavs_and_on_a_meld_csv() {
    let dir = tempfile::tempdir().unwrap();
    // Four clips by espeak-ng, two "speakers"; one label the model does not have.
    let clips = [
        ("a.wav", "anger", "s1", "I am furious about this"),
        ("b.wav", "neutral", "s1", "The meeting is at ten"),
        ("c.wav", "joy", "s2", "That is wonderful news"),
        ("d.wav", "boredom", "s2", "Whatever you say"),
    ];
    let mut labels = String::from("file,label,speaker\n");
    for (f, l, s, text) in clips {
        let ok = Command::new("espeak-ng")
            .args(["-v", "en-us", "-w"])
            .arg(dir.path().join(f))
            .arg(text)
            .status()
            .expect("espeak-ng (set up by tests/setup.sh)")
            .success();
        assert!(ok);
        labels += &format!("{f},{l},{s}\n");
    }
    std::fs::write(dir.path().join("labels.csv"), labels).unwrap();
    let out = summerd()
        .args(["eval", "--wavs"])
        .arg(dir.path())
        .arg("--labels")
        .arg(dir.path().join("labels.csv"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("'boredom' is not one of the model's classes"),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metrics"]["n"], 3, "{v}");
    // The same clips through G.711 mu-law: the same clips scored.
    let out = common::succeed(
        summerd()
            .args(["eval", "--channel", "g711u", "--wavs"])
            .arg(dir.path())
            .arg("--labels")
            .arg(dir.path().join("labels.csv")),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metrics"]["n"], 3, "{v}");

    // A MELD-format CSV: two dialogues, text only.
    let csv = dir.path().join("mini.csv");
    std::fs::write(
        &csv,
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n\
         1,I can't believe you did that!,Ross,anger,negative,0,0\n\
         2,I'm sorry.,Rachel,sadness,negative,0,1\n\
         3,Okay.,Ross,neutral,neutral,0,2\n\
         4,We won the lottery!,Monica,joy,positive,1,0\n\
         5,What?!,Chandler,surprise,positive,1,1\n",
    )
    .unwrap();
    let out = common::succeed(summerd().args(["eval", "--meld-csv"]).arg(&csv));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metrics"]["n"], 5, "{v}");
}
