// kQGroup weights (core/group_quant.h): group-wise integer codes, one byte per element.
//
// Weight-only (W4A16, any bits / group size / g_idx): each thread dequantizes a tile of weight rows
// to f32 with exactly dequantize_tensor_row's formula, (float(q) - zero) * scale, then multiplies
// all tokens with f32 FMA (AVX-512: transposed tile, outer products; else matmul_f32_rows). The weights are therefore the
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
#include <cstring>
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

#if defined(__AVX512F__)
#define NB_HAVE_W4A16_OUTER 1
// AVX-512 (every M): the product is a sum of outer products over the input index i: per step, the
// 32 rows' weights of column i (two 16-lane vectors, dequantized from GroupQuant::tiled with the
// formula above) times T broadcast activations into 2T accumulators. Each output is one FMA chain
// over i = 0 .. k-1 in order, whatever M, T or the path, so results are batch-invariant:
//   M <  kTileMinTokens: weights dequantized on the fly inside the chain (decode);
//   M >= kTileMinTokens: the 32-row tile is first dequantized into a buffer wt[i][32] once per call
//                        and reused by every token group (prefill); the same values either way.
constexpr int64_t kOuterRows = GroupQuant::kTileRows;
constexpr int kOuterTokens = 6;
constexpr int64_t kTileMinTokens = 8;

// Per-call group parameters of one 32-row tile, transposed: s[g][32], z[g][32].
struct TileParams {
  std::vector<float> s, z;
  void load(const GroupQuant& q, int64_t r0, int64_t rows) {
    s.assign(static_cast<size_t>(q.num_groups * kOuterRows), 0.f);
    z.assign(s.size(), 0.f);
    for (int64_t g = 0; g < q.num_groups; ++g)
      for (int64_t r = 0; r < rows; ++r) {
        s[static_cast<size_t>(g * kOuterRows + r)] = q.scale(r0 + r, g);
        z[static_cast<size_t>(g * kOuterRows + r)] = q.zero(r0 + r, g);
      }
  }
};

// The 32 dequantized weights of column i: (float(q) - z) * s, lanes = rows.
inline void dequant_column(const uint8_t* codes, const float* s, const float* z, __m512* w0, __m512* w1) {
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
  const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(c)));
  const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(c, 1)));
  *w0 = _mm512_mul_ps(_mm512_sub_ps(q0, _mm512_loadu_ps(z)), _mm512_loadu_ps(s));
  *w1 = _mm512_mul_ps(_mm512_sub_ps(q1, _mm512_loadu_ps(z + 16)), _mm512_loadu_ps(s + 16));
}

template <int T>
inline void store_tile(const __m512* a0, const __m512* a1, float* y, int64_t ldy, __mmask16 m0, __mmask16 m1) {
  for (int t = 0; t < T; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, m0, a0[t]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, m1, a1[t]);
  }
}

// Prefill: weights from the dequantized buffer wt[i][32].
template <int T>
void outer_tile(const float* wt, int64_t k, const float* x, float* y, int64_t ldy, __mmask16 m0, __mmask16 m1) {
  __m512 a0[T], a1[T];
  for (int t = 0; t < T; ++t) a0[t] = a1[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const __m512 w0 = _mm512_load_ps(wt + i * kOuterRows), w1 = _mm512_load_ps(wt + i * kOuterRows + 16);
    for (int t = 0; t < T; ++t) {
      const __m512 xb = _mm512_set1_ps(x[t * k + i]);
      a0[t] = _mm512_fmadd_ps(w0, xb, a0[t]);
      a1[t] = _mm512_fmadd_ps(w1, xb, a1[t]);
    }
  }
  store_tile<T>(a0, a1, y, ldy, m0, m1);
}

// Decode: weights dequantized inside the chain.
template <int T>
void outer_tile_fly(const GroupQuant& q, const uint8_t* codes, const TileParams& tp, int64_t k, const float* x, float* y,
                    int64_t ldy, __mmask16 m0, __mmask16 m1) {
  __m512 a0[T], a1[T];
  for (int t = 0; t < T; ++t) a0[t] = a1[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t g = q.group_of(i);
    __m512 w0, w1;
    dequant_column(codes + i * kOuterRows, tp.s.data() + g * kOuterRows, tp.z.data() + g * kOuterRows, &w0, &w1);
    for (int t = 0; t < T; ++t) {
      const __m512 xb = _mm512_set1_ps(x[t * k + i]);
      a0[t] = _mm512_fmadd_ps(w0, xb, a0[t]);
      a1[t] = _mm512_fmadd_ps(w1, xb, a1[t]);
    }
  }
  store_tile<T>(a0, a1, y, ldy, m0, m1);
}

