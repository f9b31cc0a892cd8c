//! The HTTP listener (`[metrics] listen`, loopback by default): Prometheus metrics, health,
//! and the live page of every stream with its event feed.
//!
//! | path | what | token |
//! |---|---|---|
//! | `GET /metrics` | Prometheus text format 0.0.4 | yes |
//! | `GET /healthz` | 200 while every worker thread's heartbeat is fresh, else 503 | no |
//! | `GET /` | the live page (`[web] enabled`) | yes |
//! | `GET /app.js`, `/style.css`, `/labels.css` | the page's code and style, in the binary | no |
//! | `GET /api/streams` | the streams as JSON: state, media time, restarts, faces seen | yes |
//! | `GET /events` | server-sent events: every published event, kept ones first | yes |
//!
//! With a token (`web.token` or `web.token_file`), the paths marked "yes" need
//! `Authorization: Bearer <token>` or `?token=<token>` (what a browser can send), else 401;
//! off loopback the page is refused at start without one. The feed carries exactly what the
//! events socket publishes, so a stream's text is there only where its `publish_text` is on.
//!
//! Requests are capped in size and in the time to send them; a feed reader that takes longer
//! than [`WRITE_TIMEOUT`] to take a write is dropped, and at most `web.max_clients` feeds are
//! open at once (then 503). The feed is filled by the events publisher thread and read here,
//! on the runtime: no page can slow the inference path.

mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::feed::{Feed, Item};
use crate::health::Heartbeat;
use crate::metrics::{self, HEARTBEAT_MAX_AGE, Metrics};
use crate::settings::Checker;
use crate::streams::Registry;
use http::{Request, Response};

/// `[web]`: the live page on the metrics listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the page and its feed.
    pub enabled: bool,
    /// Bearer token for everything but `/healthz` (16 or more of `A-Z a-z 0-9 - _ . ~`).
    /// Needed off loopback.
    pub token: Option<String>,
    /// A file holding the token instead (its first line; keep it mode 0600).
    pub token_file: Option<PathBuf>,
    /// Published events kept for a page opened mid-call (or a reconnecting one).
    pub history: usize,
    /// Event feeds open at once.
    pub max_clients: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
            token_file: None,
            history: 5000,
            max_clients: 16,
        }
    }
}

/// The checked `[web]` table, for a daemon that has an HTTP listener.
#[derive(Clone, PartialEq)]
pub struct WebSettings {
    /// Serve the page and its feed.
    pub page: bool,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// Events kept.
    pub history: usize,
    /// Feeds open at once.
    pub max_clients: usize,
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSettings")
            .field("page", &self.page)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("history", &self.history)
            .field("max_clients", &self.max_clients)
            .finish()
    }
}

const MIN_TOKEN: usize = 16;

