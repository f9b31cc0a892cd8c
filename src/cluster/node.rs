//! A node's share of the cluster: announce itself, renew its leases, claim unowned streams up
//! to its capacity and its fair share, hand streams back when the load is uneven, and run
//! each owned stream here (its pipeline through [`Ingest`], its transcripts through a
//! [`super::pump::pump`]).
//!
//! Rules, every `cluster.heartbeat`:
//! 1. The node's record in `summerd_nodes` is written again (it expires after `cluster.lease`:
//!    a node not heard from for that long is gone).
//! 2. Each lease it holds is renewed by a compare-and-set on its revision. A renewal that
//!    fails means the lease expired and may belong to another node now: the stream is
//!    stopped here at once.
//! 3. A stream it holds that is no longer desired is stopped and its lease deleted.
//! 4. Fair share: `ceil(desired streams / live nodes)`. While it holds fewer than
//!    min(fair share, capacity) streams of a kind (video, audio-only), it claims unowned
//!    streams of that kind by an atomic create of their lease, starting at an offset of its
//!    own so that nodes do not all try the same key first.
//! 5. Balance: holding more than its fair share while another node holds at least two fewer
//!    than it, it hands one stream back (stopped, held segments returned, lease deleted).
//!
//! A stream is started with its conversation checkpoint (if one was written) handed to the
//! model worker, and `stream.claimed` (with the node it came `from`) is stored in the events
//! stream; stopping stores `stream.released` with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pump::{PumpCtx, pump, read_checkpoint};
use super::stream_of_key;
use super::{ClusterConfig, ClusterError, EVENTS_SUBJECT, Js, js_err, keys, kv_key, live_entry};
use crate::events::now_rfc3339;
use crate::infer::engine::Checkpoint;
use crate::ingest::Ingest;
use crate::streams::StreamSpec;

/// Why a stream no longer in the desired state was stopped.
const DETACHED: &str = "detached from the cluster";

/// A lease's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The owner.
    pub node: String,
    /// When it claimed the stream (RFC 3339).
    pub since: String,
}

/// A node's record in `summerd_nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name.
    pub node: String,
    /// Video streams it takes at most.
    pub video_streams: usize,
    /// Audio-only streams it takes at most.
    pub audio_streams: usize,
    /// Video streams it holds.
    pub video_owned: usize,
    /// Audio-only streams it holds.
    pub audio_owned: usize,
    /// Since when it runs (RFC 3339).
    pub started: String,
    /// summerd's version.
    pub version: String,
}

/// A stream lifecycle event of cluster mode, stored in the events stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerEvent {
    /// Always 1.
    pub v: u32,
    /// `stream.claimed` or `stream.released`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stream.
    pub stream: String,
    /// The node that claimed or released it.
    pub node: String,
    /// For `stream.claimed`: the node that wrote the conversation checkpoint it continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For `stream.released`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339 UTC time.
    pub emitted_at: String,
}

/// The fair share of `streams` among `nodes` live nodes: ceil(streams / nodes).
pub fn fair_share(streams: usize, nodes: usize) -> usize {
    streams.div_ceil(nodes.max(1))
}

/// Whether a node holding `mine` should hand one back: more than `fair` while another live
/// node holds at least two fewer.
pub fn should_hand_back(mine: usize, fair: usize, others: &[usize]) -> bool {
    mine > fair && others.iter().any(|o| o + 2 <= mine)
}

/// The order in which `node` tries unowned streams: the sorted ids, rotated by a hash of its
/// name.
pub fn claim_order(node: &str, mut ids: Vec<String>) -> Vec<String> {
    use sha2::Digest;
    ids.sort();
    if ids.is_empty() {
        return ids;
    }
    let h = sha2::Sha256::digest(node.as_bytes());
    let k = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as usize % ids.len();
    ids.rotate_left(k);
    ids
}

struct Owned {
    revision: u64,
    video: bool,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What the node runs with.
pub struct NodeCtx {
    /// The cluster's buckets and streams.
    pub js: Js,
    /// `[cluster]`, checked.
    pub cfg: ClusterConfig,
    /// The node's pipelines (dropped when input stops: the daemon's drain detaches them, and
    /// the events publisher ends only when no one holds the ingest).
    pub ingest: Arc<Mutex<Option<Arc<Ingest>>>>,
    /// What each stream's transcript pump needs (dropped when input stops, so that the
    /// transcript channel can close).
    pub pump: Option<PumpCtx>,
    /// Segments held until their events are stored.
    pub acks: Arc<super::pump::Acks>,
    /// Checkpoints handed to the model worker (None without a model).
    pub restores: Option<Arc<Mutex<HashMap<String, Checkpoint>>>>,
}

/// A running node: its loop, and the tokens that stop its input and release its streams.
pub struct Node {
    ingest: Arc<Mutex<Option<Arc<Ingest>>>>,
    stop_input: CancellationToken,
    release: CancellationToken,
    task: JoinHandle<()>,
}

impl Node {
    /// Start the node's loop.
    pub fn start(ctx: NodeCtx) -> Node {
        let stop_input = CancellationToken::new();
        let release = CancellationToken::new();
        let ingest = ctx.ingest.clone();
        let task = tokio::spawn(run(ctx, stop_input.clone(), release.clone()));
        Node {
            ingest,
            stop_input,
            release,
            task,
        }
    }

