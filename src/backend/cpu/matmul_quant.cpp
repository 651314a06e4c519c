// y[m, n] = x[m, :] . W[n, :] for GGUF block weights Q8_0 / Q4_0 / Q4_1, the way llama.cpp does it:
// x is quantized once per call to 8-bit blocks of 32 (act_quant.h), every 32-element block product
// is an exact int32 dot product (AVX-512 VNNI vpdpbusd: unsigned weight bytes x signed activation
// bytes), and one f32 multiply-add per block applies the two block scales, in the canonical
// (batch-invariant) order of matmul_internal.h that every kernel follows.
//   Q4_1: w = d q + m, q in 0..15  ->  d da (q . qa) + m (da sum qa)
//   Q4_0: w = d (q - 8)            ->  d da (q . qa - 8 sum qa)      (the 8 sum qa is `corr`)
//   Q8_0: w = d q, q signed        ->  d da ((q + 128) . qa - 128 sum qa)   (sign bit flipped)
// This file: the decode / small-M kernel, straight from the GGUF layout. Output rows are split
// across threads (contiguous chunks); inside a chunk, tiles of kRows weight rows x kTokens
// activation rows, so each weight group is unpacked once per tile and each activation group is
// loaded once per kRows rows; the next tile's weights are prefetched (decode streams from DRAM).
// A tile's accumulator per activation row has lane 4i + r = partial sum a[i] of weight row r.
// M >= avx512::kStripMinTokens goes to the strip kernel (matmul_quant_strip.cpp); non-AVX-512
// builds go to matmul_avx2.cpp or the portable loop below.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "backend/cpu/act_quant.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"

namespace nb::cpu {

namespace {

int act_bias(DType t) {
  switch (t) {
    case DType::kQ4_0: return 8;
    case DType::kQ8_0: return 128;
    default: return 0;
  }
}

// Plain C++ block dot product of weight row w (nb blocks) with quantized activation row a, in the
// canonical order of matmul_internal.h (explicit std::fma: the build allows FP contraction).
float dot_row_portable(DType t, const uint8_t* w, const uint8_t* a, const ActQ8Layout& l) {
  const auto* qs = reinterpret_cast<const int8_t*>(a);
  const auto* scale = reinterpret_cast<const float*>(a + l.scale_offset);
  const auto* sum = reinterpret_cast<const float*>(a + l.sum_offset);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int q[32];
  for (int64_t b = 0; b < l.num_blocks; ++b) {
    float dw = 0.f, mw = 0.f;
    if (t == DType::kQ8_0) {
      const auto* blk = reinterpret_cast<const BlockQ8_0*>(w) + b;
      dw = fp16_to_fp32(blk->d);
      for (int e = 0; e < 32; ++e) q[e] = blk->qs[e];
    } else if (t == DType::kQ4_0) {
      const auto* blk = reinterpret_cast<const BlockQ4_0*>(w) + b;
      dw = fp16_to_fp32(blk->d);
      for (int e = 0; e < 16; ++e) {
        q[e] = (blk->qs[e] & 0xf) - 8;
        q[e + 16] = (blk->qs[e] >> 4) - 8;
      }
    } else {
      const auto* blk = reinterpret_cast<const BlockQ4_1*>(w) + b;
      dw = fp16_to_fp32(blk->d);
      mw = fp16_to_fp32(blk->m);
      for (int e = 0; e < 16; ++e) {
        q[e] = blk->qs[e] & 0xf;
        q[e + 16] = blk->qs[e] >> 4;
      }
    }
    const int64_t g = b / 4;
    const int i = static_cast<int>(b % 4);
    const int8_t* gq = qs + g * 128 + i * 16;
    int32_t dot = 0;
    for (int e = 0; e < 16; ++e) dot += q[e] * gq[e] + q[e + 16] * gq[64 + e];
    const float s = dw * scale[g * 16 + i * 4];
    acc[i] = std::fma(static_cast<float>(dot), s, acc[i]);
    if (t == DType::kQ4_1) acc[i] = std::fma(mw, sum[g * 16 + i * 4], acc[i]);
  }
  return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define NB_HAVE_VNNI_MATMUL 1

constexpr int kRows = 4;    // weight rows per tile
constexpr int kTokens = 4;  // activation rows per tile

template <DType kT>
struct QFormat;
template <>
struct QFormat<DType::kQ4_1> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_1), kQsOffset = 4;
  static constexpr bool kNibbles = true, kHasMin = true, kHasCorr = false;
};
template <>
struct QFormat<DType::kQ4_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_0), kQsOffset = 2;
  static constexpr bool kNibbles = true, kHasMin = false, kHasCorr = true;
};
template <>
struct QFormat<DType::kQ8_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ8_0), kQsOffset = 2;
  static constexpr bool kNibbles = false, kHasMin = false, kHasCorr = true;
};

