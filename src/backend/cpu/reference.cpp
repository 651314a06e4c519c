// Reference implementations: plain loops, double accumulation, weights through nb::dequantize_row.
// Written for obviousness, not speed; every fast path (and every GPU kernel) is tested against these.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"

namespace nb::cpu::ref {

void matmul(const MatmulParams& p) {
  if (p.weight.dtype() == DType::kQGroup) return matmul_group(p);
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  std::vector<float> w(static_cast<size_t>(k));
  for (int64_t r = 0; r < n; ++r) {
    dequantize_row(p.weight.dtype(), p.weight.row<const void>(r), w.data(), k);
    for (int64_t t = 0; t < p.m; ++t) {
      double acc = 0.0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(w[static_cast<size_t>(i)]) * p.x[t * k + i];
      p.y[t * n + r] = static_cast<float>(acc);
    }
  }
}

void rms_norm(const RmsNormParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.dim;
    float* y = p.y + r * p.dim;
    double ss = 0.0;
    for (int64_t i = 0; i < p.dim; ++i) ss += static_cast<double>(x[i]) * x[i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(p.dim) + p.eps);
    for (int64_t i = 0; i < p.dim; ++i) y[i] = static_cast<float>(x[i] * inv * p.weight[i]);
    if (p.y_codes != nullptr) p.y_scales[r] = quantize_act_int8_row(y, p.dim, p.y_codes + r * p.dim);
  }
}

namespace {
// Rotates one head vector by the angles pos * inv_freq[i] (computed in double: at position 1e5 an
// f32 angle would already be off by ~4e-3 rad).
void rope_head(float* x, int64_t head_dim, int32_t pos, const float* inv_freq, RopeStyle style) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(pos) * static_cast<double>(inv_freq[i]);
    const double c = std::cos(angle), s = std::sin(angle);
    const int64_t a = style == RopeStyle::kInterleaved ? 2 * i : i;
    const int64_t b = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
    const double x0 = x[a], x1 = x[b];
    x[a] = static_cast<float>(x0 * c - x1 * s);
    x[b] = static_cast<float>(x0 * s + x1 * c);
  }
}
}  // namespace

void rope(const RopeParams& p) {
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    for (int64_t h = 0; h < p.num_heads; ++h) {
      rope_head(p.q + (t * p.num_heads + h) * p.head_dim, p.head_dim, p.positions[t], p.inv_freq, p.style);
    }
    for (int64_t h = 0; h < p.num_kv_heads; ++h) {
      rope_head(p.k + (t * p.num_kv_heads + h) * p.head_dim, p.head_dim, p.positions[t], p.inv_freq, p.style);
    }
  }
}

void swiglu(const SwigluParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const double g = p.gate[i];
    p.out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * p.up[i]);
  }
  swiglu_codes(p);
}

void attention(const AttentionParams& p) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t d = p.head_dim;
  std::vector<double> scores;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t num_keys = p.start_pos + t + 1;  // causal: positions 0 .. start_pos + t
    scores.assign(static_cast<size_t>(num_keys), 0.0);
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const int64_t kvh = h / group;
      const float* q = p.q + (t * p.num_heads + h) * d;
      auto slot = [&](int64_t pos) {
        const int64_t block = p.block_table[pos / p.block_size];
        return ((block * p.block_size + pos % p.block_size) * p.num_kv_heads + kvh) * d;
      };
      // Quantized caches: key j's K and V rows of this kv head, dequantized (kv_dequantize_head).
      std::vector<float> kq, vq;
      if (p.cache_dtype != KvCacheDType::kF32) {
        const KvBlockFormat f{p.cache_dtype, p.block_size, p.num_kv_heads, d};
        kq.resize(static_cast<size_t>(num_keys * d));
        vq.resize(static_cast<size_t>(num_keys * d));
        for (int64_t j = 0; j < num_keys; ++j) {
          const int64_t sl = p.block_table[j / p.block_size] * p.block_size + j % p.block_size;
          kv_dequantize_head(f, reinterpret_cast<const uint8_t*>(p.k_cache), sl, kvh, kq.data() + j * d);
          kv_dequantize_head(f, reinterpret_cast<const uint8_t*>(p.v_cache), sl, kvh, vq.data() + j * d);
        }
      }
      const bool quantized = !kq.empty();
      auto key = [&](int64_t j) { return quantized ? kq.data() + j * d : p.k_cache + slot(j); };
      auto value = [&](int64_t j, int64_t i) { return quantized ? vq[static_cast<size_t>(j * d + i)] : p.v_cache[slot(j) + i]; };
      double mx = -INFINITY;
      for (int64_t j = 0; j < num_keys; ++j) {
        const float* kr = key(j);
        double s = 0.0;
        for (int64_t i = 0; i < d; ++i) s += static_cast<double>(q[i]) * kr[i];
        scores[static_cast<size_t>(j)] = s * p.scale;
        mx = std::max(mx, scores[static_cast<size_t>(j)]);
      }
      double total = 0.0;
      for (double& s : scores) {
        s = std::exp(s - mx);
        total += s;
      }
      float* out = p.out + (t * p.num_heads + h) * d;
      for (int64_t i = 0; i < d; ++i) {
        double acc = 0.0;
        for (int64_t j = 0; j < num_keys; ++j) acc += scores[static_cast<size_t>(j)] * value(j, i);
        out[i] = static_cast<float>(acc / total);
      }
    }
  }
}

void embedding(const EmbeddingParams& p) {
  const int64_t dim = p.table.dim(1);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    dequantize_row(p.table.dtype(), p.table.row<const void>(p.ids[t]), p.out + t * dim, dim);
  }
}

}  // namespace nb::cpu::ref
