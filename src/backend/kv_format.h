// Element formats of the KV cache (--kv-cache-dtype) and the byte layout of one cache block.
// Per token and KV head, head_dim values are stored as:
//   f32   4 bytes each (the CPU default; the only format the CUDA backend reads)
//   f16   2 bytes each (IEEE half, round-to-nearest-even)
//   int8  1 byte each, symmetric: x = q * scale, scale = absmax / 127, q in [-127, 127]
//   int4  half a byte each (element 2i in the low nibble of byte i, 2i + 1 in the high nibble),
//         asymmetric: x = q * scale + zero, zero = min, scale = (max - min) / 15, q in [0, 15]
// with scale and zero as f16 per (token, KV head). A block of one layer's K (or V) pool holds its
// values first, [block_size, num_kv_heads, head_dim], then the scales [block_size, num_kv_heads],
// then the zeros [block_size, num_kv_heads], so a block is self-contained: copying its bytes copies
// its scales too, and block b starts at b * block_bytes() from the pool's start.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#include "core/dtype.h"
#include "core/status.h"

// Functions both the host and CUDA kernels call (empty outside nvcc).
#if defined(__CUDACC__)
#define NB_HD __host__ __device__
#else
#define NB_HD
#endif

namespace nb {

enum class KvCacheDType : uint8_t { kF32, kF16, kInt8, kInt4 };

// int8 and int4 caches hold K and V rows rotated per head by the orthonormal Walsh-Hadamard
// transform (HadamardParams) when head_dim is a power of two: the rotation spreads a few outlier
// channels over all of them, so one scale per (token, head) fits the vector far better (QuaRot,
// Ashkboos et al. 2024). Attention is unchanged by it once queries get the same rotation and the
// output is rotated back (H q . H k = q . k; sum p H v = H sum p v), which the model does.
inline bool kv_cache_rotated(KvCacheDType t, int64_t head_dim) {
  return (t == KvCacheDType::kInt8 || t == KvCacheDType::kInt4) && head_dim > 0 && (head_dim & (head_dim - 1)) == 0;
}

inline const char* kv_cache_dtype_name(KvCacheDType t) {
  switch (t) {
    case KvCacheDType::kF32: return "f32";
    case KvCacheDType::kF16: return "f16";
    case KvCacheDType::kInt8: return "int8";
    case KvCacheDType::kInt4: return "int4";
  }
  return "?";
}

inline Result<KvCacheDType> parse_kv_cache_dtype(std::string_view s) {
  if (s == "f32" || s == "fp32") return KvCacheDType::kF32;
  if (s == "f16" || s == "fp16") return KvCacheDType::kF16;
  if (s == "int8" || s == "i8") return KvCacheDType::kInt8;
  if (s == "int4" || s == "i4") return KvCacheDType::kInt4;
  return invalid_argument("unknown KV cache dtype '" + std::string(s) + "'; use f32, f16, int8 or int4");
}

// The per-vector quantization rule of the int8/int4 formats, in one place for every writer (the CPU
// reference and fast path, the CUDA kv_write kernel), so all of them store the same bytes. An int8
// writer computes the vector's absmax (exact in any order) and asks for the scale as stored f16
// bits; an int4 writer calls kv_int4_choose_scale_zero on the whole vector (below). Each value then
// becomes its code with the stored values read back as f32. x / s is an IEEE f32 division and rintf
// rounds half to even on both sides (nvcc without --use_fast_math), so the codes match bit for bit.
NB_HD inline uint16_t kv_f16_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(v));
#else
  return fp32_to_fp16(v);
#endif
}
NB_HD inline float kv_f16_value(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return fp16_to_fp32(h);
#endif
}
// A 2-byte f16 field (a scale or zero) of a pool at any byte offset.
NB_HD inline float kv_f16_field(const uint8_t* p) { return kv_f16_value(static_cast<uint16_t>(p[0] | p[1] << 8)); }

inline constexpr float kKvF16Max = 65504.f;

// int8, symmetric: scale = absmax / 127, q = round(x / scale) in [-127, 127] (0 when scale is 0).
NB_HD inline uint16_t kv_int8_scale_bits(float absmax) { return kv_f16_bits(fminf(absmax / 127.f, kKvF16Max)); }
NB_HD inline int kv_int8_code(float x, float scale) {
  return scale > 0.f ? static_cast<int>(fminf(fmaxf(rintf(x / scale), -127.f), 127.f)) : 0;
}

