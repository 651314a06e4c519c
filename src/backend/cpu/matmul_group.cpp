// kQGroup weights (core/group_quant.h): group-wise integer codes, one byte per element.
//
// Weight-only (W4A16, any bits / group size / g_idx): each thread dequantizes a tile of kTileRows
// weight rows to f32 with exactly dequantize_tensor_row's formula, (float(q) - zero) * scale, then
// runs the f32 FMA tile kernel (matmul_f32_rows) over all tokens. The weights are therefore the
// bit-exact dequantized values and results differ from "dequantize, then f32 matmul" only by f32
// summation order; the tile dequantization is amortized over the M tokens of a prefill.
//
// act_int8 (W8A8): each activation row is quantized to int8 (quantize_act_int8_row), then per
// output, for each group g in increasing order:
//   iv  = sum_{j in g} q[n][j] * xq[t][j] - zero[n][g] * sum_{j in g} xq[t][j]     (exact int32)
//   acc = fma(float(iv), scale[n][g], acc)                                          (acc from +0)
// and y = acc * d_t. Every kernel (reference, portable, AVX-512 VNNI) computes exactly this, so they
// agree bit for bit; the int32 dot is exact for K * 255 * 127 < 2^31 (K < 66 000).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"
#include "core/group_quant.h"

namespace nb::cpu {

namespace {

constexpr int64_t kTileRows = 16;

// Rows [r0, r0 + rows) of a kQGroup weight as f32 into w[rows, k].
void dequantize_rows(const Tensor& t, int64_t r0, int64_t rows, float* w) {
  const GroupQuant& q = *t.group_quant();
  const int64_t k = t.cols();
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = w + r * k;
    if (!q.contiguous_groups()) {
      dequantize_tensor_row(t, r0 + r, dst);
      continue;
    }
    const uint8_t* codes = t.row<const uint8_t>(r0 + r);
    const int64_t gs = q.group_size < 0 ? k : q.group_size;
    for (int64_t g = 0; g < q.num_groups; ++g) {
      const float z = q.zero(r0 + r, g), s = q.scale(r0 + r, g);
      const int64_t j1 = std::min(k, (g + 1) * gs);
      for (int64_t j = g * gs; j < j1; ++j) dst[j] = (static_cast<float>(codes[j]) - z) * s;
    }
  }
}

void matmul_weight_only(const MatmulParams& p, ThreadPool& pool) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    std::vector<float> w(static_cast<size_t>(kTileRows * k));
    for (int64_t r = n0; r < n1; r += kTileRows) {
      const int64_t rows = std::min(kTileRows, n1 - r);
      dequantize_rows(p.weight, r, rows, w.data());
      matmul_f32_rows(w.data(), rows, k, p.x, p.m, p.y + r, n);
    }
  }, kTileRows);
}

// Quantized activations: row t at xq + t * k, its scale d[t] and per-group code sums gsum[t * G + g].
struct ActInt8 {
  std::vector<int8_t> xq;
  std::vector<float> d;
  std::vector<int32_t> gsum;
};

ActInt8 quantize_acts(const MatmulParams& p, const GroupQuant& q) {
  const int64_t k = p.weight.dim(1);
  ActInt8 a;
  a.xq.resize(static_cast<size_t>(p.m * k));
  a.d.resize(static_cast<size_t>(p.m));
  a.gsum.assign(static_cast<size_t>(p.m * q.num_groups), 0);
  for (int64_t t = 0; t < p.m; ++t) {
    int8_t* xq = a.xq.data() + t * k;
    a.d[static_cast<size_t>(t)] = quantize_act_int8_row(p.x + t * k, k, xq);
    int32_t* gs = a.gsum.data() + t * q.num_groups;
    for (int64_t j = 0; j < k; ++j) gs[q.group_of(j)] += xq[j];
  }
  return a;
}

// The canonical W8A8 output for weight row r and token t (see the file comment), with the
// per-group integer dots already in idot[g].
inline float w8a8_output(const GroupQuant& q, int64_t r, const int32_t* idot, const int32_t* gsum, float d) {
  float acc = 0.f;
  for (int64_t g = 0; g < q.num_groups; ++g) {
    const int32_t iv = idot[g] - static_cast<int32_t>(q.zero(r, g)) * gsum[g];
    acc = std::fma(static_cast<float>(iv), q.scale(r, g), acc);
  }
  return acc * d;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define NB_HAVE_W8A8_VNNI 1
// Per-channel weights, k a multiple of 64: R weight rows x T tokens of exact int32 dots.
template <int R, int T>
void w8a8_tile(const uint8_t* w, int64_t k, const int8_t* xq, int32_t* dots /* [R][T] */) {
  __m512i acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
  for (int64_t i = 0; i < k; i += 64) {
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(w + r * k + i);
    for (int t = 0; t < T; ++t) {
      const __m512i xv = _mm512_loadu_si512(xq + t * k + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], xv);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) dots[r * T + t] = _mm512_reduce_add_epi32(acc[r][t]);
}

void matmul_w8a8_vnni(const MatmulParams& p, const GroupQuant& q, ThreadPool& pool) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const ActInt8 a = quantize_acts(p, q);
  const auto* w = p.weight.ptr<const uint8_t>();
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    int32_t dots[16];
    for (int64_t r = n0; r < n1; r += 4) {
      const int rows = static_cast<int>(std::min<int64_t>(4, n1 - r));
      for (int64_t t = 0; t < p.m; t += 4) {
        const int toks = static_cast<int>(std::min<int64_t>(4, p.m - t));
        const uint8_t* wr = w + r * k;
        const int8_t* xt = a.xq.data() + t * k;
        if (rows == 4 && toks == 4) {
          w8a8_tile<4, 4>(wr, k, xt, dots);
        } else {
          for (int rr = 0; rr < rows; ++rr)
            for (int tt = 0; tt < toks; ++tt) w8a8_tile<1, 1>(wr + rr * k, k, xt + tt * k, dots + rr * toks + tt);
        }
        for (int rr = 0; rr < rows; ++rr) {
          for (int tt = 0; tt < toks; ++tt) {
            const int64_t tok = t + tt;
            p.y[tok * n + r + rr] = w8a8_output(q, r + rr, dots + rr * toks + tt, a.gsum.data() + tok * q.num_groups, a.d[static_cast<size_t>(tok)]);
          }
        }
      }
    }
  }, 4);
}
#endif

}  // namespace

