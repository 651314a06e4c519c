// Small SIMD helpers shared by the CPU fast paths (internal to backend/cpu). Every function here has
// an exact scalar meaning written next to it; the AVX-512 versions exist only where the build
// targets them (-march=native), and callers keep a scalar path for every other machine.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
// GCC 12 reports "'__Y' (may be) used uninitialized" inside its own AVX-512 headers wherever an
// intrinsic built on _mm512_undefined_*() is inlined (GCC bug 105593, fixed in GCC 13). The
// warning is a false positive; it is silenced for the CPU kernel files that include this header.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

namespace nb::cpu::simd {

#if defined(__AVX512F__)
// e^x for 16 lanes, Cephes-style: x = n ln2 + r with ln2 split in two, degree-6 polynomial on
// |r| <= ln2/2, then scalef(p, n). Relative error <= 2 ulp over the whole range; x <= -104 gives 0
// (e^-104 is below the smallest subnormal) and x >= 89 gives +inf, like std::exp.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(89.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// Mask selecting the first `n` of 16 lanes (n clamped to [0, 16]).
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n < 0 ? 0 : n)) - 1u);
}
#endif

// Streaming weights from DRAM: the hardware prefetchers alone keep too few lines in flight for
// the 4 interleaved row streams of a matmul tile (measured: the 30 MB Q8_0 output head ran at
// ~6 GB/s on one Zen 4 core without this, ~16 GB/s with it). So each tile first requests the
// bytes of the tile after next-ish: [begin, end) rounded out to cache lines.
inline void prefetch_range(const void* begin, const void* end) {
  for (auto* p = static_cast<const char*>(begin); p < static_cast<const char*>(end); p += 64) {
#if defined(__SSE__)
    _mm_prefetch(p, _MM_HINT_T0);
#else
    __builtin_prefetch(p);
#endif
  }
}
// How many row tiles ahead to prefetch so that the distance is at least ~2 KiB.
inline int64_t prefetch_tiles_ahead(size_t tile_bytes) {
  return tile_bytes >= 2048 ? 1 : static_cast<int64_t>((2048 + tile_bytes - 1) / tile_bytes);
}

}  // namespace nb::cpu::simd
