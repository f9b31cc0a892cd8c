//! The live page and the picture of a call, with real parts: the daemon with the default model
//! serving its page while a recorded call plays through it, headless Chromium (Debian's
//! `chromium`, installed by tests/setup.sh) driven over the DevTools protocol, events read off
//! the bus to compare with what the page shows; the token that guards the page off loopback;
//! `summerd report` on a replayed call.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Daemon, call_segments, eventually, model_config, replay, repo, short_call, summerd};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Debian's Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A GET, its body read up to its Content-Length (Chromium's DevTools HTTP server keeps the
/// connection open).
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the DevTools server closed the connection early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if body.len() >= len {
                return body[..len].to_string();
            }
        }
    }
}

/// A GET with extra header lines; what arrives within a moment (the feed stays open).
fn raw_get(addr: &str, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\n{headers}\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if !got.is_empty() => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn status(r: &str) -> &str {
    r.split(' ').nth(1).unwrap_or("")
}

/// Headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next: u64,
    /// Every protocol event received so far.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium says where its DevTools endpoint is on stderr; the rest of stderr is
        // drained so that it never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let port = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let pages: Vec<Value> = serde_json::from_str(&get(&port, "/json/list")).unwrap();
        let page = pages
            .iter()
            .find(|p| p["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let stream = TcpStream::connect(&port).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket");
        let mut b = Browser {
            child,
            ws,
            next: 0,
            events: Vec::new(),
            _profile: profile,
        };
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(m, json!({}));
        }
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// One protocol message, if one arrives within the socket's read timeout.
    fn read(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(Message::Text(t)) => serde_json::from_str(t.as_str()).ok(),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("DevTools connection: {e}"),
        }
    }

    /// Call a protocol method; its result (events that arrive meanwhile are kept).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(m) = self.read() else { continue };
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
        panic!("{method}: no answer within 30 s");
    }

    /// A JavaScript expression's value (JSON-able).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// What the page logged as an error: console errors, uncaught exceptions, failed loads.
    fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| {
                let p = &e["params"];
                match e["method"].as_str() {
                    Some("Runtime.consoleAPICalled") => {
                        matches!(p["type"].as_str(), Some("error" | "assert"))
                    }
                    Some("Runtime.exceptionThrown") => true,
                    Some("Log.entryAdded") => p["entry"]["level"] == "error",
                    _ => false,
                }
            })
            .map(Value::to_string)
            .collect()
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn media_time(d: &Daemon, id: &str) -> f64 {
    let r = d.control(json!({"cmd": "list"}));
    r["streams"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["id"] == id))
        .and_then(|s| s["media_time"].as_f64())
        .unwrap_or(0.0)
}

/// Everything the daemon published, as (topic, event).
fn drain(sub: &zmq::Socket, into: &mut Vec<(String, Value)>) {
    while let Ok(parts) = sub.recv_multipart(zmq::DONTWAIT) {
        let topic = String::from_utf8_lossy(&parts[0]).into_owned();
        into.push((topic, serde_json::from_slice(&parts[1]).unwrap()));
    }
}

