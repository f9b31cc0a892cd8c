//! What crosses NATS while a node serves its streams: transcript segments in (a durable
//! consumer per owned stream), events out (into `SUMMERD_EVENTS`, de-duplicated by
//! `Nats-Msg-Id`), the optional audio tap on core NATS, and conversation checkpoints.
//!
//! A final segment is acknowledged once its emotion event is stored in the events stream
//! ([`Acks`]): a node that dies with segments waiting for their audio or their forward pass
//! leaves them unacknowledged, and JetStream delivers them to the next owner after
//! `cluster.ack_wait` (at once when a node hands a stream back on purpose: it answers them
//! with a negative acknowledgement). Segments that end without an event (a speaker not
//! inferred, a duplicate) are acknowledged after [`HOLD`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ClusterError, Js, kv_key};
use super::{EVENTS_SUBJECT, TRANSCRIPTS_STREAM, TRANSCRIPTS_SUBJECT, consumer_name, js_err};
use crate::infer::engine::Checkpoint;
use crate::metrics::Metrics;
use crate::streams::Registry;
use crate::transcripts::{self, Limits, RejectLog, Transcript};
use crate::wire::Multipart;

/// How long a final segment without an event stays unacknowledged before it is acknowledged
/// anyway (it ended some other way: excluded, a duplicate, forgotten).
pub const HOLD: Duration = Duration::from_secs(60);

/// Events in flight to JetStream at once (published, their acknowledgement not yet back).
const IN_FLIGHT: usize = 256;

/// A delivered final segment waiting for its acknowledgement.
struct Held {
    msg: jetstream::Message,
    /// When it was first delivered here.
    since: Instant,
    /// When JetStream was last told it is still being worked on.
    touched: Instant,
    /// Its emotion event is stored.
    event: bool,
    /// A conversation checkpoint that includes it is stored (or none is kept: no model).
    state: bool,
}

/// Final segments delivered and not yet acknowledged, by (stream, seq). A segment is
/// acknowledged once its event is stored and a conversation checkpoint that includes it is
/// written: a node that dies between the two leaves it to be delivered again, so the next
/// owner's conversation has it and its event is stored (once).
pub struct Acks {
    pending: Mutex<HashMap<(String, u64), Held>>,
    /// Whether checkpoints are written at all (a node without a model writes none).
    checkpoints: bool,
}

impl Acks {
    /// Held segments; with `checkpoints`, each also waits for a checkpoint that includes it.
    pub fn new(checkpoints: bool) -> Acks {
        Acks {
            pending: Mutex::new(HashMap::new()),
            checkpoints,
        }
    }

    /// Hold a delivered final segment. A redelivery of a segment still held replaces the
    /// older delivery (whose acknowledgement no longer counts) and keeps what was confirmed.
    pub fn hold(&self, stream: &str, seq: u64, msg: jetstream::Message) {
        let now = Instant::now();
        let state = !self.checkpoints;
        self.pending
            .lock()
            .expect("acks lock")
            .entry((stream.to_string(), seq))
            .and_modify(|h| {
                h.msg = msg.clone();
                h.touched = now;
            })
            .or_insert(Held {
                msg,
                since: now,
                touched: now,
                event: false,
                state,
            });
    }

    /// Mark what is confirmed; the messages now complete, taken out.
    fn confirm(&self, stream: &str, seqs: &[u64], event: bool) -> Vec<jetstream::Message> {
        let mut p = self.pending.lock().expect("acks lock");
        let mut done = Vec::new();
        for seq in seqs {
            let key = (stream.to_string(), *seq);
            let complete = match p.get_mut(&key) {
                Some(h) => {
                    if event {
                        h.event = true;
                    } else {
                        h.state = true;
                    }
                    h.event && h.state
                }
                None => false,
            };
            if complete && let Some(h) = p.remove(&key) {
                done.push(h.msg);
            }
        }
        done
    }

    async fn ack_all(msgs: Vec<jetstream::Message>) {
        for m in msgs {
            if let Err(e) = m.ack().await {
                tracing::debug!(error = %e, "Acknowledging a segment failed; it will be delivered again");
            }
        }
    }

    /// The segment's event is stored.
    pub async fn event_stored(&self, stream: &str, seq: u64) {
        Self::ack_all(self.confirm(stream, &[seq], true)).await;
    }

    /// A checkpoint of the stream's conversation that includes these seqs is written.
    pub async fn state_written(&self, stream: &str, seqs: &[u64]) {
        Self::ack_all(self.confirm(stream, seqs, false)).await;
    }

