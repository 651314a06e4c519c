// Prefill kernel for Q8_0 / Q4_0 / Q4_1 weights (many activation rows): row-interleaved strips.
// A strip of 16 weight rows is repacked once per call so that lane r of a 64-byte vector holds 4
// consecutive quants of row r; one vpdpbusd with a broadcast 4-byte activation then advances all 16
// rows by 4 elements, and the per-block scale work (cvt, two multiplies) covers 16 rows x 32
// elements instead of the 4 x 32 of the tile kernel. The repacked strip (640 bytes per block, stays
// in L1/L2) is reused by every token of the call, so its cost (a few gathers per block) fades with M.
// Same arithmetic as matmul_quant.cpp: exact int32 block dots, f32 scale products, in the canonical
// order of matmul_internal.h (lane r = weight row r; four accumulators by block residue).
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <utility>

#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"

namespace nb::cpu::avx512 {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
namespace {

constexpr int kStripRows = 16;
constexpr int kTokens = 4;  // activation rows per pass: 4 x 4 accumulators (canonical order) stay in registers

template <DType kT>
struct QFormat;
template <>
struct QFormat<DType::kQ4_1> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_1), kQsOffset = 4;
  static constexpr bool kNibbles = true, kHasMin = true;
  static constexpr int kBias = 0;
};
template <>
struct QFormat<DType::kQ4_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_0), kQsOffset = 2;
  static constexpr bool kNibbles = true, kHasMin = false;
  static constexpr int kBias = 8;
};
template <>
struct QFormat<DType::kQ8_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ8_0), kQsOffset = 2;
  static constexpr bool kNibbles = false, kHasMin = false;
  static constexpr int kBias = 128;  // sign bit flipped: q + 128 is unsigned
};

// One block of a 16-row strip. w[s], lane r = elements 4s..4s+3 of row r (unsigned bytes);
// d = row scales; m = row mins (Q4_1).
struct alignas(64) PackedBlock {
  __m512i w[8];
  __m512 d, m;
};

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// v[s], lane r = bytes 4s..4s+3 of the 16 bytes at p[r] + offset: a 16 x 4 transpose of 4-byte
// units from plain loads (gathers are several times slower on Zen 4). Row 4L + i goes to 128-bit
// lane L of a[i], so after the two unpack stages lane r holds row r.
inline void transpose_16x4(const uint8_t* const (&p)[kStripRows], size_t offset, __m512i (&v)[4]) {
  __m512i a[4];
  for (int i = 0; i < 4; ++i) {
    a[i] = _mm512_castsi128_si512(load16(p[i] + offset));
    a[i] = _mm512_inserti32x4(a[i], load16(p[4 + i] + offset), 1);
    a[i] = _mm512_inserti32x4(a[i], load16(p[8 + i] + offset), 2);
    a[i] = _mm512_inserti32x4(a[i], load16(p[12 + i] + offset), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]);  // per lane: a0.0 a1.0 a0.1 a1.1
  const __m512i t1 = _mm512_unpackhi_epi32(a[0], a[1]);  //           a0.2 a1.2 a0.3 a1.3
  const __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]);
  const __m512i t3 = _mm512_unpackhi_epi32(a[2], a[3]);
  v[0] = _mm512_unpacklo_epi64(t0, t2);  // a0.0 a1.0 a2.0 a3.0
  v[1] = _mm512_unpackhi_epi64(t0, t2);
  v[2] = _mm512_unpacklo_epi64(t1, t3);
  v[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Rows past `rows` repeat the last row with scale 0, so they add 0 and read nothing out of bounds.
template <DType kT>
void pack_strip(const uint8_t* base, size_t stride, int rows, int64_t num_blocks, PackedBlock* out) {
  using F = QFormat<kT>;
  const __mmask16 valid = simd::first_lanes(rows);
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const uint8_t* p[kStripRows];
  for (int r = 0; r < kStripRows; ++r) p[r] = base + static_cast<size_t>(std::min(r, rows - 1)) * stride;
  for (int64_t b = 0; b < num_blocks; ++b) {
    PackedBlock& pb = out[b];
    __m512i v[4];
    // Lane r of v[0] = first 4 bytes of row r's block: (d, m) for Q4_1, d and 2 quants otherwise.
    transpose_16x4(p, 0, v);
    const __m512i head = v[0];
    pb.d = _mm512_maskz_mov_ps(valid, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head)));
    if constexpr (F::kHasMin) {
      pb.m = _mm512_maskz_mov_ps(valid, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16))));
    }
    if constexpr (F::kNibbles) {
      transpose_16x4(p, F::kQsOffset, v);
      for (int s = 0; s < 4; ++s) {
        pb.w[s] = _mm512_and_si512(v[s], nibble);                             // elements 4s .. 4s+3
        pb.w[s + 4] = _mm512_and_si512(_mm512_srli_epi16(v[s], 4), nibble);  // elements 16+4s ..
      }
    } else {
      const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
      for (int half = 0; half < 2; ++half) {
        transpose_16x4(p, F::kQsOffset + 16 * static_cast<size_t>(half), v);
        for (int s = 0; s < 4; ++s) pb.w[4 * half + s] = _mm512_xor_si512(v[s], flip);
      }
    }
    for (const uint8_t*& row : p) row += F::kBlockBytes;
  }
}

