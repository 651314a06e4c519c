// W8A8 GEMM on Hopper (sm_90a) with the scales in the epilogue: one CUTLASS 3 kernel (TMA loads,
// int8 wgmma, warp-specialized, persistent; four tile configurations, by M: cutlass/w8a8_sm90_gemm.cuh)
// computes
//   y[t, n] = to_T((float(sum_j xq[t, j] * wq[n, j]) * scale[n]) * d[t])
// which is the arithmetic of w8a8.h's cuBLASLt path (int32 products, then the epilogue kernel) with
// the int32 matrix never written to memory: the same bits, one kernel. Built only when the CUTLASS
// headers are present (scripts/setup.sh puts them in third_party/; NIBBLE_HAVE_CUTLASS) and only for
// sm_90a. Includable from plain C++.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/status.h"

namespace nb::cuda {

// Whether w8a8_gemm_sm90 can run [m, n, k] with out dtype `out` on the current device: sm_90, the
// kernel built in, f16 or bf16 out, k % 16 == 0 and n % 8 == 0 (16-byte TMA rows). Otherwise the
// caller uses the cuBLASLt path.
bool w8a8_sm90_supported(int64_t m, int64_t n, int64_t k, DType out);

// Up to this many rows the kernel uses 64 x 64 tiles (weight streaming at decode batch sizes),
// above it 128-row tiles (compute-bound). 128 unless NIBBLE_W8A8_SMALL_TILE_MAX_M says otherwise
// (read once; a comparison switch).
int64_t w8a8_sm90_small_tile_max_m();

// y[m, n] (row-major, dtype out) from xq[m, k] and wq[n, k] (row-major int8), scale[n], d[m] (f32).
// All pointers device memory, 16-byte aligned. `stream` is a cudaStream_t.
Status w8a8_gemm_sm90(const int8_t* xq, const int8_t* wq, const float* scale, const float* d, void* y, DType out,
                      int64_t m, int64_t n, int64_t k, void* stream);

}  // namespace nb::cuda