    /// Acknowledge segments held longer than `hold` (they ended without an event: a speaker
    /// not inferred, a duplicate); tell JetStream that the others older than `progress` are
    /// still being worked on, so they are not delivered again meanwhile.
    pub async fn sweep(&self, hold: Duration, progress: Duration) {
        let (old, busy) = {
            let mut p = self.pending.lock().expect("acks lock");
            let keys: Vec<_> = p
                .iter()
                .filter(|(_, h)| h.since.elapsed() >= hold)
                .map(|(k, _)| k.clone())
                .collect();
            let old: Vec<jetstream::Message> = keys
                .into_iter()
                .filter_map(|k| p.remove(&k).map(|h| h.msg))
                .collect();
            let now = Instant::now();
            let mut busy = Vec::new();
            for h in p.values_mut() {
                if h.touched.elapsed() >= progress {
                    h.touched = now;
                    busy.push(h.msg.clone());
                }
            }
            (old, busy)
        };
        Self::ack_all(old).await;
        for m in busy {
            let _ = m.ack_with(jetstream::AckKind::Progress).await;
        }
    }

    /// The stream was handed back: its held segments go back to JetStream at once (a
    /// negative acknowledgement), for the next owner.
    pub async fn release(&self, stream: &str) {
        let back: Vec<jetstream::Message> = {
            let mut p = self.pending.lock().expect("acks lock");
            let keys: Vec<_> = p.keys().filter(|k| k.0 == stream).cloned().collect();
            keys.into_iter()
                .filter_map(|k| p.remove(&k).map(|h| h.msg))
                .collect()
        };
        for m in back {
            let _ = m.ack_with(jetstream::AckKind::Nak(None)).await;
        }
    }
}

/// Where one published message goes on NATS.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `summerd.events.<stream>`, or `summerd.events.daemon.<node>`.
    pub subject: String,
    /// `Nats-Msg-Id` of a final emotion event: `<stream>:<seq>`.
    pub msg_id: Option<String>,
    /// The segment whose acknowledgement waits for it.
    pub segment: Option<(String, u64)>,
}

/// Route an events-publisher message (`[topic, json]`) to its subject; None for a message
/// that is not an event.
pub fn route(msg: &Multipart, node: &str) -> Option<Route> {
    let [topic, json] = msg.as_slice() else {
        return None;
    };
    let topic = std::str::from_utf8(topic).ok()?;
    let (kind, stream) = topic.split_once('.')?;
    if kind == "lifecycle" && stream == "daemon" {
        return Some(Route {
            subject: format!("{EVENTS_SUBJECT}.daemon.{node}"),
            msg_id: None,
            segment: None,
        });
    }
    let subject = format!("{EVENTS_SUBJECT}.{stream}");
    if kind != "emotion" {
        return Some(Route {
            subject,
            msg_id: None,
            segment: None,
        });
    }
    #[derive(serde::Deserialize)]
    struct Key {
        seq: u64,
        #[serde(default)]
        provisional: bool,
    }
    let k: Key = serde_json::from_slice(json).ok()?;
    Some(if k.provisional {
        Route {
            subject,
            msg_id: None,
            segment: None,
        }
    } else {
        Route {
            subject,
            msg_id: Some(format!("{stream}:{}", k.seq)),
            segment: Some((stream.to_string(), k.seq)),
        }
    })
}

