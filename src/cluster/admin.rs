//! `summerd cluster attach|detach|list|nodes`: the desired state and what the nodes report,
//! edited and read through NATS. An attach request is checked exactly as the control socket
//! checks one (the same templates, URI schemes and placeholders), so a bad request is
//! refused here and never reaches a node.

use std::path::Path;

use serde::Serialize;

use super::node::{Lease, NodeInfo};
use super::{ClusterError, Js, js_err, keys, kv_key, live_entry};
use crate::ingest::settings::IngestConfig;
use crate::streams::StreamSpec;

/// One desired stream and who holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The attach request.
    pub spec: StreamSpec,
    /// The node holding its lease, if any.
    pub owner: Option<String>,
    /// Since when (RFC 3339).
    pub since: Option<String>,
}

/// Add a stream to the desired state, checked as an attach request on the control socket.
/// Refused when its id is already there.
pub async fn attach(
    js: &Js,
    pipelines_dir: &Path,
    ingest: &IngestConfig,
    spec: StreamSpec,
) -> Result<(), ClusterError> {
    crate::ingest::check_spec(pipelines_dir, ingest, &spec)
        .map_err(|e| ClusterError::Refused(e.to_string()))?;
    if !super::subject_safe(&spec.id) {
        return Err(ClusterError::Refused(format!(
            "`attach.id`: '{}' has an empty part between dots, which NATS subjects cannot carry \
             (allowed in cluster mode: parts of A-Z a-z 0-9 _ : - joined by single dots)",
            spec.id
        )));
    }
    let body = serde_json::to_vec(&spec).expect("a spec serialises");
    match js.streams.create(kv_key(&spec.id), body.into()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if live_entry(&js.streams, &kv_key(&spec.id)).await?.is_some() {
                Err(ClusterError::Refused(format!(
                    "stream '{}' is already attached to the cluster",
                    spec.id
                )))
            } else {
                Err(js_err(e))
            }
        }
    }
}

/// Remove a stream from the desired state; its owner stops it within a heartbeat. Its
/// transcript consumer and conversation checkpoint are deleted.
pub async fn detach(js: &Js, id: &str) -> Result<(), ClusterError> {
    if live_entry(&js.streams, &kv_key(id)).await?.is_none() {
        return Err(ClusterError::Refused(format!(
            "stream '{id}' is not attached to the cluster"
        )));
    }
    js.streams.delete(kv_key(id)).await.map_err(js_err)?;
    let _ = js.state.purge(kv_key(id)).await;
    super::pump::forget_transcripts(&js.js, id).await;
    Ok(())
}

/// Every desired stream with its owner, by id.
pub async fn list(js: &Js) -> Result<Vec<Listed>, ClusterError> {
    let mut out = Vec::new();
    let mut ids = keys(&js.streams).await?;
    ids.sort();
    for key in ids {
        let Some(e) = live_entry(&js.streams, &key).await? else {
            continue;
        };
        let Ok(spec) = serde_json::from_slice::<StreamSpec>(&e.value) else {
            continue;
        };
        let lease = live_entry(&js.leases, &key)
            .await?
            .and_then(|l| serde_json::from_slice::<Lease>(&l.value).ok());
        out.push(Listed {
            spec,
            owner: lease.as_ref().map(|l| l.node.clone()),
            since: lease.map(|l| l.since),
        });
    }
    Ok(out)
}

/// Every live node's record, by name.
pub async fn nodes(js: &Js) -> Result<Vec<NodeInfo>, ClusterError> {
    let mut out = Vec::new();
    let mut names = keys(&js.nodes).await?;
    names.sort();
    for n in names {
        if let Some(e) = live_entry(&js.nodes, &n).await?
            && let Ok(info) = serde_json::from_slice::<NodeInfo>(&e.value)
        {
            out.push(info);
        }
    }
    Ok(out)
}
