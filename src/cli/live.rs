//! The commands around a running daemon or a recorded call: `run`, `replay`, `tail`, `keygen`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use summerd::config::Config;

/// `summerd run`: load the config (exit 2 if it is wrong), then run the daemon until SIGTERM or
/// SIGINT and drain.
pub fn run(config: &Path) -> ExitCode {
    let cfg = match super::load_config(config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    super::init_logging(&cfg);
    match daemon(cfg) {
        // A model or stream the config names that cannot be used is a configuration error,
        // as `summerd validate` says.
        Err(e)
            if e.downcast_ref::<summerd::daemon::DaemonError>()
                .is_some_and(summerd::daemon::DaemonError::is_config) =>
        {
            eprintln!("error: {e:#}");
            ExitCode::from(super::CONFIG_ERROR)
        }
        r => super::report(r),
    }
}

/// The daemon on a multi-threaded tokio runtime, stopped by SIGTERM or SIGINT.
fn daemon(cfg: Config) -> anyhow::Result<()> {
    let arenas = summerd::daemon::limit_malloc_arenas(cfg.daemon.malloc_arenas);
    tracing::debug!(target: "summerd", ?arenas, "malloc arenas");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("summerd-rt")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            }
        };
        summerd::daemon::run(cfg, shutdown).await?;
        Ok(())
    })
}

/// What `summerd replay` replays.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The recorded call.
    media: PathBuf,
    /// Transcript segments, one JSON message a line (INTERFACES.md).
    #[arg(long)]
    transcript: PathBuf,
    /// Config (model, text encoder, limits, publish_text).
    #[arg(short, long, default_value = summerd::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Model directory (overrides the config's).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The stream the call is: the id of a `[[streams]]` entry of the config gives its
    /// speaker roles and `infer_speakers` (default: the first line's stream, no roles).
    #[arg(long)]
    stream: Option<String>,
    /// Wall-clock time of the media's start (seconds since the Unix epoch), which places
    /// `clock: "unix"` lines on the media's timeline (without it they are rejected).
    #[arg(long)]
    unix_epoch: Option<f64>,
    /// Events file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `summerd replay`: a recorded call through the daemon's stages; the events as JSONL on
/// stdout or in `out`, a summary and any rejected transcript lines on stderr.
pub fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let ReplayArgs {
        media,
        transcript,
        config,
        model,
        stream,
        unix_epoch,
        out,
    } = a;
    let (media, transcript, out) = (media.as_path(), transcript.as_path(), out.as_deref());
    let mut cfg = Config::load(&config)?;
    if let Some(m) = model {
        cfg.model_path = Some(m);
    }
    anyhow::ensure!(
        cfg.model_path.is_some(),
        "no model: set model.path in the config or pass --model"
    );
    let jsonl = std::fs::read_to_string(transcript)
        .with_context(|| format!("cannot read {}", transcript.display()))?;
    // The stream's roles and policy from the config's [[streams]] entry of that id.
    let spec = stream.map(|id| {
        cfg.streams
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .unwrap_or_else(|| summerd::streams::StreamSpec::for_file(id, media))
    });
    let loaded = summerd::daemon::preflight(&cfg)?;
    let mut engine = loaded.engine.context("no model")?;
    let vision = loaded
        .vision
        .as_ref()
        .map(|v| summerd::infer::replay::ReplayVision {
            models: v.models.clone(),
            settings: &v.settings,
            fps: cfg.ingest.video_fps,
            max_size: (cfg.ingest.video_max_width, cfg.ingest.video_max_height),
        });
    let opts = summerd::infer::replay::ReplayOptions {
        limits: summerd::transcripts::Limits::from(&cfg.transcripts),
        max_batch: cfg.inference.max_batch,
        provisional: cfg.inference.provisional,
        publish_text: cfg.events.publish_text,
        unix_epoch,
    };
    let (events, stats) =
        summerd::infer::replay::replay(&mut engine, media, &jsonl, spec, &opts, vision)?;
    let published = summerd::infer::replay::with_signals(events, &cfg.escalation);
    let signals = published.len() - stats.events;
    let mut text = String::new();
    for e in &published {
        text.push_str(&String::from_utf8_lossy(&e.to_json()));
        text.push('\n');
    }
    match out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{text}"),
    }
    for (line, why) in &stats.rejected {
        eprintln!("{}:{line}: rejected: {why}", transcript.display());
    }
    eprintln!(
        "replayed {:.1} s of media, {} segment(s) -> {} event(s) and {} signal(s) with {} (audio {:.2} s, vision {:.2} s, inference {:.2} s)",
        stats.media_seconds,
        stats.lines,
        stats.events,
        signals,
        engine.name(),
        stats.audio_seconds,
        stats.vision_seconds,
        stats.inference_seconds
    );
    anyhow::ensure!(
        stats.rejected.is_empty(),
        "{} transcript line(s) rejected",
        stats.rejected.len()
    );
    Ok(())
}

/// `summerd tail`: a daemon's events, a line each (or as raw JSON), as they come.
pub fn tail(
    config: &Path,
    endpoint: Option<String>,
    stream: Option<String>,
    json: bool,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let endpoint = match endpoint {
        Some(e) => e,
        None => Config::load(config)?.sockets.events.endpoint.to_zmq(),
    };
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    match &stream {
        Some(s) => {
            sub.set_subscribe(format!("emotion.{s}").as_bytes())?;
            sub.set_subscribe(format!("lifecycle.{s}").as_bytes())?;
            sub.set_subscribe(format!("signal.{s}").as_bytes())?;
        }
        None => sub.set_subscribe(b"")?,
    }
    sub.connect(&endpoint)
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    eprintln!("listening on {endpoint} (Ctrl-C to stop)");
    let mut seen = 0;
    loop {
        let parts = sub.recv_multipart(0)?;
        let (Some(topic), Some(body)) = (parts.first(), parts.get(1)) else {
            continue;
        };
        if json {
            println!("{}", String::from_utf8_lossy(body));
        } else {
            println!("{}", summerd::tail::render(topic, body));
        }
        if topic.starts_with(b"emotion.") {
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
}

/// `summerd keygen`: a CURVE keypair, `dir/name.key` (secret, mode 0600) and `dir/name.pub`.
pub fn keygen(dir: &Path, name: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pair =
        zmq::CurveKeyPair::new().context("libzmq cannot make CURVE keys (no CURVE support?)")?;
    let secret = zmq::z85_encode(&pair.secret_key).context("encoding the secret key")?;
    let public = zmq::z85_encode(&pair.public_key).context("encoding the public key")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = dir.join(format!("{name}.key"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .with_context(|| format!("creating {} (it must not exist yet)", key.display()))?;
    writeln!(f, "{secret}")?;
    let pubf = dir.join(format!("{name}.pub"));
    std::fs::write(&pubf, format!("{public}\n"))
        .with_context(|| format!("writing {}", pubf.display()))?;
    println!("{}\n{}", key.display(), pubf.display());
    Ok(())
}