inline int32_t load_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// acc[t] lane r += block b's term of strip row r and activation row t (matmul_internal.h).
template <DType kT, int T>
inline void strip_block(const PackedBlock& pb, const uint8_t* a0, const ActQ8Layout& l, int64_t b, __m512 (&acc)[T]) {
  using F = QFormat<kT>;
  // Block b is block b % 4 of group b / 4 in the act_quant.h layout.
  const size_t qoff = static_cast<size_t>(b / 4) * 128 + static_cast<size_t>(b % 4) * 16;
  const size_t lane = static_cast<size_t>(b / 4) * 16 + static_cast<size_t>(b % 4) * 4;
  for (int t = 0; t < T; ++t) {
    const uint8_t* a = a0 + static_cast<size_t>(t) * l.row_bytes;
    __m512i dot = _mm512_setzero_si512();
    if constexpr (F::kBias != 0) dot = _mm512_set1_epi32(reinterpret_cast<const int32_t*>(a + l.block_corr_offset)[b]);
    for (int s = 0; s < 4; ++s) dot = _mm512_dpbusd_epi32(dot, pb.w[s], _mm512_set1_epi32(load_i32(a + qoff + 4 * s)));
    for (int s = 0; s < 4; ++s) {
      dot = _mm512_dpbusd_epi32(dot, pb.w[s + 4], _mm512_set1_epi32(load_i32(a + qoff + 64 + 4 * s)));
    }
    const float da = reinterpret_cast<const float*>(a + l.scale_offset)[lane];
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(pb.d, _mm512_set1_ps(da)), acc[t]);
    if constexpr (F::kHasMin) {
      acc[t] = _mm512_fmadd_ps(pb.m, _mm512_set1_ps(reinterpret_cast<const float*>(a + l.sum_offset)[lane]), acc[t]);
    }
  }
}

