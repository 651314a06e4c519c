// Fast rms_norm, rope and swiglu: AVX-512 where the build has it, plain loops otherwise. They differ
// from the references only in f32 rounding order (rope uses the same double-precision angles).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"

namespace nb::cpu {

void rms_norm(const RmsNormParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.dim;
    float* y = p.y + r * p.dim;
#if defined(__AVX512F__)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= p.dim; i += 32) {
      const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
      acc0 = _mm512_fmadd_ps(a, a, acc0);
      acc1 = _mm512_fmadd_ps(b, b, acc1);
    }
    for (; i < p.dim; i += 16) {
      const __m512 a = _mm512_maskz_loadu_ps(simd::first_lanes(p.dim - i), x + i);
      acc0 = _mm512_fmadd_ps(a, a, acc0);
    }
    const float ss = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(ss / static_cast<float>(p.dim) + p.eps));
    for (i = 0; i < p.dim; i += 16) {
      const __mmask16 m = simd::first_lanes(p.dim - i);
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
      _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, p.weight + i)));
    }
#else
    float ss = 0.f;
    for (int64_t i = 0; i < p.dim; ++i) ss += x[i] * x[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(p.dim) + p.eps);
    for (int64_t i = 0; i < p.dim; ++i) y[i] = x[i] * inv * p.weight[i];
#endif
    if (p.y_codes != nullptr) p.y_scales[r] = quantize_act_int8_row(y, p.dim, p.y_codes + r * p.dim);
  }
}

namespace {
// x[a(i)], x[b(i)] rotated by angle i, with cos/sin tables of head_dim/2 entries.
void rope_head_half(float* x, int64_t half, const float* c, const float* s) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i < half; i += 16) {
    const __mmask16 m = simd::first_lanes(half - i);
    const __m512 x0 = _mm512_maskz_loadu_ps(m, x + i), x1 = _mm512_maskz_loadu_ps(m, x + half + i);
    const __m512 cv = _mm512_maskz_loadu_ps(m, c + i), sv = _mm512_maskz_loadu_ps(m, s + i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_fmsub_ps(x0, cv, _mm512_mul_ps(x1, sv)));
    _mm512_mask_storeu_ps(x + half + i, m, _mm512_fmadd_ps(x0, sv, _mm512_mul_ps(x1, cv)));
  }
#endif
  for (; i < half; ++i) {
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c[i] - x1 * s[i];
    x[i + half] = x0 * s[i] + x1 * c[i];
  }
}

// Interleaved pairs (x[2i], x[2i+1]); ce/se are the tables expanded to head_dim entries:
// ce = (c0, c0, c1, c1, ...), se = (-s0, s0, -s1, s1, ...), so x' = x * ce + swap_pairs(x) * se.
void rope_head_interleaved(float* x, int64_t head_dim, const float* ce, const float* se) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i < head_dim; i += 16) {
    const __mmask16 m = simd::first_lanes(head_dim - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 swapped = _mm512_permute_ps(v, 0xB1);  // (x1, x0, x3, x2, ...)
    const __m512 r = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, ce + i),
                                     _mm512_mul_ps(swapped, _mm512_maskz_loadu_ps(m, se + i)));
    _mm512_mask_storeu_ps(x + i, m, r);
  }
#endif
  for (; i < head_dim; i += 2) {
    const float x0 = x[i], x1 = x[i + 1];
    x[i] = x0 * ce[i] + x1 * se[i];
    x[i + 1] = x1 * ce[i + 1] + x0 * se[i + 1];
  }
}
}  // namespace

void rope(const RopeParams& p) {
  const int64_t half = p.head_dim / 2;
  // Per token: cos/sin of pos * inv_freq in double (see reference.cpp), shared by all its heads.
  std::vector<float> c(static_cast<size_t>(p.head_dim)), s(static_cast<size_t>(p.head_dim));
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p.positions[t]) * static_cast<double>(p.inv_freq[i]);
      const auto ci = static_cast<float>(std::cos(angle)), si = static_cast<float>(std::sin(angle));
      if (p.style == RopeStyle::kInterleaved) {
        c[static_cast<size_t>(2 * i)] = c[static_cast<size_t>(2 * i + 1)] = ci;
        s[static_cast<size_t>(2 * i)] = -si;
        s[static_cast<size_t>(2 * i + 1)] = si;
      } else {
        c[static_cast<size_t>(i)] = ci;
        s[static_cast<size_t>(i)] = si;
      }
    }
    auto apply = [&](float* x) {
      if (p.style == RopeStyle::kInterleaved) {
        rope_head_interleaved(x, p.head_dim, c.data(), s.data());
      } else {
        rope_head_half(x, half, c.data(), s.data());
      }
    };
    for (int64_t h = 0; h < p.num_heads; ++h) apply(p.q + (t * p.num_heads + h) * p.head_dim);
    for (int64_t h = 0; h < p.num_kv_heads; ++h) apply(p.k + (t * p.num_kv_heads + h) * p.head_dim);
  }
}

void swiglu(const SwigluParams& p) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.f);
  for (; i < p.n; i += 16) {
    const __mmask16 m = simd::first_lanes(p.n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, p.gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, p.up + i);
    // silu(g) = g / (1 + e^-g); for g < -89, e^-g = inf and the quotient is -0 like the reference.
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, simd::exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(p.out + i, m, _mm512_mul_ps(silu, u));
  }
#endif
  for (; i < p.n; ++i) p.out[i] = p.gate[i] / (1.f + std::exp(-p.gate[i])) * p.up[i];
  swiglu_codes(p);
}

void swiglu_codes(const SwigluParams& p) {
  if (p.out_codes == nullptr || p.cols <= 0) return;
  for (int64_t r = 0; r < p.n / p.cols; ++r) {
    p.out_scales[r] = quantize_act_int8_row(p.out + r * p.cols, p.cols, p.out_codes + r * p.cols);
  }
}

}  // namespace nb::cpu
