#!/usr/bin/env bash
# The demo (`make run`): make the sample call if it is not there yet, then run summerd on it as
# on a live call: the daemon ingests the call in real time, the reference ASR worker
# (silero-vad, Whisper, speaker labels) listens to the audio tap and sends transcript segments, and
# `summerd tail` shows each emotion event as it is published, and the daemon's live page shows
# the call's timeline in a browser. Exits when the call is over, leaving a report of the whole
# call (`summerd report`) beside it.
# Run it through `make run` (which sets everything up first).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${SUMMERD_DEMO_DIR:-target/demo}
python=${SUMMERD_PYTHON:-python3}
bin=$root/target/release/summerd
mkdir -p "$out"
# The call is in stereo, the agent on the left channel and the customer on the right, as
# call-centre recordings carry them: the stream's channel map labels each voice.
grep -qs '"channels"' "$out/call.json" || "$python" demo/make_call.py --stereo "$out"
port=${SUMMERD_DEMO_PORT:-15555}
http=${SUMMERD_DEMO_HTTP:-127.0.0.1:$((port + 3))}
cat >"$out/summerd.toml" <<TOML
# Written by demo/run.sh: the daemon on the sample call.
[daemon]
log_level = "warn"
[transcripts]
endpoint = "tcp://127.0.0.1:$port"
[events]
endpoint = "tcp://127.0.0.1:$((port + 1))"
publish_text = true
[audio_tap]
endpoint = "tcp://127.0.0.1:$((port + 2))"
[metrics]
listen = "$http"
[control]
enabled = false
[model]
path = "$root/models/summer-default"
[text_encoder]
dir = "$root/models/third_party/all-minilm-l6-v2"
[pipelines]
dir = "$root/pipelines"
[vision]
mtcnn_dir = "$root/models/third_party/mtcnn"
expression_file = "$root/models/third_party/fer/emotion_model.safetensors"
[[streams]]
id = "sample-call"
uri = "file://$(cd "$out" && pwd)/call.mp4"
template = "file"
channels = { "0" = "agent", "1" = "customer" }
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$bin" tail --endpoint "tcp://127.0.0.1:$((port + 1))" &
pids+=($!)
"$bin" tail --json --endpoint "tcp://127.0.0.1:$((port + 1))" >"$out/events.jsonl" 2>/dev/null &
pids+=($!)
asr_log=$out/asr.log
"$python" asr/reference_worker.py --tap "tcp://127.0.0.1:$((port + 2))" \
  --transcripts "tcp://127.0.0.1:$port" --exit-after-idle 3 2>"$asr_log" &
asr=$!
pids+=($asr)
# The worker loads its models (a few seconds) before it listens; the call starts with the daemon.
for _ in $(seq 100); do grep -q listening "$asr_log" 2>/dev/null && break; sleep 0.1; done
echo "[demo] playing $out/call.mp4 ($(python3 -c "import json;print(json.load(open('$out/call.json'))['seconds'])") s) in real time" >&2
echo "[demo] live page: http://$http/ (open it in a browser while the call plays)" >&2
"$bin" run -c "$out/summerd.toml" &
daemon=$!
pids+=($daemon)
wait "$asr" || true
sleep 1.5 # the last segment's event
kill -TERM "$daemon"
wait "$daemon"
sleep 0.5 # the recorder's last lines
"$bin" report "$out/events.jsonl" --out "$out/call.html"
echo "[demo] done: the whole call is drawn in $out/call.html, the ASR worker's segments are in $asr_log" >&2
