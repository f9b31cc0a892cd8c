//! A node's share of the cluster: announce itself, renew its leases, claim unowned streams up
//! to its capacity and its fair share, hand streams back when the load is uneven, and run
//! each owned stream here (its pipeline through [`Ingest`], its transcripts through a
//! [`super::pump::pump`]).
//!
//! Rules, every `cluster.heartbeat`:
//! 1. Each lease it holds is renewed by a compare-and-set on its revision. When that fails the
//!    lease is read: still this process's (the answer was lost), or gone with nobody holding
//!    it (it expired while JetStream elected a leader), it is kept or created again; held by
//!    another node (or another process under this node's name), the stream is stopped here at
//!    once; when JetStream does not answer, the stream is kept and the renewal tried again.
//!    Renewals are repeated between the other steps whenever a heartbeat has passed, so a long
//!    round of claims or stops never lets a lease expire.
//! 2. The node's record in `summerd_nodes` is written again (it expires after `cluster.lease`:
//!    a node not heard from for that long is gone).
//! 3. A stream it holds whose key is gone from the desired state is stopped, and its lease,
//!    transcripts and checkpoint deleted. (A key whose value does not parse is left alone.)
//! 4. Fair share: `ceil(desired streams / live nodes)`. While it holds fewer than its fair
//!    share, it claims unowned streams by an atomic create of their lease, each within its
//!    capacity for the stream's kind (video, audio-only), starting at an offset of its own so
//!    that nodes do not all try the same key first. A stream left unowned for two heartbeats
//!    (every other node full for its kind, or refusing it) is claimed by any node with room,
//!    fair share or not.
//! 5. Balance: holding more than its fair share while another node holds at least two fewer
//!    than it, it hands one stream back (stopped, held segments returned, lease deleted).
//!
//! A stream is started with its conversation checkpoint (if one was written) handed to the
//! model worker, and `stream.claimed` (with the node it came `from`) is stored in the events
//! stream; stopping stores `stream.released` with the reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pump::{Acks, HeldStreams, PumpCtx, forget_transcripts, pump, read_checkpoint};
use super::{ClusterConfig, ClusterError, EVENTS_SUBJECT, Js, js_err, keys, kv_key, live_entry};
use super::{stream_of_key, subject_safe};
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
    /// The owning process (a random id drawn at start): two daemons under one node name
    /// never take each other's leases for their own.
    #[serde(default)]
    pub instance: String,
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

/// What a renewal found.
#[derive(Debug)]
enum Renewal {
    /// Renewed (or created again): the new revision.
    Kept(u64),
    /// Another process holds it now.
    Lost(String),
    /// JetStream did not say: try again at the next heartbeat.
    Unknown(String),
}

