// Internal to backend/cuda (w8a8.cu, elementwise.cu): the codes of W8A8's per-token activation
// quantization, shared by every kernel that makes them so that they stay the same bits.
#pragma once
#include <cstdint>

#include "backend/cuda/common.cuh"

namespace nb::cuda::detail {

// W8A8 per-token activation quantization of one row, once its absmax is known (w8a8.h): thread 0
// stores d = amax / 127, and the block's threads, each at threadIdx.x + i * stride (stride: the
// block's threads; a compile-time constant where the caller has one, so the loop unrolls), write
// the codes rint(x * (1 / d)) clamped to [-127, 127] — single IEEE operations, as
// cpu::quantize_act_int8_row. The one definition for every kernel that makes such codes.
template <typename T>
__device__ __forceinline__ void act_int8_codes(const T* row, int64_t k, float amax, int8_t* codes, float* d,
                                               int stride) {
  const float dt = amax / 127.f;
  const float id = dt != 0.f ? 1.f / dt : 0.f;
  if (threadIdx.x == 0) *d = dt;
  for (int64_t j = threadIdx.x; j < k; j += stride) {
    const float v = rintf(__fmul_rn(to_f32(row[j]), id));
    codes[j] = static_cast<int8_t>(fminf(fmaxf(v, -127.f), 127.f));
  }
}

}  // namespace nb::cuda::detail