// int4, asymmetric, for a range [lo, hi]: zero = lo (stored first), scale = (hi - stored zero) / 15,
// q = round((x - zero) / scale) in [0, 15] (0 when scale is 0).
struct KvScaleZeroBits {
  uint16_t scale;
  uint16_t zero;
};
NB_HD inline KvScaleZeroBits kv_int4_scale_zero_bits(float lo, float hi) {
  lo = fminf(fmaxf(lo, -kKvF16Max), kKvF16Max);
  hi = fminf(fmaxf(hi, -kKvF16Max), kKvF16Max);
  const uint16_t zero = kv_f16_bits(lo);
  const float z = kv_f16_value(zero);
  return {kv_f16_bits(fminf(fmaxf((hi - z) / 15.f, 0.f), kKvF16Max)), zero};
}
NB_HD inline int kv_int4_code(float x, float scale, float zero) {
  return scale > 0.f ? static_cast<int>(fminf(fmaxf(rintf((x - zero) / scale), 0.f), 15.f)) : 0;
}

// int4 write rule: the stored scale and zero of one vector x[0, d). Min-max is one candidate; the
// others clip the range, [min + i w / 25, max - j w / 25] for i, j = 0..3 (w = max - min), each as
// kv_int4_scale_zero_bits stores it; then up to two least-squares refits of (scale, zero) to the
// codes of the best so far. The candidate with the least squared reconstruction error
// sum_i (x_i - (q_i s + z))^2 wins (the earlier one on ties). Every sum runs sequentially in index
// order (f32 for the error, double for the refit), so a writer that runs each sum on one thread
// stores the same bits as the CPU; the terms may be computed anywhere (kv_quant.cu: a warp computes
// the codes and residuals, one lane accumulates them in order).
NB_HD inline float kv_int4_sq_error(int64_t d, const float* x, KvScaleZeroBits sz) {
  const float s = kv_f16_value(sz.scale), z = kv_f16_value(sz.zero);
  float e = 0.f;
  for (int64_t i = 0; i < d; ++i) {
    const float r = x[i] - fmaf(static_cast<float>(kv_int4_code(x[i], s, z)), s, z);
    e = fmaf(r, r, e);
  }
  return e;
}
// Candidate c (0..15, c = 4 i + j) of the rule for a vector with range [lo, hi]: the range
// [lo + i w / 25, hi - j w / 25], w = hi - lo, as stored; candidate 0 is min-max. Explicit fmaf (here
// and in the refit): the same bits whether or not a compiler would contract a * b + c on its own
// (nvcc does by default, g++ depends on -ffp-contract and the target).
NB_HD inline KvScaleZeroBits kv_int4_candidate(float lo, float hi, int c) {
  if (c == 0) return kv_int4_scale_zero_bits(lo, hi);
  const float w = hi - lo;
  return kv_int4_scale_zero_bits(fmaf(w, static_cast<float>(c / 4) / 25.f, lo), fmaf(-w, static_cast<float>(c % 4) / 25.f, hi));
}
// The refit's sums over the codes q of the candidate being refit (sequential in index order): sum q,
// sum x, sum q^2, sum q x.
struct KvRefitSums {
  double sq, sx, sqq, sqx;
};
// (s, z) = argmin sum (x_i - s q_i - z)^2 from the sums; false when the fit is degenerate or out of
// the f16 range (the refit stops there).
NB_HD inline bool kv_int4_refit_fit(const KvRefitSums& t, int64_t d, KvScaleZeroBits* out) {
  const double n = static_cast<double>(d), den = fma(n, t.sqq, -(t.sq * t.sq));
  if (!(den > 0.0)) return false;
  const double s2 = fma(n, t.sqx, -(t.sq * t.sx)) / den, z2 = fma(-s2, t.sq, t.sx) / n;
  if (!(s2 > 0.0) || s2 > kKvF16Max || z2 > kKvF16Max || z2 < -kKvF16Max) return false;
  *out = KvScaleZeroBits{kv_f16_bits(static_cast<float>(s2)), kv_f16_bits(static_cast<float>(z2))};
  return true;
}
// The rule's last step: up to two least-squares refits of (scale, zero) to the codes of `best`
// (whose error is best_err), each kept only if its error is lower.
NB_HD inline KvScaleZeroBits kv_int4_refit(int64_t d, const float* x, KvScaleZeroBits best, float best_err) {
  for (int it = 0; it < 2; ++it) {
    const float s = kv_f16_value(best.scale), z = kv_f16_value(best.zero);
    KvRefitSums t{0.0, 0.0, 0.0, 0.0};
    for (int64_t i = 0; i < d; ++i) {
      const double q = kv_int4_code(x[i], s, z);
      t.sq += q;
      t.sx += x[i];
      t.sqq = fma(q, q, t.sqq);
      t.sqx = fma(q, static_cast<double>(x[i]), t.sqx);
    }
    KvScaleZeroBits c;
    if (!kv_int4_refit_fit(t, d, &c)) break;
    const float e = kv_int4_sq_error(d, x, c);
    if (!(e < best_err)) break;
    best_err = e;
    best = c;
  }
  return best;
}
// The whole rule on one thread. (A kernel may evaluate the 16 candidates on 16 lanes and keep the
// least error, the lowest c on ties — the same choice — then refit on one lane.)
NB_HD inline KvScaleZeroBits kv_int4_choose_scale_zero(int64_t d, const float* x) {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < d; ++i) {
    lo = fminf(lo, x[i]);
    hi = fmaxf(hi, x[i]);
  }
  KvScaleZeroBits best = kv_int4_candidate(lo, hi, 0);
  float best_err = kv_int4_sq_error(d, x, best);
  for (int c = 1; c < 16; ++c) {
    const KvScaleZeroBits cand = kv_int4_candidate(lo, hi, c);
    const float e = kv_int4_sq_error(d, x, cand);
    if (e < best_err) {
      best_err = e;
      best = cand;
    }
  }
  return kv_int4_refit(d, x, best, best_err);
}

