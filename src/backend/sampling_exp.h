// exp(x) for x <= 0 as the sampler computes token weights, shared by the engine's Sampler, the CPU
// reference of sample_rows and its CUDA kernel, so all three weigh tokens with the same function.
// The Cephes expf polynomial (~2 ulp); inputs below -87 (incl. -inf, masked tokens) give exactly 0.
// Plain arithmetic, so the Sampler's loops over it vectorize. (A compiler may still fuse a multiply
// and an add differently on each side, changing a weight in the last bit.)
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NB_SAMPLING_HD __host__ __device__
#else
#define NB_SAMPLING_HD
#endif

namespace nb {

NB_SAMPLING_HD inline float sampling_exp(float x) {
  const bool underflow = x < -87.0f;
  const float xc = underflow ? -87.0f : x;
  // Round to nearest by adding and removing 1.5 * 2^23 (std::floor would block vectorization
  // under the default -ftrapping-math).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = static_cast<int32_t>(static_cast<int32_t>(n) + 127) << 23;
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
#endif
  return underflow ? 0.0f : p * scale;
}

}  // namespace nb
