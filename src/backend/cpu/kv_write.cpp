// The KV cache's fast paths: writing new K/V rows (quantizing them for the int8/int4/f16 formats of
// backend/kv_format.h) and dequantizing rows for attention. AVX-512 where head_dim is a multiple of
// 16; the reference code otherwise. Both produce exactly the reference's bytes and floats: the same
// f32 divisions, round-to-nearest-even conversions and clamps, and dequantization q * s (+ z) that is
// exact in f32 (int8) or rounded once by the FMA as the reference's double sum is (int4).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kv_quant.h"
#include "backend/cpu/simd.h"
#include "core/dtype.h"

namespace nb::cpu {

namespace {

#if defined(__AVX512F__)
// Quantizes one head vector (d a multiple of 16) as ref::kv_quantize_head does.
void quantize_head_avx512(const KvBlockFormat& f, uint8_t* pool, int64_t slot, int64_t h, const float* x) {
  const int64_t d = f.head_dim;
  uint8_t* q = pool + f.value_offset(slot, h);
  switch (f.dtype) {
    case KvCacheDType::kF32:
      std::memcpy(q, x, static_cast<size_t>(d) * sizeof(float));
      return;
    case KvCacheDType::kF16:
      for (int64_t i = 0; i < d; i += 16) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 2 * i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      return;
    case KvCacheDType::kInt8: {
      __m512 vmax = _mm512_setzero_ps();
      for (int64_t i = 0; i < d; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
      const uint16_t sb = kv_int8_scale_bits(_mm512_reduce_max_ps(vmax));  // the rule: backend/kv_format.h
      std::memcpy(pool + f.scale_offset(slot, h), &sb, 2);
      const float s = kv_f16_value(sb);
      for (int64_t i = 0; i < d; i += 16) {  // kv_int8_code, 16 at a time
        __m512i r = _mm512_setzero_si512();
        if (s > 0.f) {
          r = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(s)));
          r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(r));
      }
      return;
    }
    case KvCacheDType::kInt4: {
      // The rule (backend/kv_format.h) for scale and zero; the codes below are kv_int4_code, 16 at a time.
      const KvScaleZeroBits sz = kv_int4_choose_scale_zero(d, x);
      std::memcpy(pool + f.zero_offset(slot, h), &sz.zero, 2);
      std::memcpy(pool + f.scale_offset(slot, h), &sz.scale, 2);
      const float s = kv_f16_value(sz.scale), z = kv_f16_value(sz.zero);
      for (int64_t i = 0; i < d; i += 16) {
        __m512i r = _mm512_setzero_si512();
        if (s > 0.f) {
          r = _mm512_cvtps_epi32(
              _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(z)), _mm512_set1_ps(s)));
          r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_setzero_si512()), _mm512_set1_epi32(15));
        }
        // 16 codes as bytes; each 16-bit lane holds codes 2i (low byte) and 2i + 1 (high byte).
        const __m128i b = _mm512_cvtepi32_epi8(r);
        const __m128i packed = _mm_and_si128(_mm_or_si128(b, _mm_srli_epi16(b, 4)), _mm_set1_epi16(0xFF));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i / 2), _mm_packus_epi16(packed, packed));
      }
      return;
    }
  }
}
#endif

}  // namespace

void kv_write(const KvWriteParams& p) {
#if defined(__AVX512F__)
  if (p.cache_dtype != KvCacheDType::kF32 && p.head_dim % 16 == 0) {
    const int64_t row = p.num_kv_heads * p.head_dim;
    const KvBlockFormat f{p.cache_dtype, p.cache_block_size, p.num_kv_heads, p.head_dim};
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      const int64_t slot = p.slot_mapping[t];
      if (slot < 0) continue;
      for (int64_t h = 0; h < p.num_kv_heads; ++h) {
        quantize_head_avx512(f, reinterpret_cast<uint8_t*>(p.k_cache), slot, h, p.k + t * row + h * p.head_dim);
        quantize_head_avx512(f, reinterpret_cast<uint8_t*>(p.v_cache), slot, h, p.v + t * row + h * p.head_dim);
      }
    }
    return;
  }
#endif
  ref::kv_write(p);  // f32 rows are copied as they are; other head sizes quantize in plain loops
}

// In-place fast Walsh-Hadamard transform: log2(d) butterfly passes, then the 1/sqrt(d) norm.
void hadamard(const HadamardParams& p) {
  const int64_t d = p.dim;
  const float norm = 1.f / std::sqrt(static_cast<float>(d));
  for (int64_t v = 0; v < p.num_vectors; ++v) {
    float* x = p.x + v * d;
    for (int64_t len = 1; len < d; len *= 2) {
      for (int64_t i = 0; i < d; i += 2 * len) {
        for (int64_t j = i; j < i + len; ++j) {
          const float a = x[j], b = x[j + len];
          x[j] = a + b;
          x[j + len] = a - b;
        }
      }
    }
    for (int64_t i = 0; i < d; ++i) x[i] *= norm;
  }
}

void kv_dequantize_rows(const KvBlockFormat& f, const uint8_t* pool, int64_t slot, int64_t h, int64_t n, float* out) {
  const int64_t d = f.head_dim;
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    for (int64_t r = 0; r < n; ++r, out += d) {
      const uint8_t* q = pool + f.value_offset(slot + r, h);
      switch (f.dtype) {
        case KvCacheDType::kF32:
          std::memcpy(out, q, static_cast<size_t>(d) * sizeof(float));
          break;
        case KvCacheDType::kF16:
          for (int64_t i = 0; i < d; i += 16) {
            _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * i))));
          }
          break;
        case KvCacheDType::kInt8: {
          const __m512 s = _mm512_set1_ps(kv_load_f16(pool + f.scale_offset(slot + r, h)));
          for (int64_t i = 0; i < d; i += 16) {
            const __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
            _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_cvtepi32_ps(v), s));
          }
          break;
        }
        case KvCacheDType::kInt4: {
          const __m512 s = _mm512_set1_ps(kv_load_f16(pool + f.scale_offset(slot + r, h)));
          const __m512 z = _mm512_set1_ps(kv_load_f16(pool + f.zero_offset(slot + r, h)));
          const __m128i mask = _mm_set1_epi8(15);
          for (int64_t i = 0; i < d; i += 16) {
            const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i / 2));
            const __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
            _mm512_storeu_ps(out + i, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes)), s, z));
          }
          break;
        }
      }
    }
    return;
  }
#endif
  for (int64_t r = 0; r < n; ++r) ref::kv_dequantize_head(f, pool, slot + r, h, out + r * d);
}

}  // namespace nb::cpu