float quantize_act_int8_row(const float* x, int64_t k, int8_t* xq) {
  float amax = 0.f;
  for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  for (int64_t j = 0; j < k; ++j) {
    const float v = std::nearbyint(x[j] * id);
    xq[j] = static_cast<int8_t>(std::clamp(v, -127.f, 127.f));
  }
  return d;
}

namespace portable {
void matmul_group(const MatmulParams& p, ThreadPool& pool) {
  const GroupQuant& q = *p.weight.group_quant();
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  if (!q.act_int8) {
    pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
      std::vector<float> row(static_cast<size_t>(k));
      for (int64_t r = n0; r < n1; ++r) {
        dequantize_tensor_row(p.weight, r, row.data());
        for (int64_t t = 0; t < p.m; ++t) {
          float acc = 0.f;
          for (int64_t i = 0; i < k; ++i) acc += row[static_cast<size_t>(i)] * p.x[t * k + i];
          p.y[t * n + r] = acc;
        }
      }
    });
    return;
  }
  const ActInt8 a = quantize_acts(p, q);
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    std::vector<int32_t> idot(static_cast<size_t>(q.num_groups));
    for (int64_t r = n0; r < n1; ++r) {
      const uint8_t* w = p.weight.row<const uint8_t>(r);
      for (int64_t t = 0; t < p.m; ++t) {
        std::fill(idot.begin(), idot.end(), 0);
        const int8_t* xq = a.xq.data() + t * k;
        for (int64_t j = 0; j < k; ++j) idot[static_cast<size_t>(q.group_of(j))] += static_cast<int32_t>(w[j]) * xq[j];
        p.y[t * n + r] = w8a8_output(q, r, idot.data(), a.gsum.data() + t * q.num_groups, a.d[static_cast<size_t>(t)]);
      }
    }
  });
}
}  // namespace portable

void matmul_group(const MatmulParams& p, ThreadPool& pool) {
  const GroupQuant& q = *p.weight.group_quant();
  if (!q.act_int8) return matmul_weight_only(p, pool);
#if defined(NB_HAVE_W8A8_VNNI)
  if (q.num_groups == 1 && p.weight.dim(1) % 64 == 0) return matmul_w8a8_vnni(p, q, pool);
#endif
  portable::matmul_group(p, pool);
}

namespace ref {
void matmul_group(const MatmulParams& p) {
  const GroupQuant& q = *p.weight.group_quant();
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  std::vector<float> w(static_cast<size_t>(k));
  if (!q.act_int8) {
    for (int64_t r = 0; r < n; ++r) {
      dequantize_tensor_row(p.weight, r, w.data());
      for (int64_t t = 0; t < p.m; ++t) {
        double acc = 0.0;
        for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(w[static_cast<size_t>(i)]) * p.x[t * k + i];
        p.y[t * n + r] = static_cast<float>(acc);
      }
    }
    return;
  }
  std::vector<int8_t> xq(static_cast<size_t>(k));
  std::vector<int32_t> idot(static_cast<size_t>(q.num_groups)), gsum(static_cast<size_t>(q.num_groups));
  for (int64_t t = 0; t < p.m; ++t) {
    const float d = quantize_act_int8_row(p.x + t * k, k, xq.data());
    std::fill(gsum.begin(), gsum.end(), 0);
    for (int64_t j = 0; j < k; ++j) gsum[static_cast<size_t>(q.group_of(j))] += xq[static_cast<size_t>(j)];
    for (int64_t r = 0; r < n; ++r) {
      std::fill(idot.begin(), idot.end(), 0);
      const uint8_t* wr = p.weight.row<const uint8_t>(r);
      for (int64_t j = 0; j < k; ++j) idot[static_cast<size_t>(q.group_of(j))] += wr[j] * xq[static_cast<size_t>(j)];
      p.y[t * n + r] = w8a8_output(q, r, idot.data(), gsum.data(), d);
    }
  }
}
}  // namespace ref

}  // namespace nb::cpu
