//! The `summerd` command line.
//!
//! The daemon and what works beside it: `run` (until SIGTERM or SIGINT, then drain),
//! `validate` (a config file), `version`, `keygen` (a CURVE keypair), `token` (a bearer token
//! for the live page), `tail` (a running daemon's events), `cluster` (cluster mode's streams
//! and nodes), `replay` (a recorded call through the daemon's stages), `report` (a
//! picture of a whole call from its events). Offline:
//! `features audio|video|text` (what the extractors compute), `dataset meld|emodb` (training
//! data in the native format), `train`, `train-default` (the default model), `eval` (a model
//! on a split), `loso` (leave one group out), `ablate` (variants over seeds).
//!
//! This file holds the arguments and the dispatch; each command is in `cli/`, its logic in the
//! library.
//!
//! Exit codes: 0 success; 1 a runtime failure (a socket that cannot bind, a drain that
//! overran, a file that cannot be read); 2 a configuration error of `run` or `validate` (the
//! message names the key), or arguments that do not parse.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::report;
use summerd::config;
use summerd::train::summer_default::Folds;

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
        /// Directory with meld-{train,dev,test}.safetensors and emodb.safetensors (and
        /// emodb-<condition>.safetensors: each fold is scored through every one found, and the
        /// recipe's `mix.conditions` train on them).
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
    #[command(group(clap::ArgGroup::new("input").required(true).args(["data", "wavs", "meld_csv", "faces"])))]
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
        /// Pass each --wavs file through a telephone channel's real encoder and decoder first
        /// (GStreamer: G.711 mu-law or A-law at 8 kHz, Opus at 16 kbit/s, GSM full rate), then
        /// the daemon's own path (the model's band, descriptors, model).
        #[arg(long, value_enum, default_value = "clean", requires = "wavs")]
        channel: summerd::decode::Channel,
        /// Add noise to each --wavs file after the channel: `pink:SNR` or `babble:SNR` (SNR in
        /// dB over the speech's active level; babble is made from the other speakers' clips).
        #[arg(long, requires = "wavs")]
        noise: Option<summerd::decode::Noise>,
        /// A MELD-format CSV (Utterance, Speaker, Emotion, Dialogue_ID, Utterance_ID):
        /// dialogues as conversations, text only.
        #[arg(long)]
        meld_csv: Option<PathBuf>,
        /// A folder of labelled face pictures, DIR/<class>/*.{jpg,png} (classes in FER's or
        /// MELD's words), each a pre-cropped face: the model's visual branch alone, and beside
        /// it the expression network's own answers on the same pictures.
        #[arg(long)]
        faces: Option<PathBuf>,
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
    Replay(cli::live::ReplayArgs),
    /// Draw a whole call from its events (`replay --out` or `tail --json`): a timeline per
    /// stream and per-speaker summaries, as HTML or SVG.
    Report {
        /// The events (JSONL, one event a line).
        events: PathBuf,
        /// Output file: .html (or .htm) for a page with summaries, .svg for the timeline only.
        #[arg(short, long)]
        out: PathBuf,
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
        /// Read a cluster's events stream in NATS JetStream at this URL instead (credentials
        /// from the config's `[cluster]`).
        #[arg(long)]
        nats: Option<String>,
        /// With `--nats`: from the start of the events stream (default: only new events).
        #[arg(long, requires = "nats")]
        from_start: bool,
    },
    /// Cluster mode: the desired streams and the nodes, through NATS (the config's `[cluster]`).
    Cluster {
        /// Config whose `[cluster]` says where NATS is.
        #[arg(short, long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[command(subcommand)]
        what: ClusterCmd,
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
    /// Print a new random bearer token for `[web] token` (the live page off loopback).
    Token,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Add a stream to the cluster: an attach request as JSON (or @FILE), checked as the
    /// control socket checks one.
    Attach {
        /// The request, e.g. '{"id":"call-42","uri":"rtsp://...","template":"rtsp"}'.
        request: String,
    },
    /// Remove a stream from the cluster; its owner stops it within a heartbeat.
    Detach {
        /// Its id.
        id: String,
    },
    /// The desired streams and the node holding each.
    List {
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// The live nodes, their capacity and load.
    Nodes {
        /// JSON lines.
        #[arg(long)]
        json: bool,
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
        /// Each clip through a telephone channel's encoder and decoder first.
        #[arg(long, value_enum, default_value = "clean")]
        channel: summerd::decode::Channel,
        /// Then noise: `pink:SNR` or `babble:SNR` (babble from other speakers' clips).
        #[arg(long)]
        noise: Option<summerd::decode::Noise>,
        /// The band the descriptors hear: `telephone` (egemaps-v02/summerd/4, what the default
        /// model reads) or `wide` (egemaps-v02/summerd/3).
        #[arg(long, value_enum, default_value = "telephone")]
        band: summerd::acoustic::Band,
    },
    /// Labelled face pictures, DIR/<class>/*.{jpg,png} (e.g. $SUMMERD_ASSETS/data/fer/train):
    /// each picture's visual vector as the daemon makes it, with its label.
    Faces {
        /// The folder of class folders.
        #[arg(long)]
        dir: PathBuf,
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
        /// The band heard: `telephone` (through 8 kHz, what the default model reads) or `wide`
        /// (as openSMILE hears a 16 kHz recording).
        #[arg(long, value_enum, default_value = "telephone")]
        band: summerd::acoustic::Band,
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
    /// The expression of pre-cropped face pictures (no detection: the picture is the face),
    /// through the daemon's crop normalisation and expression network: per picture the
    /// network's answer, or with --json its probabilities and the model's visual vector.
    Face {
        /// One JSON object per picture (a line each) instead of a table.
        #[arg(long)]
        json: bool,
        /// Pictures (any format GStreamer decodes).
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
    if cli.command.trains() {
        cli::init_training_logging();
    }
    dispatch(cli.command)
}

impl Command {
    /// The training commands, which log their progress (one line per epoch) on stderr.
    fn trains(&self) -> bool {
        matches!(
            self,
            Command::Train { .. }
                | Command::TrainDefault { .. }
                | Command::Loso { .. }
                | Command::Ablate { .. }
        )
    }
}

fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => cli::live::run(&config),
        Command::Validate { config } => cli::validate(&config),
        Command::Version { json } => cli::version(json),
        Command::Keygen { dir, name } => report(cli::live::keygen(&dir, &name)),
        Command::Token => report(
            summerd::web::new_token()
                .map(|t| println!("{t}"))
                .map_err(anyhow::Error::from),
        ),
        Command::Replay(args) => report(cli::live::replay(args)),
        Command::Report { events, out } => report(cli::call_report::run(&events, &out)),
        Command::Tail {
            config,
            endpoint,
            stream,
            json,
            count,
            nats,
            from_start,
        } => report(match nats {
            Some(url) => cli::cluster::tail_nats(&config, &url, stream, json, count, from_start),
            None => cli::live::tail(&config, endpoint, stream, json, count),
        }),
        Command::Cluster { config, what } => report(cli::cluster::run(
            &config,
            match what {
                ClusterCmd::Attach { request } => cli::cluster::Action::Attach(request),
                ClusterCmd::Detach { id } => cli::cluster::Action::Detach(id),
                ClusterCmd::List { json } => cli::cluster::Action::List { json },
                ClusterCmd::Nodes { json } => cli::cluster::Action::Nodes { json },
            },
        )),
        Command::Features { what } => report(features(what)),
        Command::Dataset { what } => report(dataset(what)),
        Command::Train {
            recipe,
            train,
            dev,
            test,
            out,
        } => report(cli::train::train_cmd(
            &recipe,
            &train,
            &dev,
            test.as_deref(),
            &out,
        )),
        Command::TrainDefault {
            recipe,
            data,
            out,
            work,
            no_loso,
            folds,
        } => report(cli::train::train_default(
            &recipe,
            &data,
            &out,
            &work,
            &folds_of(no_loso, folds),
        )),
        Command::Eval {
            model,
            data,
            wavs,
            labels,
            channel,
            noise,
            meld_csv,
            faces,
            out,
            text_precision,
        } => report(cli::eval::eval(
            &model,
            cli::eval::input(
                data,
                wavs.zip(labels)
                    .map(|(w, l)| (w, l, summerd::decode::Condition { channel, noise })),
                meld_csv,
                faces,
            ),
            out.as_deref(),
            text_precision,
        )),
        Command::Loso { recipe, data, out } => report(cli::train::loso(&recipe, &data, &out)),
        Command::Ablate {
            recipe,
            set,
            seeds,
            train,
            dev,
            test,
            out,
        } => report(cli::train::ablate(
            &recipe,
            set,
            seeds,
            [&train, &dev, &test],
            &out,
        )),
    }
}

/// `--no-loso` and `--folds` as the folds to run.
fn folds_of(no_loso: bool, only: Vec<String>) -> Folds {
    if no_loso {
        Folds::Skip
    } else if only.is_empty() {
        Folds::All
    } else {
        Folds::Only(only)
    }
}

fn features(what: Features) -> anyhow::Result<()> {
    match what {
        Features::Text {
            dir,
            max_tokens,
            ids,
            texts,
        } => cli::features::text(&dir, max_tokens, ids, texts),
        Features::Audio {
            json,
            lld,
            band,
            files,
        } => cli::features::audio(&files, band, json, lld),
        Features::Face { json, files } => cli::features::face(&files, json),
        Features::Video {
            json,
            fps,
            max_size,
            detect_every,
            detect_every_tracked,
            min_face,
            max_frames,
            file,
        } => cli::features::video(
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
        ),
    }
}

fn dataset(what: DatasetCmd) -> anyhow::Result<()> {
    match what {
        DatasetCmd::Meld {
            split,
            out,
            encoder,
        } => cli::train::dataset_meld(&split, &out, &encoder),
        DatasetCmd::Emodb {
            out,
            channel,
            noise,
            band,
        } => cli::train::dataset_emodb(&out, summerd::decode::Condition { channel, noise }, band),
        DatasetCmd::Faces { dir, out } => cli::train::dataset_faces(&dir, &out),
    }
}