void matmul_weight_only_outer(const MatmulParams& p, ThreadPool& pool) {
  using TileFn = void (*)(const float*, int64_t, const float*, float*, int64_t, __mmask16, __mmask16);
  using FlyFn = void (*)(const GroupQuant&, const uint8_t*, const TileParams&, int64_t, const float*, float*, int64_t,
                         __mmask16, __mmask16);
  static constexpr TileFn kTiles[kOuterTokens] = {&outer_tile<1>, &outer_tile<2>, &outer_tile<3>,
                                                  &outer_tile<4>, &outer_tile<5>, &outer_tile<6>};
  static constexpr FlyFn kFly[kOuterTokens] = {&outer_tile_fly<1>, &outer_tile_fly<2>, &outer_tile_fly<3>,
                                               &outer_tile_fly<4>, &outer_tile_fly<5>, &outer_tile_fly<6>};
  const GroupQuant& q = *p.weight.group_quant();
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const bool buffered = p.m >= kTileMinTokens;
  const int64_t tiles = (n + kOuterRows - 1) / kOuterRows;
  pool.parallel_for(tiles, [&](int64_t b0, int64_t b1) {
    AlignedBytes wt_bytes = alloc_aligned(buffered ? static_cast<size_t>(kOuterRows * k) * sizeof(float) : 64);
    auto* wt = reinterpret_cast<float*>(wt_bytes.get());
    TileParams tp;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kOuterRows, rows = std::min(kOuterRows, n - r0);
      const uint8_t* codes = q.tiled.data() + b * k * kOuterRows;
      tp.load(q, r0, rows);
      const __mmask16 m0 = simd::first_lanes(rows), m1 = simd::first_lanes(rows - 16);
      if (buffered) {
        for (int64_t i = 0; i < k; ++i) {
          const int64_t g = q.group_of(i);
          __m512 w0, w1;
          dequant_column(codes + i * kOuterRows, tp.s.data() + g * kOuterRows, tp.z.data() + g * kOuterRows, &w0, &w1);
          _mm512_store_ps(wt + i * kOuterRows, w0);
          _mm512_store_ps(wt + i * kOuterRows + 16, w1);
        }
      }
      for (int64_t t = 0; t < p.m; t += kOuterTokens) {
        const int toks = static_cast<int>(std::min<int64_t>(kOuterTokens, p.m - t));
        if (buffered) {
          kTiles[toks - 1](wt, k, p.x + t * k, p.y + t * n + r0, n, m0, m1);
        } else {
          kFly[toks - 1](q, codes, tp, k, p.x + t * k, p.y + t * n + r0, n, m0, m1);
        }
      }
    }
  });
}
#endif

void matmul_weight_only(const MatmulParams& p, ThreadPool& pool) {
#if defined(NB_HAVE_W4A16_OUTER)
  return matmul_weight_only_outer(p, pool);
#endif
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

ActInt8 quantize_acts(const MatmulParams& p, const GroupQuant& q, ThreadPool& pool) {
  const int64_t k = p.weight.dim(1);
  ActInt8 a;
  a.xq.resize(static_cast<size_t>(p.m * k));
  a.d.resize(static_cast<size_t>(p.m));
  a.gsum.assign(static_cast<size_t>(p.m * q.num_groups), 0);
  pool.parallel_for(p.m, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int8_t* xq = a.xq.data() + t * k;
      a.d[static_cast<size_t>(t)] = quantize_act_int8_row(p.x + t * k, k, xq);
      int32_t* gs = a.gsum.data() + t * q.num_groups;
      if (q.num_groups == 1) {
        int32_t sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += xq[j];
        gs[0] = sum;
      } else {
        for (int64_t j = 0; j < k; ++j) gs[q.group_of(j)] += xq[j];
      }
    }
  });
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
// Per-channel weights, k a multiple of 4. A tile of 32 weight rows is interleaved (once, at load:
// GroupQuant::tiled) as wt[k/4][32 rows][4 codes]; one vpdpbusd then multiplies 16 rows' 4 codes (unsigned) by the same 4
// activation bytes of one token (broadcast, signed) into 16 int32 row sums: outer products again,
// exact integer sums, no horizontal reductions. The epilogue is w8a8_output's arithmetic, vectorized
// over rows (cvt, one multiply by the row scale, one by d_t), so it is bit-identical to it.
constexpr int64_t kW8Rows = 32;
constexpr int kW8Tokens = 6;

