//! The `summerd` command line: `run`, `validate`, `version`, `keygen`.
//!
//! Exit codes: 0 success; 1 a runtime failure (a socket that cannot bind, a drain that
//! overran); 2 a configuration error (the message names the key).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use summerd::config::{self, Config, LogFormat};
use summerd::version::VersionInfo;

#[derive(Parser)]
#[command(
    name = "summerd",
    version,
    about = "Live multimodal emotion recognition daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT, then drain and exit.
    Run {
        /// Config file.
        #[arg(short, long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Check a config file: exit 0 if it is good, 2 with every problem named if not.
    Validate {
        /// Config file.
        #[arg(short, long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the versions of summerd, libtorch (and CUDA), GStreamer and libzmq.
    Version {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compute features offline, as the daemon does.
    Features {
        #[command(subcommand)]
        what: Features,
    },
    /// Write training data in the native format from real data, with summerd's extractors.
    Dataset {
        #[command(subcommand)]
        what: DatasetCmd,
    },
    /// Train a teacher and a student distilled from it (CUDA when available): early stopping
    /// on DEV, one evaluation on TEST; writes the model(s), report.json and pictures to OUT.
    Train {
        /// Recipe (TOML: [model], [train], [kd]).
        #[arg(long)]
        recipe: PathBuf,
        /// Train split (native format).
        #[arg(long)]
        train: PathBuf,
        /// Dev split (early stopping).
        #[arg(long)]
        dev: PathBuf,
        /// Test split (evaluated once, at the end).
        #[arg(long)]
        test: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the default model (MELD text + EmoDB voices, per-speaker normalisation) with its
    /// held-out figures: the MELD teacher, EmoDB leave-one-speaker-out students, the shipped
    /// student; writes the model, results.json and report.json to OUT.
    TrainDefault {
        /// Recipe (TOML: [model], [train], [kd], [mix]).
        #[arg(long, default_value = "models/summer-default/recipe.toml")]
        recipe: PathBuf,
        /// Directory with meld-{train,dev,test}.safetensors and emodb.safetensors.
        #[arg(long, default_value = "target/data")]
        data: PathBuf,
        /// Output model directory.
        #[arg(long, default_value = "models/summer-default")]
        out: PathBuf,
        /// Scratch directory (teacher, fold models).
        #[arg(long, default_value = "target/summer-default")]
        work: PathBuf,
        /// Skip the leave-one-speaker-out folds (the shipped model only).
        #[arg(long)]
        no_loso: bool,
        /// Only these held-out speakers (comma-separated), and no shipped model: for trying
        /// a recipe change quickly.
        #[arg(long, value_delimiter = ',')]
        folds: Vec<String>,
    },
    /// Evaluate a model directory on a split: metrics as JSON on stdout (and with --out, a
    /// report.json and a picture there).
    #[command(group(clap::ArgGroup::new("input").required(true).args(["data", "wavs", "meld_csv"])))]
    Eval {
        /// Model directory (manifest.json + weights).
        #[arg(long, default_value = "models/summer-default")]
        model: PathBuf,
        /// Split (native format).
        #[arg(long)]
        data: Option<PathBuf>,
        /// A folder of audio files (any format GStreamer decodes), with --labels: each
        /// speaker's clips as one sequence in random order, online per-speaker normalisation,
        /// text absent (the model card's EmoDB protocol).
        #[arg(long, requires = "labels")]
        wavs: Option<PathBuf>,
        /// FILE,LABEL[,SPEAKER] per line, for --wavs.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// A MELD-format CSV (Utterance, Speaker, Emotion, Dialogue_ID, Utterance_ID):
        /// dialogues as conversations, text only.
        #[arg(long)]
        meld_csv: Option<PathBuf>,
        /// Directory for report.json and report.svg.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Precision of the text encoder's matrix products for --meld-csv (as
        /// `text_encoder.precision`).
        #[arg(long, value_enum, default_value = "auto")]
        text_precision: summerd::text::Precision,
    },
    /// Leave-one-group-out (e.g. speaker) evaluation of the fused network on a split.
    Loso {
        /// Recipe (TOML).
        #[arg(long)]
        recipe: PathBuf,
        /// Data (native format; groups from its sidecar).
        #[arg(long)]
        data: PathBuf,
        /// Directory for report.json and report.svg.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a named set of variants (routing, alpha, kd, fusion) with several seeds each and write
    /// one table (OUT/ablation.md, OUT/ablation.json) of test WF1 mean and spread.
    Ablate {
        /// Base recipe.
        #[arg(long)]
        recipe: PathBuf,
        /// Which variants.
        #[arg(long, value_enum)]
        set: summerd::train::AblationSet,
        /// Seeds per variant.
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Train split.
        #[arg(long)]
        train: PathBuf,
        /// Dev split.
        #[arg(long)]
        dev: PathBuf,
        /// Test split.
        #[arg(long)]
        test: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a recorded call through the daemon's stages as fast as possible: the media's audio
    /// (any format GStreamer decodes) and its transcript segments (JSONL, one transcript
    /// message a line); writes the emotion events as JSONL.
    Replay {
        /// The recorded call.
        media: PathBuf,
        /// Transcript segments, one JSON message a line (INTERFACES.md).
        #[arg(long)]
        transcript: PathBuf,
        /// Config (model, text encoder, limits, publish_text).
        #[arg(short, long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Model directory (overrides the config's).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Events file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Subscribe to a daemon's events and show them, a line each, as they come.
    Tail {
        /// Config whose `events.endpoint` to connect to.
        #[arg(short, long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Endpoint (overrides the config's), e.g. tcp://127.0.0.1:5556.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
        /// Exit after this many emotion events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Write a CURVE keypair: DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub.
    Keygen {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// File stem.
        #[arg(long, default_value = "server")]
        name: String,
    },
}

#[derive(Subcommand)]
enum DatasetCmd {
    /// A MELD split from $SUMMERD_ASSETS/data/meld/<split>_sent_emo.csv: text vectors,
    /// speakers, labels, dialogues.
    Meld {
        /// train, dev or test.
        #[arg(long)]
        split: String,
        /// Output file (.safetensors; the sidecar is written beside it).
        #[arg(long)]
        out: PathBuf,
        /// Text encoder directory.
        #[arg(long, default_value = summerd::text::DEFAULT_DIR)]
        encoder: PathBuf,
    },
    /// EmoDB from $SUMMERD_ASSETS/data/emodb/wav: eGeMAPS functionals, speakers, labels.
    Emodb {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Features {
    /// eGeMAPS v02 descriptors of audio files (any format GStreamer decodes): the 88
    /// functionals per file, or with --lld the 10 ms LLD frames as CSV.
    Audio {
        /// One JSON object per file (a line each) instead of a table.
        #[arg(long)]
        json: bool,
        /// The smoothed LLD frames as CSV (file, start time, 25 LLDs) instead of functionals.
        #[arg(long, conflicts_with = "json")]
        lld: bool,
        /// Audio files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// What the vision stage sees in a video (or a still image): per frame the faces (box,
    /// confidence, landmarks, track), the main face and its expression; then the vector pooled
    /// over the whole file. Same stages and defaults as the daemon.
    Video {
        /// One JSON document (frames, pooled vector) instead of a table.
        #[arg(long)]
        json: bool,
        /// Frames per second looked at (the daemon's ingest.video_fps).
        #[arg(long, default_value_t = 5)]
        fps: u32,
        /// Frames are scaled down to fit WxH (the daemon's ingest.video_max_width/height).
        #[arg(long, default_value = "640x480")]
        max_size: String,
        /// Full detection every k-th frame (vision.detect_every); 1: every frame.
        #[arg(long, default_value_t = 5)]
        detect_every: u32,
        /// Full detection every k-th frame while every tracked face holds
        /// (vision.detect_every_tracked; default: 3x --detect-every, at most 100).
        #[arg(long)]
        detect_every_tracked: Option<u32>,
        /// Smallest face looked for, pixels (vision.mtcnn.min_face).
        #[arg(long, default_value_t = 40.0)]
        min_face: f32,
        /// At most this many frames.
        #[arg(long, default_value_t = 100_000)]
        max_frames: usize,
        /// The video or image.
        file: PathBuf,
    },
    /// Sentence embeddings of TEXTs (or of each line of stdin): one JSON object a line.
    Text {
        /// Encoder directory (config.json, tokenizer.json, model.safetensors).
        #[arg(long, default_value = summerd::text::DEFAULT_DIR)]
        dir: PathBuf,
        /// Truncation length in tokens.
        #[arg(long, default_value_t = summerd::text::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
        /// Also print the token ids.
        #[arg(long)]
        ids: bool,
        /// Texts; none: read lines from stdin.
        texts: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Train { .. }
            | Command::TrainDefault { .. }
            | Command::Loso { .. }
            | Command::Ablate { .. }
    ) {
        // Progress (one line per epoch) on stderr; RUST_LOG overrides.
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| config::log_filter(&v))
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} stream(s); transcripts {}, events {}{})",
                    config.display(),
                    cfg.raw.streams.len(),
                    cfg.transcripts.endpoint.to_zmq(),
                    cfg.events.endpoint.to_zmq(),
                    if cfg.model_path.is_none() {
                        "; no model: no inference"
                    } else {
                        ""
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Version { json } => {
            let v = VersionInfo::probe();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plain struct")
                );
            } else {
                print!("{}", v.render());
            }
            ExitCode::SUCCESS
        }
        Command::Keygen { dir, name } => report(keygen(&dir, &name)),
        Command::Replay {
            media,
            transcript,
            config,
            model,
            out,
        } => report(replay(&media, &transcript, &config, model, out.as_deref())),
        Command::Tail {
            config,
            endpoint,
            stream,
            json,
            count,
        } => report(tail(&config, endpoint, stream, json, count)),
        Command::Features {
            what:
                Features::Text {
                    dir,
                    max_tokens,
                    ids,
                    texts,
                },
        } => report(features_text(&dir, max_tokens, ids, texts)),
        Command::Features {
            what: Features::Audio { json, lld, files },
        } => report(features_audio(&files, json, lld)),
        Command::Features {
            what:
                Features::Video {
                    json,
                    fps,
                    max_size,
                    detect_every,
                    detect_every_tracked,
                    min_face,
                    max_frames,
                    file,
                },
        } => report(features_video(
            &file,
            json,
            fps,
            &max_size,
            (
                detect_every,
                detect_every_tracked.unwrap_or((3 * detect_every).min(100)),
            ),
            min_face,
            max_frames,
        )),
        Command::Dataset { what } => report(dataset(what)),
        Command::Train {
            recipe,
            train,
            dev,
            test,
            out,
        } => report(train_cmd(&recipe, &train, &dev, test.as_deref(), &out)),
        Command::TrainDefault {
            recipe,
            data,
            out,
            work,
            no_loso,
            folds,
        } => report(train_default(&recipe, &data, &out, &work, !no_loso, &folds)),
        Command::Eval {
            model,
            data,
            wavs,
            labels,
            meld_csv,
            out,
            text_precision,
        } => report(eval(
            &model,
            EvalInput::from(data, wavs.zip(labels), meld_csv),
            out.as_deref(),
            text_precision,
        )),
        Command::Loso { recipe, data, out } => report(loso(&recipe, &data, &out)),
        Command::Ablate {
            recipe,
            set,
            seeds,
            train,
            dev,
            test,
            out,
        } => report((|| {
            let recipe = read_recipe(&recipe)?;
            let (tr, dv, te) = (load_data(&train)?, load_data(&dev)?, load_data(&test)?);
            let device = tch::Device::cuda_if_available();
            let splits = summerd::train::Splits {
                train: &tr,
                dev: &dv,
                test: &te,
            };
            let (_, md) = summerd::train::ablate(&recipe, set, seeds, splits, &out, device)?;
            print!("{md}");
            Ok(())
        })()),
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            report(run(cfg))
        }
    }
}

fn features_video(
    file: &Path,
    json: bool,
    fps: u32,
    max_size: &str,
    (detect_every, detect_every_tracked): (u32, u32),
    min_face: f32,
    max_frames: usize,
) -> anyhow::Result<()> {
    use std::io::Write;
    use summerd::vision::expression::CLASSES;
    use summerd::vision::stage::{VisionModels, VisionSettings, VisionStage, VisualTimeline};
    let (w, h) = max_size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .with_context(|| format!("--max-size {max_size}: expected WxH, e.g. 640x480"))?;
    let mut settings = VisionSettings {
        detect_every,
        detect_every_tracked,
        mtcnn_dir: summerd::vision::MTCNN_DIR.into(),
        expression_file: summerd::vision::EXPRESSION_FILE.into(),
        ..Default::default()
    };
    settings.mtcnn.min_face = min_face;
    settings.check().map_err(anyhow::Error::msg)?;
    let frames = summerd::decode::decode_video(
        file,
        summerd::decode::VideoRequest {
            fps: Some(fps),
            max_size: Some((w, h)),
            max_frames,
        },
    )?;
    let models = std::sync::Arc::new(VisionModels::load(&settings, tch::Device::Cpu)?);
    let mut stage = VisionStage::new(models, settings.cadence(), settings.track.clone());
    let mut timeline = VisualTimeline::new(f64::INFINITY);
    let mut seen = Vec::with_capacity(frames.len());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(
            out,
            "{:>8}  {:>5}  {:>5}  expression of the main face",
            "t", "faces", "main"
        )?;
    }
    for f in &frames {
        let r = stage.process(f.t, &f.image)?;
        timeline.push(&r);
        if !json {
            let expr = r.expression.as_ref().map_or(String::from("-"), |e| {
                let (i, p) = e
                    .probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap_or((0, &0.0));
                format!("{} {:.2}", CLASSES[i], p)
            });
            let main = r.main.map_or("-".into(), |m| m.to_string());
            writeln!(
                out,
                "{:>8.2}  {:>5}  {:>5}  {expr}",
                r.t,
                r.faces.len(),
                main
            )?;
        }
        seen.push(r);
    }
    let (t0, t1) = (
        frames.first().map_or(0.0, |f| f.t),
        frames.last().map_or(0.0, |f| f.t),
    );
    let pooled = timeline.pool(t0, t1);
    let (fw, fh) = frames
        .first()
        .map_or((0, 0), |f| (f.image.width, f.image.height));
    if json {
        let doc = serde_json::json!({
            "file": file.display().to_string(),
            "frame_size": [fw, fh],
            "settings": {"fps": fps, "detect_every": detect_every, "detect_every_tracked": detect_every_tracked, "min_face": min_face},
            "classes": CLASSES,
            "frames": seen,
            "pooled": pooled,
        });
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        let top = pooled
            .top()
            .map_or("no face".to_string(), |(l, p)| format!("{l} {p:.2}"));
        writeln!(
            out,
            "{} frames of {fw}x{fh}: main face in {:.0}% of them; pooled expression: {top}",
            pooled.frames,
            100.0 * pooled.face_fraction
        )?;
    }
    Ok(())
}

fn features_audio(files: &[PathBuf], json: bool, lld: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use summerd::acoustic::{self, LLD_NAMES};
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if lld {
        writeln!(out, "file,start,{}", LLD_NAMES.join(","))?;
    }
    let mut failed = 0;
    for path in files {
        let audio = match summerd::decode::decode_audio(path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("summerd: {e}");
                failed += 1;
                continue;
            }
        };
        let (f, frames) = acoustic::file_functionals(audio.rate, &audio.samples)
            .with_context(|| path.display().to_string())?;
        let name = path.display().to_string();
        if lld {
            for (k, row) in acoustic::functionals::smooth(&frames).iter().enumerate() {
                write!(out, "{},{:.2}", name, k as f64 * acoustic::FRAME_SECONDS)?;
                for v in row {
                    write!(out, ",{v}")?;
                }
                writeln!(out)?;
            }
        } else if json {
            let values: serde_json::Map<String, serde_json::Value> = f
                .named()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            let obj = serde_json::json!({
                "file": name,
                "rate": audio.rate,
                "seconds": audio.samples.len() as f64 / f64::from(audio.rate),
                "frames": f.frames,
                "voiced_frames": f.voiced_frames,
                "enough_voiced": f.enough_voiced(),
                "functionals": values,
            });
            writeln!(out, "{obj}")?;
        } else {
            writeln!(
                out,
                "{name}: {} frames, {} voiced{}",
                f.frames,
                f.voiced_frames,
                if f.enough_voiced() {
                    ""
                } else {
                    " (not enough voiced frames: voice functionals are 0)"
                }
            )?;
            for (k, v) in f.named() {
                writeln!(out, "  {k:<45} {v:>14.6}")?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} file(s) could not be read", files.len());
    }
    Ok(())
}

fn assets() -> anyhow::Result<PathBuf> {
    summerd::assets::dir().context("the shared data (SUMMERD_ASSETS, default ../shared) is absent")
}

fn dataset(what: DatasetCmd) -> anyhow::Result<()> {
    use summerd::train::writers;
    let (ds, out) = match what {
        DatasetCmd::Meld {
            split,
            out,
            encoder,
        } => {
            anyhow::ensure!(
                ["train", "dev", "test"].contains(&split.as_str()),
                "--split must be train, dev or test"
            );
            let csv = assets()?.join(format!("data/meld/{split}_sent_emo.csv"));
            let enc = summerd::text::TextEncoder::load(
                &encoder,
                summerd::text::DEFAULT_MAX_TOKENS,
                tch::Device::cuda_if_available(),
            )?;
            (writers::meld(&csv, &enc)?, out)
        }
        DatasetCmd::Emodb { out } => (writers::emodb(&assets()?.join("data/emodb/wav"))?, out),
    };
    ds.save(&out)?;
    println!(
        "{}: {} utterances in {} dialogues, {} classes, dims (text, audio, visual) {:?}",
        out.display(),
        ds.len(),
        ds.dialogues(),
        ds.meta.classes.len(),
        ds.meta.features.dims()
    );
    Ok(())
}

fn read_recipe(path: &Path) -> anyhow::Result<summerd::train::Recipe> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    summerd::train::Recipe::parse(&text).with_context(|| path.display().to_string())
}

fn load_data(path: &Path) -> anyhow::Result<summerd::train::data::Dataset> {
    Ok(summerd::train::data::Dataset::load(path)?)
}

fn train_cmd(
    recipe: &Path,
    train: &Path,
    dev: &Path,
    test: Option<&Path>,
    out: &Path,
) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let (tr, dv) = (load_data(train)?, load_data(dev)?);
    let te = test.map(load_data).transpose()?;
    let device = tch::Device::cuda_if_available();
    let r = summerd::train::run(&recipe, &tr, &dv, te.as_ref(), out, device)?;
    for (name, p) in [
        ("teacher", r.teacher.as_ref()),
        ("student", r.student.as_ref()),
    ] {
        if let Some(p) = p {
            let t = p
                .test
                .as_ref()
                .map(|m| format!(", test WA {:.1} WF1 {:.1}", m.wa, m.wf1))
                .unwrap_or_default();
            println!(
                "{name}: best epoch {}/{}, dev WA {:.1} WF1 {:.1}{t}; experts kept {:?} ({:.0} s)",
                p.best_epoch, p.epochs, p.dev.wa, p.dev.wf1, p.active_experts, p.seconds
            );
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn replay(
    media: &Path,
    transcript: &Path,
    config: &Path,
    model: Option<PathBuf>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut cfg = Config::load(config)?;
    if let Some(m) = model {
        cfg.model_path = Some(m);
    }
    let model = cfg
        .model_path
        .clone()
        .context("no model: set model.path in the config or pass --model")?;
    let jsonl = std::fs::read_to_string(transcript)
        .with_context(|| format!("cannot read {}", transcript.display()))?;
    let device = summerd::daemon::model_device(&cfg.raw.model.device);
    tch::set_num_threads(cfg.raw.inference.threads as i32);
    let mut engine = summerd::infer::engine::Engine::load(
        &model,
        &cfg.text_encoder_dir,
        cfg.raw.text_encoder.max_tokens,
        cfg.raw.text_encoder.precision,
        device,
    )?;
    let limits = summerd::transcripts::Limits::from(&cfg.raw.transcripts);
    let vision = match &cfg.vision {
        Some(v) => Some(summerd::infer::replay::ReplayVision {
            models: std::sync::Arc::new(summerd::vision::stage::VisionModels::load(v, device)?),
            settings: v,
            fps: cfg.raw.ingest.video_fps,
            max_size: (
                cfg.raw.ingest.video_max_width,
                cfg.raw.ingest.video_max_height,
            ),
        }),
        None => None,
    };
    let (events, stats) = summerd::infer::replay::replay(
        &mut engine,
        media,
        &jsonl,
        &limits,
        cfg.raw.inference.max_batch,
        cfg.raw.events.publish_text,
        vision,
    )?;
    let mut text = String::new();
    for e in &events {
        text.push_str(&serde_json::to_string(e)?);
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
        "replayed {:.1} s of media, {} segment(s) -> {} event(s) with {} (audio {:.2} s, vision {:.2} s, inference {:.2} s)",
        stats.media_seconds,
        stats.lines,
        stats.events,
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

fn tail(
    config: &Path,
    endpoint: Option<String>,
    stream: Option<String>,
    json: bool,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let endpoint = match endpoint {
        Some(e) => e,
        None => Config::load(config)?.events.endpoint.to_zmq(),
    };
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    match &stream {
        Some(s) => {
            sub.set_subscribe(format!("emotion.{s}").as_bytes())?;
            sub.set_subscribe(format!("lifecycle.{s}").as_bytes())?;
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

fn train_default(
    recipe: &Path,
    data: &Path,
    out: &Path,
    work: &Path,
    loso: bool,
    folds: &[String],
) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let split = |name: &str| load_data(&data.join(format!("{name}.safetensors")));
    let (tr, dv, te, emodb) = (
        split("meld-train")?,
        split("meld-dev")?,
        split("meld-test")?,
        split("emodb")?,
    );
    let device = tch::Device::cuda_if_available();
    let r = summerd::train::summer_default::build(
        &recipe,
        [&tr, &dv, &te],
        &emodb,
        out,
        work,
        &if !loso {
            summerd::train::summer_default::Folds::Skip
        } else if folds.is_empty() {
            summerd::train::summer_default::Folds::All
        } else {
            summerd::train::summer_default::Folds::Only(folds.to_vec())
        },
        device,
    )?;
    let test = |t: &summerd::train::TrainReport, who: &str| {
        let p = match who {
            "teacher" => t.teacher.as_ref(),
            _ => t.student.as_ref(),
        };
        p.and_then(|p| p.test.as_ref())
            .map_or("-".into(), |m| format!("WA {:.1} WF1 {:.1}", m.wa, m.wf1))
    };
    println!("MELD test, teacher (text): {}", test(&r.teacher, "teacher"));
    println!(
        "MELD test, student (audio absent): {}",
        test(&r.student, "student")
    );
    for f in &r.folds {
        println!(
            "EmoDB held out {}: audio-alone accuracy {:.1} % ({} clips); MELD test with this voice WF1 {:.1}",
            f.speaker, f.audio_accuracy, f.clips, f.fused_meld_wf1
        );
    }
    if let (Some(a), Some(f)) = (&r.emodb_loso, &r.fused_loso) {
        println!(
            "EmoDB LOSO pooled (6 classes, text absent): accuracy {:.1} %, UAR {:.1}; MELD test + held-out voices: WF1 {:.1}",
            a.wa, a.uar, f.wf1
        );
    }
    println!("{:.0} s; wrote {}", r.seconds, out.display());
    Ok(())
}

/// What `summerd eval` reads.
enum EvalInput {
    Native(PathBuf),
    Wavs(PathBuf, PathBuf),
    Meld(PathBuf),
}

impl EvalInput {
    fn from(
        data: Option<PathBuf>,
        wavs: Option<(PathBuf, PathBuf)>,
        meld: Option<PathBuf>,
    ) -> Self {
        match (data, wavs, meld) {
            (Some(d), _, _) => EvalInput::Native(d),
            (_, Some((w, l)), _) => EvalInput::Wavs(w, l),
            (_, _, Some(m)) => EvalInput::Meld(m),
            _ => unreachable!("clap requires one input"),
        }
    }

    fn describe(&self) -> String {
        match self {
            EvalInput::Native(p) | EvalInput::Meld(p) | EvalInput::Wavs(p, _) => {
                p.display().to_string()
            }
        }
    }
}

/// A dataset in the model's own features from labelled wav files or a MELD CSV.
fn eval_dataset(
    m: &summerd::model::Model,
    model_dir: &Path,
    input: &EvalInput,
    device: tch::Device,
    precision: summerd::text::Precision,
) -> anyhow::Result<summerd::train::data::Dataset> {
    use summerd::train::{mix, writers};
    match input {
        EvalInput::Native(p) => load_data(p),
        EvalInput::Wavs(dir, labels) => {
            let norm = m.manifest.speaker_norm.as_ref().context(
                "the model has no per-speaker normalisation in its manifest; evaluate it on a native split",
            )?;
            let (clips, notes) = writers::labelled_wavs(dir, labels, &m.manifest.classes)?;
            for n in notes {
                eprintln!("{}: {n}", labels.display());
            }
            let speakers = clips.speakers();
            let text = m.manifest.features.text.as_ref();
            let mut ds = mix::speaker_sequences(&clips, &speakers, norm, text, 1, 8);
            ds.meta.classes = m.manifest.classes.clone();
            Ok(ds)
        }
        EvalInput::Meld(csv) => {
            // The encoder as the daemon loads it: with the model's tuning delta, if any.
            let tuned = m
                .manifest
                .text_tuned
                .as_ref()
                .map(|t| model_dir.join(&t.file));
            let mut enc = summerd::text::TextEncoder::load_tuned(
                Path::new(summerd::text::DEFAULT_DIR),
                summerd::text::DEFAULT_MAX_TOKENS,
                device,
                tuned.as_deref(),
            )?;
            let kind = enc.set_precision(precision);
            eprintln!("text encoder matrix products in {kind:?}");
            let ds = writers::meld(csv, &enc)?;
            Ok(if m.manifest.features.audio.is_some() {
                mix::audio_absent(&ds)
            } else {
                ds
            })
        }
    }
}

fn eval(
    model: &Path,
    input: EvalInput,
    out: Option<&Path>,
    precision: summerd::text::Precision,
) -> anyhow::Result<()> {
    let device = tch::Device::cuda_if_available();
    let m = summerd::model::Model::load(model, device)?;
    let mut ds = eval_dataset(&m, model, &input, device, precision)?;
    let data = PathBuf::from(input.describe());
    let data = data.as_path();
    let made_tuned = ds
        .meta
        .features
        .text
        .as_ref()
        .is_some_and(|f| f.extractor.ends_with("+tuned"));
    let has_text = ds.present.select(1, 0).any().int64_value(&[]) != 0;
    if let Some(t) = m.manifest.text_tuned.as_ref().filter(|_| !made_tuned) {
        // The model reads vectors from its own fine-tuned encoder layers: remake them (data
        // without any text, such as labelled wavs, has none to remake).
        if has_text {
            anyhow::ensure!(
                ds.meta.texts.len() == ds.len(),
                "the model's text encoder is fine-tuned, and {} has no texts to encode",
                data.display()
            );
            let enc = summerd::text::TextEncoder::load_tuned(
                Path::new(summerd::text::DEFAULT_DIR),
                summerd::text::DEFAULT_MAX_TOKENS,
                device,
                Some(&model.join(&t.file)),
            )?;
            ds = summerd::train::tune::reencode(&ds, &enc)?;
        } else {
            ds.meta.features.mark_text_tuned();
        }
    }
    anyhow::ensure!(
        ds.meta.classes == m.manifest.classes,
        "the data's classes {:?} are not the model's {:?}",
        ds.meta.classes,
        m.manifest.classes
    );
    m.manifest.features.check_against(&ds.meta.features)?;
    let (metrics, active) = summerd::train::evaluate(&m.net, &ds, device, 64);
    let obj = serde_json::json!({"metrics": metrics, "active_experts": active, "classes": ds.meta.classes});
    println!("{}", serde_json::to_string_pretty(&obj)?);
    if let Some(out) = out {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("report.json"),
            serde_json::to_string_pretty(&obj)? + "\n",
        )?;
        let title = format!("{} on {}", model.display(), data.display());
        std::fs::write(
            out.join("report.svg"),
            summerd::train::metrics::svg(&metrics, &ds.meta.classes, &title),
        )?;
    }
    Ok(())
}

fn loso(recipe: &Path, data: &Path, out: &Path) -> anyhow::Result<()> {
    let recipe = read_recipe(recipe)?;
    let ds = load_data(data)?;
    let r = summerd::train::loso(&recipe, &ds, tch::Device::cuda_if_available())?;
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&r)? + "\n",
    )?;
    std::fs::write(
        out.join("report.svg"),
        summerd::train::metrics::svg(&r.pooled, &r.classes, "leave one group out, pooled"),
    )?;
    for (g, m, dev) in &r.folds {
        println!("held out {g} (dev {dev}): WA {:.1} UAR {:.1}", m.wa, m.uar);
    }
    println!(
        "pooled over {} folds: WA {:.1}, WF1 {:.1}, UAR {:.1} ({:.0} s); wrote {}",
        r.folds.len(),
        r.pooled.wa,
        r.pooled.wf1,
        r.pooled.uar,
        r.seconds,
        out.display()
    );
    Ok(())
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Summerd failed");
            eprintln!("summerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    // RUST_LOG overrides the config when it is a filter (checked like the config's value).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| config::log_filter(&v))
        .or_else(|| config::log_filter(&cfg.raw.daemon.log_level))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.raw.daemon.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let arenas = summerd::daemon::limit_malloc_arenas(cfg.raw.daemon.malloc_arenas);
    tracing::debug!(?arenas, "malloc arenas");
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

fn keygen(dir: &Path, name: &str) -> anyhow::Result<()> {
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

fn features_text(
    dir: &Path,
    max_tokens: usize,
    ids: bool,
    texts: Vec<String>,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let texts = if texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .context("reading stdin")?
    } else {
        texts
    };
    let enc = summerd::text::TextEncoder::load(dir, max_tokens, tch::Device::cuda_if_available())?;
    for chunk in texts.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let tokens = enc.tokenize(&refs)?;
        let emb = enc.vectors(&tokens)?;
        for (i, (text, e)) in refs.iter().zip(emb).enumerate() {
            let row = tokens.row(i);
            let mut obj = serde_json::json!({"text": text, "tokens": row.len(), "embedding": e});
            if ids {
                obj["ids"] = serde_json::json!(row);
            }
            println!("{obj}");
        }
    }
    Ok(())
}