/// Publish every event the events publisher hands over into `SUMMERD_EVENTS`, keeping up to
/// [`IN_FLIGHT`] unacknowledged; a final emotion event's stored acknowledgement acknowledges
/// its segment. A publish that fails is retried (the same `Nats-Msg-Id`, so never stored
/// twice) until it succeeds or `give_up` fires. Ends when the publisher is gone and every
/// event is stored.
pub async fn publish_events(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Multipart>,
    acks: Arc<Acks>,
    node: String,
    metrics: Arc<Metrics>,
    give_up: CancellationToken,
) {
    type Sent = (Route, bytes::Bytes);
    let mut flying = FuturesOrdered::new();
    let publish = |js: jetstream::Context, r: Route, body: bytes::Bytes| async move {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &r.msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let res = match js
            .publish_with_headers(r.subject.clone(), headers, body.clone())
            .await
        {
            Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        ((r, body), res)
    };
    let mut open = true;
    while open || !flying.is_empty() {
        tokio::select! {
            m = rx.recv(), if open && flying.len() < IN_FLIGHT => match m {
                Some(msg) => {
                    let Some(r) = route(&msg, &node) else { continue };
                    let body = bytes::Bytes::from(msg[1].clone());
                    flying.push_back(publish(js.clone(), r, body));
                }
                None => open = false,
            },
            Some(((r, body), res)) = flying.next() => {
                let (r, body): Sent = (r, body);
                match res {
                    Ok(()) => {
                        metrics.published("events_nats");
                        if let Some((s, seq)) = &r.segment {
                            acks.event_stored(s, *seq).await;
                        }
                    }
                    Err(e) => {
                        metrics.socket_error("events_nats");
                        if give_up.is_cancelled() {
                            tracing::error!(subject = %r.subject, error = %e, "Could not store an event in JetStream before the drain limit; it is lost");
                            continue;
                        }
                        tracing::warn!(subject = %r.subject, error = %e, "Storing an event in JetStream failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        flying.push_front(publish(js.clone(), r, body));
                    }
                }
            }
        }
    }
    tracing::debug!("Event publisher to JetStream stopped");
}

/// Publish the audio tap on core NATS: `summerd.audio.<stream>`, the tap's JSON header in the
/// `Summerd-Tap` header and the PCM as the payload. Core NATS does not store it: a worker that
/// is not listening misses it, as on the ZeroMQ tap.
pub async fn publish_tap(client: async_nats::Client, mut rx: mpsc::Receiver<Multipart>) {
    while let Some(msg) = rx.recv().await {
        let [stream, header, pcm] = msg.as_slice() else {
            continue;
        };
        let (Ok(stream), Ok(header)) = (std::str::from_utf8(stream), std::str::from_utf8(header))
        else {
            continue;
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert("Summerd-Tap", header);
        let subject = format!("{}.{stream}", super::AUDIO_SUBJECT);
        if let Err(e) = client
            .publish_with_headers(subject, h, bytes::Bytes::from(pcm.clone()))
            .await
        {
            tracing::debug!(error = %e, "Publishing the tap on NATS failed");
        }
    }
}

/// The streams this node holds, shared by its loop and the checkpoint writer: a checkpoint of
/// a stream no longer held is not written (the next owner's would be overwritten).
pub type HeldStreams = Arc<Mutex<std::collections::BTreeSet<String>>>;

/// Write each stream's newest conversation checkpoint to `summerd_state` (the newest waiting
/// one per stream replaces older ones), only while the node holds the stream; each written
/// one confirms the segments it includes. Ends when the model worker is gone and everything
/// is written.
pub async fn write_checkpoints(
    js: Js,
    mut rx: mpsc::Receiver<(String, Checkpoint)>,
    node: String,
    held: HeldStreams,
    acks: Arc<Acks>,
) {
    while let Some((stream, cp)) = rx.recv().await {
        let mut newest: HashMap<String, Checkpoint> = HashMap::from([(stream, cp)]);
        while let Ok((s, c)) = rx.try_recv() {
            newest.insert(s, c);
        }
        for (stream, cp) in newest {
            if !held.lock().expect("held lock").contains(&stream) {
                continue;
            }
            let mut body = format!("{node}\n").into_bytes();
            body.extend(cp.to_bytes());
            match js.state.put(kv_key(&stream), body.into()).await {
                Ok(_) => acks.state_written(&stream, &cp.seqs).await,
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "Could not write the conversation checkpoint");
                }
            }
        }
    }
}

/// A stream's checkpoint and the node that wrote it, if there is one.
pub async fn read_checkpoint(
    js: &Js,
    stream: &str,
) -> Result<Option<(String, Checkpoint)>, ClusterError> {
    let Some(e) = super::live_entry(&js.state, &kv_key(stream)).await? else {
        return Ok(None);
    };
    let b = &e.value;
    let nl = b
        .iter()
        .position(|c| *c == b'\n')
        .ok_or_else(|| js_err("checkpoint: no node line"))?;
    let node = String::from_utf8_lossy(&b[..nl]).chars().take(64).collect();
    let cp =
        Checkpoint::from_bytes(&b[nl + 1..]).map_err(|e| js_err(format!("checkpoint: {e}")))?;
    Ok(Some((node, cp)))
}

/// What a stream's transcript pump needs.
#[derive(Clone)]
pub struct PumpCtx {
    /// JetStream.
    pub js: jetstream::Context,
    /// Segment limits, as on the ZeroMQ socket.
    pub limits: Limits,
    /// The streams (a segment's stream must be served here).
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The transcript consumer's channel.
    pub tx: mpsc::Sender<Transcript>,
    /// Held segments.
    pub acks: Arc<Acks>,
    /// `cluster.ack_wait`.
    pub ack_wait: Duration,
}

/// Forget a stream's transcripts: its durable consumer and every segment stored for it.
pub async fn forget_transcripts(js: &jetstream::Context, stream: &str) {
    if let Ok(s) = js.get_stream(TRANSCRIPTS_STREAM).await {
        let _ = s.delete_consumer(&consumer_name(stream)).await;
        let _ = s
            .purge()
            .filter(format!("{TRANSCRIPTS_SUBJECT}.{stream}"))
            .await;
    }
}

/// The durable consumer of a stream's transcripts, created where missing.
pub async fn transcripts_consumer(
    js: &jetstream::Context,
    stream: &str,
    ack_wait: Duration,
) -> Result<jetstream::consumer::Consumer<pull::Config>, ClusterError> {
    let s = js.get_stream(TRANSCRIPTS_STREAM).await.map_err(js_err)?;
    let name = consumer_name(stream);
    s.get_or_create_consumer(
        &name,
        pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("summerd transcripts of {stream}")),
            filter_subject: format!("{TRANSCRIPTS_SUBJECT}.{stream}"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_ack_pending: 10_000,
            ..Default::default()
        },
    )
    .await
    .map_err(js_err)
}

