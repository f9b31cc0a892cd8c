//! `summerd cluster attach|detach|list|nodes` and `summerd tail --nats`: cluster mode's
//! desired state and events, through NATS, from any host that reaches the servers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use summerd::cluster::{self, ClusterConfig, Js, Layout, admin};
use summerd::config::Config;
use summerd::streams::StreamSpec;

/// What `summerd cluster` does.
pub enum Action {
    /// Add a stream (an attach request: JSON, or `@FILE`).
    Attach(String),
    /// Remove a stream.
    Detach(String),
    /// The desired streams and their owners.
    List {
        /// As JSON lines.
        json: bool,
    },
    /// The live nodes.
    Nodes {
        /// As JSON lines.
        json: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn cluster_of(cfg: &Config) -> anyhow::Result<ClusterConfig> {
    cfg.cluster.clone().with_context(|| {
        format!(
            "{} has no [cluster] table: cluster mode is off",
            cfg.source.display()
        )
    })
}

/// Run `summerd cluster ACTION` with the config at `config` (its `[cluster]` says where NATS
/// is; its pipelines and `[ingest]` check attach requests).
pub fn run(config: &Path, action: Action) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let cl = cluster_of(&cfg)?;
    runtime()?.block_on(async move {
        let js = Js::open_patiently(
            cl.connect().await?,
            Layout::of(&cl),
            Duration::from_secs(10),
        )
        .await?;
        match action {
            Action::Attach(req) => {
                let text = match req.strip_prefix('@') {
                    Some(f) => {
                        std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
                    }
                    None => req,
                };
                let spec: StreamSpec =
                    serde_json::from_str(&text).context("the attach request is not valid JSON")?;
                let id = spec.id.clone();
                admin::attach(&js, &cfg.pipelines_dir, &cfg.ingest, spec).await?;
                println!("attached {id}");
            }
            Action::Detach(id) => {
                admin::detach(&js, &id).await?;
                println!("detached {id}");
            }
            Action::List { json } => {
                for l in admin::list(&js).await? {
                    if json {
                        println!("{}", serde_json::to_string(&l)?);
                    } else {
                        println!(
                            "{:<32} {:<12} {:<24} {}",
                            l.spec.id,
                            l.spec.template,
                            l.owner.as_deref().unwrap_or("(unowned)"),
                            l.spec.uri
                        );
                    }
                }
            }
            Action::Nodes { json } => {
                for n in admin::nodes(&js).await? {
                    if json {
                        println!("{}", serde_json::to_string(&n)?);
                    } else {
                        println!(
                            "{:<24} video {}/{}  audio {}/{}  since {}",
                            n.node,
                            n.video_owned,
                            n.video_streams,
                            n.audio_owned,
                            n.audio_streams,
                            n.started
                        );
                    }
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })
}

/// `summerd tail --nats URL`: the events stream of a cluster, from its start or live.
pub fn tail_nats(
    config: &Path,
    url: &str,
    stream: Option<String>,
    json: bool,
    count: Option<usize>,
    from_start: bool,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    use futures_util::StreamExt;
    // Credentials from the config's [cluster] when it has one; the URL given wins.
    let mut cl = Config::load(config)
        .ok()
        .and_then(|c| c.cluster)
        .unwrap_or_default();
    cl.urls = vec![url.to_string()];
    runtime()?.block_on(async move {
        let client = cl.connect().await?;
        let js = async_nats::jetstream::new(client);
        let s = js
            .get_stream(cluster::EVENTS_STREAM)
            .await
            .map_err(|e| anyhow::anyhow!("no events stream at {url}: {e}"))?;
        let filter = match &stream {
            Some(id) => format!("{}.{id}", cluster::EVENTS_SUBJECT),
            None => format!("{}.>", cluster::EVENTS_SUBJECT),
        };
        let consumer = s
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: if from_start {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::New
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "reading {} at {url} (Ctrl-C to stop)",
            cluster::EVENTS_STREAM
        );
        let mut seen = 0;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            let body = &m.payload;
            if json {
                println!("{}", String::from_utf8_lossy(body));
            } else {
                println!(
                    "{}",
                    summerd::tail::render(&topic_of(&m.subject, body), body)
                );
            }
            if is_emotion(body) {
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
        }
        bail!("the events stream ended")
    })
}

fn kind_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct K {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<K>(body)
        .map(|k| k.kind)
        .unwrap_or_default()
}

fn is_emotion(body: &[u8]) -> bool {
    kind_of(body) == "emotion"
}

/// The ZeroMQ topic an event from `summerd.events.<stream>` would have had.
fn topic_of(subject: &str, body: &[u8]) -> Vec<u8> {
    let stream = subject
        .strip_prefix(cluster::EVENTS_SUBJECT)
        .and_then(|s| s.strip_prefix('.'))
        .unwrap_or(subject);
    let kind = match kind_of(body).as_str() {
        "emotion" => "emotion",
        "escalation" | "deescalation" => "signal",
        _ => "lifecycle",
    };
    format!("{kind}.{stream}").into_bytes()
}
