//! Every input the fuzzers were seeded with or found a crash with (`fuzz/seeds/*`,
//! `fuzz/regressions/*`, and config/summerd.toml for the config fuzzer) goes through the
//! fuzzers' checks on every test run.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn inputs(kind: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(kind)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_file() && e.file_name() != ".gitkeep" {
                out.push((
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn transcript_inputs_pass_the_fuzzers_checks() {
    let all = inputs("transcript");
    assert!(all.len() >= 3, "the seeds are there");
    for (name, data) in all {
        eprintln!("{name}");
        checks::transcript(&data);
    }
}

#[test]
fn config_inputs_pass_the_fuzzers_checks() {
    let mut all = inputs("config");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/summerd.toml");
    all.push((
        shipped.display().to_string(),
        std::fs::read(&shipped).unwrap(),
    ));
    assert!(all.len() >= 2, "the seeds are there");
    for (name, data) in all {
        eprintln!("{name}");
        checks::config(&data);
    }
}
