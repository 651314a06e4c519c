// CPU backend: reference implementations (nb::cpu::ref, plain loops, the ground truth every fast
// path and GPU kernel is tested against) and fast implementations (nb::cpu, threaded + SIMD).
// Inputs are validated once at the boundary (model load / batch build); these trust their Params.
#pragma once
#include "backend/ops.h"
#include "core/thread_pool.h"

namespace nb::cpu {

void matmul(const MatmulParams& p, ThreadPool& pool);
void rms_norm(const RmsNormParams& p);
void rope(const RopeParams& p);
void swiglu(const SwigluParams& p);
void attention(const AttentionParams& p, ThreadPool& pool);
void embedding(const EmbeddingParams& p);

namespace ref {
void matmul(const MatmulParams& p);
void rms_norm(const RmsNormParams& p);
void rope(const RopeParams& p);
void swiglu(const SwigluParams& p);
void attention(const AttentionParams& p);
void embedding(const EmbeddingParams& p);
}  // namespace ref

}  // namespace nb::cpu