// One group of 4 weight blocks of one row, ready for vpdpbusd.
struct WeightGroup {
  __m512i lo, hi;  // unsigned bytes in the act_quant.h group order
  __m512 d;        // block scale of block i in lanes 4i..4i+3
  __m512 m;        // Q4_1: block min of block i in lanes 4i..4i+3
};

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m512i load64(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Byte / 16-bit-word index vectors for vpermt2b / vpermw, built once per call site.
template <typename Fn>
inline __m512i byte_index(Fn fn) {
  alignas(64) uint8_t idx[64];
  for (int j = 0; j < 64; ++j) idx[j] = static_cast<uint8_t>(fn(j));
  return _mm512_load_si512(idx);
}
template <typename Fn>
inline __m512i word_index(Fn fn) {
  alignas(64) uint16_t idx[32];
  for (int j = 0; j < 32; ++j) idx[j] = static_cast<uint16_t>(fn(j));
  return _mm512_load_si512(idx);
}
inline __m512 half_words_to_ps(__m512i words) { return _mm512_cvtph_ps(_mm512_castsi512_si256(words)); }

// Index vectors for a full Q4 group of 4 blocks read as whole 64-byte vectors; see load_full_group.
struct GroupIndex {
  __m512i qs_lo, d, m;
};

template <DType kT>
GroupIndex make_group_index() {
  GroupIndex ix{};
  if constexpr (kT == DType::kQ4_1) {
    // Vectors A = bytes [0, 64) and B = bytes [16, 80) of the group; block i is bytes [20i, 20i+20).
    ix.qs_lo = byte_index([](int j) { const int src = 20 * (j / 16) + 4 + j % 16; return src < 64 ? src : 64 + src - 16; });
    ix.d = word_index([](int j) { return 10 * ((j / 4) % 4); });
    ix.m = word_index([](int j) { return 10 * ((j / 4) % 4) + 1; });
  } else if constexpr (kT == DType::kQ4_0) {
    // A = bytes [0, 64), B = bytes [8, 72); block i is bytes [18i, 18i+18).
    ix.qs_lo = byte_index([](int j) { const int src = 18 * (j / 16) + 2 + j % 16; return src < 64 ? src : 64 + src - 8; });
    ix.d = word_index([](int j) { return 9 * ((j / 4) % 4); });
  }
  return ix;
}

// A full group (4 blocks inside the row). Q4: two 64-byte loads, then a byte permute gathers the 64
// quant bytes and word permutes spread the f16 scales over their 4 lanes each. Q8_0: one 32-byte
// load per block and 64-bit-lane permutes (fewer cache-line-crossing loads than 64-byte ones).
template <DType kT>
inline void load_full_group(const uint8_t* p, const GroupIndex& ix, WeightGroup& w) {
  if constexpr (kT == DType::kQ8_0) {
    const __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(load32(p + 2)), load32(p + 36), 1);
    const __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(load32(p + 70)), load32(p + 104), 1);
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    w.lo = _mm512_xor_si512(_mm512_permutex2var_epi64(z01, _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13), z23), flip);
    w.hi = _mm512_xor_si512(_mm512_permutex2var_epi64(z01, _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15), z23), flip);
    const __m128i h = _mm_setr_epi16(static_cast<int16_t>(load_u16(p)), static_cast<int16_t>(load_u16(p + 34)),
                                     static_cast<int16_t>(load_u16(p + 68)), static_cast<int16_t>(load_u16(p + 102)), 0, 0,
                                     0, 0);
    w.d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                _mm512_castps128_ps512(_mm_cvtph_ps(h)));
  } else {
    constexpr int kSecond = kT == DType::kQ4_1 ? 16 : 8;
    const __m512i a = load64(p);
    const __m512i q = _mm512_permutex2var_epi8(a, ix.qs_lo, load64(p + kSecond));
    const __m512i mask = _mm512_set1_epi8(0x0f);
    w.lo = _mm512_and_si512(q, mask);
    w.hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), mask);
    w.d = half_words_to_ps(_mm512_permutexvar_epi16(ix.d, a));
    if constexpr (kT == DType::kQ4_1) w.m = half_words_to_ps(_mm512_permutexvar_epi16(ix.m, a));
  }
}

