// Causal GQA attention over a paged f32 KV cache (block table), two-pass softmax per (token, head):
// scores for every visible key, then max, exp, sum, and the p-weighted sum of V rows.
// Threads take (token, head) items round-robin: in a causal prefill, later tokens see more keys,
// so contiguous chunks would hand one thread most of the work.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace nb::cpu {

namespace {

float dot(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::first_lanes(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
#else
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
#endif
}

// y += a * x
void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 va = _mm512_set1_ps(a);
  for (; i < n; i += 16) {
    const __mmask16 m = simd::first_lanes(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// s[j] = e^(s[j] - mx); returns the sum.
float exp_shift_sum(float* s, int64_t n, float mx) {
  int64_t j = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  for (; j < n; j += 16) {
    const __mmask16 m = simd::first_lanes(n - j);
    const __m512 e = simd::exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx));
    _mm512_mask_storeu_ps(s + j, m, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
  }
  total = _mm512_reduce_add_ps(acc);
#endif
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    total += s[j];
  }
  return total;
}

}  // namespace

void attention(const AttentionParams& p, ThreadPool& pool) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t d = p.head_dim;
  const int64_t kv_row = p.num_kv_heads * d;  // floats per cache slot
  const int64_t num_items = p.num_tokens * p.num_heads;
  const int64_t max_keys = p.start_pos + p.num_tokens;
  pool.run([&](int tid, int num_threads) {
    std::vector<float> scores(static_cast<size_t>(max_keys));
    for (int64_t item = tid; item < num_items; item += num_threads) {
      const int64_t t = item / p.num_heads, h = item % p.num_heads;
      const int64_t kv_off = (h / group) * d;
      const int64_t num_keys = p.start_pos + t + 1;
      const float* q = p.q + (t * p.num_heads + h) * d;
      // Pass 1: scaled scores, block by block through the table, and their max.
      float mx = -INFINITY;
      for (int64_t j0 = 0; j0 < num_keys; j0 += p.block_size) {
        const float* kb = p.k_cache + p.block_table[j0 / p.block_size] * p.block_size * kv_row + kv_off;
        const int64_t len = std::min(p.block_size, num_keys - j0);
        for (int64_t j = 0; j < len; ++j) {
          const float s = dot(q, kb + j * kv_row, d) * p.scale;
          scores[static_cast<size_t>(j0 + j)] = s;
          mx = std::max(mx, s);
        }
      }
      const float inv_total = 1.f / exp_shift_sum(scores.data(), num_keys, mx);
      // Pass 2: out = sum_j p_j v_j / sum_j p_j.
      float* out = p.out + (t * p.num_heads + h) * d;
      std::fill(out, out + d, 0.f);
      for (int64_t j0 = 0; j0 < num_keys; j0 += p.block_size) {
        const float* vb = p.v_cache + p.block_table[j0 / p.block_size] * p.block_size * kv_row + kv_off;
        const int64_t len = std::min(p.block_size, num_keys - j0);
        for (int64_t j = 0; j < len; ++j) axpy(scores[static_cast<size_t>(j0 + j)] * inv_total, vb + j * kv_row, out, d);
      }
    }
  });
}

}  // namespace nb::cpu
