// Sampling-side kernels: row-wise argmax (greedy decoding without copying logits to the host).
#include <cuda_runtime.h>

#include <cmath>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {
namespace {

constexpr int kThreads = 256;

// (value, index) with NaN below every number and ties to the lower index.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  if (isnan(v)) return false;
  if (isnan(bv)) return true;
  return v > bv || (v == bv && i < bi);
}

__global__ void argmax_kernel(const float* x, int32_t* out, int64_t cols) {
  const float* row = x + blockIdx.x * cols;
  float bv = NAN;
  int bi = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const float v = row[i];
    if (better(v, static_cast<int>(i), bv, bi)) {
      bv = v;
      bi = static_cast<int>(i);
    }
  }
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_down_sync(0xffffffffu, bv, off);
    const int oi = __shfl_down_sync(0xffffffffu, bi, off);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) {
      if (better(sv[w], si[w], bv, bi)) {
        bv = sv[w];
        bi = si[w];
      }
    }
    out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;  // an all-NaN row gives 0, as the reference
  }
}

}  // namespace

Status argmax(const ArgmaxParams& p, Context& ctx) {
  if (p.rows < 0 || p.cols <= 0 || p.cols > 0x7fffffff) return invalid_argument("argmax: need rows >= 0, 0 < cols < 2^31");
  if (p.rows == 0) return Status::Ok();
  if (p.rows > 0x7fffffff) return invalid_argument("argmax: too many rows for one launch");
  argmax_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, detail::as_stream(ctx.stream())>>>(p.x, p.out, p.cols);
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace nb::cuda
