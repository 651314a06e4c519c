#!/usr/bin/env bash
# CPU emulation (see run.sh) of the W4A16 kernels (src/backend/cuda/w4_matmul.cu: the fused M <= 16
# tensor-core kernel with mma.sync emulated per the PTX ISA fragment layouts in emu_mma.h, and the
# dequantize kernel of the M > 16 path, its cuBLAS GEMM done on the host by emu_w4.cpp), run by the
# real GPU tests tests/gpu/test_cuda_w4.cpp. Clusters are not emulated: the emulated device reports
# compute capability 0, so the kernel runs with a cluster of 1 (the split of K over the 8 warps of
# a block, the block reduction and every fragment index are still checked).
# Usage, from the repo root:  tests/gpu/emu/run_w4.sh [gtest filter]   (needs NIBBLE_EMU_LIB, as run.sh)
set -euo pipefail
cd "$(dirname "$0")/../../.."
lib=${NIBBLE_EMU_LIB:-build-cuda/libnibble_lib.a}
[ -f "$lib" ] || { echo "emu: $lib not found; build nibble_lib first or set NIBBLE_EMU_LIB" >&2; exit 1; }
out=build-emu-w4
mkdir -p "$out"
python3 tests/gpu/emu/gen.py src/backend/cuda/w4_matmul.cu "$out/w4_matmul_emu.cpp"
flags=(-std=c++20 -O1 -g -DNIBBLE_EMU "-DNIBBLE_SOURCE_DIR=\"$PWD\"" -Isrc -Itests/gpu/emu -Itests/gpu -I/usr/local/cuda/include -w)
g++ "${flags[@]}" -c tests/gpu/emu/emu_runtime.cpp -o "$out/emu_runtime.o" &
g++ "${flags[@]}" -c tests/gpu/emu/emu_w4.cpp -o "$out/emu_w4.o" &
g++ "${flags[@]}" -c "$out/w4_matmul_emu.cpp" -o "$out/w4_matmul_emu.o" &
g++ "${flags[@]}" -c tests/gpu/test_cuda_w4.cpp -o "$out/test_cuda_w4.o" &
wait
g++ -o "$out/emu_tests" "$out"/*.o "$lib" -lgtest -lgtest_main -lpcre2-8 -lpthread
"$out/emu_tests" --gtest_filter="${1:-*}"