template <int T>
void w8a8_outer_tile(const uint8_t* wt, int64_t k4, const int8_t* xq, int64_t k, int32_t* acc_out /* [T][32] */) {
  __m512i a0[T], a1[T];
  for (int t = 0; t < T; ++t) a0[t] = a1[t] = _mm512_setzero_si512();
  for (int64_t i = 0; i < k4; ++i) {
    const __m512i w0 = _mm512_loadu_si512(wt + i * kW8Rows * 4), w1 = _mm512_loadu_si512(wt + i * kW8Rows * 4 + 64);
    for (int t = 0; t < T; ++t) {
      int32_t x4;
      std::memcpy(&x4, xq + t * k + 4 * i, 4);
      const __m512i xb = _mm512_set1_epi32(x4);
      a0[t] = _mm512_dpbusd_epi32(a0[t], w0, xb);
      a1[t] = _mm512_dpbusd_epi32(a1[t], w1, xb);
    }
  }
  for (int t = 0; t < T; ++t) {
    _mm512_storeu_si512(acc_out + t * kW8Rows, a0[t]);
    _mm512_storeu_si512(acc_out + t * kW8Rows + 16, a1[t]);
  }
}

void matmul_w8a8_vnni(const MatmulParams& p, const GroupQuant& q, ThreadPool& pool) {
  static constexpr void (*kTiles[kW8Tokens])(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*) = {
      &w8a8_outer_tile<1>, &w8a8_outer_tile<2>, &w8a8_outer_tile<3>, &w8a8_outer_tile<4>, &w8a8_outer_tile<5>,
      &w8a8_outer_tile<6>};
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1), k4 = k / 4;
  const ActInt8 a = quantize_acts(p, q, pool);
  const int64_t tiles = (n + kW8Rows - 1) / kW8Rows;
  pool.parallel_for(tiles, [&](int64_t b0, int64_t b1) {
    alignas(64) int32_t acc[kW8Tokens * kW8Rows];
    alignas(64) float scale[kW8Rows];
    alignas(64) int32_t zero[kW8Rows];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kW8Rows, rows = std::min(kW8Rows, n - r0);
      const uint8_t* wt = q.tiled.data() + b * k * kW8Rows;  // [k/4][32][4], made at load
      for (int64_t r = 0; r < kW8Rows; ++r) {
        scale[r] = r < rows ? q.scale(r0 + r, 0) : 0.f;
        zero[r] = r < rows ? static_cast<int32_t>(q.zero(r0 + r, 0)) : 0;
      }
      const __m512 s0 = _mm512_load_ps(scale), s1 = _mm512_load_ps(scale + 16);
      const __m512i z0 = _mm512_load_si512(zero), z1 = _mm512_load_si512(zero + 16);
      const __mmask16 m0 = simd::first_lanes(rows), m1 = simd::first_lanes(rows - 16);
      for (int64_t t = 0; t < p.m; t += kW8Tokens) {
        const int toks = static_cast<int>(std::min<int64_t>(kW8Tokens, p.m - t));
        kTiles[toks - 1](wt, k4, a.xq.data() + t * k, k, acc);
        for (int tt = 0; tt < toks; ++tt) {
          const size_t tok = static_cast<size_t>(t + tt);
          const __m512i gs = _mm512_set1_epi32(a.gsum[tok]);
          const __m512 d = _mm512_set1_ps(a.d[tok]);
          const __m512i iv0 = _mm512_sub_epi32(_mm512_load_si512(acc + tt * kW8Rows), _mm512_mullo_epi32(z0, gs));
          const __m512i iv1 = _mm512_sub_epi32(_mm512_load_si512(acc + tt * kW8Rows + 16), _mm512_mullo_epi32(z1, gs));
          float* y = p.y + static_cast<int64_t>(tok) * n + r0;
          _mm512_mask_storeu_ps(y, m0, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(iv0), s0), d));
          _mm512_mask_storeu_ps(y + 16, m1, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(iv1), s1), d));
        }
      }
    }
  });
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
  const ActInt8 a = quantize_acts(p, q, pool);
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
  if (q.num_groups == 1 && p.weight.dim(1) % 4 == 0) return matmul_w8a8_vnni(p, q, pool);
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
