//! What the commands share: the exit code of a result, logging, the shared data's directory,
//! and the two commands that only read (`validate`, `version`).

pub mod call_report;
pub mod cluster;
pub mod eval;
pub mod features;
pub mod live;
pub mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use summerd::config::{self, Config, LogFormat};
use summerd::version::VersionInfo;

/// Exit code 2: a configuration or model error.
pub const CONFIG_ERROR: u8 = 2;

/// 0 for success; 1 for a runtime failure, said on stderr (and in the log).
pub fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Under the binary's name, whichever command failed.
            tracing::error!(target: "summerd", error = format!("{e:#}"), "Summerd failed");
            eprintln!("summerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config at `path`, or exit code 2 with every problem said on stderr.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(CONFIG_ERROR)
    })
}

/// The daemon's logging, on stderr: the config's level and format; RUST_LOG overrides the
/// level when it is a filter (checked like the config's value).
pub fn init_logging(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| config::log_filter(&v))
        .or_else(|| config::log_filter(&cfg.daemon.log_level))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.daemon.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The training commands' progress (one line per epoch) on stderr, at `info`; RUST_LOG
/// overrides.
pub fn init_training_logging() {
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

/// The shared data's directory (`SUMMERD_ASSETS`).
pub fn assets() -> anyhow::Result<PathBuf> {
    summerd::assets::dir().context("the shared data (SUMMERD_ASSETS, default ../shared) is absent")
}

/// `summerd validate`: 0 and a summary if the config is good, 2 with every problem if not.
/// It checks what start-up checks: the config, then the model (its weights' sha256, the
/// features it reads, the device) and the vision networks, loaded as the daemon loads them.
pub fn validate(path: &Path) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    if let Err(e) = summerd::daemon::preflight(&cfg) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::from(CONFIG_ERROR);
    }
    println!("{}: OK ({cfg})", path.display());
    ExitCode::SUCCESS
}

/// `summerd version`: the versions of summerd and of the libraries it runs on.
pub fn version(json: bool) -> ExitCode {
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
