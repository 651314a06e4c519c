// W8A8 linears on the GPU: kQGroup weights with act_int8 (core/group_quant.h; 8-bit symmetric,
// one scale per output channel, as `nibble quantize --act-int8` makes them), computed exactly as the
// CPU defines them (backend/cpu/matmul_group.cpp):
//   xq[t] = round_half_even(x[t] / d_t) in [-127, 127], d_t = absmax(x[t]) / 127   (per token)
//   iv    = sum_j (q[n][j] - 128) * xq[t][j]                                       (exact int32)
//   y     = (float(iv) * scale[n]) * d_t                                           (two f32 roundings)
// so the GPU's f32 outputs equal the CPU reference's bit for bit (f16/bf16 outputs: that value
// rounded once). Three steps: a per-token quantization kernel (absmax, then the codes; a separate
// kernel, not yet fused into RMSNorm/SwiGLU), an int8 x int8 -> int32 cuBLASLt GEMM (IMMA tensor
// cores), and an epilogue kernel applying scale[n] * d_t and rounding to the activation dtype — or,
// on sm_90a for f16/bf16, the last two as one CUTLASS kernel (see matmul_w8a8).
// Scratch (codes, d, the int32 product) lives in ctx.workspace(); M is processed in chunks of rows
// that fit it.
//
// Device layout (made once at load by w8a8_repack, uploaded as is): [N, K] int8 codes q - 128,
// row-major, then at byte offset w8a8_scales_offset(N, K) the N f32 channel scales. The device
// weight Tensor is a kQGroup view of those bytes, [N, K], Device::kCUDA, whose group_quant() is the
// host weight's (it says act_int8, 8 bits, per channel). Includable from plain C++.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/ops.h"

namespace nb::cuda {

// Byte offset of the scales, and total bytes, of an [n, k] W8A8 device weight.
size_t w8a8_scales_offset(int64_t n, int64_t k);
size_t w8a8_device_bytes(int64_t n, int64_t k);
// Whether a host weight is one this path runs: kQGroup, act_int8, 8 bits, symmetric, per channel,
// no g_idx, N and K multiples of 4 (cuBLASLt's int8 layouts). The message says why not.
Status w8a8_check(const Tensor& host_weight);
// The device layout of a host W8A8 weight (w8a8_check must pass), to upload as is.
Result<std::vector<uint8_t>> w8a8_repack(const Tensor& host_weight);

// y[m, N] = W8A8(x[m, K], weight) with p.weight a device view as above and act_dtype f32/f16/bf16.
// Where w8a8_fused_available says so (sm_90a, f16/bf16, CUTLASS built in), at any M, the GEMM and
// the epilogue are one kernel (w8a8_sm90.h) and the int32 products never reach memory; otherwise
// cuBLASLt's int8 GEMM writes them and the epilogue kernel reads them. Same bits.
Status matmul_w8a8(const MatmulParams& p, Context& ctx);
enum class W8A8Path { kAuto, kCublasLt, kFused };
// The same with the path forced (tests and `nibble bench w8a8`); kFused where it is not available
// is an error.
Status matmul_w8a8_path(const MatmulParams& p, Context& ctx, W8A8Path path);
bool w8a8_fused_available(int64_t m, int64_t n, int64_t k, DType act_dtype);

// The GEMM step alone, on activations quantize_act_int8 already made (xq [m, K] int8 codes, d [m]
// scales): for linears that share their input (q, k, v; gate, up), which then quantize it once.
// Same bits as matmul_w8a8 on the activations themselves.
Status matmul_w8a8_quantized(const Tensor& weight, const int8_t* xq, const float* d, void* y, int64_t m, DType act_dtype,
                             Context& ctx);

// The per-token quantization step alone (for tests and benchmarks): xq[m, k] int8 codes and
// d[m] f32 scales of x (act_dtype), as cpu::quantize_act_int8_row computes them.
Status quantize_act_int8(const float* x, int64_t m, int64_t k, DType act_dtype, int8_t* xq, float* d, Context& ctx);

}  // namespace nb::cuda
