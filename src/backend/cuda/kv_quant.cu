// The quantized KV cache on the GPU: kv_write into int8/int4 pools (backend/kv_format.h), quantizing
// on write with the format's own rule (kv_int8_scale_bits / kv_int4_choose_scale_zero and the code
// functions, shared with the CPU), and the Walsh-Hadamard rotation (HadamardParams) that the model
// applies to q, k and v before the write and to the attention output after it, as on the CPU.
// Both produce the CPU's bytes and floats exactly: the int8 absmax is exact in any order, every sum
// of the int4 rule runs sequentially on one lane as on the CPU (the warp computes the terms), the
// divisions and rintf are IEEE on the device, and the butterflies run in the order of cpu::hadamard.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"

namespace nb::cuda {

using detail::ceil_div;
using detail::from_f32;
using detail::to_f32;

namespace {

constexpr int kVecThreads = 128;  // 4 warps a block, one (token, kv head) vector a warp
constexpr int kVecWarps = kVecThreads / 32;
constexpr int kMaxInt4Dim = 512;  // int4 vectors are staged in shared memory: head_dim <= 512

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_min(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Pool fields are 2-byte values at any byte offset (odd head_dim * heads can make them odd).
__device__ __forceinline__ void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xFF);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// One warp quantizes vector x[0, d) into slot `slot`, kv head h of the pool (int8 or int4).
template <typename T>
__device__ void quantize_vector_warp(const T* __restrict__ x, uint8_t* __restrict__ pool, const KvBlockFormat& f,
                                     int64_t slot, int64_t h, int lane) {
  const int d = static_cast<int>(f.head_dim);
  uint8_t* q = pool + f.value_offset(slot, h);
  if (f.dtype == KvCacheDType::kInt8) {
    float amax = 0.f;
    for (int i = lane; i < d; i += 32) amax = fmaxf(amax, fabsf(to_f32(x[i])));
    const uint16_t sb = kv_int8_scale_bits(warp_max(amax));
    if (lane == 0) store_u16(pool + f.scale_offset(slot, h), sb);
    const float s = kv_f16_value(sb);
    for (int i = lane; i < d; i += 32) q[i] = static_cast<uint8_t>(static_cast<int8_t>(kv_int8_code(to_f32(x[i]), s)));
    return;
  }
  // int4: the format's rule (kv_int4_choose_scale_zero) on an f32 copy of the vector, every sum in
  // index order on one lane as on the CPU. Lane c < 16 scores candidate c (its loop unrolled: the
  // divisions of successive terms overlap, the sum stays in order); the warp keeps the least error
  // (lowest c on ties, as the rule's in-order strict <). The refit: the warp computes the codes and
  // the residuals into shared memory, lane 0 adds them up in order (kv_int4_refit's arithmetic).
  __shared__ float stage[kVecWarps][kMaxInt4Dim];
  __shared__ float terms[kVecWarps][kMaxInt4Dim];
  __shared__ KvScaleZeroBits chosen[kVecWarps];
  __shared__ int more[kVecWarps];
  __shared__ float refit_err[kVecWarps];
  const int warp = threadIdx.x / 32;
  float lo = INFINITY, hi = -INFINITY;
  for (int i = lane; i < d; i += 32) {
    const float v = to_f32(x[i]);
    stage[warp][i] = v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  lo = warp_min(lo);  // min and max are exact in any order
  hi = warp_max(hi);
  __syncwarp();
  const float* xs = stage[warp];
  float* tm = terms[warp];
  float err = INFINITY;
  if (lane < 16) {  // kv_int4_sq_error
    const KvScaleZeroBits c = kv_int4_candidate(lo, hi, lane);
    const float s = kv_f16_value(c.scale), z = kv_f16_value(c.zero);
    float e = 0.f;
#pragma unroll 8
    for (int i = 0; i < d; ++i) {
      const float r = xs[i] - fmaf(static_cast<float>(kv_int4_code(xs[i], s, z)), s, z);
      e = fmaf(r, r, e);
    }
    err = e;
  }
  int best = lane;
  for (int o = 16; o > 0; o >>= 1) {
    const float e2 = __shfl_xor_sync(0xffffffffu, err, o);
    const int b2 = static_cast<int>(__shfl_xor_sync(0xffffffffu, static_cast<float>(best), o));
    if (e2 < err || (e2 == err && b2 < best)) {
      err = e2;
      best = b2;
    }
  }
  KvScaleZeroBits sz = kv_int4_candidate(lo, hi, best);
  for (int it = 0; it < 2; ++it) {  // kv_int4_refit
    const float s = kv_f16_value(sz.scale), z = kv_f16_value(sz.zero);
    for (int i = lane; i < d; i += 32) tm[i] = static_cast<float>(kv_int4_code(xs[i], s, z));
    __syncwarp();
    if (lane == 0) {
      KvRefitSums t{0.0, 0.0, 0.0, 0.0};
      for (int i = 0; i < d; ++i) {
        const double q = tm[i];
        t.sq += q;
        t.sx += xs[i];
        t.sqq = fma(q, q, t.sqq);
        t.sqx = fma(q, static_cast<double>(xs[i]), t.sqx);
      }
      more[warp] = kv_int4_refit_fit(t, d, &chosen[warp]);
    }
    __syncwarp();
    if (!more[warp]) break;
    const KvScaleZeroBits c = chosen[warp];
    const float cs = kv_f16_value(c.scale), cz = kv_f16_value(c.zero);
    __syncwarp();  // every lane has read more/chosen and lane 0 is done with the codes
    for (int i = lane; i < d; i += 32) {  // kv_int4_sq_error's terms
      tm[i] = xs[i] - fmaf(static_cast<float>(kv_int4_code(xs[i], cs, cz)), cs, cz);
    }
    __syncwarp();
    if (lane == 0) {
      float e = 0.f;
      for (int i = 0; i < d; ++i) e = fmaf(tm[i], tm[i], e);
      refit_err[warp] = e;
    }
    __syncwarp();
    const float e = refit_err[warp];
    if (!(e < err)) break;
    err = e;
    sz = c;
  }
  __syncwarp();  // every lane is done with stage[warp] and terms[warp] before a reuse
  if (lane == 0) {
    store_u16(pool + f.scale_offset(slot, h), sz.scale);
    store_u16(pool + f.zero_offset(slot, h), sz.zero);
  }
  const float s = kv_f16_value(sz.scale), z = kv_f16_value(sz.zero);
  for (int i = lane; i < d / 2; i += 32) {  // element 2i in the low nibble of byte i
    const int lo_code = kv_int4_code(to_f32(x[2 * i]), s, z), hi_code = kv_int4_code(to_f32(x[2 * i + 1]), s, z);
    q[i] = static_cast<uint8_t>(lo_code | hi_code << 4);
  }
}

// Warp w of the grid owns vector w = (token, kv head); it writes K then V.
template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    kv_write_quant_kernel(const T* __restrict__ k, const T* __restrict__ v, uint8_t* __restrict__ k_pool,
                          uint8_t* __restrict__ v_pool, const int64_t* __restrict__ slot_mapping, KvBlockFormat f,
                          int64_t num_vectors) {
  const int lane = threadIdx.x % 32;
  const int64_t vec = static_cast<int64_t>(blockIdx.x) * kVecWarps + threadIdx.x / 32;
  if (vec >= num_vectors) return;  // whole warps: the shuffles below see all 32 lanes
  const int64_t t = vec / f.num_kv_heads, h = vec % f.num_kv_heads;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;  // padding row, the whole warp
  quantize_vector_warp(k + vec * f.head_dim, k_pool, f, slot, h, lane);
  quantize_vector_warp(v + vec * f.head_dim, v_pool, f, slot, h, lane);
}

// One warp per vector of dim d (a power of two, <= kMaxHadamardDim): the vector in shared memory,
// log2(d) butterfly passes (lane pairs j, j + len), then the norm; the order of cpu::hadamard.
constexpr int kMaxHadamardDim = 1024;

template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    hadamard_kernel(T* __restrict__ x, int64_t num_vectors, int d, float norm) {
  __shared__ float buf[kVecWarps][kMaxHadamardDim];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t vec = static_cast<int64_t>(blockIdx.x) * kVecWarps + warp;
  if (vec >= num_vectors) return;  // whole warps; no block barrier below
  T* xv = x + vec * d;
  float* b = buf[warp];
  for (int i = lane; i < d; i += 32) b[i] = to_f32(xv[i]);
  __syncwarp();
  for (int len = 1; len < d; len *= 2) {
    // d / 2 butterflies a pass; butterfly m pairs j = (m / len) * 2 len + m % len with j + len.
    for (int m = lane; m < d / 2; m += 32) {
      const int j = (m / len) * 2 * len + m % len;
      const float a = b[j], c = b[j + len];
      b[j] = a + c;
      b[j + len] = a - c;
    }
    __syncwarp();
  }
  for (int i = lane; i < d; i += 32) xv[i] = from_f32<T>(b[i] * norm);
}

}  // namespace

// Called by kv_write (elementwise.cu) for int8/int4 caches.
namespace detail {
Status kv_write_quantized(const KvWriteParams& p, Context& ctx) {
  if (p.num_tokens <= 0) return Status::Ok();
  const KvBlockFormat f{p.cache_dtype, p.cache_block_size, p.num_kv_heads, p.head_dim};
  if (p.num_kv_heads <= 0 || p.head_dim <= 0 || p.cache_block_size <= 0) {
    return invalid_argument("kv_write: num_kv_heads, head_dim and cache_block_size must be positive for a quantized cache");
  }
  if (p.cache_dtype == KvCacheDType::kInt4 && (p.head_dim % 2 != 0 || p.head_dim > kMaxInt4Dim)) {
    return invalid_argument("kv_write: an int4 KV cache needs an even head_dim <= " + std::to_string(kMaxInt4Dim) +
                            " on CUDA; got " + std::to_string(p.head_dim));
  }
  const int64_t num_vectors = p.num_tokens * p.num_kv_heads;
  const int64_t blocks = ceil_div(num_vectors, kVecWarps);
  if (blocks > INT32_MAX) return invalid_argument("kv_write: too many rows for one launch; split the batch");
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "kv_write", [&](auto tag) -> Status {
    using T = decltype(tag);
    kv_write_quant_kernel<T><<<static_cast<unsigned>(blocks), kVecThreads, 0, stream>>>(
        reinterpret_cast<const T*>(p.k), reinterpret_cast<const T*>(p.v), reinterpret_cast<uint8_t*>(p.k_cache),
        reinterpret_cast<uint8_t*>(p.v_cache), p.slot_mapping, f, num_vectors);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}
}  // namespace detail

Status hadamard(const HadamardParams& p, Context& ctx) {
  if (p.num_vectors <= 0) return Status::Ok();
  if (p.dim <= 0 || (p.dim & (p.dim - 1)) != 0 || p.dim > kMaxHadamardDim) {
    return invalid_argument("hadamard: dim must be a power of two <= " + std::to_string(kMaxHadamardDim) + "; got " +
                            std::to_string(p.dim));
  }
  const int64_t blocks = ceil_div(p.num_vectors, kVecWarps);
  if (blocks > INT32_MAX) return invalid_argument("hadamard: too many vectors for one launch; split them");
  // The norm as cpu::hadamard computes it, on the host: the same f32 value.
  const float norm = 1.f / std::sqrt(static_cast<float>(p.dim));
  cudaStream_t stream = detail::as_stream(ctx.stream());
  return detail::dispatch_act(p.act_dtype, "hadamard", [&](auto tag) -> Status {
    using T = decltype(tag);
    hadamard_kernel<T><<<static_cast<unsigned>(blocks), kVecThreads, 0, stream>>>(
        reinterpret_cast<T*>(p.x), p.num_vectors, static_cast<int>(p.dim), norm);
    NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return Status::Ok();
  });
}

}  // namespace nb::cuda
