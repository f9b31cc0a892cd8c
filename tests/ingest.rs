//! Ingest with real components on loopback: GStreamer pipelines from the shipped templates,
//! files (wav made here, mp4 from ../shared), a real RTSP server (gst-rtsp-server), RTP/UDP
//! G.711 from a gst-launch sender, SRT (MPEG-TS) from a gst-launch listener, live test sources; attach/detach/list over the control
//! socket; the audio tap as a pyzmq SUB sees it; the reconnect-and-isolation fault test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Peer, eventually, free_port, metric};
use serde_json::json;

fn pipelines() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .display()
        .to_string()
}

/// A daemon with the repository's templates and no streams.
fn daemon() -> Daemon {
    Daemon::start_custom(
        |_, _| format!("[pipelines]\ndir = \"{}\"\n", pipelines()),
        &[],
        false,
    )
}

fn attach(d: &Daemon, id: &str, uri: &str, template: &str, options: serde_json::Value) {
    let r = d.control(
        json!({"cmd": "attach", "id": id, "uri": uri, "template": template, "options": options}),
    );
    assert_eq!(r["ok"], true, "attach {id}: {r}");
}

fn audio_seconds(d: &Daemon, id: &str) -> f64 {
    metric(
        &d.scrape(),
        &format!("summerd_ingest_audio_seconds_total{{stream=\"{id}\"}}"),
    )
    .unwrap_or(0.0)
}

fn gst_launch(args: &str) -> Child {
    Command::new("gst-launch-1.0")
        .args(["-q"])
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 (Debian gstreamer1.0-tools)")
}

/// A 3-second 44.1 kHz mono WAV with a 440 Hz tone, made by GStreamer.
fn make_wav(dir: &Path) -> PathBuf {
    let p = dir.join("tone.wav");
    let ok = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "audiotestsrc",
            "num-buffers=300",
            "samplesperbuffer=441",
            "freq=440",
            "!",
        ])
        .args([
            "audio/x-raw,rate=44100,channels=1",
            "!",
            "wavenc",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", p.display()))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    p
}

fn events(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| serde_json::from_str(m["body"].as_str()?).ok())
        .collect()
}

#[test]
fn wav_file_feeds_the_tap_on_its_timeline_and_ends() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();
    let wav = make_wav(dir.path());
    let mut tap = Peer::spawn(
        "subscribe.py",
        &[
            &d.tap,
            "--prefix",
            "call",
            "--count",
            "75",
            "--timeout",
            "20",
        ],
    );
    let mut life = Peer::spawn(
        "subscribe.py",
        &[
            &d.events,
            "--prefix",
            "lifecycle.call",
            "--count",
            "2",
            "--timeout",
            "20",
        ],
    );
    assert_eq!(tap.line().as_deref(), Some("subscribed"));
    assert_eq!(life.line().as_deref(), Some("subscribed"));
    attach(
        &d,
        "call-wav",
        &format!("file://{}", wav.display()),
        "file",
        json!({"sync": "false"}),
    );

    // 3 s at 16 kHz in 40 ms messages: 75 messages, contiguous from 0.
    let lines = tap.finish();
    assert_eq!(lines.len(), 75, "tap messages: {}", lines.len());
    let mut expected_pts = 0.0;
    for l in &lines {
        let m: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(m["topic"], "call-wav");
        let h: serde_json::Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            (h["rate"].as_u64(), h["format"].as_str()),
            (Some(16000), Some("S16LE"))
        );
        let pts = h["pts"].as_f64().unwrap();
        assert!(
            (pts - expected_pts).abs() < 1e-6,
            "pts {pts}, expected {expected_pts}"
        );
        assert_eq!(m["extra_frame_bytes"], json!([1280]));
        expected_pts += 0.04;
    }
    let ev = events(&life.finish());
    let kinds: Vec<_> = ev
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["stream.up", "stream.down"], "{ev:?}");
    assert_eq!(ev[1]["reason"], "end of stream");
    assert!(
        (ev[1]["media_time"].as_f64().unwrap() - 3.0).abs() < 0.05,
        "{ev:?}"
    );
    assert_eq!(d.stream_state("call-wav").as_deref(), Some("ended"));
    assert!((audio_seconds(&d, "call-wav") - 3.0).abs() < 0.01);
}

