//! The audio tap's wire format as a pyzmq SUB sees it: [stream, header JSON, S16LE PCM].
//! Ingest (a later stage) is what feeds the tap in production; here the test feeds the
//! daemon's own tap publisher directly.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Peer, free_port};
use summerd::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzmq_sub_receives_tap_messages() {
    let (t, e, a) = (free_port(), free_port(), free_port());
    let toml = format!(
        "[transcripts]\nendpoint = \"tcp://127.0.0.1:{t}\"\n[events]\nendpoint = \"tcp://127.0.0.1:{e}\"\n\
         [audio_tap]\nendpoint = \"tcp://127.0.0.1:{a}\"\n[metrics]\nenabled = false\n[control]\nenabled = false\n"
    );
    let cfg = Config::from_toml(&toml, Path::new("inline.toml")).unwrap();
    let running = summerd::daemon::start(&cfg).await.unwrap();
    let tap = running.tap().unwrap().clone();

    let endpoint = format!("tcp://127.0.0.1:{a}");
    let mut sub = tokio::task::spawn_blocking(move || {
        let mut p = Peer::spawn(
            "subscribe.py",
            &[
                &endpoint,
                "--prefix",
                "call-42",
                "--count",
                "1",
                "--timeout",
                "10",
            ],
        );
        assert_eq!(p.line().as_deref(), Some("subscribed"));
        p
    })
    .await
    .unwrap();

    // 40 ms of a 440 Hz tone at 16 kHz.
    let pcm: Vec<i16> = (0..640)
        .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / 16000.0).sin() * 8000.0) as i16)
        .collect();
    // Publish until the subscriber has one (its subscription may still be on the way).
    let reader = tokio::task::spawn_blocking(move || {
        let line = sub.line();
        let _ = sub.finish();
        line
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        tap.publish(summerd::events::tap_message("call-7", 0.0, &pcm));
        tap.publish(summerd::events::tap_message("call-42", 12.3, &pcm));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = reader.await.unwrap().expect("subscriber got a tap message");
    let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        msg["topic"], "call-42",
        "the prefix filter lets only call-42 through"
    );
    let header: serde_json::Value = serde_json::from_str(msg["body"].as_str().unwrap()).unwrap();
    assert_eq!(header["v"], 1);
    assert_eq!(header["stream"], "call-42");
    assert_eq!(header["pts"], 12.3);
    assert_eq!(header["rate"], 16000);
    assert_eq!(header["channels"], 1);
    assert_eq!(header["format"], "S16LE");
    assert_eq!(msg["extra_frame_bytes"], serde_json::json!([1280]));

    drop(tap);
    running.stop("test over").await.unwrap();
}