#[test]
fn the_live_page_shows_every_event_of_a_call_as_it_plays() {
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIPPED: the live page's browser test needs Debian's chromium (tests/setup.sh installs it)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let call = short_call(dir.path());
    let media = call["media"].as_str().unwrap().to_string();
    let wav = Path::new(&media).with_file_name("call.wav");
    // A hair-trigger escalation rule, so that the call's one customer line (an angry one)
    // starts an episode whatever the model's exact probabilities: the page must show it.
    let sensitive = "[escalation]\non = 0.05\noff = 0.01\nsustain = 1\nrelease = 1\n";
    let d = Daemon::start_custom(|_, p| model_config(Some(p.1)) + sensitive, &[], false);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(&d.events).unwrap();
    let mut b = Browser::launch(&bin);
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", d.metrics)}),
    );
    let live = eventually(Duration::from_secs(20), || {
        (b.eval("document.getElementById('conn').dataset.state") == "live").then_some(())
    });
    assert!(live.is_some(), "the page never connected: {:?}", b.errors());

    // The call plays in real time; "quiet" is the same call's audio with publish_text off.
    for (id, uri, text) in [
        ("call", &media, true),
        ("quiet", &wav.display().to_string(), false),
    ] {
        let r = d.control(
            json!({"cmd": "attach", "id": id, "uri": format!("file://{uri}"),
            "template": "file", "publish_text": text}),
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut published = Vec::new();
    // Each line goes to the daemon once its stream has played it, as a live ASR's would.
    let ends: Vec<f64> = call["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["end"].as_f64().unwrap())
        .collect();
    let mut pending: Vec<(f64, String)> = Vec::new();
    for id in ["call", "quiet"] {
        pending.extend(ends.iter().copied().zip(call_segments(&call, id)));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pending.is_empty() && Instant::now() < deadline {
        let (ready, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(end, line)| {
            let id = if line.contains("\"quiet\"") {
                "quiet"
            } else {
                "call"
            };
            media_time(&d, id) >= *end
        });
        pending = rest;
        let lines: Vec<String> = ready.into_iter().map(|(_, l)| l).collect();
        if !lines.is_empty() {
            common::push_segments(&d.transcripts, &lines);
        }
        drain(&sub, &mut published);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pending.is_empty(), "the call did not play:\n{}", d.log());
    for id in ["call", "quiet"] {
        let ended = eventually(Duration::from_secs(60), || {
            (d.stream_state(id).as_deref() == Some("ended")).then_some(())
        });
        assert!(ended.is_some(), "stream {id} did not end:\n{}", d.log());
    }
    let want = 2 * call["lines"].as_array().unwrap().len();
    let got_all = eventually(Duration::from_secs(30), || {
        drain(&sub, &mut published);
        let n = published
            .iter()
            .filter(|(t, _)| t.starts_with("emotion."))
            .count();
        (n >= want).then_some(())
    });
    assert!(got_all.is_some(), "{published:#?}\n{}", d.log());
    std::thread::sleep(Duration::from_millis(500));
    drain(&sub, &mut published);

    // Every published emotion event is on its stream's timeline with its label.
    let mut expect: Vec<(String, u64, String)> = published
        .iter()
        .filter(|(t, _)| t.starts_with("emotion."))
        .map(|(_, e)| {
            let (s, q, l) = (&e["stream"], &e["seq"], &e["label"]);
            (
                s.as_str().unwrap().into(),
                q.as_u64().unwrap(),
                l.as_str().unwrap().into(),
            )
        })
        .collect();
    expect.sort();
    let shown = |b: &mut Browser| -> Vec<(String, u64, String)> {
        let v = b.eval(
            "JSON.stringify([...document.querySelectorAll('rect.utt')].map(r => \
             [r.dataset.stream, Number(r.dataset.seq), r.dataset.label]))",
        );
        let mut rows: Vec<(String, u64, String)> =
            serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap();
        rows.sort();
        rows
    };
    let on_page = eventually(Duration::from_secs(10), || {
        let rows = shown(&mut b);
        (rows == expect).then_some(rows)
    });
    assert!(
        on_page.is_some(),
        "page {:?}\nbus {expect:?}",
        shown(&mut b)
    );

    // Every lifecycle event of each stream is in its list, in order, and marked on its
    // timeline where it has a media time.
    for id in ["call", "quiet"] {
        let kinds: Vec<String> = published
            .iter()
            .filter(|(t, _)| *t == format!("lifecycle.{id}"))
            .map(|(_, e)| e["type"].as_str().unwrap().to_string())
            .collect();
        assert!(kinds.contains(&"stream.up".to_string()), "{id}: {kinds:?}");
        let listed = b.eval(&format!(
            "JSON.stringify([...document.querySelectorAll('article[data-stream=\"{id}\"] li.life')]\
             .map(l => l.dataset.kind))"
        ));
        let listed: Vec<String> = serde_json::from_str(listed.as_str().unwrap()).unwrap();
        assert_eq!(listed, kinds, "{id}");
        let marks = b.eval(&format!(
            "document.querySelectorAll('g.life[data-stream=\"{id}\"]').length"
        ));
        let with_time = published
            .iter()
            .filter(|(t, e)| *t == format!("lifecycle.{id}") && e["media_time"].is_number())
            .count();
        assert_eq!(marks.as_u64(), Some(with_time as u64), "{id}");
    }
    // Every escalation signal is listed and drawn; an open episode is in the attention box.
    for id in ["call", "quiet"] {
        let signals: Vec<&Value> = published
            .iter()
            .filter(|(t, _)| *t == format!("signal.{id}"))
            .map(|(_, e)| e)
            .collect();
        let escalations = signals.iter().filter(|e| e["type"] == "escalation").count();
        let customer = signals
            .iter()
            .any(|e| e["type"] == "escalation" && e["speaker"] == "customer");
        assert!(
            customer,
            "{id}: the angry customer line escalates: {signals:?}"
        );
        let listed = b.eval(&format!(
            "document.querySelectorAll('article[data-stream=\"{id}\"] li.signal').length"
        ));
        assert_eq!(listed.as_u64(), Some(signals.len() as u64), "{id}");
        let bands = b.eval(&format!(
            "document.querySelectorAll('article[data-stream=\"{id}\"] rect.episode').length"
        ));
        assert_eq!(bands.as_u64(), Some(escalations as u64), "{id}");
        let attention = b.eval(&format!(
            "document.querySelectorAll('#escalated li[data-stream=\"{id}\"][data-speaker=\"customer\"]').length"
        ));
        assert_eq!(attention.as_u64(), Some(1), "{id}");
    }
    // The latest lines as `summerd tail` shows them; text only where the stream publishes it.
    let lines = |b: &mut Browser, id: &str| -> Vec<String> {
        let v = b.eval(&format!(
            "JSON.stringify([...document.querySelectorAll('article[data-stream=\"{id}\"] li.emotion')]\
             .map(l => l.textContent))"
        ));
        serde_json::from_str(v.as_str().unwrap()).unwrap()
    };
    let first_text = call["lines"][0]["text"].as_str().unwrap();
    let loud = lines(&mut b, "call");
    assert_eq!(loud.len(), want / 2);
    assert!(loud[0].contains(first_text), "{loud:?}");
    let quiet = lines(&mut b, "quiet");
    assert_eq!(quiet.len(), want / 2);
    assert!(quiet.iter().all(|l| !l.contains('"')), "{quiet:?}");
    // The streams table follows the daemon.
    let state =
        b.eval("document.querySelector('#streams tr[data-stream=\"call\"] .state').textContent");
    let ended = eventually(Duration::from_secs(5), || {
        (b.eval("document.querySelector('#streams tr[data-stream=\"call\"] .state').textContent")
            == "ended")
            .then_some(())
    });
    assert!(ended.is_some(), "state shown: {state}");

    let shot = repo().join("target/web/live-page.png");
    b.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
    let errors = b.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");

    // The signals are counted, and the page's open feed shows in the metrics.
    let m = d.scrape();
    let escalations = published
        .iter()
        .filter(|(t, e)| t.starts_with("signal.") && e["type"] == "escalation")
        .count();
    assert_eq!(
        common::metric(&m, "summerd_signals_total{kind=\"escalation\"}"),
        Some(escalations as f64)
    );
    assert_eq!(common::metric(&m, "summerd_page_feeds"), Some(1.0));

    // What the daemon publishes while it drains still reaches the page, to the last event.
    d.signal("TERM");
    let stopping = eventually(Duration::from_secs(15), || {
        (b.eval(
            "document.querySelectorAll('#daemon-events li[data-kind=\"daemon.stopping\"]').length",
        ) == 1)
            .then_some(())
    });
    assert!(stopping.is_some(), "daemon.stopping never reached the page");
}

#[test]
fn off_loopback_the_page_and_its_feed_need_the_token() {
    // Without a token the daemon refuses to serve the page to other hosts.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("open.toml");
    let port = common::free_port();
    std::fs::write(&cfg, format!("[metrics]\nlisten = \"0.0.0.0:{port}\"\n")).unwrap();
    for verb in ["validate", "run"] {
        let out = summerd().args([verb, "-c"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{verb}: {err}");
        assert!(err.contains("web.token"), "{verb}: {err}");
    }
    // With one, it is served to those who send it.
    let token = "k3y-for-the-page_0123456789";
    let d = Daemon::start(&format!(
        "[metrics]\nlisten = \"0.0.0.0:{port}\"\n[web]\ntoken = \"{token}\"\n"
    ));
    let head = |path: &str, auth: Option<&str>| -> String {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        raw_get(&d.metrics, path, &format!("Host: x\r\n{auth}"))
    };
    let bearer = format!("Bearer {token}");
    assert_eq!(status(&head("/", None)), "401");
    assert_eq!(
        status(&head("/", Some("Bearer wrong-token-0123456789"))),
        "401"
    );
    assert_eq!(status(&head("/metrics", None)), "401");
    assert_eq!(status(&head("/api/streams", None)), "401");
    assert_eq!(status(&head("/events", None)), "401");
    assert_eq!(status(&head("/healthz", None)), "200");
    let page = head("/", Some(&bearer));
    assert_eq!(status(&page), "200");
    assert!(page.contains("<title>summerd"), "{page}");
    assert!(page.contains("Content-Security-Policy"), "{page}");
    assert_eq!(status(&head("/", Some(&format!("bearer {token}")))), "200");
    assert_eq!(status(&head(&format!("/?token={token}"), None)), "200");
    assert_eq!(status(&head("/app.js", None)), "200");
    let streams = head("/api/streams", Some(&bearer));
    assert!(streams.contains("\"id\":\"call-42\""), "{streams}");
    assert!(
        !streams.contains("test://idle"),
        "no URIs on the page: {streams}"
    );
    let feed = head(&format!("/events?token={token}"), None);
    assert_eq!(status(&feed), "200", "{feed}");
    assert!(feed.contains("text/event-stream"), "{feed}");
    assert!(
        feed.contains("event: lifecycle\ndata: {\"v\":1,\"type\":\"daemon.up\""),
        "the kept events come first: {feed}"
    );
    assert!(d.scrape().contains("summerd_ready 1"));

    // A reconnecting page resumes after the last id it saw; one from a daemon that has
    // restarted since (another epoch) is told to start over and gets everything kept.
    let ids: Vec<&str> = feed
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert!(ids.len() >= 3, "{feed}");
    let (epoch, _) = ids[0].split_once('-').unwrap();
    let resumed = head(&format!("/events?token={token}&after={}", ids[1]), None);
    assert!(!resumed.contains(&format!("id: {}\n", ids[0])), "{resumed}");
    assert!(!resumed.contains(&format!("id: {}\n", ids[1])), "{resumed}");
    assert!(resumed.contains(&format!("id: {}\n", ids[2])), "{resumed}");
    let stale = head(
        &format!("/events?token={token}&after=1-{}", ids.len()),
        None,
    );
    assert!(stale.contains("event: reset"), "{stale}");
    assert!(stale.contains(&format!("id: {epoch}-1\n")), "{stale}");
}

#[test]
fn without_a_token_only_loopback_origins_read_the_page() {
    let d = Daemon::start("");
    let evil = raw_get(&d.metrics, "/events", "Host: evil.example:9187\r\n");
    assert_eq!(
        status(&evil),
        "403",
        "a re-pointed name must not read the feed: {evil}"
    );
    assert_eq!(
        status(&raw_get(
            &d.metrics,
            "/api/streams",
            "Host: evil.example\r\n"
        )),
        "403"
    );
    for host in ["127.0.0.1:9187", "localhost:9187", "[::1]:9187"] {
        let r = raw_get(&d.metrics, "/api/streams", &format!("Host: {host}\r\n"));
        assert_eq!(status(&r), "200", "{host}: {r}");
    }
    // The health check answers whatever the Host.
    assert_eq!(
        status(&raw_get(&d.metrics, "/healthz", "Host: evil.example\r\n")),
        "200"
    );
}

#[test]
fn report_draws_every_event_of_a_replayed_call() {
    let dir = tempfile::tempdir().unwrap();
    let call = short_call(dir.path());
    let media = call["media"].as_str().unwrap();
    let seg = dir.path().join("call.jsonl");
    let lines = call_segments(&call, "call");
    std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let cfg = dir.path().join("replay.toml");
    std::fs::write(&cfg, model_config(None)).unwrap();
    let events = dir.path().join("events.jsonl");
    common::succeed(replay(media, &seg, &cfg).arg("--out").arg(&events));
    let replayed: Vec<Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["type"] == "emotion")
        .collect();
    assert_eq!(replayed.len(), lines.len());
    let mut want: Vec<String> = replayed
        .iter()
        .map(|e| format!("{}:{}", e["seq"], e["label"].as_str().unwrap()))
        .collect();
    want.sort();
    for ext in ["html", "svg"] {
        let pic = repo().join(format!("target/web/report.{ext}"));
        std::fs::create_dir_all(pic.parent().unwrap()).unwrap();
        common::succeed(summerd().arg("report").arg(&events).arg("--out").arg(&pic));
        let text = std::fs::read_to_string(&pic).unwrap();
        // Each utterance is one rect: <rect class="utt l-LABEL" ... data-seq="N" ... data-label="L">
        let mut drawn: Vec<String> = text
            .split("<rect class=\"utt ")
            .skip(1)
            .map(|r| {
                let attr = |name: &str| {
                    r.split(&format!("{name}=\""))
                        .nth(1)
                        .and_then(|v| v.split('"').next())
                        .unwrap_or("?")
                        .to_string()
                };
                format!("{}:{}", attr("data-seq"), attr("data-label"))
            })
            .collect();
        drawn.sort();
        assert_eq!(drawn, want, "{ext}");
        for e in &replayed {
            assert!(
                text.contains(e["speaker"].as_str().unwrap()),
                "{ext}: speaker row"
            );
        }
    }
}

#[test]
fn one_peer_cannot_take_the_listener_from_the_others() {
    let d = Daemon::start("");
    // 40 connections from 127.0.0.1 that send half a request and wait: 32 are held (each for
    // at most 5 s), the rest closed at once.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(&d.metrics).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let closed = idle
        .into_iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 16];
            // Held: nothing to read yet; closed: end of input or a reset.
            !matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    // At most 32 held; the readiness probe's own connection from 127.0.0.1 may still hold a
    // slot for a moment, so one more may be closed.
    let held = 40 - closed;
    assert!((31..=32).contains(&held), "{held} held, {closed} closed");
    // Meanwhile another peer (127.0.0.2 is loopback too) is served.
    let port = d.metrics.rsplit(':').next().unwrap();
    let script = format!(
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.2', 0))\n\
         s.connect(('127.0.0.1', {port}))\ns.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b' ')[1].decode())"
    );
    let out = Command::new(common::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
