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
void matmul_quantized(const MatmulParams& p, ThreadPool& pool);
// Weights F32 / F16 / BF16: converted to f32 in registers, f32 FMA.
void matmul_float(const MatmulParams& p, ThreadPool& pool);

namespace portable {
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
