// Internal to backend/cpu: the per-dtype matmul drivers behind nb::cpu::matmul, and the portable
// (plain C++) kernels that non-AVX-512 builds run. Tests call the portable ones directly so the
// fallback is checked on this machine too.
#pragma once
#include "backend/ops.h"
#include "core/thread_pool.h"

namespace nb::cpu {

// Weights Q8_0 / Q4_0 / Q4_1: activations quantized to 8-bit blocks, integer dot products.
void matmul_quantized(const MatmulParams& p, ThreadPool& pool);
// Weights F32 / F16 / BF16: converted to f32 in registers, f32 FMA.
void matmul_float(const MatmulParams& p, ThreadPool& pool);

namespace portable {
void matmul_quantized(const MatmulParams& p, ThreadPool& pool);
void matmul_float(const MatmulParams& p, ThreadPool& pool);
}  // namespace portable

}  // namespace nb::cpu
