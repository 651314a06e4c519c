// CUDA implementations of the backend ops, each taking the same Params struct as its CPU reference
// (backend/ops.h, nb::cpu::ref::*) with every pointer a device pointer, and enqueuing on ctx.stream().
// Includable from plain C++. Each call checks the Params it can check on the host (dtypes, sizes the
// kernels support) and the launch itself; kernel faults surface at the next synchronize.
//
// Activations (act_dtype): f32, f16 or bf16; kernels compute in f32 and round once on store.
// Supported beyond that:
//   embedding   table f32/f16/bf16/q8_0/q4_0/q4_1 (a device tensor, Device::kCUDA)
//   matmul      cuBLAS GEMM (f32 accumulation, no TF32): weight dtype == act dtype for f16/bf16, or
//               f32 weights with f32 activations. 4-bit kQGroup weights (W4A16) once uploaded with
//               upload_w4, with f16/bf16 activations (w4_matmul.cu). W8A8 kQGroup weights (act_int8)
//               in w8a8.h's device layout, with f32/f16/bf16 activations (matmul_w8a8; not
//               matmul_to_f32). Other quantized weights: unimplemented.
//   kv_write    cache in act_dtype (cache_dtype f32, or f16 with f16 activations), or int8/int4 pools
//               (backend/kv_format.h; cache_block_size set), quantized on write as the CPU does.
//   hadamard    dim a power of two <= 1024, in act_dtype (the int8/int4 caches' rotation).
//   attention   head_dim <= 256; K/V cache in act_dtype, or int8/int4 pools of block_size tokens a
//               block (cache_dtype), dequantized in the kernel. Decode batches (max_query_len == 1) are
//               split along the keys when there are too few (sequence, kv head) blocks to fill the
//               GPU (flash-decoding) and merged by a second kernel through ctx.workspace().
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cuda/device.h"
#include "backend/ops.h"

namespace nb::cuda {

Status embedding(const EmbeddingParams& p, Context& ctx);
Status rms_norm(const RmsNormParams& p, Context& ctx);
Status add_rms_norm(const AddRmsNormParams& p, Context& ctx);
Status rope(const RopeParams& p, Context& ctx);
Status swiglu(const SwigluParams& p, Context& ctx);
Status kv_write(const KvWriteParams& p, Context& ctx);
Status hadamard(const HadamardParams& p, Context& ctx);
Status batch_attention(const BatchAttentionParams& p, Context& ctx);
Status matmul(const MatmulParams& p, Context& ctx);
// The same product with y in f32 whatever act_dtype is (logits from f16/bf16 activations).
Status matmul_to_f32(const MatmulParams& p, Context& ctx);

Status argmax(const ArgmaxParams& p, Context& ctx);
// One block a row; top-k and top-p thresholds by bisection over the order (no sort), double sums
// in a fixed order (deterministic). Vocab < 2^31.
Status sample_rows(const SampleRowsParams& p, Context& ctx);
// One block a row, two passes over the logits (maxima and argmax, then the sums in double).
Status logit_stats(const LogitStatsParams& p, Context& ctx);

// W4A16 (w4_matmul.cu): repacks a host kQGroup weight (bits 4, weight-only, no act-order, K and the
// group size multiples of 64; backend/w4_layout.h) into one device buffer and returns a device
// kQGroup Tensor [N, K] over it (owning it) for MatmulParams::weight of matmul / matmul_to_f32.
// Synchronizes ctx's stream. The error Status says what to requantize otherwise.
Result<Tensor> upload_w4(const Tensor& qgroup, Context& ctx);
// Device bytes upload_w4 allocates for such a weight (packed codes + f16 scale/zero per row group).
int64_t w4_device_bytes(const Tensor& qgroup);

// Decode-step fusions (gemv.cu, decode.cu); each checks with its *_applies whether it takes the Params.
//   fused_linear     1..2 rows, f16/bf16 weights of the activation dtype, K % 8 == 0, 16-byte aligned.
//   rope_kv_write    f16/bf16/f32, act-dtype cache.
//   decode_attention one query token per sequence, head_dim 64 or 128, f16/bf16, act-dtype cache or
//                    int8/int4 pools (8- / 4-byte aligned blocks), group <= 8; splits along the keys
//                    through ctx.workspace().
// They launch with programmatic dependent launch when ctx.pdl().
bool fused_linear_applies(const FusedLinearParams& p);
Status fused_linear(const FusedLinearParams& p, Context& ctx);
Status rope_kv_write(const RopeKvWriteParams& p, Context& ctx);
bool decode_attention_applies(const BatchAttentionParams& p);
Status decode_attention(const BatchAttentionParams& p, Context& ctx);

// The whole decode step of one sequence and one token as one persistent kernel (decode_step.cu):
// f16/bf16, head_dim 64 or 128, act-dtype cache, at most DecodeStepParams::kMaxLayers layers.
bool decode_step_applies(const DecodeStepParams& p, const Context& ctx);
Status decode_step(const DecodeStepParams& p, Context& ctx);
size_t decode_step_workspace_bytes(const DecodeStepParams& p);

// Workspace bytes a decode batch needs when split into `num_splits` key ranges.
size_t attention_split_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t head_dim, int64_t num_splits);

}  // namespace nb::cuda
