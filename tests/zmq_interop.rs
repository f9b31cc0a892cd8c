//! The ZeroMQ contracts against pyzmq, the client most ASR workers and consumers use:
//! transcripts in (10,000 messages, 1,000 malformed), events out (SUB), the audio tap,
//! CURVE (right key in, wrong server key and unauthorised client key out), metrics scraped
//! over HTTP, and the SIGTERM/SIGINT drain.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Daemon, Peer, eventually, http_get, metric, run_peer};

fn rejected(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("summerd_transcripts_rejected_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(-1.0)
}

#[test]
fn ten_thousand_transcripts_from_pyzmq_are_counted_exactly() {
    let d = Daemon::start("");
    let out = run_peer(
        "push_transcripts.py",
        &[
            &d.transcripts,
            "--total",
            "10000",
            "--bad",
            "1000",
            "--seed",
            "11",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("peer report");
    assert_eq!(report["sent"], 10000);
    let valid = report["valid"].as_f64().unwrap();
    assert_eq!(valid, 9000.0);
    let expected: BTreeMap<String, f64> = report["rejected"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    assert!(
        expected.len() >= 12,
        "the peer should vary its malformed messages: {expected:?}"
    );

    // Every message must be accounted for: accepted + every reason = 10,000.
    let text = eventually(Duration::from_secs(60), || {
        let t = d.scrape();
        let acc = metric(&t, "summerd_transcripts_accepted_total")?;
        let rej: f64 = summerd::transcripts::Reject::REASONS
            .iter()
            .map(|r| rejected(&t, r))
            .sum();
        (acc + rej >= 10000.0).then_some(t)
    })
    .unwrap_or_else(|| panic!("daemon did not account for all messages:\n{}", d.scrape()));

    assert_eq!(
        metric(&text, "summerd_transcripts_accepted_total"),
        Some(valid),
        "{text}"
    );
    for reason in summerd::transcripts::Reject::REASONS {
        let want = expected.get(reason).copied().unwrap_or(0.0);
        assert_eq!(rejected(&text, reason), want, "reason {reason}\n{text}");
    }

    // It never stopped: still healthy, still accepting.
    assert_eq!(http_get(&d.metrics, "/healthz").unwrap().0, 200);
    run_peer(
        "push_transcripts.py",
        &[&d.transcripts, "--total", "10", "--bad", "0"],
    );
    let more = eventually(Duration::from_secs(10), || {
        let t = d.scrape();
        (metric(&t, "summerd_transcripts_accepted_total")? >= valid + 10.0).then_some(())
    });
    assert!(
        more.is_some(),
        "daemon stopped accepting after the malformed flood"
    );

    // Rejects were logged, but rate-limited: far fewer lines than rejects.
    let log = d.log();
    let lines = log.matches("Rejected a transcript message").count();
    assert!(
        (1..500).contains(&lines),
        "{lines} reject log lines for 1000 rejects"
    );
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let d = Daemon::start("");
    let (code, body) = http_get(&d.metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "# TYPE summerd_build info",
        "summerd_build_info{version=\"0.1.0\"",
        "summerd_transcripts_accepted_total 0",
        "summerd_transcripts_rejected_total{reason=\"not_json\"} 0",
        "summerd_messages_published_total{socket=\"events\"}",
        "summerd_messages_dropped_total{socket=\"events\"} 0",
        "summerd_socket_errors_total{socket=\"transcripts\"} 0",
        "summerd_ready 1",
    ] {
        assert!(body.contains(name), "missing {name:?} in\n{body}");
    }
    assert_eq!(http_get(&d.metrics, "/nope").unwrap().0, 404);
    assert_eq!(
        http_get(&d.metrics, "/healthz").unwrap(),
        (200, "ok\n".into())
    );
}

/// SUB receives what the daemon publishes; SIGTERM drains (daemon.stopping reaches the
/// subscriber) and exits 0.
#[test]
fn pyzmq_sub_receives_lifecycle_events_and_sigterm_drains() {
    for sig in ["TERM", "INT"] {
        let d = Daemon::start("");
        let mut sub = Peer::spawn(
            "subscribe.py",
            &[
                &d.events,
                "--prefix",
                "lifecycle.daemon",
                "--count",
                "1",
                "--timeout",
                "20",
            ],
        );
        assert_eq!(sub.line().as_deref(), Some("subscribed"));
        d.signal(sig);
        let (code, log) = d.wait(Duration::from_secs(10));
        assert_eq!(code, Some(0), "SIG{sig}: exit {code:?}\n{log}");
        assert!(log.contains("Stopped cleanly"), "{log}");
        let lines = sub.finish();
        assert_eq!(lines.len(), 1, "SIG{sig}: subscriber got {lines:?}");
        let msg: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(msg["topic"], "lifecycle.daemon");
        let body: serde_json::Value = serde_json::from_str(msg["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["v"], 1);
        assert_eq!(body["type"], "daemon.stopping");
        assert_eq!(body["reason"], format!("SIG{sig}"));
    }
}

/// Segments received before SIGTERM are all taken in before exit.
#[test]
fn sigterm_after_a_burst_loses_nothing_received() {
    let d = Daemon::start("");
    run_peer(
        "push_transcripts.py",
        &[&d.transcripts, "--total", "3000", "--bad", "0"],
    );
    let got = eventually(Duration::from_secs(30), || {
        (metric(&d.scrape(), "summerd_transcripts_accepted_total")? >= 3000.0).then_some(())
    });
    assert!(got.is_some());
    d.signal("TERM");
    let (code, log) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("transcripts_accepted=3000"), "{log}");
}

fn keypair() -> (String, String) {
    let k = zmq::CurveKeyPair::new().unwrap();
    (
        zmq::z85_encode(&k.public_key).unwrap(),
        zmq::z85_encode(&k.secret_key).unwrap(),
    )
}

#[test]
fn curve_admits_the_right_keys_and_refuses_the_rest() {
    let (server_pub, server_sec) = keypair();
    let (client_pub, client_sec) = keypair();
    let (stranger_pub, stranger_sec) = keypair();
    let (wrong_server_pub, _) = keypair();
    let d = Daemon::start_with(
        |dir, (t, e, _)| {
            std::fs::write(dir.join("server.key"), &server_sec).unwrap();
            std::fs::write(dir.join("server.pub"), &server_pub).unwrap();
            std::fs::write(
                dir.join("clients"),
                format!("# the ASR worker\n{client_pub}\n"),
            )
            .unwrap();
            format!(
                "[transcripts]\nendpoint = \"tcp://127.0.0.1:{t}\"\ncurve = true\n\
             [events]\nendpoint = \"tcp://127.0.0.1:{e}\"\ncurve = true\n\
             [curve]\nsecret_key_file = \"server.key\"\npublic_key_file = \"server.pub\"\n\
             authorized_keys_file = \"clients\"\n"
            )
        },
        &[],
    );
    let accepted = || metric(&d.scrape(), "summerd_transcripts_accepted_total").unwrap();
    let push = |server: &str, public: &str, secret: &str| {
        // PUSH does not fail on a refused handshake; linger bounds how long it tries.
        // Keys go as --opt=KEY: a Z85 key may begin with '-'.
        let (s, p, k) = (
            format!("--server-key={server}"),
            format!("--client-public={public}"),
            format!("--client-secret={secret}"),
        );
        run_peer(
            "push_transcripts.py",
            &[&d.transcripts, "--total", "20", "--bad", "0", &s, &p, &k],
        );
    };

    push(&server_pub, &client_pub, &client_sec);
    assert!(
        eventually(Duration::from_secs(15), || (accepted() >= 20.0)
            .then_some(()))
        .is_some(),
        "the authorised client was not accepted\n{}",
        d.log()
    );

    push(&wrong_server_pub, &client_pub, &client_sec);
    push(&server_pub, &stranger_pub, &stranger_sec);
    let denied = eventually(Duration::from_secs(10), || {
        (metric(&d.scrape(), "summerd_curve_auth_denied_total")? >= 1.0).then_some(())
    });
    assert!(
        denied.is_some(),
        "the unauthorised client key was not refused through ZAP"
    );
    // The wrong server key never reaches ZAP: the socket's monitor counts and logs it.
    let failed = |reason: &str| {
        metric(
            &d.scrape(),
            &format!(
                "summerd_curve_handshakes_failed_total{{socket=\"transcripts\",reason=\"{reason}\"}}"
            ),
        )
    };
    let seen = eventually(Duration::from_secs(10), || {
        let undecided = failed("no_detail").unwrap_or(0.0) + failed("protocol").unwrap_or(0.0);
        (undecided >= 1.0 && failed("unauthorised")? >= 1.0).then_some(())
    });
    assert!(
        seen.is_some(),
        "refused handshakes were not counted\n{}",
        d.scrape()
    );
    assert!(
        d.log().contains("Refused a CURVE handshake"),
        "refused handshakes were not logged\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        accepted(),
        20.0,
        "a client with a wrong key got messages in"
    );

    // Events: with an authorised-keys list, neither a subscriber with a wrong server key nor
    // one with the right server key but an unlisted client key gets anything.
    // (`curve_subscriber_with_the_right_key_receives_events` shows the positive case.)
    let mut good = Peer::spawn(
        "subscribe.py",
        &[
            &d.events,
            "--prefix",
            "lifecycle.daemon",
            "--timeout",
            "8",
            &format!("--server-key={server_pub}"),
        ],
    );
    let mut bad = Peer::spawn(
        "subscribe.py",
        &[
            &d.events,
            "--prefix",
            "lifecycle.daemon",
            "--timeout",
            "8",
            &format!("--server-key={wrong_server_pub}"),
        ],
    );
    assert_eq!(good.line().as_deref(), Some("subscribed"));
    assert_eq!(bad.line().as_deref(), Some("subscribed"));
    // The SUB peers make fresh client keypairs, which are not in the authorised list.
    d.signal("TERM");
    let (code, log) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    let good = good.finish();
    let bad = bad.finish();
    assert!(
        bad.is_empty(),
        "a subscriber with the wrong server key received {bad:?}"
    );
    // The ZAP list applies to every CURVE socket: a subscriber whose own key is not
    // authorised is refused as well.
    assert!(
        good.is_empty(),
        "an unauthorised subscriber received {good:?}"
    );
}

#[test]
fn curve_subscriber_with_the_right_key_receives_events() {
    let (server_pub, server_sec) = keypair();
    let d = Daemon::start_with(
        |dir, (_, e, _)| {
            std::fs::write(dir.join("server.key"), &server_sec).unwrap();
            std::fs::write(dir.join("server.pub"), &server_pub).unwrap();
            format!(
                "[events]\nendpoint = \"tcp://127.0.0.1:{e}\"\ncurve = true\n\
             [curve]\nsecret_key_file = \"server.key\"\npublic_key_file = \"server.pub\"\n"
            )
        },
        &[],
    );
    let mut sub = Peer::spawn(
        "subscribe.py",
        &[
            &d.events,
            "--prefix",
            "lifecycle.daemon",
            "--timeout",
            "8",
            &format!("--server-key={server_pub}"),
        ],
    );
    assert_eq!(sub.line().as_deref(), Some("subscribed"));
    d.signal("TERM");
    let (code, log) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    let lines = sub.finish();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("daemon.stopping"), "{lines:?}");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[transcripts]\nendpoint = \"tcp://127.0.0.1:{port}\"\n[events]\nendpoint = \"tcp://127.0.0.1:{}\"\n[audio_tap]\nenabled = false\n[metrics]\nenabled = false\n",
            common::free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_summerd"))
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot bind the transcripts socket to tcp://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn metrics_port_in_use_names_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[transcripts]\nendpoint = \"tcp://127.0.0.1:{}\"\n[events]\nendpoint = \"tcp://127.0.0.1:{}\"\n[audio_tap]\nenabled = false\n[metrics]\nlisten = \"{addr}\"\n",
            common::free_port(),
            common::free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_summerd"))
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
}
