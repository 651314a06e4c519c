// AVX2 + FMA + F16C matmul kernels for CPUs without AVX-512 (e.g. Zen 3, most client Intel parts).
// Same algorithms as matmul_quant.cpp / matmul_float.cpp with 8-lane vectors:
//   quantized weights: vpmaddubsw (unsigned weight bytes x signed activation bytes -> i16 pairs),
//   vpmaddwd with ones (-> i32 lanes of 4 products), then per block (exact in-lane integer sums)
//   the f32 scale work in the canonical order of matmul_internal.h. Q8_0
//   weights are signed, so they use llama.cpp's sign trick (|w| x sign(w) a) instead of an offset:
//   an i16 pair of (w + 128) * a products would overflow.
//   float weights: widened to f32 in registers, f32 FMA.
// The functions carry the avx2/fma/f16c target themselves (GCC/Clang target pragma), so they are
// compiled into every x86-64 build and the tests can check them on AVX-512 machines too.
#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <utility>

#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NB_AVX2_KERNELS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#endif

namespace nb::cpu::avx2 {

#if defined(NB_AVX2_KERNELS)
namespace {

constexpr int kRows = 2;
constexpr int kTokens = 2;

template <DType kT>
struct QFormat;
template <>
struct QFormat<DType::kQ4_1> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_1), kQsOffset = 4;
  static constexpr bool kNibbles = true, kHasMin = true, kHasCorr = false;
  static constexpr int kBias = 0;
};
template <>
struct QFormat<DType::kQ4_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_0), kQsOffset = 2;
  static constexpr bool kNibbles = true, kHasMin = false, kHasCorr = true;
  static constexpr int kBias = 8;
};
template <>
struct QFormat<DType::kQ8_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ8_0), kQsOffset = 2;
  static constexpr bool kNibbles = false, kHasMin = false, kHasCorr = false;
  static constexpr int kBias = 0;  // signed weights: sign trick, no offset
};

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Two consecutive blocks of one row: bytes in the act_quant.h order of the matching half group
// (lo = elements 0..15 of both blocks, hi = elements 16..31), scales spread over 4 lanes each.
struct WeightPair {
  __m256i lo, hi;
  __m256 d, m;
};

// Block b + 1 may lie past the row's last block (odd block counts): it re-reads block `last`,
// whose activations in that slot are zero.
template <DType kT>
inline void load_pair(const uint8_t* row, int64_t b, int64_t last, WeightPair& w) {
  using F = QFormat<kT>;
  const uint8_t* p0 = row + static_cast<size_t>(b) * F::kBlockBytes;
  const uint8_t* p1 = row + static_cast<size_t>(std::min(b + 1, last)) * F::kBlockBytes;
  constexpr size_t o = F::kQsOffset;
  if constexpr (F::kNibbles) {
    const __m256i q = _mm256_set_m128i(load16(p1 + o), load16(p0 + o));
    const __m256i mask = _mm256_set1_epi8(0x0f);
    w.lo = _mm256_and_si256(q, mask);
    w.hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
  } else {
    w.lo = _mm256_set_m128i(load16(p1 + o), load16(p0 + o));
    w.hi = _mm256_set_m128i(load16(p1 + o + 16), load16(p0 + o + 16));
  }
  w.d = _mm256_set_m128(_mm_set1_ps(half_at(p1)), _mm_set1_ps(half_at(p0)));
  if constexpr (F::kHasMin) w.m = _mm256_set_m128(_mm_set1_ps(half_at(p1 + 2)), _mm_set1_ps(half_at(p0 + 2)));
}

// i32 lane j = sum of the 8 products of bytes 4j..4j+3 of lo and hi (as vpdpbusd would give).
template <DType kT>
inline __m256i dot_pair(const WeightPair& w, __m256i alo, __m256i ahi) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (QFormat<kT>::kNibbles) {
    // 4-bit x 8-bit pairs stay below 2 * 15 * 127 per i16, so the two halves add in i16.
    const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(w.lo, alo), _mm256_maddubs_epi16(w.hi, ahi));
    return _mm256_madd_epi16(s, ones);
  } else {
    const __m256i lo = _mm256_maddubs_epi16(_mm256_sign_epi8(w.lo, w.lo), _mm256_sign_epi8(alo, w.lo));
    const __m256i hi = _mm256_maddubs_epi16(_mm256_sign_epi8(w.hi, w.hi), _mm256_sign_epi8(ahi, w.hi));
    return _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, ones));
  }
}

