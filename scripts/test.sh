#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the whole test suite: the C++ tests (ctest), the Python
# reference tests (pytest: numpy / gguf / tokenizers / sentencepiece references), and the loader
# fuzz tests again under AddressSanitizer + UBSan. Exit status is non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== C++ tests"
ctest --test-dir build --output-on-failure -j 2
echo "== Python reference tests"
NIBBLE_BIN=build/nibble .venv/bin/python -m pytest -q tests/py
if [ "${NIBBLE_SKIP_ASAN:-0}" != 1 ]; then
  echo "== AddressSanitizer build: loader and tokenizer robustness tests"
  NIBBLE_BUILD_DIR=build-asan NIBBLE_CUDA=OFF NIBBLE_CMAKE_ARGS="-DNIBBLE_ASAN=ON -DNIBBLE_NATIVE=ON" \
    NIBBLE_NINJA_TARGETS=nibble_tests ./scripts/setup.sh >/dev/null
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    build-asan/nibble_tests --gtest_filter='*Robust*:*Fuzz*:*Corrupt*:*Truncat*'
fi
