// CPU backend: reference implementations (nb::cpu::ref, plain loops, the ground truth every fast
// path and GPU kernel is tested against) and fast implementations (nb::cpu, threaded + SIMD).
// Inputs are validated once at the boundary (model load / batch build); these trust their Params.
//
// Fast matmul, by weight dtype (files in this folder):
//   Q8_0/Q4_0/Q4_1  activations quantized per call to 8-bit blocks (act_quant.h), exact int32 block
//                   dots. AVX-512 VNNI: M < 12 tile kernel (matmul_quant.cpp), M >= 12 16-row strip
//                   kernel (matmul_quant_strip.cpp). AVX2: maddubs (matmul_avx2.cpp). Else portable.
//                   Results differ from ref::matmul by the 8-bit activation rounding (|dx| <= amax/254
//                   per element of each 32-block) plus f32 summation order.
//   F32/F16/BF16    f32 FMA on weights widened in registers (matmul_float.cpp, matmul_avx2.cpp).
// attention: f32 paged KV, per (token, kv head, key chunk) items over the whole batch; decode splits
// long key ranges.
// All fast ops are deterministic for a given thread count (fixed work split, no atomics in sums).
#pragma once
#include "backend/ops.h"
#include "core/thread_pool.h"

namespace nb::cpu {

void matmul(const MatmulParams& p, ThreadPool& pool);
void rms_norm(const RmsNormParams& p);
void rope(const RopeParams& p);
void swiglu(const SwigluParams& p);
// SwigluParams::out_codes / out_scales from out as stored (row quantizer); swiglu and ref::swiglu end with it.
void swiglu_codes(const SwigluParams& p);
void attention(const AttentionParams& p, ThreadPool& pool);  // batch_attention of one sequence
// The whole batch's attention in one parallel region; a row's result does not depend on the batch.
void batch_attention(const BatchAttentionParams& p, ThreadPool& pool);
void kv_write(const KvWriteParams& p);
void hadamard(const HadamardParams& p);  // butterflies (kv_write.cpp)
void embedding(const EmbeddingParams& p);

namespace ref {
void matmul(const MatmulParams& p);
// kQGroup weights (ref::matmul calls it): dequantized rows, double sums; W8A8 in plain integer loops.
void matmul_group(const MatmulParams& p);
void rms_norm(const RmsNormParams& p);
void rope(const RopeParams& p);
void swiglu(const SwigluParams& p);
void attention(const AttentionParams& p);
void embedding(const EmbeddingParams& p);
// Ops the batched GPU path adds (reference_batch.cpp), defined by the plain ops above.
void add_rms_norm(const AddRmsNormParams& p);
void kv_write(const KvWriteParams& p);
void batch_attention(const BatchAttentionParams& p);  // host pointers; attention() per sequence
// One (token, KV head) vector of head_dim values into / out of slot `slot` of a KV pool in format f
// (backend/kv_format.h), scale and zero included (reference_kv.cpp).
void kv_quantize_head(const KvBlockFormat& f, uint8_t* pool, int64_t slot, int64_t h, const float* x);
void kv_dequantize_head(const KvBlockFormat& f, const uint8_t* pool, int64_t slot, int64_t h, float* out);
void hadamard(const HadamardParams& p);  // the matrix product, in double
void argmax(const ArgmaxParams& p);  // reference_sampling.cpp
void sample_rows(const SampleRowsParams& p);  // reference_sampling.cpp: the rule, with a full sort
void logit_stats(const LogitStatsParams& p);  // reference_sampling.cpp: log_softmax of each row, then the sums
// The CUDA backend's fused decode ops (reference_fused.cpp), defined by the plain ops above.
void fused_linear(const FusedLinearParams& p);
void rope_kv_write(const RopeKvWriteParams& p);
void decode_step(const DecodeStepParams& p);  // host pointers; f32 caches
}  // namespace ref

}  // namespace nb::cpu