// Exact in-lane reduction: lane 4h + j of the result = the sum of the 4 int32 lanes of 128-bit
// lane h (= block h of the pair) of d_j.
inline __m256i block_sums4(__m256i d0, __m256i d1, __m256i d2, __m256i d3) {
  const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi64(d0, d1), _mm256_unpackhi_epi64(d0, d1));
  const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi64(d2, d3), _mm256_unpackhi_epi64(d2, d3));
  const __m256 a = _mm256_castsi256_ps(s01), b = _mm256_castsi256_ps(s23);
  return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                          _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))));
}

// y[t * ldy + r] = W row r . activation row t, for r < R, t < T. The canonical order of
// matmul_internal.h: the 4 (row, token) pairs j = r + 2t share one accumulator per block-pair
// parity, lane 4h + j; acc[0] holds a[0], a[1] (blocks 4g, 4g+1), acc[1] holds a[2], a[3].
template <DType kT, int R, int T>
void q_tile(const uint8_t* w0, size_t w_stride, const uint8_t* a0, const ActQ8Layout& l, float* y, int64_t ldy) {
  using F = QFormat<kT>;
  static_assert(R <= 2 && T <= 2);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  const int64_t num_pairs = (l.num_blocks + 1) / 2;
  for (int64_t pi = 0; pi < num_pairs; ++pi) {
    // Pair pi = blocks 2pi, 2pi+1 = half (pi % 2) of group pi / 2.
    const size_t qs_off = static_cast<size_t>(pi / 2) * 128 + static_cast<size_t>(pi % 2) * 32;
    const size_t lane_off = static_cast<size_t>(pi / 2) * 16 + static_cast<size_t>(pi % 2) * 8;
    WeightPair w[R];
    for (int r = 0; r < R; ++r) load_pair<kT>(w0 + static_cast<size_t>(r) * w_stride, 2 * pi, l.num_blocks - 1, w[r]);
    __m256i dot[4];
    __m256 ascale[T], asum[T];
    for (int t = 0; t < T; ++t) {
      const uint8_t* a = a0 + static_cast<size_t>(t) * l.row_bytes;
      const __m256i alo = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + qs_off));
      const __m256i ahi = _mm256_load_si256(reinterpret_cast<const __m256i*>(a + qs_off + 64));
      ascale[t] = _mm256_load_ps(reinterpret_cast<const float*>(a + l.scale_offset) + lane_off);
      if constexpr (F::kHasMin) asum[t] = _mm256_load_ps(reinterpret_cast<const float*>(a + l.sum_offset) + lane_off);
      for (int r = 0; r < R; ++r) {
        __m256i d = dot_pair<kT>(w[r], alo, ahi);
        if constexpr (F::kHasCorr) {
          d = _mm256_add_epi32(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(
                                      reinterpret_cast<const int32_t*>(a + l.corr_offset) + lane_off)));
        }
        dot[r + 2 * t] = d;
      }
    }
    // Pairs missing from a smaller tile repeat a present one; their lanes are never stored.
    if constexpr (R == 1) dot[1] = dot[0];
    if constexpr (T == 1) dot[2] = dot[0], dot[3] = dot[1];
    if constexpr (R == 1 && T == 2) dot[3] = dot[2];
    const __m256 isum = _mm256_cvtepi32_ps(block_sums4(dot[0], dot[1], dot[2], dot[3]));
    // Lane 4h + j: weight values of row j % 2 (0xAA lanes), activation values of token j / 2 (0xCC).
    const __m256 wd = R == 2 ? _mm256_blend_ps(w[0].d, w[R - 1].d, 0xAA) : w[0].d;
    const __m256 as = T == 2 ? _mm256_blend_ps(ascale[0], ascale[T - 1], 0xCC) : ascale[0];
    __m256& a = acc[pi % 2];
    // An odd block count pads the last pair with a block that must add nothing: keep its lanes.
    const bool padded = 2 * pi + 1 >= l.num_blocks;
    __m256 next = _mm256_fmadd_ps(isum, _mm256_mul_ps(wd, as), a);
    if constexpr (F::kHasMin) {
      const __m256 wm = R == 2 ? _mm256_blend_ps(w[0].m, w[R - 1].m, 0xAA) : w[0].m;
      const __m256 su = T == 2 ? _mm256_blend_ps(asum[0], asum[T - 1], 0xCC) : asum[0];
      next = _mm256_fmadd_ps(wm, su, next);
    }
    a = padded ? _mm256_blend_ps(next, a, 0xF0) : next;
  }
  // y = (a[0] + a[2]) + (a[1] + a[3]).
  const __m256 h = _mm256_add_ps(acc[0], acc[1]);
  const __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  alignas(16) float out[4];
  _mm_store_ps(out, v);
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) y[t * ldy + r] = out[r + 2 * t];
}