inline __m512i gather_quarters(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, const uint8_t* p3) {
  __m512i v = _mm512_castsi128_si512(load16(p0));
  v = _mm512_inserti32x4(v, load16(p1), 1);
  v = _mm512_inserti32x4(v, load16(p2), 2);
  return _mm512_inserti32x4(v, load16(p3), 3);
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The last, partial group: block by block, never reading past the row. Blocks past `last` re-read
// block `last`; group_product masks their lanes out (the canonical order has no padding blocks).
template <DType kT>
inline void load_tail_group(const uint8_t* row, int64_t b0, int64_t last, WeightGroup& w) {
  using F = QFormat<kT>;
  const uint8_t* p0 = row + static_cast<size_t>(std::min(b0, last)) * F::kBlockBytes;
  const uint8_t* p1 = row + static_cast<size_t>(std::min(b0 + 1, last)) * F::kBlockBytes;
  const uint8_t* p2 = row + static_cast<size_t>(std::min(b0 + 2, last)) * F::kBlockBytes;
  const uint8_t* p3 = row + static_cast<size_t>(std::min(b0 + 3, last)) * F::kBlockBytes;
  constexpr size_t o = F::kQsOffset;
  if constexpr (F::kNibbles) {
    const __m512i q = gather_quarters(p0 + o, p1 + o, p2 + o, p3 + o);
    const __m512i mask = _mm512_set1_epi8(0x0f);
    w.lo = _mm512_and_si512(q, mask);
    w.hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), mask);
  } else {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    w.lo = _mm512_xor_si512(gather_quarters(p0 + o, p1 + o, p2 + o, p3 + o), flip);
    w.hi = _mm512_xor_si512(gather_quarters(p0 + o + 16, p1 + o + 16, p2 + o + 16, p3 + o + 16), flip);
  }
  // Headers: the first 4 bytes of each block are (d, m) for Q4_1, (d, first qs) otherwise.
  const __m128i h = _mm_setr_epi32(static_cast<int>(load_u32(p0)), static_cast<int>(load_u32(p1)),
                                   static_cast<int>(load_u32(p2)), static_cast<int>(load_u32(p3)));
  const __m512 dm = _mm512_castps256_ps512(_mm256_cvtph_ps(h));  // d0 m0 d1 m1 d2 m2 d3 m3
  w.d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6), dm);
  if constexpr (F::kHasMin) {
    w.m = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7), dm);
  }
}

// Exact in-lane reduction: lane 4i + j of the result = the sum of the 4 int32 lanes of 128-bit
// lane i (= block i of the group) of d_j. Integer adds, so the order does not matter.
inline __m512i block_sums4(__m512i d0, __m512i d1, __m512i d2, __m512i d3) {
  const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi64(d0, d1), _mm512_unpackhi_epi64(d0, d1));
  const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi64(d2, d3), _mm512_unpackhi_epi64(d2, d3));
  const __m512 a = _mm512_castsi512_ps(s01), b = _mm512_castsi512_ps(s23);
  return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                          _mm512_castps_si512(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))));
}