impl WebConfig {
    /// Whether a token is configured (checked by [`WebConfig::check`]).
    pub fn has_token(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// Check the table against the listener's address (None: no listener, nothing served).
    pub fn check(&self, c: &mut Checker, listen: Option<SocketAddr>) -> Option<WebSettings> {
        c.range("web.history", self.history, 0, 1_000_000);
        c.range("web.max_clients", self.max_clients, 1, 10_000);
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                c.bad(
                    "web.token_file",
                    "is set as well as web.token",
                    "one of web.token and web.token_file",
                );
                None
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(p)) => {
                let path = c.resolve(p);
                match std::fs::read_to_string(&path) {
                    Ok(s) => Some(s.lines().next().unwrap_or("").trim().to_string()),
                    Err(e) => {
                        c.bad(
                            "web.token_file",
                            format!("cannot read {}: {e}", path.display()),
                            "a readable file holding the token",
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(t) = &token {
            let key = if self.token.is_some() {
                "web.token"
            } else {
                "web.token_file"
            };
            if t.len() < MIN_TOKEN || !t.bytes().all(token_byte) {
                c.bad(
                    key,
                    format!(
                        "the token is {} characters of which some may not be allowed",
                        t.len()
                    ),
                    "16 or more of A-Z a-z 0-9 - _ . ~ (`summerd token` prints one)",
                );
            }
        }
        let addr = listen?;
        // (A token file that cannot be read has been reported above.)
        if self.enabled && !addr.ip().is_loopback() && !self.has_token() {
            c.bad(
                "web.token",
                format!("the live page and its event feed would be served to other hosts on {addr} without a token"),
                "a bearer token (web.token or web.token_file), web.enabled = false, or a loopback metrics.listen",
            );
        }
        Some(WebSettings {
            page: self.enabled,
            token,
            history: self.history,
            max_clients: self.max_clients,
        })
    }
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.~".contains(&b)
}

/// A new random token (for `summerd token`): 32 URL-safe characters from the kernel's
/// random source.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

/// The longest a feed reader may take to accept one write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle feed gets a comment line (keeps proxies and the browser's connection up).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Connections beyond the feeds that may be open at once (page loads, scrapes, and clients
/// still sending their request, each for at most 5 s).
const EXTRA_CONNECTIONS: usize = 1024;
/// Connections one peer address may hold open at once: a single host cannot fill the
/// listener (and take `/healthz` away from the supervisor) by opening connections and
/// sending nothing.
const PER_PEER: usize = 32;

/// What the listener serves from.
pub struct Server {
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// Worker heartbeats for `/healthz`.
    pub beats: Arc<Vec<Heartbeat>>,
    /// The attached streams.
    pub streams: Arc<Registry>,
    /// The event feed (None: no page).
    pub feed: Option<Arc<Feed>>,
    /// `[web]`.
    pub settings: WebSettings,
    /// Stops accepting connections and ends every feed, after what was published while
    /// draining has been fed: cancelled once the events publisher has stopped.
    pub stopped: CancellationToken,
    feeds_open: AtomicUsize,
    connections: Arc<Semaphore>,
    peers: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl Server {
    /// A server over the daemon's parts.
    pub fn new(
        metrics: Arc<Metrics>,
        beats: Arc<Vec<Heartbeat>>,
        streams: Arc<Registry>,
        feed: Option<Arc<Feed>>,
        settings: WebSettings,
        stopped: CancellationToken,
    ) -> Server {
        let connections = Arc::new(Semaphore::new(settings.max_clients + EXTRA_CONNECTIONS));
        Server {
            metrics,
            beats,
            streams,
            feed,
            settings,
            stopped,
            feeds_open: AtomicUsize::new(0),
            connections,
            peers: Default::default(),
        }
    }
}

/// Bind the listener (separate from serving, so that "address in use" is reported at
/// start-up, naming the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until the server's `stopped` fires.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let loopback = listener.local_addr().map_or(true, |a| a.ip().is_loopback());
    loop {
        let conn = tokio::select! {
            _ = server.stopped.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, peer)) => {
                // Connections open at once are bounded, in all and per peer (each holds a
                // descriptor the media and sockets share); beyond that, new ones are closed.
                let Ok(permit) = server.connections.clone().try_acquire_owned() else {
                    tracing::debug!("Too many HTTP connections; one was closed");
                    continue;
                };
                let Some(peer) = PeerSlot::take(&server, peer.ip()) else {
                    tracing::debug!(peer = %peer.ip(), "Too many HTTP connections from one peer; one was closed");
                    continue;
                };
                let s = server.clone();
                tokio::spawn(async move {
                    handle(stream, &s, loopback).await;
                    drop(peer);
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, server: &Server, loopback: bool) {
    let req = match http::read_request(&mut stream).await {
        Ok(r) => r,
        Err(Some(resp)) => {
            let _ = resp.send(&mut stream).await;
            return;
        }
        Err(None) => return,
    };
    if req.method != "GET" {
        let _ = Response::text("405 Method Not Allowed", "GET only\n")
            .send(&mut stream)
            .await;
        return;
    }
    let protected = !matches!(
        req.path.as_str(),
        "/healthz" | "/app.js" | "/style.css" | "/labels.css"
    );
    // Without a token only loopback is served, and only to pages of loopback origins: a site
    // whose name was re-pointed at 127.0.0.1 (DNS rebinding) must not read the feed.
    if protected && server.settings.token.is_none() && loopback && !local_host(&req) {
        let _ = Response::text(
            "403 Forbidden",
            "the Host header names another site: open http://127.0.0.1:PORT/, or set web.token\n",
        )
        .send(&mut stream)
        .await;
        return;
    }
    if protected && !authorised(&req, server.settings.token.as_deref()) {
        let _ = Response::text("401 Unauthorized", "a bearer token is needed\n")
            .header("WWW-Authenticate", "Bearer")
            .send(&mut stream)
            .await;
        return;
    }
    if let (true, "/events", Some(feed)) = (server.settings.page, req.path.as_str(), &server.feed) {
        serve_feed(stream, &req, feed, server).await;
        return;
    }
    let _ = route(&req, server).send(&mut stream).await;
}

fn route(req: &Request, server: &Server) -> Response {
    let page = server.settings.page;
    match req.path.as_str() {
        "/metrics" => Response::new(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            server.metrics.render(),
        ),
        "/healthz" => match metrics::stale(&server.beats, HEARTBEAT_MAX_AGE) {
            None => Response::text("200 OK", "ok\n"),
            Some(h) => Response::text(
                "503 Service Unavailable",
                &format!("thread {} has not reported for {:?}\n", h.name(), h.age()),
            ),
        },
        "/" | "/index.html" if page => Response::asset("text/html; charset=utf-8", INDEX),
        "/app.js" if page => Response::asset("text/javascript; charset=utf-8", APP_JS),
        "/style.css" if page => Response::asset("text/css; charset=utf-8", STYLE_CSS),
        "/labels.css" if page => Response::asset("text/css; charset=utf-8", LABELS_CSS),
        "/api/streams" if page => {
            Response::new("200 OK", "application/json", streams_json(&server.streams))
                .header("Cache-Control", "no-store")
        }
        _ => Response::text(
            "404 Not Found",
            if page {
                "try /, /metrics or /healthz\n"
            } else {
                "try /metrics or /healthz\n"
            },
        ),
    }
}

/// The page's files, in the binary.
const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
/// The label colours, shared with `summerd report`.
pub const LABELS_CSS: &str = include_str!("assets/labels.css");

/// A stream as the page shows it (no URI: it may hold credentials).
#[derive(Serialize)]
struct StreamRow {
    id: String,
    state: crate::streams::StreamState,
    media_time: f64,
    restarts: u64,
    /// Whether the vision stage watches it and saw a face in the last 5 s (None: no video).
    faces: Option<bool>,
    publish_text: Option<bool>,
    speakers: std::collections::BTreeMap<String, String>,
}

fn streams_json(streams: &Registry) -> String {
    let rows: Vec<StreamRow> = streams
        .list()
        .into_iter()
        .map(|i| {
            let faces = streams.get(&i.spec.id).and_then(|s| {
                let recent = s
                    .visual()?
                    .pool((i.media_time - 5.0).max(0.0), i.media_time);
                Some(recent.present)
            });
            StreamRow {
                id: i.spec.id,
                state: i.state,
                media_time: i.media_time,
                restarts: i.restarts,
                faces,
                publish_text: i.spec.publish_text,
                speakers: i.spec.speakers,
            }
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

fn authorised(req: &Request, token: Option<&str>) -> bool {
    let Some(want) = token else {
        return true;
    };
    let given = req
        .header("authorization")
        .and_then(|h| {
            let (scheme, value) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(value)
        })
        .or_else(|| req.query("token"));
    given.is_some_and(|g| same(g.trim().as_bytes(), want.as_bytes()))
}

/// Whether the request's `Host` is a loopback name or address (or absent, as from HTTP/1.0
/// tools: a browser always sends one).
fn local_host(req: &Request) -> bool {
    match req.header_count("host") {
        0 => return true,
        1 => {}
        _ => return false,
    }
    let host = req.header("host").unwrap_or("");
    // `name` or `name:port`, where an IPv6 name is bracketed; the port, when given, digits.
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((name, "")) => (name, None),
            Some((name, rest)) => match rest.strip_prefix(':') {
                Some(port) => (name, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One of a peer's [`PER_PEER`] connections, given back when dropped.
struct PeerSlot {
    server: Arc<Server>,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn take(server: &Arc<Server>, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut peers = server.peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = peers.entry(ip).or_default();
        if *n >= PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            server: server.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.server.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// Releases a feed slot when the feed ends, however it ends.
struct Slot<'a>(&'a AtomicUsize, &'a Metrics);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.page_feed(-1);
    }
}

/// Where a reader resumes: `Last-Event-ID` (or `?after=`) as `<epoch>-<n>`. An id of another
/// epoch (a daemon that has restarted since) or none: from the oldest kept item, and a reader
/// that had an id is told to start afresh (`reset`).
fn resume_point(req: &Request, epoch: u64) -> (u64, bool) {
    let Some(last) = req.header("last-event-id").or_else(|| req.query("after")) else {
        return (0, false);
    };
    match last.trim().split_once('-') {
        Some((e, n)) if e.parse() == Ok(epoch) => n.parse().map_or((0, true), |n| (n, false)),
        _ => (0, true),
    }
}

/// Server-sent events: the kept items after the resume point, then every new one, until the
/// client goes, stops taking writes for [`WRITE_TIMEOUT`], or the daemon has stopped (what it
/// published while draining included).
async fn serve_feed(mut stream: TcpStream, req: &Request, feed: &Feed, server: &Server) {
    let open = server.feeds_open.fetch_add(1, Ordering::AcqRel) + 1;
    if open > server.settings.max_clients {
        server.feeds_open.fetch_sub(1, Ordering::AcqRel);
        let _ = Response::text(
            "503 Service Unavailable",
            "too many open feeds (web.max_clients)\n",
        )
        .header("Retry-After", "5")
        .send(&mut stream)
        .await;
        return;
    }
    server.metrics.page_feed(1);
    let _slot = Slot(&server.feeds_open, &server.metrics);
    // A reader that vanished without closing (a laptop asleep) leaves keep-alives unacked:
    // the kernel drops the connection after this, and the slot is freed.
    user_timeout(&stream, KEEPALIVE * 2);
    let (mut after, mut reset) = resume_point(req, feed.epoch());
    if after > feed.newest() {
        // An id this daemon never gave: start over.
        (after, reset) = (0, true);
    }
    let (mut rd, mut wr) = stream.split();
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
         X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 2000\n\n",
    );
    if reset {
        out.push_str("event: reset\ndata: the daemon has restarted\n\n");
    }
    let sub = feed.subscribe(after);
    let mut live = sub.live;
    let mut last = after;
    if !send_items(&mut wr, &mut out, &sub.backlog, &mut last, feed.epoch()).await {
        return;
    }
    let mut scratch = [0u8; 512];
    loop {
        let mut ended = false;
        tokio::select! {
            _ = server.stopped.cancelled() => ended = true,
            // The request is all a reader sends: end of input (or an error) is a reader gone.
            r = tokio::io::AsyncReadExt::read(&mut rd, &mut scratch) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep(KEEPALIVE) => out.push_str(": keep-alive\n\n"),
            r = live.recv() => match r {
                Ok(item) => append(&mut out, &item, &mut last, feed.epoch()),
                Err(RecvError::Lagged(_)) => {
                    // Fallen behind the live channel: catch up from the kept items.
                    server.metrics.page_feed_lagged();
                    let again = feed.subscribe(last);
                    live = again.live;
                    if !send_items(&mut wr, &mut out, &again.backlog, &mut last, feed.epoch()).await {
                        return;
                    }
                    continue;
                }
                Err(RecvError::Closed) => ended = true,
            },
        }
        // Whatever else is already there goes in the same write (and, once the daemon has
        // stopped, everything it published while draining).
        while let Ok(item) = live.try_recv() {
            append(&mut out, &item, &mut last, feed.epoch());
        }
        if !write(&mut wr, &out).await || ended {
            return;
        }
        out.clear();
    }
}

/// Write `items` after `out` (the ids above `last`), in pieces of at most 64 kB, each within
/// [`WRITE_TIMEOUT`]; a gap before the first says how many were lost (`event: lagged`).
async fn send_items(
    wr: &mut (impl AsyncWriteExt + Unpin),
    out: &mut String,
    items: &[Arc<Item>],
    last: &mut u64,
    epoch: u64,
) -> bool {
    if let Some(first) = items.first()
        && *last > 0
        && first.id > *last + 1
    {
        out.push_str(&format!(
            "event: lagged\ndata: {}\n\n",
            first.id - *last - 1
        ));
    }
    for item in items {
        append(out, item, last, epoch);
        if out.len() >= 64 * 1024 {
            if !write(wr, out).await {
                return false;
            }
            out.clear();
        }
    }
    let ok = write(wr, out).await;
    out.clear();
    ok
}

/// Add `item` as an SSE message to `out` unless it was sent already (its number is not above
/// `last`, which it then becomes).
fn append(out: &mut String, item: &Item, last: &mut u64, epoch: u64) {
    use std::fmt::Write as _;
    if item.id <= *last {
        return;
    }
    *last = item.id;
    // The feed keeps each JSON on one line, as an SSE data field must be.
    let _ = write!(
        out,
        "id: {epoch}-{}\nevent: {}\ndata: {}\n\n",
        item.id, item.kind, item.json
    );
}

async fn write(wr: &mut (impl AsyncWriteExt + Unpin), s: &str) -> bool {
    s.is_empty()
        || matches!(
            tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(s.as_bytes())).await,
            Ok(Ok(()))
        )
}

/// `TCP_USER_TIMEOUT`: how long written data may stay unacknowledged before the kernel drops
/// the connection. Best effort (a failure leaves the kernel's default, about 15 minutes).
fn user_timeout(stream: &TcpStream, limit: Duration) {
    use std::os::fd::AsRawFd;
    let ms: libc::c_uint = limit.as_millis().min(u32::MAX as u128) as libc::c_uint;
    // SAFETY: the descriptor is a connected TCP socket owned by `stream` for this call, and the
    // option value is an unsigned int of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn check(cfg: &WebConfig, listen: &str) -> Vec<String> {
        let mut c = Checker::new(PathBuf::new());
        cfg.check(&mut c, Some(listen.parse().unwrap()));
        c.into_problems().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn off_loopback_the_page_needs_a_token() {
        let open = WebConfig::default();
        assert!(check(&open, "127.0.0.1:9187").is_empty());
        let p = check(&open, "0.0.0.0:9187");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("web.token"), "{p:?}");
        let with = WebConfig {
            token: Some("abcdefghijklmnop-123".into()),
            ..Default::default()
        };
        assert!(check(&with, "0.0.0.0:9187").is_empty());
        let no_page = WebConfig {
            enabled: false,
            ..Default::default()
        };
        assert!(check(&no_page, "0.0.0.0:9187").is_empty());
    }

    #[test]
    fn weak_or_doubled_tokens_are_refused() {
        for t in ["short", "has a space in it ok", "quote\"quote\"quote\"q"] {
            let cfg = WebConfig {
                token: Some(t.into()),
                ..Default::default()
            };
            assert_eq!(check(&cfg, "127.0.0.1:1").len(), 1, "{t}");
        }
        let both = WebConfig {
            token: Some("abcdefghijklmnop".into()),
            token_file: Some("/nonexistent".into()),
            ..Default::default()
        };
        assert!(check(&both, "127.0.0.1:1")[0].contains("web.token_file"));
        let missing = WebConfig {
            token_file: Some("/nonexistent/token".into()),
            ..Default::default()
        };
        assert!(check(&missing, "127.0.0.1:1")[0].contains("cannot read"));
    }

    #[test]
    fn new_tokens_pass_the_check_and_differ() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        let cfg = WebConfig {
            token: Some(a),
            ..Default::default()
        };
        assert!(check(&cfg, "0.0.0.0:1").is_empty());
    }

    #[test]
    fn only_loopback_hosts_are_local() {
        let host = |h: &str| Request::parse(&format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        for h in [
            "127.0.0.1:9187",
            "localhost:9187",
            "LOCALHOST",
            "[::1]:9187",
            "127.0.0.2",
        ] {
            assert!(local_host(&host(h)), "{h}");
        }
        for h in [
            "evil.example:9187",
            "evil.example",
            "10.0.0.1:9187",
            "[2001:db8::1]:80",
            "[::1",
            "[::1]evil.example",
            "[::1]@evil.example",
            "127.0.0.1:evil",
            "localhost:",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "::1",
            "",
        ] {
            assert!(!local_host(&host(h)), "{h}");
        }
        let two = Request::parse("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n");
        assert!(!local_host(&two), "two Host headers");
        assert!(local_host(&Request::parse("GET / HTTP/1.0\r\n\r\n")));
    }

    #[test]
    fn a_reader_resumes_in_its_own_epoch_only() {
        let req = |id: &str| {
            Request::parse(&format!(
                "GET /events HTTP/1.1\r\nLast-Event-ID: {id}\r\n\r\n"
            ))
        };
        assert_eq!(
            resume_point(&Request::parse("GET /events HTTP/1.1\r\n\r\n"), 7),
            (0, false)
        );
        assert_eq!(resume_point(&req("7-42"), 7), (42, false));
        assert_eq!(resume_point(&req("6-42"), 7), (0, true));
        assert_eq!(resume_point(&req("42"), 7), (0, true));
        assert_eq!(resume_point(&req("7-x"), 7), (0, true));
    }

    /// A feed reader that fell behind the live channel gets every item once, in order.
    #[test]
    fn a_lagging_reader_catches_up_from_the_kept_items() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let metrics = Arc::new(Metrics::new(
                &crate::version::VersionInfo::libraries(),
                metrics::LabelSets {
                    reject_reasons: &[],
                    utterance_outcomes: &[],
                    signal_kinds: &[],
                },
            ));
            let feed = Arc::new(Feed::new(1000, 4));
            let settings = WebSettings {
                page: true,
                token: None,
                history: 1000,
                max_clients: 4,
            };
            let server = Arc::new(Server::new(
                metrics.clone(),
                Arc::new(Vec::new()),
                Arc::new(Registry::new()),
                Some(feed.clone()),
                settings,
                CancellationToken::new(),
            ));
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, server.clone()));
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
            while feed.readers() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // 100 items without yielding: the server's receiver (capacity 4) lags by 96.
            for n in 0..100 {
                feed.push(&vec![
                    b"emotion.s".to_vec(),
                    format!("{{\"n\":{n}}}").into_bytes(),
                ]);
            }
            let mut got = String::new();
            let mut buf = vec![0u8; 65536];
            while got.matches("event: emotion").count() < 100 {
                let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                    .await
                    .expect("the feed goes on")
                    .unwrap();
                assert!(n > 0, "the feed ended: {got}");
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            let ns: Vec<u64> = got
                .lines()
                .filter_map(|l| l.strip_prefix("id: "))
                .map(|id| id.split_once('-').unwrap().1.parse().unwrap())
                .collect();
            assert_eq!(ns, (1..=100).collect::<Vec<u64>>());
            assert!(!got.contains("event: lagged"), "nothing was lost");
            assert!(
                metrics
                    .render()
                    .contains("summerd_page_feed_lagged_total 1")
            );
        });
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