#[test]
fn mp4_from_shared_yields_scaled_video_frames_and_audio() {
    let Some(assets) = summerd::assets::dir() else {
        eprintln!(
            "SKIPPED: ../shared (or $SUMMERD_ASSETS) is absent; the mp4 test needs media/street-faces.mp4"
        );
        return;
    };
    let d = daemon();
    let mp4 = assets
        .join("media/street-faces.mp4")
        .canonicalize()
        .unwrap();
    attach(
        &d,
        "street",
        &format!("file://{}", mp4.display()),
        "file",
        json!({"sync": "false"}),
    );
    let ended = eventually(Duration::from_secs(30), || {
        (d.stream_state("street").as_deref() == Some("ended")).then_some(())
    });
    assert!(ended.is_some(), "{}", d.log());
    let m = d.scrape();
    let frames = metric(&m, "summerd_ingest_video_frames_total{stream=\"street\"}").unwrap();
    // 4.2 s at 5 fps; the video queue holds 4 and drops the oldest when the consumer lags.
    let dropped = metric(
        &m,
        "summerd_ingest_dropped_total{stream=\"street\",kind=\"video\"}",
    )
    .unwrap();
    assert!(
        (19.0..=23.0).contains(&(frames + dropped)),
        "frames {frames} + dropped {dropped}"
    );
    assert!((audio_seconds(&d, "street") - 4.2).abs() < 0.05);
}

