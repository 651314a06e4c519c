#!/usr/bin/env bash
# CPU emulation of the CUDA kernels, for checking kernel LOGIC on a machine without a GPU before
# spending device time: each kernel in src/backend/cuda/{attention,attention_mma,decode,elementwise,kv_quant}.cu is compiled as
# host C++ (gen.py rewrites `k<<<grid, block, ...>>>(args)` into emu::launch). A block's threads run
# as fibers in one OS thread, one random runnable thread at a time up to its next sync point; a warp
# is released as soon as its lanes meet, so warps drift apart as far as CUDA allows (a missing
# __syncthreads shows up as wrong results); a barrier that not every live thread reaches aborts.
# The real GPU tests (tests/gpu/test_cuda_{attention,elementwise,kv_quant}.cpp) run against it through a
# host-memory stand-in of the device layer (emu_runtime.cpp).
# What it cannot catch: anything hardware-specific (f32 rounding of device intrinsics, the memory
# model beyond barrier placement, occupancy, resource limits) and cuBLAS (matmul is not emulated).
# Slow: ~10 min for all 11 tests on 2 cores (attention decode and prefill ~4-5 min each).
# Not built by CMake (tests/gpu/ globs only its top level). Usage, from the repo root:
#   tests/gpu/emu/run.sh [gtest filter]        (needs build-*/libnibble_lib.a: NIBBLE_EMU_LIB;
#                                               NIBBLE_EMU_OUT: output folder, default build-emu)
set -euo pipefail
cd "$(dirname "$0")/../../.."
lib=${NIBBLE_EMU_LIB:-build-cuda/libnibble_lib.a}
[ -f "$lib" ] || { echo "emu: $lib not found; build nibble_lib first or set NIBBLE_EMU_LIB" >&2; exit 1; }
out=${NIBBLE_EMU_OUT:-build-emu}  # a folder of your own when others emulate too
mkdir -p "$out"
python3 tests/gpu/emu/gen.py src/backend/cuda/attention.cu "$out/attention_emu.cpp"
python3 tests/gpu/emu/gen.py src/backend/cuda/attention_mma.cu "$out/attention_mma_emu.cpp"
python3 tests/gpu/emu/gen.py src/backend/cuda/decode.cu "$out/decode_emu.cpp"
python3 tests/gpu/emu/gen.py src/backend/cuda/elementwise.cu "$out/elementwise_emu.cpp"
python3 tests/gpu/emu/gen.py src/backend/cuda/kv_quant.cu "$out/kv_quant_emu.cpp"
flags=(-std=c++20 -O1 -g -DNIBBLE_EMU "-DNIBBLE_SOURCE_DIR=\"$PWD\"" -Isrc -Itests/gpu/emu -Itests/gpu -I/usr/local/cuda/include -w)
g++ "${flags[@]}" -c tests/gpu/emu/emu_runtime.cpp -o "$out/emu_runtime.o" &
g++ "${flags[@]}" -c "$out/attention_emu.cpp" -o "$out/attention_emu.o" &
g++ "${flags[@]}" -c "$out/elementwise_emu.cpp" -o "$out/elementwise_emu.o" &
g++ "${flags[@]}" -c tests/gpu/test_cuda_attention.cpp -o "$out/test_cuda_attention.o" &
g++ "${flags[@]}" -c tests/gpu/test_cuda_elementwise.cpp -o "$out/test_cuda_elementwise.o" &
wait
g++ "${flags[@]}" -c "$out/kv_quant_emu.cpp" -o "$out/kv_quant_emu.o" &
g++ "${flags[@]}" -c "$out/attention_mma_emu.cpp" -o "$out/attention_mma_emu.o" &
g++ "${flags[@]}" -c "$out/decode_emu.cpp" -o "$out/decode_emu.o" &
g++ "${flags[@]}" -c tests/gpu/test_cuda_kv_quant.cpp -o "$out/test_cuda_kv_quant.o" &
wait
g++ -o "$out/emu_tests" "$out"/*.o "$lib" -lgtest -lgtest_main -lpcre2-8 -lpthread
"$out/emu_tests" --gtest_filter="${1:-*}"