/// Read a stream's transcripts until `cancel` fires: each message is validated as one on the
/// ZeroMQ socket is; a rejected or partial one is acknowledged at once, a final one is held
/// until its event is stored.
pub async fn pump(ctx: PumpCtx, stream: String, cancel: CancellationToken) {
    let mut rejects = RejectLog::new(ctx.limits.reject_log_interval);
    let mut backoff = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let messages = match transcripts_consumer(&ctx.js, &stream, ctx.ack_wait).await {
            Ok(c) => c.messages().await.map_err(js_err),
            Err(e) => Err(e),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "Cannot read the stream's transcripts; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = messages.next() => n,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::debug!(stream = %stream, error = %e, "Transcript consumer error");
                    continue;
                }
                None => break,
            };
            let now_unix = crate::infer::unix_now();
            let result = transcripts::validate(
                &msg.payload,
                &ctx.limits,
                &|s| ctx.registry.media_end(s),
                now_unix,
            )
            .and_then(|t| {
                // The subject names the stream: a segment naming another is refused.
                if t.stream == stream {
                    Ok(t)
                } else {
                    Err(transcripts::Reject::BadValue {
                        field: "stream",
                        problem: format!("'{}' published on the subject of '{stream}'", t.stream),
                    })
                }
            });
            match result {
                Ok(t) => {
                    ctx.metrics.transcript_accepted();
                    if t.is_final {
                        ctx.acks.hold(&stream, t.seq, msg);
                    } else {
                        let _ = msg.ack().await;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        sent = ctx.tx.send(t) => if sent.is_err() { return },
                    }
                }
                Err(r) => {
                    ctx.metrics.transcript_rejected(r.reason());
                    if let Some(suppressed) = rejects.admit(&r, Instant::now()) {
                        tracing::warn!(stream = %stream, reason = r.reason(), detail = %r, suppressed_since_last = suppressed, "Rejected a transcript message from NATS");
                    }
                    let _ = msg.ack_with(jetstream::AckKind::Term).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, json: &str) -> Multipart {
        vec![topic.as_bytes().to_vec(), json.as_bytes().to_vec()]
    }

    #[test]
    fn routes_events_by_stream_and_names_final_emotions() {
        let r = route(
            &msg("emotion.call:1", r#"{"type":"emotion","seq":7}"#),
            "n1",
        )
        .unwrap();
        assert_eq!(r.subject, "summerd.events.call:1");
        assert_eq!(r.msg_id.as_deref(), Some("call:1:7"));
        assert_eq!(r.segment, Some(("call:1".into(), 7)));
        let p = route(
            &msg(
                "emotion.c",
                r#"{"type":"emotion","seq":7,"provisional":true}"#,
            ),
            "n1",
        )
        .unwrap();
        assert_eq!((p.msg_id, p.segment), (None, None));
        let l = route(&msg("lifecycle.daemon", "{}"), "n1").unwrap();
        assert_eq!(l.subject, "summerd.events.daemon.n1");
        let s = route(&msg("signal.c", "{}"), "n1").unwrap();
        assert_eq!((s.subject.as_str(), s.msg_id), ("summerd.events.c", None));
        assert!(route(&vec![b"x".to_vec()], "n1").is_none());
        assert!(route(&msg("emotion.c", "not json"), "n1").is_none());
    }
}
