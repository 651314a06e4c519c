#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: a chat-templated generation with
# SmolLM2-135M-Instruct on the CPU. Pass your own prompt as the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
prompt=${1:-"Write a short poem about the sea."}
exec ./build/nibble generate -m models/SmolLM2-135M-Instruct.Q4_1.gguf --chat -p "$prompt" -n 128 --temp 0.7 --seed 42