// Lane 4i + r = lane 4i of v[min(r, R-1)]: per-row block values (replicated over their block's 4
// lanes) moved into the (block, row) accumulator layout.
template <int R>
inline __m512 rows_to_lanes(const __m512 (&v)[R]) {
  __m512 out = v[0];
  if constexpr (R > 1) out = _mm512_mask_blend_ps(0x2222, out, v[1]);
  out = _mm512_mask_blend_ps(0x4444, out, v[R > 2 ? 2 : R - 1]);
  out = _mm512_mask_blend_ps(0x8888, out, v[R > 3 ? 3 : R - 1]);
  return out;
}

// acc[t] lane 4i + r = partial sum a[i] (matmul_internal.h) of weight row r and activation row t;
// adds group g's blocks whose lanes are in `valid` (all but the padding of a partial last group).
template <DType kT, int R, int T>
inline void group_product(const WeightGroup (&w)[R], const uint8_t* a0, int64_t g, const ActQ8Layout& l,
                          __mmask16 valid, __m512 (&acc)[T]) {
  using F = QFormat<kT>;
  __m512 wd[R], wm[R];
  for (int r = 0; r < R; ++r) {
    wd[r] = w[r].d;
    if constexpr (F::kHasMin) wm[r] = w[r].m;
  }
  const __m512 wd_lanes = rows_to_lanes<R>(wd);
  __m512 wm_lanes = _mm512_setzero_ps();
  if constexpr (F::kHasMin) wm_lanes = rows_to_lanes<R>(wm);
  for (int t = 0; t < T; ++t) {
    const uint8_t* a = a0 + static_cast<size_t>(t) * l.row_bytes;
    const __m512i alo = _mm512_load_si512(a + g * 128);
    const __m512i ahi = _mm512_load_si512(a + g * 128 + 64);
    // Activation scale and sum of block i sit in lanes 4i..4i+3 already: the lane layout we need.
    const __m512 ascale = _mm512_load_ps(reinterpret_cast<const float*>(a + l.scale_offset) + g * 16);
    __m512i init = _mm512_setzero_si512();
    if constexpr (F::kHasCorr) init = _mm512_load_si512(a + l.corr_offset + g * 64);
    __m512i dot[4];
    for (int r = 0; r < R; ++r) dot[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, w[r].lo, alo), w[r].hi, ahi);
    for (int r = R; r < 4; ++r) dot[r] = dot[R - 1];
    const __m512 isum = _mm512_cvtepi32_ps(block_sums4(dot[0], dot[1], dot[2], dot[3]));
    acc[t] = _mm512_mask3_fmadd_ps(isum, _mm512_mul_ps(wd_lanes, ascale), acc[t], valid);
    if constexpr (F::kHasMin) {
      const __m512 asum = _mm512_load_ps(reinterpret_cast<const float*>(a + l.sum_offset) + g * 16);
      acc[t] = _mm512_mask3_fmadd_ps(wm_lanes, asum, acc[t], valid);
    }
  }
}

// y[t * ldy + r] = W row r . activation row t, for r < R, t < T.
template <DType kT, int R, int T>
void tile_kernel(const uint8_t* w0, size_t w_stride, const uint8_t* a0, const ActQ8Layout& l, float* y,
                 int64_t ldy) {
  using F = QFormat<kT>;
  static const GroupIndex kIndex = make_group_index<kT>();
  const GroupIndex ix = kIndex;
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const int64_t full_groups = l.num_blocks / 4;
  for (int64_t g = 0; g < full_groups; ++g) {
    WeightGroup w[R];
    for (int r = 0; r < R; ++r) load_full_group<kT>(w0 + static_cast<size_t>(r) * w_stride + g * 4 * F::kBlockBytes, ix, w[r]);
    group_product<kT, R, T>(w, a0, g, l, static_cast<__mmask16>(0xffff), acc);
  }
  if (full_groups < l.num_groups) {
    WeightGroup w[R];
    for (int r = 0; r < R; ++r) {
      load_tail_group<kT>(w0 + static_cast<size_t>(r) * w_stride, full_groups * 4, l.num_blocks - 1, w[r]);
    }
    group_product<kT, R, T>(w, a0, full_groups, l, simd::first_lanes(4 * (l.num_blocks - 4 * full_groups)), acc);
  }
  // y = (a[0] + a[2]) + (a[1] + a[3]): add the 256-bit halves, then the 128-bit halves.
  for (int t = 0; t < T; ++t) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc[t]),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[t]), 1)));
    const __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    if constexpr (R == 4) {
      _mm_storeu_ps(y + t * ldy, v);
    } else {
      _mm_mask_storeu_ps(y + t * ldy, static_cast<__mmask8>((1u << R) - 1u), v);
    }
  }
}