// y[t * ldy + r] = strip row r . activation row t for r < 16 (masked to the valid rows), t < T.
// Four accumulators per token, one per block residue b % 4: the canonical order.
template <DType kT, int T>
void strip_kernel(const PackedBlock* pk, const uint8_t* a0, const ActQ8Layout& l, float* y, int64_t ldy,
                  __mmask16 valid) {
  __m512 acc0[T], acc1[T], acc2[T], acc3[T];
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = acc2[t] = acc3[t] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= l.num_blocks; b += 4) {
    strip_block<kT, T>(pk[b], a0, l, b, acc0);
    strip_block<kT, T>(pk[b + 1], a0, l, b + 1, acc1);
    strip_block<kT, T>(pk[b + 2], a0, l, b + 2, acc2);
    strip_block<kT, T>(pk[b + 3], a0, l, b + 3, acc3);
  }
  if (b < l.num_blocks) strip_block<kT, T>(pk[b], a0, l, b, acc0);
  if (b + 1 < l.num_blocks) strip_block<kT, T>(pk[b + 1], a0, l, b + 1, acc1);
  if (b + 2 < l.num_blocks) strip_block<kT, T>(pk[b + 2], a0, l, b + 2, acc2);
  for (int t = 0; t < T; ++t) {
    const __m512 v = _mm512_add_ps(_mm512_add_ps(acc0[t], acc2[t]), _mm512_add_ps(acc1[t], acc3[t]));
    _mm512_mask_storeu_ps(y + t * ldy, valid, v);
  }
}

template <DType kT>
using StripFn = void (*)(const PackedBlock*, const uint8_t*, const ActQ8Layout&, float*, int64_t, __mmask16);
template <DType kT, int... Ts>
constexpr std::array<StripFn<kT>, sizeof...(Ts)> strip_table(std::integer_sequence<int, Ts...>) {
  return {&strip_kernel<kT, Ts + 1>...};
}

template <DType kT>
void matmul_strips(const MatmulParams& p, ThreadPool& pool) {
  static constexpr auto kTable = strip_table<kT>(std::make_integer_sequence<int, kTokens>{});
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  const ActQ8Layout l = act_q8_layout(k);
  const AlignedBytes act = quantize_activations(p, l, QFormat<kT>::kBias, pool, &quantize_act_row);
  const auto* w = static_cast<const uint8_t*>(p.weight.data());
  const size_t stride = p.weight.row_nbytes();
  const int64_t num_strips = (n + kStripRows - 1) / kStripRows;
  pool.parallel_for(num_strips, [&](int64_t s0, int64_t s1) {
    const auto packed = std::make_unique<PackedBlock[]>(static_cast<size_t>(l.num_blocks));
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t r0 = s * kStripRows;
      const int rows = static_cast<int>(std::min<int64_t>(kStripRows, n - r0));
      // The gathers touch all 16 rows at once, which the hardware prefetchers do not anticipate:
      // request the next strip (contiguous rows) while this one is packed and used.
      if (s + 1 < s1) {
        simd::prefetch_range(w + static_cast<size_t>(r0 + kStripRows) * stride,
                             w + static_cast<size_t>(std::min<int64_t>(n, r0 + 2 * kStripRows)) * stride);
      }
      pack_strip<kT>(w + static_cast<size_t>(r0) * stride, stride, rows, l.num_blocks, packed.get());
      const __mmask16 valid = simd::first_lanes(rows);
      for (int64_t t = 0; t < p.m; t += kTokens) {
        const int toks = static_cast<int>(std::min<int64_t>(kTokens, p.m - t));
        kTable[static_cast<size_t>(toks - 1)](packed.get(), act.get() + static_cast<size_t>(t) * l.row_bytes, l,
                                              p.y + t * n + r0, n, valid);
      }
    }
  });
}

}  // namespace

bool available() { return true; }

void matmul_quantized_strips(const MatmulParams& p, ThreadPool& pool) {
  switch (p.weight.dtype()) {
    case DType::kQ4_1: return matmul_strips<DType::kQ4_1>(p, pool);
    case DType::kQ4_0: return matmul_strips<DType::kQ4_0>(p, pool);
    case DType::kQ8_0: return matmul_strips<DType::kQ8_0>(p, pool);
    default: return portable::matmul_quantized(p, pool);
  }
}

#else  // no AVX-512 VNNI in this build

bool available() { return false; }
void matmul_quantized_strips(const MatmulParams& p, ThreadPool& pool) { portable::matmul_quantized(p, pool); }

#endif

}  // namespace nb::cpu::avx512
