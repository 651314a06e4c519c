// Matmul for one or two activation rows (batch-1/2 decode; measured on H200, cuBLAS is faster from M = 4) with f16/bf16 weights: bandwidth-bound,
// so each warp streams one weight row with 16-byte loads (8 elements) and dots it with every
// activation row held in L1/L2, accumulating in f32; a warp reduction finishes each output. cuBLAS
// picks GEMM tilings for these shapes that read the weights at a fraction of the bandwidth.
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

using detail::from_f32;
using detail::to_f32;

namespace {

constexpr int kWarps = 8;        // warps per block
constexpr int kRowsPerWarp = 2;

template <typename T, typename OutT, int MAXM>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ w, const T* __restrict__ x,
                                                           OutT* __restrict__ y, int n, int k, int m) {
  // Each warp owns kRowsPerWarp consecutive weight rows and keeps kRowsPerWarp * U 16-byte loads per
  // lane in flight before using any of them (bandwidth needs many bytes in flight per SM).
  constexpr int R = kRowsPerWarp;
  constexpr int U = MAXM <= 1 ? 4 : 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kWarps + warp) * R;
  if (row0 >= n) return;
  const int k8 = k / 8;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wr[r] = reinterpret_cast<const uint4*>(w + static_cast<size_t>(min(row0 + r, n - 1)) * k);
  float acc[R][MAXM];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < MAXM; ++i) acc[r][i] = 0.f;
  for (int i0 = lane; i0 < k8; i0 += 32 * U) {
    uint4 wv[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * 32;
#pragma unroll
      for (int r = 0; r < R; ++r) wv[r][u] = i < k8 ? __ldcs(wr[r] + i) : make_uint4(0, 0, 0, 0);  // read once
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * 32;
      if (i >= k8) break;
#pragma unroll
      for (int mm = 0; mm < MAXM; ++mm) {
        if (mm < m) {
          const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(mm) * k) + i);
          const T* xh = reinterpret_cast<const T*>(&xv);
          float xf[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) xf[j] = to_f32(xh[j]);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const T* wh = reinterpret_cast<const T*>(&wv[r][u]);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r][mm] = fmaf(to_f32(wh[j]), xf[j], acc[r][mm]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int mm = 0; mm < MAXM; ++mm) {
      float v = acc[r][mm];
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && mm < m && row0 + r < n) y[static_cast<size_t>(mm) * n + row0 + r] = from_f32<OutT>(v);
    }
}

template <typename T, typename OutT>
Status launch(const MatmulParams& p, int n, int k, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + kWarps * kRowsPerWarp - 1) / (kWarps * kRowsPerWarp)));
  const auto* w = static_cast<const T*>(p.weight.data());
  const auto* x = reinterpret_cast<const T*>(p.x);
  auto* y = reinterpret_cast<OutT*>(p.y);
  const int m = static_cast<int>(p.m);
  if (m == 1) gemv_kernel<T, OutT, 1><<<grid, kWarps * 32, 0, stream>>>(w, x, y, n, k, m);
  else if (m == 2) gemv_kernel<T, OutT, 2><<<grid, kWarps * 32, 0, stream>>>(w, x, y, n, k, m);
  else if (m <= 4) gemv_kernel<T, OutT, 4><<<grid, kWarps * 32, 0, stream>>>(w, x, y, n, k, m);
  else gemv_kernel<T, OutT, 8><<<grid, kWarps * 32, 0, stream>>>(w, x, y, n, k, m);
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

bool gemv_applies(const MatmulParams& p) {
  const DType t = p.weight.dtype();
  const int64_t k = p.weight.dim(1);
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return p.m >= 1 && p.m <= 2 && (t == DType::kF16 || t == DType::kBF16) && p.act_dtype == t && k % 8 == 0 &&
         p.weight.dim(0) < (int64_t{1} << 30) && k < (int64_t{1} << 30) && aligned(p.weight.data()) && aligned(p.x);
}

Status gemv(const MatmulParams& p, Context& ctx, bool f32_out) {
  const int n = static_cast<int>(p.weight.dim(0)), k = static_cast<int>(p.weight.dim(1));
  cudaStream_t stream = detail::as_stream(ctx.stream());
  if (p.weight.dtype() == DType::kF16) {
    return f32_out ? launch<__half, float>(p, n, k, stream) : launch<__half, __half>(p, n, k, stream);
  }
  return f32_out ? launch<__nv_bfloat16, float>(p, n, k, stream)
                 : launch<__nv_bfloat16, __nv_bfloat16>(p, n, k, stream);
}

}  // namespace nb::cuda
