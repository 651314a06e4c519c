// Internal to backend/cpu: the per-dtype matmul drivers behind nb::cpu::matmul, and the portable
// (plain C++) kernels that non-AVX-512 builds run. Tests call the portable ones directly so the
// fallback is checked on this machine too.
#pragma once
#include <cstdint>
#include <memory>
#include <new>

#include "backend/cpu/act_quant.h"
#include "backend/ops.h"
#include "core/thread_pool.h"

namespace nb::cpu {

struct AlignedFree {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], AlignedFree>;
inline AlignedBytes alloc_aligned(size_t n) {
  return AlignedBytes(static_cast<uint8_t*>(::operator new[](n, std::align_val_t{64})));
}

using QuantizeRowFn = void (*)(const float*, const ActQ8Layout&, int, uint8_t*);
// Quantizes the p.m rows of p.x (act_quant.h layout, 64-byte aligned rows) with the weight format's
// unsigned-offset `bias`; threaded when there are enough rows to pay for a dispatch.
AlignedBytes quantize_activations(const MatmulParams& p, const ActQ8Layout& l, int bias, ThreadPool& pool,
                                  QuantizeRowFn quantize_row);

// Weights Q8_0 / Q4_0 / Q4_1: activations quantized to 8-bit blocks, integer dot products.
//
// Batch invariance. Continuous batching needs y[t, r] to be bit-identical whatever M is, whichever
// rows share the call, however many threads split it, and whichever kernel runs (tile, strip,
// AVX2, portable). So every kernel computes each output in this one canonical order (the
// activation row is quantized per row by act_quant.h, which depends on nothing else):
//   for each 32-element block b = 0 .. num_blocks-1, in increasing order:
//     isum  = the exact int32 dot product of the block's weight and activation quants (offsets
//             applied exactly; any integer summation order gives the same value)
//     scale = f32(d_w[b]) * d_x[b]                     (one rounded f32 multiply)
//     a[b % 4] = fma((float)isum, scale, a[b % 4])     (isum is exact in f32: |isum| < 2^21)
//     Q4_1 only, right after:  a[b % 4] = fma(f32(m_w[b]), s_x[b], a[b % 4])
//                              with s_x[b] = d_x[b] * (float)sum(q_x[b]) from act_quant.h
//   y = (a[0] + a[2]) + (a[1] + a[3]),  all four a[] starting at +0.
// Blocks past num_blocks (the padding of a partial last group) add nothing at all (masked), so
// even a non-finite weight scale cannot make one kernel differ from another.
// Why this order: four partial sums by block residue are what the tile kernel's lanes hold after
// an exact in-lane integer reduction (128-bit lane i = block 4g+i), so its f32 work is one cvt,
// one multiply and one FMA per group for 4 weight rows; the strip kernel (lanes = weight rows)
// keeps four accumulators per token instead of one. The final sum adds 256-bit then 128-bit
// halves, the cheapest horizontal order for the tile kernel.
void matmul_quantized(const MatmulParams& p, ThreadPool& pool);
// Weights F32 / F16 / BF16: converted to f32 in registers, f32 FMA.
void matmul_float(const MatmulParams& p, ThreadPool& pool);

// Weights kQGroup (core/group_quant.h): W4A16-style rows dequantized to f32 tiles then f32 FMA, or
// with act_int8 (W8A8) per-token int8 activations and exact int32 group dots (matmul_group.cpp).
void matmul_group(const MatmulParams& p, ThreadPool& pool);
// Single-threaded f32 product of `rows` contiguous f32 weight rows [rows, k]:
// y[t * ldy + r] = w[r, :] . x[t, :] for t < m. Each output's summation order depends only on k.
void matmul_f32_rows(const float* w, int64_t rows, int64_t k, const float* x, int64_t m, float* y, int64_t ldy);

// W8A8 activation quantization of one row: returns d = absmax / 127 and writes
// xq[j] = clamp(nearbyint(x[j] * (1 / d)), -127, 127) (all zero when the row is zero).
float quantize_act_int8_row(const float* x, int64_t k, int8_t* xq);

namespace portable {
void matmul_group(const MatmulParams& p, ThreadPool& pool);
void matmul_quantized(const MatmulParams& p, ThreadPool& pool);
void matmul_float(const MatmulParams& p, ThreadPool& pool);
}  // namespace portable

// AVX2 + FMA + F16C kernels (maddubs integer dots), compiled into every x86-64 build with a target
// pragma: they are what AVX2-only machines run, and tests check them wherever the CPU has AVX2.
namespace avx2 {
bool available();  // this CPU has AVX2, FMA and F16C (and the build targets x86-64)
void matmul_quantized(const MatmulParams& p, ThreadPool& pool);
void matmul_float(const MatmulParams& p, ThreadPool& pool);
}  // namespace avx2

// AVX-512 VNNI kernels (present when the build targets them).
namespace avx512 {
bool available();
// Row-interleaved 16-row strips (matmul_quant_strip.cpp); any M, the dispatcher uses it for
// M >= kStripMinTokens, where repacking each strip once per call pays off.
void matmul_quantized_strips(const MatmulParams& p, ThreadPool& pool);
constexpr int64_t kStripMinTokens = 12;  // measured: strips and tiles break even near M = 8
}  // namespace avx512

}  // namespace nb::cpu
