// W8A8 GEMM with the per-channel x per-token scales fused into the epilogue, for sm_90a: CUTLASS 3
// kernels built from its collective builders (w8a8_sm90_gemm.cuh; w8a8_sm90.h for the arithmetic).
// Compiled only for sm_90a (its own CMake target), only when the CUTLASS headers are there.
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "backend/cuda/cutlass/w8a8_sm90_gemm.cuh"
#include "backend/cuda/w8a8_sm90.h"

namespace nb::cuda {
namespace {

bool is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
  return major == 9 && minor == 0;
}

}  // namespace

int64_t w8a8_sm90_small_tile_max_m() {
  static const int64_t v = [] {
    const char* e = std::getenv("NIBBLE_W8A8_SMALL_TILE_MAX_M");  // comparison switch (bench w8a8)
    return e != nullptr ? std::atoll(e) : int64_t{128};
  }();
  return v;
}

bool w8a8_sm90_supported(int64_t m, int64_t n, int64_t k, DType out) {
  if (out != DType::kF16 && out != DType::kBF16) return false;
  if (m <= 0 || n <= 0 || k <= 0 || k % 16 != 0 || n % 8 != 0) return false;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return false;
  static const bool sm90 = is_sm90();
  return sm90;
}

Status w8a8_gemm_sm90(const int8_t* xq, const int8_t* wq, const float* scale, const float* d, void* y, DType out,
                      int64_t m, int64_t n, int64_t k, void* stream) {
  if (!w8a8_sm90_supported(m, n, k, out)) {
    return failed_precondition("W8A8 sm90: unsupported here (needs sm_90, f16/bf16 out, k % 16 == 0, n % 8 == 0)");
  }
  const auto s = static_cast<cudaStream_t>(stream);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const bool half = out == DType::kF16;
  using namespace w8a8_sm90;
  if (m <= 32 && m <= w8a8_sm90_small_tile_max_m()) return run_tiny(half, xq, wq, scale, d, y, mi, ni, ki, s);
  if (m <= w8a8_sm90_small_tile_max_m()) return run_small(half, xq, wq, scale, d, y, mi, ni, ki, s);
  if (m > 192 && m <= 384) return run_medium(half, xq, wq, scale, d, y, mi, ni, ki, s);
  return run_large(half, xq, wq, scale, d, y, mi, ni, ki, s);
}

}  // namespace nb::cuda