/// The control socket applies the rule `[[streams]]` does: a template is a name inside
/// `pipelines.dir`. A `.gst` file written anywhere else is never run, by relative or absolute
/// path; and the daemon's own id is not a stream's.
#[test]
fn attach_refuses_template_paths_and_the_daemons_own_id() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let evil = dir.path().join("evil.gst");
    std::fs::write(
        &evil,
        format!(
            "audiotestsrc num-buffers=1 ! filesink location={} name=audio\n",
            marker.display()
        ),
    )
    .unwrap();
    let stem = evil.with_extension("");
    let relative = format!("../../../../../../../..{}", stem.display());
    for template in [
        stem.to_str().unwrap(),
        relative.as_str(),
        "../pipelines/file",
    ] {
        let r =
            d.control(json!({"cmd": "attach", "id": "x", "uri": "test://x", "template": template}));
        assert_eq!(r["ok"], false, "{template}: {r}");
        assert!(
            r["error"].as_str().unwrap().contains("not a template name"),
            "{template}: {r}"
        );
    }
    let r =
        d.control(json!({"cmd": "attach", "id": "daemon", "uri": "test://x", "template": "test"}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("reserved"), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a template outside pipelines.dir ran");
    assert_eq!(d.control(json!({"cmd": "list"}))["streams"], json!([]));
}

/// A source that never produces media gives up after `ingest.max_attempts` tries and is
/// `failed` (a file is not retried forever); a recording cut off half-way ends with a
/// `stream.error` that says so before its `stream.down`, so it does not look complete.
#[test]
fn a_dead_file_fails_and_a_cut_off_recording_says_so() {
    let d = Daemon::start_custom(
        |_, _| {
            format!(
                "[pipelines]\ndir = \"{}\"\n[ingest]\nmax_attempts = 3\n\
                 backoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\n",
                pipelines()
            )
        },
        &[],
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.mp4");
    let ok = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "audiotestsrc",
            "num-buffers=400",
            "!",
            "audioconvert",
            "!",
        ])
        .args([
            "avenc_aac",
            "!",
            "mp4mux",
            "faststart=true",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", full.display()))
        .status()
        .unwrap()
        .success();
    assert!(ok, "gst-launch-1.0 could not make the recording");
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let mut life = Peer::spawn(
        "subscribe.py",
        &[
            &d.events,
            "--prefix",
            "lifecycle.",
            "--count",
            "7",
            "--timeout",
            "20",
        ],
    );
    assert_eq!(life.line().as_deref(), Some("subscribed"));
    attach(
        &d,
        "gone",
        "file:///nonexistent/call.mp4",
        "file",
        json!({}),
    );
    attach(
        &d,
        "cut",
        &format!("file://{}", cut.display()),
        "file",
        json!({"sync": "false"}),
    );
    let settled = eventually(Duration::from_secs(20), || {
        (d.stream_state("gone").as_deref() == Some("failed")
            && d.stream_state("cut").as_deref() == Some("ended"))
        .then_some(())
    });
    assert!(settled.is_some(), "{}", d.log());
    let ev = events(&life.finish());
    let of =
        |id: &str| -> Vec<&serde_json::Value> { ev.iter().filter(|e| e["stream"] == id).collect() };
    let gone = of("gone");
    assert_eq!(
        gone.len(),
        4,
        "one stream.error a try, then the last: {gone:#?}"
    );
    let last = gone[3]["reason"].as_str().unwrap();
    assert!(
        last.contains("failed: no media after 3 attempt(s)"),
        "{last}"
    );
    let cut_events: Vec<(&str, &str)> = of("cut")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(cut_events.len(), 3, "{cut_events:?}");
    assert_eq!(cut_events[0].0, "stream.up");
    assert_eq!(cut_events[1].0, "stream.error");
    assert!(cut_events[1].1.contains("cut off"), "{cut_events:?}");
    assert_eq!(cut_events[2].0, "stream.down");
    assert!(
        cut_events[2].1.contains("decoding errors"),
        "{cut_events:?}"
    );
    // The log says the failing file once and then at powers of two, not every second.
    let warned = d.log().matches("Stream failed; retrying").count();
    assert!(warned <= 2, "{warned} WARN lines for 2 failures");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mp4");
    std::fs::write(
        &junk,
        (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();

    let r = d
        .control(json!({"cmd": "attach", "id": "x", "uri": "gopher://host/1", "template": "rtsp"}));
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("scheme 'gopher'"),
        "{r}"
    );
    let r =
        d.control(json!({"cmd": "attach", "id": "x", "uri": "file:///a", "template": "webrtc"}));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("pipeline template 'webrtc'"),
        "{r}"
    );
    let r = d
        .control(json!({"cmd": "attach", "id": "bad id!", "uri": "file:///a", "template": "file"}));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("not a valid stream id"),
        "{r}"
    );
    let r = d.control(json!({"cmd": "launch"}));
    assert!(r["error"].as_str().unwrap().contains("bad request"), "{r}");
    let r = d.control(json!({"cmd": "detach", "id": "nope"}));
    assert!(r["error"].as_str().unwrap().contains("not attached"), "{r}");

    let mut life = Peer::spawn(
        "subscribe.py",
        &[
            &d.events,
            "--prefix",
            "lifecycle.junk",
            "--count",
            "1",
            "--timeout",
            "15",
        ],
    );
    assert_eq!(life.line().as_deref(), Some("subscribed"));
    attach(
        &d,
        "junk",
        &format!("file://{}", junk.display()),
        "file",
        json!({}),
    );
    let r =
        d.control(json!({"cmd": "attach", "id": "junk", "uri": "file:///a", "template": "file"}));
    assert!(
        r["error"].as_str().unwrap().contains("already attached"),
        "{r}"
    );
    let ev = events(&life.finish());
    assert_eq!(ev.len(), 1, "no stream.error for a corrupt file");
    assert_eq!(ev[0]["type"], "stream.error");
    let reason = ev[0]["reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{ev:?}");
    // The daemon is fine and detaching frees the stream.
    assert_eq!(
        d.control(json!({"cmd": "detach", "id": "junk"}))["ok"],
        true
    );
    assert_eq!(d.control(json!({"cmd": "list"}))["streams"], json!([]));
    assert_eq!(common::http_get(&d.metrics, "/healthz").unwrap().0, 200);
}

/// The RTSP server dies mid-stream and comes back: its streams go down and are flowing again
/// within 2 s of its return; the RTP and test streams in the same daemon never pause.
#[test]
fn rtsp_outage_reconnects_while_other_streams_keep_flowing() {
    let d = daemon();
    let rtsp_port = free_port();
    let rtp_port = free_port();
    let mut server = common::RtspServer::start(rtsp_port);
    let mut sender = gst_launch(&format!(
        "audiotestsrc is-live=true freq=220 ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay ! udpsink host=127.0.0.1 port={rtp_port}"
    ));
    attach(
        &d,
        "av",
        &format!("rtsp://127.0.0.1:{rtsp_port}/av"),
        "rtsp",
        json!({}),
    );
    attach(
        &d,
        "aac",
        &format!("rtsp://127.0.0.1:{rtsp_port}/audio"),
        "rtsp",
        json!({}),
    );
    attach(
        &d,
        "sip",
        &format!("udp://127.0.0.1:{rtp_port}"),
        "rtp-pcmu",
        json!({}),
    );
    attach(&d, "synthetic", "test://tone", "test", json!({}));
    let ids = ["av", "aac", "sip", "synthetic"];
    let all_up = eventually(Duration::from_secs(20), || {
        ids.iter()
            .all(|id| d.stream_state(id).as_deref() == Some("up"))
            .then_some(())
    });
    assert!(
        all_up.is_some(),
        "not all streams came up: {}\n{}",
        d.control(json!({"cmd": "list"})),
        d.log()
    );
    let frames = metric(
        &d.scrape(),
        "summerd_ingest_video_frames_total{stream=\"av\"}",
    )
    .unwrap_or(0.0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        metric(
            &d.scrape(),
            "summerd_ingest_video_frames_total{stream=\"av\"}"
        )
        .unwrap()
            > frames,
        "RTSP video frames are not flowing"
    );

    // Outage.
    let _ = server.0.kill();
    let _ = server.0.wait();
    let before: Vec<f64> = ["sip", "synthetic"]
        .iter()
        .map(|id| audio_seconds(&d, id))
        .collect();
    let down = eventually(Duration::from_secs(10), || {
        ["av", "aac"]
            .iter()
            .all(|id| d.stream_state(id).as_deref() != Some("up"))
            .then_some(())
    });
    assert!(
        down.is_some(),
        "RTSP streams did not notice the outage\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let outage = 2.0;
    for (id, b) in ["sip", "synthetic"].iter().zip(&before) {
        let gained = audio_seconds(&d, id) - b;
        assert!(
            gained > outage * 0.8,
            "{id} paused during the RTSP outage: {gained:.2} s of audio"
        );
        assert_eq!(d.stream_state(id).as_deref(), Some("up"));
    }

    // Return: flowing again within 2 s.
    server = common::RtspServer::start(rtsp_port);
    let back = Instant::now();
    let up = eventually(Duration::from_secs(10), || {
        ["av", "aac"]
            .iter()
            .all(|id| d.stream_state(id).as_deref() == Some("up"))
            .then(|| back.elapsed())
    });
    let took = up.unwrap_or_else(|| panic!("RTSP streams did not come back\n{}", d.log()));
    eprintln!("RTSP streams flowing again {took:?} after the server returned");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    let m = d.scrape();
    // Both RTSP streams reconnected; neither took the server's end of stream for the call's.
    for id in ["av", "aac"] {
        let key = format!("summerd_stream_restarts_total{{stream=\"{id}\"}}");
        assert!(metric(&m, &key).unwrap() >= 1.0, "{id} did not reconnect");
    }
    assert_eq!(
        metric(&m, "summerd_stream_restarts_total{stream=\"sip\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "summerd_stream_restarts_total{stream=\"synthetic\"}"),
        Some(0.0)
    );

    // The timeline stays continuous across the reconnect: it now covers the outage too.
    let list = d.control(json!({"cmd": "list"}));
    let av = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "av")
        .unwrap();
    let synthetic = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "synthetic")
        .unwrap();
    let (a, s) = (
        av["media_time"].as_f64().unwrap(),
        synthetic["media_time"].as_f64().unwrap(),
    );
    assert!(
        (a - s).abs() < 1.5,
        "av timeline {a:.2} vs synthetic {s:.2}"
    );

    // Detach frees the stream; transcripts for it become unknown.
    assert_eq!(d.control(json!({"cmd": "detach", "id": "av"}))["ok"], true);
    assert_eq!(d.stream_state("av"), None);
    let _ = sender.kill();
    let _ = sender.wait();
    drop(server);
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An SRT sender (a listener, as an encoder or gateway is) of H.264 + AAC in MPEG-TS on `port`:
/// parameter sets before every keyframe and seven TS packets a message, as SRT senders send.
fn srt_sender(port: u16) -> Killed {
    Killed(gst_launch(&format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=25/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! h264parse config-interval=-1 ! queue \
         ! mpegtsmux alignment=7 name=m ! srtsink uri=srt://127.0.0.1:{port}?mode=listener wait-for-connection=false \
         audiotestsrc is-live=true freq=330 ! audio/x-raw,rate=48000,channels=1 ! avenc_aac ! aacparse ! queue ! m."
    )))
}

/// The `srt` template as an SRT caller: audio and video flow from a live SRT listener, and when
/// the sender goes away and comes back the stream reconnects and flows again.
#[test]
fn srt_caller_receives_audio_and_video_and_reconnects() {
    let d = daemon();
    let port = free_port();
    let sender = srt_sender(port);
    attach(
        &d,
        "srt",
        &format!("srt://127.0.0.1:{port}?mode=caller"),
        "srt",
        json!({}),
    );
    let frames = || {
        metric(
            &d.scrape(),
            "summerd_ingest_video_frames_total{stream=\"srt\"}",
        )
        .unwrap_or(0.0)
    };
    let flowing = eventually(Duration::from_secs(20), || {
        (audio_seconds(&d, "srt") > 2.0 && frames() >= 5.0).then_some(())
    });
    assert!(
        flowing.is_some(),
        "SRT stream not flowing: audio {:.2} s, {} frames\n{}",
        audio_seconds(&d, "srt"),
        frames(),
        d.log()
    );

    // The sender goes away, then comes back on the same port.
    drop(sender);
    let down = eventually(Duration::from_secs(15), || {
        (d.stream_state("srt").as_deref() != Some("up")).then_some(())
    });
    assert!(down.is_some(), "the SRT stream did not notice\n{}", d.log());
    let _sender = srt_sender(port);
    let before = audio_seconds(&d, "srt");
    let back = eventually(Duration::from_secs(20), || {
        (audio_seconds(&d, "srt") > before + 1.0).then_some(())
    });
    assert!(
        back.is_some(),
        "the SRT stream did not come back\n{}",
        d.log()
    );
    assert!(metric(&d.scrape(), "summerd_stream_restarts_total{stream=\"srt\"}").unwrap() >= 1.0);
}
