#!/usr/bin/env bash
# Model figures on real data (needs ../shared): MELD datasets made with summerd's text encoder
# (cached in target/data), the causal teacher + student and the bidirectional variant trained on
# MELD train, stopped on dev, tested once on test, with the text encoder fine-tuned (LoRA, on
# single utterances first) and, for comparison, frozen; EmoDB's audio branch leave-one-speaker-out;
# the inference cost. Everything lands in target/bench/model/ and target/bench/model.json.
# Run through `make bench-model` (which sets up first); `tests/bench_model.sh datasets` only
# makes the datasets; `tests/bench_model.sh datasets-wide` also makes target/data-wide, the same
# splits with EmoDB heard wide (egemaps-v02/summerd/3), to train a wide-band model from
# (`summerd train-default --data target/data-wide`, scripts/telephone-loso).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/summerd
data=target/data
out=target/bench/model
mkdir -p "$data" "$out"
for s in train dev test; do
  [ -f "$data/meld-$s.safetensors" ] || "$bin" dataset meld --split "$s" --out "$data/meld-$s.safetensors"
done
# The EmoDB datasets hold summerd's acoustic functionals heard through a band (DIR BAND
# EXTRACTOR): rebuilt when the extractor changed. Clean, and through each condition
# `summerd train-default` trains with (mix.conditions) and scores the held-out speakers on: real
# telephone codecs, pink noise and babble at 20, 10 and 5 dB.
emodb_sets() {
  local dir=$1 band=$2 extractor=$3
  grep -qF "\"$extractor\"" "$dir/emodb.safetensors.json" 2>/dev/null ||
    "$bin" dataset emodb --band "$band" --out "$dir/emodb.safetensors"
  for c in g711u g711a opus16k gsm; do
    grep -qF "\"$extractor\"" "$dir/emodb-$c.safetensors.json" 2>/dev/null ||
      "$bin" dataset emodb --band "$band" --channel "$c" --out "$dir/emodb-$c.safetensors"
  done
  for n in pink babble; do
    for snr in 20 10 5; do
      grep -qF "\"$extractor\"" "$dir/emodb-$n$snr.safetensors.json" 2>/dev/null ||
        "$bin" dataset emodb --band "$band" --noise "$n:$snr" --out "$dir/emodb-$n$snr.safetensors"
    done
  done
}
extractor() {
  local name
  name=$(grep -o "pub const $1: &str = \"[^\"]*\"" src/model/mod.rs | cut -d'"' -f2)
  [ -n "$name" ] || { echo "no $1 in src/model/mod.rs" >&2; exit 1; }
  echo "$name"
}
telephone=$(extractor AUDIO_EXTRACTOR)
emodb_sets "$data" telephone "$telephone"
# Labelled faces (the visual vectors of models/recipes/summer-faces.toml), rebuilt when the
# visual extractor changed; skipped without the faces (the default recipe reads none).
visual=$(grep -o '"fer-mini-xception/[^"]*"' src/model/mod.rs | head -1)
fer=${SUMMERD_ASSETS:-../shared}/data/fer
for s in train test; do
  [ -d "$fer/$s" ] || continue
  grep -qF "$visual" "$data/fer-$s.safetensors.json" 2>/dev/null ||
    "$bin" dataset faces --dir "$fer/$s" --out "$data/fer-$s.safetensors"
done
# The same splits with EmoDB heard wide (MELD and the faces shared with target/data).
if [ "${1:-}" = datasets-wide ]; then
  wide=$(extractor AUDIO_EXTRACTOR_WIDE)
  mkdir -p target/data-wide
  for f in "$data"/meld-*.safetensors* "$data"/fer-*.safetensors*; do
    [ -e "$f" ] && ln -sf "$(realpath "$f")" "target/data-wide/$(basename "$f")"
  done
  emodb_sets target/data-wide wide "$wide"
  exit 0
fi
[ "${1:-}" = datasets ] && exit 0
meld=(--train "$data/meld-train.safetensors" --dev "$data/meld-dev.safetensors" --test "$data/meld-test.safetensors")
"$bin" train --recipe models/recipes/meld-text-lora.toml "${meld[@]}" --out "$out/meld-causal"
"$bin" train --recipe models/recipes/meld-text-lora-bidi.toml "${meld[@]}" --out "$out/meld-bidi"
"$bin" train --recipe models/recipes/meld-text.toml "${meld[@]}" --out "$out/meld-causal-frozen"
"$bin" train --recipe models/recipes/meld-text-bidi.toml "${meld[@]}" --out "$out/meld-bidi-frozen"
"$bin" loso --recipe models/recipes/emodb-audio.toml --data "$data/emodb.safetensors" --out "$out/emodb-loso"
cargo bench --locked --bench model
python3 - <<'PY'
import json
from pathlib import Path
b = Path("target/bench")
def phase(run, name):
    r = json.loads((b / "model" / run / "report.json").read_text())[name]
    keys = ("best_epoch", "epochs", "dev", "test", "active_experts", "seconds", "text_tuning")
    return None if r is None else {k: r[k] for k in keys if k in r}
summary = {
    "meld_causal": {"teacher": phase("meld-causal", "teacher"), "student": phase("meld-causal", "student")},
    "meld_bidirectional": {"teacher": phase("meld-bidi", "teacher"), "student": phase("meld-bidi", "student")},
    "meld_causal_frozen_encoder": {"teacher": phase("meld-causal-frozen", "teacher"), "student": phase("meld-causal-frozen", "student")},
    "meld_bidirectional_frozen_encoder": {"teacher": phase("meld-bidi-frozen", "teacher"), "student": phase("meld-bidi-frozen", "student")},
    "emodb_audio_loso": json.loads((b / "model" / "emodb-loso" / "report.json").read_text())["pooled"],
    "inference": json.loads((b / "model_speed.json").read_text())["runs"],
}
(b / "model.json").write_text(json.dumps(summary, indent=2) + "\n")
for run in ("meld_causal", "meld_bidirectional", "meld_causal_frozen_encoder", "meld_bidirectional_frozen_encoder"):
    for who in ("teacher", "student"):
        t = summary[run][who]["test"]
        print(f"{run} {who}: MELD test WA {t['wa']:.1f} WF1 {t['wf1']:.1f}")
e = summary["emodb_audio_loso"]
print(f"EmoDB audio branch, leave one speaker out: WA {e['wa']:.1f} WF1 {e['wf1']:.1f} UAR {e['uar']:.1f}")
print("wrote target/bench/model.json (pictures: target/bench/model/*/*.svg)")
PY
