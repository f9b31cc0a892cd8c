//! The systemd side: the unit passes `systemd-analyze verify`, keeps devices visible, and the
//! daemon speaks the notify protocol (READY, WATCHDOG from its liveness check, STOPPING).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;

fn unit() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/summerd.service");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // Point the unit at the binary under test (verify checks that ExecStart exists).
    let text = unit().replace("/opt/summerd/bin/summerd", env!("CARGO_BIN_EXE_summerd"));
    let path = dir.path().join("summerd.service");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed by tests/setup.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // verify exits 0 on unknown or misspelt settings; it only warns. Any line about our unit
    // is a defect.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("summerd")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify complained:\n{err}");
}

#[test]
fn unit_is_a_notify_service_that_validates_first_and_keeps_devices() {
    let u = unit();
    let has = |line: &str| u.lines().any(|l| l.trim() == line);
    assert!(has("Type=notify"));
    assert!(has(
        "ExecStartPre=/opt/summerd/bin/summerd validate -c /etc/summerd/summerd.toml"
    ));
    assert!(has("User=summerd"));
    assert!(u.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(
        u.lines()
            .any(|l| l.starts_with("Environment=LD_LIBRARY_PATH="))
    );
    for hidden in [
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(
            !has(hidden),
            "{hidden} would hide GPUs or capture devices or break CUDA"
        );
    }
    // systemd must wait longer than the daemon's own drain limit.
    let stop: u64 = u
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    let drain = summerd::config::RawConfig::default()
        .daemon
        .shutdown_timeout
        .0;
    assert!(Duration::from_secs(stop) > drain);
}

fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn daemon_speaks_the_notify_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let path = path.to_str().unwrap().to_string();
    let d = Daemon::start_with(
        |_, _| String::new(),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", Duration::from_secs(5), &mut seen),
        "{seen:?}"
    );
    // Fed at half the period while every thread is alive: several in 1.5 s.
    let t0 = Instant::now();
    let mut feeds = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        if recv_until(&sock, "WATCHDOG=1", Duration::from_millis(500), &mut seen) {
            feeds += 1;
        }
    }
    assert!(feeds >= 3, "{feeds} watchdog feeds in 1.5 s: {seen:?}");
    d.signal("TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen),
        "{seen:?}"
    );
    let (code, log) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn heartbeats_report_a_stuck_thread() {
    let alive = summerd::health::Heartbeat::new("alive");
    let stuck = summerd::health::Heartbeat::new("stuck");
    stuck.beat();
    std::thread::sleep(Duration::from_millis(120));
    alive.beat();
    let beats = [alive, stuck];
    let stale = summerd::metrics::stale(&beats, Duration::from_millis(100));
    assert_eq!(stale.map(|h| h.name()), Some("stuck"));
    assert!(summerd::metrics::stale(&beats, Duration::from_secs(5)).is_none());
}