// Callable from kernels too (NB_HD).
struct KvBlockFormat {
  KvCacheDType dtype = KvCacheDType::kF32;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;

  NB_HD bool has_scale() const { return dtype == KvCacheDType::kInt8 || dtype == KvCacheDType::kInt4; }
  NB_HD bool has_zero() const { return dtype == KvCacheDType::kInt4; }
  // Bytes of one (token, KV head) vector of values.
  NB_HD int64_t head_bytes() const {
    switch (dtype) {
      case KvCacheDType::kF32: return 4 * head_dim;
      case KvCacheDType::kF16: return 2 * head_dim;
      case KvCacheDType::kInt8: return head_dim;
      case KvCacheDType::kInt4: return head_dim / 2;
    }
    return 0;
  }
  NB_HD int64_t heads_per_block() const { return block_size * num_kv_heads; }
  NB_HD int64_t values_bytes() const { return heads_per_block() * head_bytes(); }
  NB_HD int64_t scales_offset() const { return values_bytes(); }
  NB_HD int64_t zeros_offset() const { return values_bytes() + (has_scale() ? 2 * heads_per_block() : 0); }
  NB_HD int64_t block_bytes() const { return zeros_offset() + (has_zero() ? 2 * heads_per_block() : 0); }
  // Bytes per token and KV head, metadata included (what --kv-cache-memory is divided by).
  NB_HD int64_t bytes_per_token_head() const { return head_bytes() + (has_scale() ? 2 : 0) + (has_zero() ? 2 : 0); }

  // Byte offsets, from the pool's start, of slot `slot` (= block * block_size + offset) and KV head h.
  NB_HD int64_t value_offset(int64_t slot, int64_t h) const {
    return (slot / block_size) * block_bytes() + ((slot % block_size) * num_kv_heads + h) * head_bytes();
  }
  NB_HD int64_t scale_offset(int64_t slot, int64_t h) const {
    return (slot / block_size) * block_bytes() + scales_offset() + ((slot % block_size) * num_kv_heads + h) * 2;
  }
  NB_HD int64_t zero_offset(int64_t slot, int64_t h) const {
    return (slot / block_size) * block_bytes() + zeros_offset() + ((slot % block_size) * num_kv_heads + h) * 2;
  }
};

}  // namespace nb
