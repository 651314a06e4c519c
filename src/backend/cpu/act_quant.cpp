#include "backend/cpu/act_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/simd.h"

namespace nb::cpu {

namespace {
constexpr int kGroupBlocks = 4;
constexpr size_t kGroupQsBytes = 128;

// Offset inside a group's 128 quantized bytes of element e (0..31) of the group's block i (0..3).
inline size_t group_qs_index(int i, int e) {
  return (e < 16 ? 0 : 64) + static_cast<size_t>(i) * 16 + static_cast<size_t>(e & 15);
}

// The block scale both paths use; computing it the same way keeps them bit-identical.
inline void block_scale(float amax, float* d, float* id) {
  *d = amax / 127.f;
  *id = *d != 0.f ? 1.f / *d : 0.f;
}
}  // namespace

ActQ8Layout act_q8_layout(int64_t k) {
  ActQ8Layout l;
  l.k = k;
  l.num_blocks = k / 32;
  l.num_groups = (l.num_blocks + kGroupBlocks - 1) / kGroupBlocks;
  const size_t g = static_cast<size_t>(l.num_groups);
  l.scale_offset = g * kGroupQsBytes;
  l.corr_offset = l.scale_offset + g * 64;
  l.sum_offset = l.corr_offset + g * 64;
  l.block_corr_offset = l.sum_offset + g * 64;
  l.row_bytes = (l.block_corr_offset + g * 16 + 63) / 64 * 64;
  return l;
}

namespace portable {
void quantize_act_row(const float* x, const ActQ8Layout& l, int bias, uint8_t* out) {
  std::memset(out, 0, l.row_bytes);
  auto* qs = reinterpret_cast<int8_t*>(out);
  auto* scale = reinterpret_cast<float*>(out + l.scale_offset);
  auto* corr = reinterpret_cast<int32_t*>(out + l.corr_offset);
  auto* sum = reinterpret_cast<float*>(out + l.sum_offset);
  auto* bcorr = reinterpret_cast<int32_t*>(out + l.block_corr_offset);
  for (int64_t b = 0; b < l.num_blocks; ++b) {
    const float* xb = x + b * 32;
    const int64_t g = b / kGroupBlocks;
    const int i = static_cast<int>(b % kGroupBlocks);
    float amax = 0.f;
    for (int e = 0; e < 32; ++e) amax = std::max(amax, std::fabs(xb[e]));
    float d, id;
    block_scale(amax, &d, &id);
    int32_t total = 0;
    for (int e = 0; e < 32; ++e) {
      // nearbyint rounds half to even under the default rounding mode, like cvtps2dq.
      const auto q = static_cast<int32_t>(std::nearbyint(xb[e] * id));
      qs[static_cast<size_t>(g) * kGroupQsBytes + group_qs_index(i, e)] = static_cast<int8_t>(q);
      corr[g * 16 + i * 4 + (e & 15) / 4] -= bias * q;
      total += q;
    }
    const float s = d * static_cast<float>(total);
    bcorr[b] = -bias * total;
    for (int j = 0; j < 4; ++j) {
      scale[g * 16 + i * 4 + j] = d;
      sum[g * 16 + i * 4 + j] = s;
    }
  }
}
}  // namespace portable

void quantize_act_row(const float* x, const ActQ8Layout& l, int bias, uint8_t* out) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
  auto* qs = reinterpret_cast<int8_t*>(out);
  auto* scale = reinterpret_cast<float*>(out + l.scale_offset);
  auto* corr = reinterpret_cast<int32_t*>(out + l.corr_offset);
  auto* sum = reinterpret_cast<float*>(out + l.sum_offset);
  auto* bcorr = reinterpret_cast<int32_t*>(out + l.block_corr_offset);
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i vbias = _mm512_set1_epi32(-bias);
  for (int64_t g = 0; g < l.num_groups; ++g) {
    int8_t* gq = qs + g * static_cast<int64_t>(kGroupQsBytes);
    for (int i = 0; i < kGroupBlocks; ++i) {
      const int64_t b = g * kGroupBlocks + i;
      if (b >= l.num_blocks) {
        std::memset(gq + i * 16, 0, 16);
        std::memset(gq + 64 + i * 16, 0, 16);
        _mm_storeu_ps(scale + g * 16 + i * 4, _mm_setzero_ps());
        _mm_storeu_ps(sum + g * 16 + i * 4, _mm_setzero_ps());
        bcorr[b] = 0;
        continue;
      }
      const __m512 x0 = _mm512_loadu_ps(x + b * 32);
      const __m512 x1 = _mm512_loadu_ps(x + b * 32 + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
      float d, id;
      block_scale(amax, &d, &id);
      const __m512 vid = _mm512_set1_ps(id);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid));  // round to nearest even
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(gq + i * 16), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(gq + 64 + i * 16), _mm512_cvtsepi32_epi8(q1));
      _mm_storeu_ps(scale + g * 16 + i * 4, _mm_set1_ps(d));
      const int32_t total = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      const float s = d * static_cast<float>(total);
      _mm_storeu_ps(sum + g * 16 + i * 4, _mm_set1_ps(s));
      bcorr[b] = -bias * total;
    }
    // Per-lane sums of the 8 values each dpbusd lane multiplies: a dot product with all-ones.
    const __m512i lo = _mm512_loadu_si512(gq);
    const __m512i hi = _mm512_loadu_si512(gq + 64);
    const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, lo), ones, hi);
    _mm512_storeu_si512(corr + g * 16, _mm512_mullo_epi32(s, vbias));
  }
  const size_t used = l.block_corr_offset + static_cast<size_t>(l.num_groups) * 16;
  std::memset(out + used, 0, l.row_bytes - used);
#else
  portable::quantize_act_row(x, l, bias, out);
#endif
}

void dequantize_act_row(const uint8_t* row, const ActQ8Layout& l, float* x) {
  const auto* qs = reinterpret_cast<const int8_t*>(row);
  const auto* scale = reinterpret_cast<const float*>(row + l.scale_offset);
  for (int64_t b = 0; b < l.num_blocks; ++b) {
    const int64_t g = b / kGroupBlocks;
    const int i = static_cast<int>(b % kGroupBlocks);
    const float d = scale[g * 16 + i * 4];
    for (int e = 0; e < 32; ++e) {
      x[b * 32 + e] = d * static_cast<float>(qs[static_cast<size_t>(g) * kGroupQsBytes + group_qs_index(i, e)]);
    }
  }
}

}  // namespace nb::cpu
