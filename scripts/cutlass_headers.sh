#!/usr/bin/env bash
# Puts the CUTLASS C++ headers (from the PyPI wheel nvidia-cutlass) in third_party/cutlass/include,
# where CMake looks for them (the Hopper W8A8 kernel, src/backend/cuda/cutlass/). The wheel is kept
# in third_party/download/ so a machine without network (the GPU machine) can unpack a carried copy.
# Usage: scripts/cutlass_headers.sh [--offline]   (pip from .venv, else python3 -m pip)
set -euo pipefail
cd "$(dirname "$0")/.."
ver=4.2.0.0
wheel=third_party/download/nvidia_cutlass-$ver-py3-none-any.whl
dest=third_party/cutlass
if [ -f "$dest/include/cutlass/cutlass.h" ] && [ "$(cat "$dest/version" 2>/dev/null)" = "$ver" ]; then exit 0; fi
if [ ! -f "$wheel" ]; then
  if [ "${1:-}" = --offline ]; then echo "cutlass_headers: $wheel is missing (no download offline)" >&2; exit 1; fi
  pip=(python3 -m pip); [ -x .venv/bin/pip ] && pip=(.venv/bin/pip)
  echo "cutlass_headers: fetching nvidia-cutlass==$ver from PyPI (~6 MB)"
  "${pip[@]}" download -q --disable-pip-version-check --no-deps -d third_party/download "nvidia-cutlass==$ver"
fi
rm -rf "$dest" "$dest.tmp"
mkdir -p "$dest.tmp"
python3 - "$wheel" "$dest.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("cutlass_library/source/include/")])
PY
mkdir -p "$dest"
mv "$dest.tmp/cutlass_library/source/include" "$dest/include"
rm -rf "$dest.tmp"
echo "$ver" >"$dest/version"