    /// Stop taking segments and claiming streams; the leases are still renewed while the
    /// daemon drains.
    pub fn stop_input(&self) {
        self.ingest.lock().expect("ingest lock").take();
        self.stop_input.cancel();
    }

    /// Hand every stream back (held segments returned to JetStream, leases and the node's
    /// record deleted) and end the loop.
    pub async fn release(self) {
        self.stop_input.cancel();
        self.release.cancel();
        let _ = self.task.await;
    }
}

struct State {
    ctx: NodeCtx,
    owned: BTreeMap<String, Owned>,
    started: String,
    input: CancellationToken,
}

async fn run(ctx: NodeCtx, stop_input: CancellationToken, release: CancellationToken) {
    let mut st = State {
        ctx,
        owned: BTreeMap::new(),
        started: now_rfc3339(),
        input: stop_input.clone(),
    };
    let mut tick = tokio::time::interval(st.ctx.cfg.heartbeat.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut input_stopped = false;
    loop {
        tokio::select! {
            _ = release.cancelled() => break,
            _ = tick.tick() => {}
            _ = stop_input.cancelled(), if !input_stopped => {
                input_stopped = true;
                for o in st.owned.values() {
                    o.cancel.cancel();
                }
                st.ctx.pump = None;
                continue;
            }
        }
        if let Err(e) = st.tick(!input_stopped).await {
            tracing::warn!(error = %e, "Cluster heartbeat failed; retrying at the next one");
        }
    }
    st.release_all().await;
}

impl State {
    fn ingest(&self) -> Option<Arc<Ingest>> {
        self.ctx.ingest.lock().expect("ingest lock").clone()
    }

    fn node(&self) -> &str {
        &self.ctx.cfg.node
    }

    fn counts(&self) -> (usize, usize) {
        let video = self.owned.values().filter(|o| o.video).count();
        (video, self.owned.len() - video)
    }

    async fn announce(&self) -> Result<(), ClusterError> {
        let (video_owned, audio_owned) = self.counts();
        let info = NodeInfo {
            node: self.node().to_string(),
            video_streams: self.ctx.cfg.video_streams,
            audio_streams: self.ctx.cfg.audio_streams,
            video_owned,
            audio_owned,
            started: self.started.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let body = serde_json::to_vec(&info).expect("serialises");
        self.ctx
            .js
            .nodes
            .put(self.node(), body.into())
            .await
            .map_err(js_err)?;
        Ok(())
    }

    fn lease_value(&self) -> bytes::Bytes {
        serde_json::to_vec(&Lease {
            node: self.node().to_string(),
            since: now_rfc3339(),
        })
        .expect("serialises")
        .into()
    }

    /// Renew a lease: a compare-and-set on its revision. When that fails, the lease is
    /// looked at: still this node's (the answer to the last renewal was lost), or gone with
    /// nobody else holding it (it expired while JetStream was electing a leader), it is kept
    /// or created again; held by another node, it is lost.
    async fn renew(&self, id: &str, rev: u64) -> Result<u64, String> {
        let leases = &self.ctx.js.leases;
        let err = match leases.update(kv_key(id), self.lease_value(), rev).await {
            Ok(r) => return Ok(r),
            Err(e) => e.to_string(),
        };
        match live_entry(leases, &kv_key(id)).await {
            Ok(Some(e)) => match serde_json::from_slice::<Lease>(&e.value) {
                Ok(l) if l.node == self.node() => leases
                    .update(kv_key(id), self.lease_value(), e.revision)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(l) => Err(format!("held by node {}", l.node)),
                Err(_) => Err(err),
            },
            Ok(None) => leases
                .create(kv_key(id), self.lease_value())
                .await
                .map_err(|e| format!("expired, and another node was first: {e}")),
            Err(e) => Err(format!("{err}; then {e}")),
        }
    }

    async fn tick(&mut self, claim: bool) -> Result<(), ClusterError> {
        // Renewals first, whatever else fails.
        let ids: Vec<String> = self.owned.keys().cloned().collect();
        for id in &ids {
            let rev = self.owned[id].revision;
            match self.renew(id, rev).await {
                Ok(r) => self.owned.get_mut(id).expect("owned").revision = r,
                Err(e) if e.contains("held by") || e.contains("expired") => {
                    tracing::warn!(stream = %id, error = %e, "Lost the stream's lease; stopping it here");
                    self.stop(id, "lease lost", false).await;
                }
                // JetStream did not answer (a leader election): the lease may still be ours;
                // the next heartbeat tries again.
                Err(e) => {
                    tracing::warn!(stream = %id, error = %e, "Could not renew the stream's lease")
                }
            }
        }
        self.announce().await?;
        if !claim {
            return Ok(());
        }
        // Desired state.
        let mut desired: BTreeMap<String, StreamSpec> = BTreeMap::new();
        for key in keys(&self.ctx.js.streams).await? {
            let Some(e) = live_entry(&self.ctx.js.streams, &key).await? else {
                continue;
            };
            match serde_json::from_slice::<StreamSpec>(&e.value) {
                Ok(spec) if spec.id == stream_of_key(&key) => {
                    desired.insert(spec.id.clone(), spec);
                }
                _ => {
                    tracing::warn!(key = %key, "A desired stream's entry is not an attach request for its key; ignored")
                }
            }
        }
        let gone: Vec<String> = self
            .owned
            .keys()
            .filter(|id| !desired.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.stop(&id, DETACHED, true).await;
        }
        // Live nodes and the fair share.
        let mut others = Vec::new();
        for n in keys(&self.ctx.js.nodes).await? {
            if n == self.node() {
                continue;
            }
            if let Some(e) = live_entry(&self.ctx.js.nodes, &n).await?
                && let Ok(info) = serde_json::from_slice::<NodeInfo>(&e.value)
            {
                others.push(info);
            }
        }
        let leased: std::collections::BTreeSet<String> = keys(&self.ctx.js.leases)
            .await?
            .into_iter()
            .map(|k| stream_of_key(&k))
            .collect();
        let fair = fair_share(desired.len(), others.len() + 1);
        let mine = self.owned.len();
        let loads: Vec<usize> = others
            .iter()
            .map(|o| o.video_owned + o.audio_owned)
            .collect();
        if should_hand_back(mine, fair, &loads) {
            if let Some(id) = self.owned.keys().last().cloned() {
                tracing::info!(stream = %id, held = mine, fair, "Handing a stream back to even the load");
                self.stop(&id, "rebalance", true).await;
            }
            return Ok(());
        }
        let free: Vec<String> = desired
            .keys()
            .filter(|id| !leased.contains(*id) && !self.owned.contains_key(*id))
            .cloned()
            .collect();
        for id in claim_order(self.node(), free) {
            if self.owned.len() >= fair {
                break;
            }
            let spec = desired[&id].clone();
            let Some(ingest) = self.ingest() else {
                break;
            };
            let video = match ingest.check(&spec) {
                Ok(l) => l.desc.contains("name=video"),
                Err(e) => {
                    tracing::warn!(stream = %id, error = %e, "A desired stream is refused here; not claimed");
                    continue;
                }
            };
            let (v, a) = self.counts();
            let room = if video {
                v < self.ctx.cfg.video_streams
            } else {
                a < self.ctx.cfg.audio_streams
            };
            if !room {
                continue;
            }
            match self
                .ctx
                .js
                .leases
                .create(kv_key(&id), self.lease_value())
                .await
            {
                Ok(rev) => self.start(spec, rev, video).await,
                Err(_) => continue, // another node was first
            }
        }
        Ok(())
    }

    async fn owner_event(
        &self,
        kind: &str,
        stream: &str,
        from: Option<String>,
        reason: Option<&str>,
    ) {
        let e = OwnerEvent {
            v: 1,
            kind: kind.into(),
            stream: stream.into(),
            node: self.node().into(),
            from,
            reason: reason.map(Into::into),
            emitted_at: now_rfc3339(),
        };
        let body = serde_json::to_vec(&e).expect("serialises");
        let subject = format!("{EVENTS_SUBJECT}.{stream}");
        match self.ctx.js.js.publish(subject, body.into()).await {
            Ok(f) => {
                if let Err(e) = f.await {
                    tracing::warn!(stream, error = %e, "Could not store {kind}");
                }
            }
            Err(e) => tracing::warn!(stream, error = %e, "Could not store {kind}"),
        }
    }

    async fn start(&mut self, spec: StreamSpec, revision: u64, video: bool) {
        let id = spec.id.clone();
        let mut from = None;
        if let Some(restores) = &self.ctx.restores {
            match read_checkpoint(&self.ctx.js, &id).await {
                Ok(Some((node, cp))) => {
                    from = Some(node);
                    restores
                        .lock()
                        .expect("restores lock")
                        .insert(id.clone(), cp);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(stream = %id, error = %e, "Cannot read the conversation checkpoint; starting afresh")
                }
            }
        }
        let Some(ingest) = self.ingest() else {
            return;
        };
        let attached = tokio::task::spawn_blocking(move || ingest.attach(spec))
            .await
            .expect("attach does not panic");
        if let Err(e) = attached {
            tracing::warn!(stream = %id, error = %e, "Cannot run a claimed stream; handing it back");
            let _ = self
                .ctx
                .js
                .leases
                .delete_expect_revision(kv_key(&id), Some(revision))
                .await;
            return;
        }
        let cancel = self.input.child_token();
        let task = match &self.ctx.pump {
            Some(p) => tokio::spawn(pump(p.clone(), id.clone(), cancel.clone())),
            None => tokio::spawn(async {}),
        };
        tracing::info!(stream = %id, from = from.as_deref().unwrap_or("-"), "Claimed stream");
        self.owner_event("stream.claimed", &id, from, None).await;
        self.owned.insert(
            id,
            Owned {
                revision,
                video,
                cancel,
                task,
            },
        );
    }

    /// Stop a stream here: its pump, its pipeline, its held segments (back to JetStream);
    /// with `delete`, its lease.
    async fn stop(&mut self, id: &str, reason: &str, delete: bool) {
        let Some(o) = self.owned.remove(id) else {
            return;
        };
        o.cancel.cancel();
        let _ = o.task.await;
        if let Some(ingest) = self.ingest() {
            let owned_id = id.to_string();
            let _ = tokio::task::spawn_blocking(move || ingest.detach(&owned_id)).await;
        }
        if let Some(r) = &self.ctx.restores {
            r.lock().expect("restores lock").remove(id);
        }
        // The model worker forgets the stream within the consumer's sweep; its last
        // checkpoint is written by then.
        tokio::time::sleep(Duration::from_millis(600)).await;
        self.ctx.acks.release(id).await;
        if delete {
            let _ = self
                .ctx
                .js
                .leases
                .delete_expect_revision(kv_key(id), Some(o.revision))
                .await;
        }
        if reason == DETACHED {
            // Gone from the desired state: its consumer and checkpoint go too (`cluster
            // detach` deletes them as well, but this pump may have made the consumer again).
            if let Ok(s) = self.ctx.js.js.get_stream(super::TRANSCRIPTS_STREAM).await {
                let _ = s.delete_consumer(&super::consumer_name(id)).await;
            }
            let _ = self.ctx.js.state.purge(kv_key(id)).await;
        }
        tracing::info!(stream = %id, reason, "Released stream");
        self.owner_event("stream.released", id, None, Some(reason))
            .await;
    }

    /// At shutdown, once the daemon has drained: every lease and the node's record go.
    async fn release_all(&mut self) {
        let ids: Vec<String> = self.owned.keys().cloned().collect();
        for id in &ids {
            let o = self.owned.remove(id).expect("owned");
            o.cancel.cancel();
            let _ = o.task.await;
            self.ctx.acks.release(id).await;
            let _ = self
                .ctx
                .js
                .leases
                .delete_expect_revision(kv_key(id), Some(o.revision))
                .await;
            self.owner_event("stream.released", id, None, Some("node stopping"))
                .await;
        }
        let _ = self.ctx.js.nodes.delete(self.node()).await;
        if !ids.is_empty() {
            tracing::info!(
                streams = ids.len(),
                "Handed every stream back to the cluster"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_and_hand_back() {
        assert_eq!(fair_share(9, 3), 3);
        assert_eq!(fair_share(10, 3), 4);
        assert_eq!(fair_share(0, 3), 0);
        assert_eq!(fair_share(5, 0), 5);
        // After a node comes back: 5, 4, 0 with 9 streams and 3 nodes.
        assert!(should_hand_back(5, 3, &[4, 0]));
        assert!(should_hand_back(4, 3, &[4, 1]));
        assert!(should_hand_back(4, 3, &[3, 2]));
        assert!(!should_hand_back(4, 4, &[3, 3]));
        assert!(!should_hand_back(3, 3, &[3, 0]));
    }

    #[test]
    fn claim_orders_differ_by_node_and_cover_every_stream() {
        let ids: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
        let a = claim_order("node-a", ids.clone());
        let b = claim_order("node-b", ids.clone());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert_eq!(a.len(), 9);
        assert!(a != b || claim_order("node-c", ids.clone()) != a);
    }
}