struct Owned {
    revision: u64,
    video: bool,
    since: String,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What the node runs with.
pub struct NodeCtx {
    /// The cluster's buckets and streams.
    pub js: Js,
    /// `[cluster]`, checked.
    pub cfg: ClusterConfig,
    /// The node's pipelines (taken when input stops: the daemon's drain detaches them, and
    /// the events publisher ends only when no one holds the ingest).
    pub ingest: Arc<Mutex<Option<Arc<Ingest>>>>,
    /// What each stream's transcript pump needs (taken when input stops, so that the
    /// transcript channel can close).
    pub pump: Arc<Mutex<Option<PumpCtx>>>,
    /// Segments held until their events and checkpoints are stored.
    pub acks: Arc<Acks>,
    /// Checkpoints handed to the model worker (None without a model).
    pub restores: Option<Arc<Mutex<HashMap<String, Checkpoint>>>>,
    /// The streams this node holds (the checkpoint writer writes only theirs).
    pub held: HeldStreams,
}

/// A running node: its loop, and the tokens that stop its input and release its streams.
pub struct Node {
    ingest: Arc<Mutex<Option<Arc<Ingest>>>>,
    pump: Arc<Mutex<Option<PumpCtx>>>,
    stop_input: CancellationToken,
    release: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Node {
    /// Start the node's loop.
    pub fn start(ctx: NodeCtx) -> Node {
        let stop_input = CancellationToken::new();
        let release = CancellationToken::new();
        let (ingest, pump) = (ctx.ingest.clone(), ctx.pump.clone());
        let task = tokio::spawn(run(ctx, stop_input.clone(), release.clone()));
        Node {
            ingest,
            pump,
            stop_input,
            release,
            task: Some(task),
        }
    }

    /// Stop taking segments and claiming streams (every pump stops at once); the leases are
    /// still renewed while the daemon drains.
    pub fn stop_input(&self) {
        self.ingest.lock().expect("ingest lock").take();
        self.pump.lock().expect("pump lock").take();
        self.stop_input.cancel();
    }

    /// Hand every stream back (held segments returned to JetStream, leases and the node's
    /// record deleted) and end the loop.
    pub async fn release(mut self) {
        self.stop_input();
        self.release.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Node {
    /// A node dropped without `release` (a drain that overran) stops renewing: its leases
    /// expire and the others take its streams.
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct State {
    ctx: NodeCtx,
    owned: BTreeMap<String, Owned>,
    started: String,
    instance: String,
    /// Input stopped: pumps cancelled.
    input: CancellationToken,
    /// When every lease was last renewed.
    renewed: Instant,
    /// Unowned desired streams and since when this node has seen them so.
    unowned: HashMap<String, Instant>,
    /// The kind (video or not) of each desired stream, by its entry's revision.
    kinds: HashMap<String, (u64, Option<bool>)>,
}

async fn run(ctx: NodeCtx, stop_input: CancellationToken, release: CancellationToken) {
    let instance = {
        use sha2::Digest;
        let seed = format!("{:?}{}", Instant::now(), std::process::id());
        let h = sha2::Sha256::digest(format!("{seed}{}", now_rfc3339()).as_bytes());
        h[..8].iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut st = State {
        ctx,
        owned: BTreeMap::new(),
        started: now_rfc3339(),
        instance,
        input: stop_input.clone(),
        renewed: Instant::now(),
        unowned: HashMap::new(),
        kinds: HashMap::new(),
    };
    let mut tick = tokio::time::interval(st.ctx.cfg.heartbeat.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = release.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = st.tick(!stop_input.is_cancelled()).await {
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

    fn lease_value(&self, since: &str) -> bytes::Bytes {
        serde_json::to_vec(&Lease {
            node: self.node().to_string(),
            instance: self.instance.clone(),
            since: since.to_string(),
        })
        .expect("serialises")
        .into()
    }

    fn mine(&self, l: &Lease) -> bool {
        l.node == self.node() && l.instance == self.instance
    }

    async fn renew(&self, id: &str, rev: u64, since: &str) -> Renewal {
        let leases = &self.ctx.js.leases;
        let err = match leases
            .update(kv_key(id), self.lease_value(since), rev)
            .await
        {
            Ok(r) => return Renewal::Kept(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => e.to_string(),
            Err(e) => return Renewal::Unknown(e.to_string()),
        };
        match live_entry(leases, &kv_key(id)).await {
            Ok(Some(e)) => match serde_json::from_slice::<Lease>(&e.value) {
                Ok(l) if self.mine(&l) => {
                    match leases
                        .update(kv_key(id), self.lease_value(since), e.revision)
                        .await
                    {
                        Ok(r) => Renewal::Kept(r),
                        Err(e) => Renewal::Unknown(e.to_string()),
                    }
                }
                Ok(l) => Renewal::Lost(format!("held by node {} now", l.node)),
                Err(_) => Renewal::Lost("its lease holds something else now".into()),
            },
            Ok(None) => match leases.create(kv_key(id), self.lease_value(since)).await {
                Ok(r) => Renewal::Kept(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Renewal::Lost(format!("expired, and another node was first ({err})"))
                }
                Err(e) => Renewal::Unknown(e.to_string()),
            },
            Err(e) => Renewal::Unknown(format!("{err}; then {e}")),
        }
    }

    /// Renew every lease.
    async fn renew_all(&mut self) {
        self.renewed = Instant::now();
        let ids: Vec<String> = self.owned.keys().cloned().collect();
        for id in &ids {
            let (rev, since) = {
                let o = &self.owned[id];
                (o.revision, o.since.clone())
            };
            match self.renew(id, rev, &since).await {
                Renewal::Kept(r) => self.owned.get_mut(id).expect("owned").revision = r,
                Renewal::Lost(why) => {
                    tracing::warn!(stream = %id, why = %why, "Lost the stream's lease; stopping it here");
                    self.stop(id, "lease lost", false).await;
                }
                Renewal::Unknown(e) => {
                    tracing::warn!(stream = %id, error = %e, "Could not renew the stream's lease; trying again");
                }
            }
        }
    }

    /// Renew every lease if a heartbeat has passed since the last time (between long steps).
    async fn renew_if_due(&mut self) {
        if self.renewed.elapsed() >= self.ctx.cfg.heartbeat.0 {
            self.renew_all().await;
        }
    }

    /// The kind of a desired stream (video or audio-only), checked once per revision of its
    /// entry; None when this node refuses it.
    fn kind(&mut self, spec: &StreamSpec, revision: u64) -> Option<bool> {
        if let Some((r, k)) = self.kinds.get(&spec.id)
            && *r == revision
        {
            return *k;
        }
        let ingest = self.ingest()?;
        let k = match ingest.check(spec) {
            Ok(l) => Some(l.desc.contains("name=video")),
            Err(e) => {
                tracing::warn!(stream = %spec.id, error = %e, "A desired stream is refused here; not claimed");
                None
            }
        };
        self.kinds.insert(spec.id.clone(), (revision, k));
        k
    }

    async fn tick(&mut self, claim: bool) -> Result<(), ClusterError> {
        self.renew_all().await;
        self.announce().await?;
        if !claim {
            return Ok(());
        }
        // Desired state: every key, and the entries that parse.
        let present: BTreeSet<String> = keys(&self.ctx.js.streams)
            .await?
            .into_iter()
            .map(|k| stream_of_key(&k))
            .collect();
        let mut desired: BTreeMap<String, (StreamSpec, u64)> = BTreeMap::new();
        for id in &present {
            let Some(e) = live_entry(&self.ctx.js.streams, &kv_key(id)).await? else {
                continue;
            };
            match serde_json::from_slice::<StreamSpec>(&e.value) {
                Ok(spec) if spec.id == *id && subject_safe(id) => {
                    desired.insert(spec.id.clone(), (spec, e.revision));
                }
                _ => {
                    tracing::warn!(stream = %id, "A desired stream's entry is not an attach request for its key that this node reads; left as it is")
                }
            }
        }
        self.kinds.retain(|id, _| desired.contains_key(id));
        let gone: Vec<String> = self
            .owned
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.renew_if_due().await;
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
        let leased: BTreeSet<String> = keys(&self.ctx.js.leases)
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
        let now = Instant::now();
        self.unowned.retain(|id, _| free.contains(id));
        for id in &free {
            self.unowned.entry(id.clone()).or_insert(now);
        }
        let patience = self.ctx.cfg.heartbeat.0 * 2;
        for id in claim_order(self.node(), free) {
            let stranded = self
                .unowned
                .get(&id)
                .is_some_and(|t| t.elapsed() >= patience);
            if self.owned.len() >= fair && !stranded {
                continue;
            }
            let (spec, revision) = desired[&id].clone();
            let Some(video) = self.kind(&spec, revision) else {
                continue;
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
            self.renew_if_due().await;
            let since = now_rfc3339();
            match self
                .ctx
                .js
                .leases
                .create(kv_key(&id), self.lease_value(&since))
                .await
            {
                Ok(rev) => self.start(spec, rev, video, since).await,
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

    /// Delete a lease this process holds (re-read at its current revision when the one known
    /// is stale: the answer to the last renewal was lost).
    async fn delete_lease(&self, id: &str, revision: u64) {
        let leases = &self.ctx.js.leases;
        if leases
            .delete_expect_revision(kv_key(id), Some(revision))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(e)) = live_entry(leases, &kv_key(id)).await
            && serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| self.mine(&l))
        {
            let _ = leases
                .delete_expect_revision(kv_key(id), Some(e.revision))
                .await;
        }
    }

    async fn start(&mut self, spec: StreamSpec, revision: u64, video: bool, since: String) {
        let id = spec.id.clone();
        let mut checkpoint = None;
        if self.ctx.restores.is_some() {
            match read_checkpoint(&self.ctx.js, &id).await {
                Ok(c) => checkpoint = c,
                Err(ClusterError::JetStream(e)) if e.starts_with("checkpoint:") => {
                    tracing::warn!(stream = %id, error = %e, "The conversation checkpoint does not parse; starting afresh");
                }
                Err(e) => {
                    // Starting afresh would overwrite a good checkpoint with a young one.
                    tracing::warn!(stream = %id, error = %e, "Cannot read the conversation checkpoint; leaving the stream for now");
                    self.delete_lease(&id, revision).await;
                    return;
                }
            }
        }
        let Some(ingest) = self.ingest() else {
            self.delete_lease(&id, revision).await;
            return;
        };
        let attached = tokio::task::spawn_blocking(move || ingest.attach(spec))
            .await
            .expect("attach does not panic");
        if let Err(e) = attached {
            tracing::warn!(stream = %id, error = %e, "Cannot run a claimed stream; handing it back");
            self.delete_lease(&id, revision).await;
            return;
        }
        let from = checkpoint.as_ref().map(|(node, _)| node.clone());
        if let (Some(restores), Some((_, cp))) = (&self.ctx.restores, checkpoint) {
            restores
                .lock()
                .expect("restores lock")
                .insert(id.clone(), cp);
        }
        self.ctx.held.lock().expect("held lock").insert(id.clone());
        let cancel = self.input.child_token();
        let pump_ctx = self.ctx.pump.lock().expect("pump lock").clone();
        let task = match pump_ctx {
            Some(p) => tokio::spawn(pump(p, id.clone(), cancel.clone())),
            None => tokio::spawn(async {}),
        };
        tracing::info!(stream = %id, from = from.as_deref().unwrap_or("-"), "Claimed stream");
        self.owner_event("stream.claimed", &id, from, None).await;
        self.owned.insert(
            id,
            Owned {
                revision,
                video,
                since,
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
            // The model worker forgets the stream within the consumer's sweep (0.5 s); its
            // last checkpoint is queued by then.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        self.ctx.held.lock().expect("held lock").remove(id);
        self.ctx.acks.release(id).await;
        if delete {
            self.delete_lease(id, o.revision).await;
        }
        if reason == DETACHED {
            // Gone from the desired state: its transcripts and checkpoint go too.
            forget_transcripts(&self.ctx.js.js, id).await;
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
            self.ctx.held.lock().expect("held lock").remove(id);
            self.ctx.acks.release(id).await;
            self.delete_lease(id, o.revision).await;
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
