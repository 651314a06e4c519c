// y[m, n] = x[m, :] . W[n, :] for F32 / F16 / BF16 weights: each 16-element slice of a weight row is
// widened to f32 in registers (F16C vcvtph2ps, BF16 by a 16-bit shift) and multiplied with f32 FMA.
// Activations stay f32: no precision is lost beyond f32 summation order.
// Work split as in matmul_quant.cpp: output rows across threads, kRows x kTokens register tiles.
#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"

namespace nb::cpu {

namespace {

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define NB_HAVE_AVX512_FLOAT_MATMUL 1

constexpr int kRows = 4;
constexpr int kTokens = 4;

struct LoadF32 {
  using Elem = float;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load_masked(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct LoadF16 {
  using Elem = uint16_t;
  static __m512 load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load_masked(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
};
struct LoadBF16 {
  using Elem = uint16_t;
  static __m512 widen(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }
  static __m512 load(const uint16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load_masked(const uint16_t* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

// y[t * ldy + r] = W row r . x row t, for r < R, t < T.
template <typename L, int R, int T>
void tile_kernel(const typename L::Elem* w, int64_t k, const float* x, float* y, int64_t ldy) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = L::load(w + r * k + i);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_loadu_ps(x + t * k + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (i < k) {
    const __mmask16 m = simd::first_lanes(k - i);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = L::load_masked(w + r * k + i, m);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * k + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <typename L>
using TileFn = void (*)(const typename L::Elem*, int64_t, const float*, float*, int64_t);

template <typename L, int R, int... Ts>
constexpr auto tile_row(std::integer_sequence<int, Ts...>) {
  return std::array<TileFn<L>, sizeof...(Ts)>{&tile_kernel<L, R, Ts + 1>...};
}
template <typename L, int... Rs>
constexpr auto tile_table(std::integer_sequence<int, Rs...>) {
  return std::array<std::array<TileFn<L>, kTokens>, sizeof...(Rs)>{
      tile_row<L, Rs + 1>(std::make_integer_sequence<int, kTokens>{})...};
}

template <typename L>
void matmul_avx512(const MatmulParams& p, ThreadPool& pool) {
  static constexpr auto kTable = tile_table<L>(std::make_integer_sequence<int, kRows>{});
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const auto* w = static_cast<const typename L::Elem*>(p.weight.data());
  const size_t row_bytes = static_cast<size_t>(k) * sizeof(typename L::Elem);
  const int64_t ahead = kRows * simd::prefetch_tiles_ahead(kRows * row_bytes);
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    for (int64_t r = n0; r < n1; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - r));
      simd::prefetch_range(w + std::min(n1, r + ahead) * k, w + std::min(n1, r + ahead + kRows) * k);
      for (int64_t t = 0; t < p.m; t += kTokens) {
        const int toks = static_cast<int>(std::min<int64_t>(kTokens, p.m - t));
        kTable[static_cast<size_t>(rows - 1)][static_cast<size_t>(toks - 1)](w + r * k, k, p.x + t * k,
                                                                              p.y + t * n + r, n);
      }
    }
  }, kRows);
}
#endif  // AVX-512

}  // namespace

void matmul_f32_rows(const float* w, int64_t rows, int64_t k, const float* x, int64_t m, float* y, int64_t ldy) {
#if defined(NB_HAVE_AVX512_FLOAT_MATMUL)
  static constexpr auto kTable = tile_table<LoadF32>(std::make_integer_sequence<int, kRows>{});
  for (int64_t t = 0; t < m; t += kTokens) {
    const int toks = static_cast<int>(std::min<int64_t>(kTokens, m - t));
    for (int64_t r = 0; r < rows; r += kRows) {
      const int nr = static_cast<int>(std::min<int64_t>(kRows, rows - r));
      kTable[static_cast<size_t>(nr - 1)][static_cast<size_t>(toks - 1)](w + r * k, k, x + t * k, y + t * ldy + r, ldy);
    }
  }
#else
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0.f;
      for (int64_t i = 0; i < k; ++i) acc += w[r * k + i] * x[t * k + i];
      y[t * ldy + r] = acc;
    }
  }
#endif
}

namespace portable {
void matmul_float(const MatmulParams& p, ThreadPool& pool) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t r = n0; r < n1; ++r) {
      dequantize_row(p.weight.dtype(), p.weight.row<const void>(r), row.data(), k);
      for (int64_t t = 0; t < p.m; ++t) {
        const float* x = p.x + t * k;
        float acc = 0.f;
        for (int64_t i = 0; i < k; ++i) acc += row[static_cast<size_t>(i)] * x[i];
        p.y[t * n + r] = acc;
      }
    }
  });
}
}  // namespace portable

void matmul_float(const MatmulParams& p, ThreadPool& pool) {
#if defined(NB_HAVE_AVX512_FLOAT_MATMUL)
  switch (p.weight.dtype()) {
    case DType::kF32: return matmul_avx512<LoadF32>(p, pool);
    case DType::kF16: return matmul_avx512<LoadF16>(p, pool);
    case DType::kBF16: return matmul_avx512<LoadBF16>(p, pool);
    default: break;
  }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  return avx2::matmul_float(p, pool);
#endif
  portable::matmul_float(p, pool);
}

}  // namespace nb::cpu