template <typename Tile>
using TileTable = std::array<std::array<Tile, kTokens>, kRows>;

template <DType kT>
using QTileFn = void (*)(const uint8_t*, size_t, const uint8_t*, const ActQ8Layout&, float*, int64_t);
template <DType kT>
constexpr TileTable<QTileFn<kT>> kQTiles = {{{&q_tile<kT, 1, 1>, &q_tile<kT, 1, 2>}, {&q_tile<kT, 2, 1>, &q_tile<kT, 2, 2>}}};

template <DType kT>
void matmul_q(const MatmulParams& p, ThreadPool& pool) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const ActQ8Layout l = act_q8_layout(k);
  const AlignedBytes act = quantize_activations(p, l, QFormat<kT>::kBias, pool, &portable::quantize_act_row);
  const auto* w = static_cast<const uint8_t*>(p.weight.data());
  const size_t w_stride = p.weight.row_nbytes();
  const int64_t ahead = kRows * simd::prefetch_tiles_ahead(kRows * w_stride);
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    for (int64_t r = n0; r < n1; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - r));
      simd::prefetch_range(w + static_cast<size_t>(std::min(n1, r + ahead)) * w_stride,
                           w + static_cast<size_t>(std::min(n1, r + ahead + kRows)) * w_stride);
      for (int64_t t = 0; t < p.m; t += kTokens) {
        const int toks = static_cast<int>(std::min<int64_t>(kTokens, p.m - t));
        kQTiles<kT>[static_cast<size_t>(rows - 1)][static_cast<size_t>(toks - 1)](
            w + static_cast<size_t>(r) * w_stride, w_stride, act.get() + static_cast<size_t>(t) * l.row_bytes, l,
            p.y + t * n + r, n);
      }
    }
  }, kRows);
}

struct LoadF32 {
  using Elem = float;
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
};
struct LoadF16 {
  using Elem = uint16_t;
  static __m256 load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
};
struct LoadBF16 {
  using Elem = uint16_t;
  static __m256 load(const uint16_t* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
};

template <typename L, int R, int T>
void f_tile(const typename L::Elem* w, int64_t k, const float* x, float* y, int64_t ldy) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = L::load(w + r * k + i);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * k + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t j = i; j < k; ++j) {
        float wj;
        if constexpr (std::is_same_v<L, LoadF32>) {
          wj = w[r * k + j];
        } else if constexpr (std::is_same_v<L, LoadF16>) {
          wj = _cvtsh_ss(w[r * k + j]);
        } else {
          wj = bf16_to_fp32(w[r * k + j]);
        }
        s += wj * x[t * k + j];
      }
      y[t * ldy + r] = s;
    }
}

template <typename L>
using FTileFn = void (*)(const typename L::Elem*, int64_t, const float*, float*, int64_t);
template <typename L>
constexpr TileTable<FTileFn<L>> kFTiles = {{{&f_tile<L, 1, 1>, &f_tile<L, 1, 2>}, {&f_tile<L, 2, 1>, &f_tile<L, 2, 2>}}};

template <typename L>
void matmul_f(const MatmulParams& p, ThreadPool& pool) {
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
        kFTiles<L>[static_cast<size_t>(rows - 1)][static_cast<size_t>(toks - 1)](w + r * k, k, p.x + t * k,
                                                                                 p.y + t * n + r, n);
      }
    }
  }, kRows);
}

}  // namespace

bool available() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

void matmul_quantized(const MatmulParams& p, ThreadPool& pool) {
  switch (p.weight.dtype()) {
    case DType::kQ4_1: return matmul_q<DType::kQ4_1>(p, pool);
    case DType::kQ4_0: return matmul_q<DType::kQ4_0>(p, pool);
    case DType::kQ8_0: return matmul_q<DType::kQ8_0>(p, pool);
    default: return portable::matmul_quantized(p, pool);
  }
}

void matmul_float(const MatmulParams& p, ThreadPool& pool) {
  switch (p.weight.dtype()) {
    case DType::kF32: return matmul_f<LoadF32>(p, pool);
    case DType::kF16: return matmul_f<LoadF16>(p, pool);
    case DType::kBF16: return matmul_f<LoadBF16>(p, pool);
    default: return portable::matmul_float(p, pool);
  }
}

#else  // not x86-64: the portable kernels stand in

bool available() { return false; }
void matmul_quantized(const MatmulParams& p, ThreadPool& pool) { portable::matmul_quantized(p, pool); }
void matmul_float(const MatmulParams& p, ThreadPool& pool) { portable::matmul_float(p, pool); }

#endif

}  // namespace nb::cpu::avx2

#if defined(NB_AVX2_KERNELS)
#pragma GCC pop_options
#endif