using TileFn = void (*)(const uint8_t*, size_t, const uint8_t*, const ActQ8Layout&, float*, int64_t);

template <DType kT, int R, int... Ts>
constexpr auto tile_row(std::integer_sequence<int, Ts...>) {
  return std::array<TileFn, sizeof...(Ts)>{&tile_kernel<kT, R, Ts + 1>...};
}
template <DType kT, int... Rs>
constexpr auto tile_table(std::integer_sequence<int, Rs...>) {
  return std::array<std::array<TileFn, kTokens>, sizeof...(Rs)>{
      tile_row<kT, Rs + 1>(std::make_integer_sequence<int, kTokens>{})...};
}

template <DType kT>
void matmul_vnni(const MatmulParams& p, ThreadPool& pool) {
  static constexpr auto kTable = tile_table<kT>(std::make_integer_sequence<int, kRows>{});
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const ActQ8Layout l = act_q8_layout(k);
  const AlignedBytes act = quantize_activations(p, l, act_bias(kT), pool, &quantize_act_row);
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
        kTable[static_cast<size_t>(rows - 1)][static_cast<size_t>(toks - 1)](
            w + static_cast<size_t>(r) * w_stride, w_stride, act.get() + static_cast<size_t>(t) * l.row_bytes, l,
            p.y + t * n + r, n);
      }
    }
  }, kRows);
}
#endif  // AVX-512 VNNI

}  // namespace

AlignedBytes quantize_activations(const MatmulParams& p, const ActQ8Layout& l, int bias, ThreadPool& pool,
                                  QuantizeRowFn quantize_row) {
  AlignedBytes buf = alloc_aligned(l.row_bytes * static_cast<size_t>(p.m));
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) quantize_row(p.x + r * l.k, l, bias, buf.get() + l.row_bytes * static_cast<size_t>(r));
  };
  if (p.m >= 8) {
    pool.parallel_for(p.m, body);
  } else {
    body(0, p.m);
  }
  return buf;
}

namespace portable {
void matmul_quantized(const MatmulParams& p, ThreadPool& pool) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const ActQ8Layout l = act_q8_layout(k);
  const AlignedBytes act = quantize_activations(p, l, act_bias(p.weight.dtype()), pool, &portable::quantize_act_row);
  pool.parallel_for(n, [&](int64_t n0, int64_t n1) {
    for (int64_t r = n0; r < n1; ++r) {
      const auto* w = p.weight.row<const uint8_t>(r);
      for (int64_t t = 0; t < p.m; ++t) {
        p.y[t * n + r] = dot_row_portable(p.weight.dtype(), w, act.get() + static_cast<size_t>(t) * l.row_bytes, l);
      }
    }
  });
}
}  // namespace portable

void matmul_quantized(const MatmulParams& p, ThreadPool& pool) {
#if defined(NB_HAVE_VNNI_MATMUL)
  if (p.m >= avx512::kStripMinTokens) return avx512::matmul_quantized_strips(p, pool);
  switch (p.weight.dtype()) {
    case DType::kQ4_1: return matmul_vnni<DType::kQ4_1>(p, pool);
    case DType::kQ4_0: return matmul_vnni<DType::kQ4_0>(p, pool);
    case DType::kQ8_0: return matmul_vnni<DType::kQ8_0>(p, pool);
    default: break;
  }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  return avx2::matmul_quantized(p, pool);
#endif
  portable::matmul_quantized(p, pool);
}

}  // namespace nb::cpu
