// Pre-quantized linear layers in the three checkpoint conventions other tools write and read,
// converted to and from nibble's run-time kQGroup tensors (core/group_quant.h). Pure data layout:
// no model knowledge; shapes are checked against the (n = out_features, k = in_features) the model
// configuration gives.
//
// GPTQ (AutoGPTQ / GPTQModel, transformers' GPTQ integration):
//   qweight int32 [k * bits / 32, n]  codes packed along the INPUT dim, an LSB-first bit stream per
//                                     column: code (j, c) is bits [j*bits, j*bits + bits) of the
//                                     column's 32-bit words (3-bit codes straddle words)
//   qzeros  int32 [G, n * bits / 32]  zero points packed along the OUTPUT dim, same bit stream per row
//                                     checkpoint_format "gptq" (v1, AutoGPTQ): stores zero - 1;
//                                     "gptq_v2" (GPTQModel): stores zero
//   scales  f16   [G, n]
//   g_idx   int32 [k]                 group of each input channel (act-order); optional
// AutoAWQ GEMM (4-bit only):
//   qweight int32 [k, n / 8]  eight output columns per word; nibble i holds column 8c + kAwqOrder[i]
//   qzeros  int32 [G, n / 8]  same packing, zero stored as is
//   scales  f16   [G, n]
// compressed-tensors "int-quantized" (llm-compressor W8A8 / W8A16):
//   weight            int8 [n, k]   value = code - 128
//   weight_scale      f32/f16/bf16 [n, 1] (channel) or [n, G] (group)
//   weight_zero_point int8 [n, 1|G] (asymmetric only): zero - 128
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/group_quant.h"
#include "core/status.h"
#include "core/tensor.h"

namespace nb::qformat {

constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// LSB-first bit stream of `bits`-bit values into 32-bit words (vals.size() * bits must be a multiple of 32).
std::vector<uint32_t> pack_bits(const std::vector<uint32_t>& vals, int bits);
uint32_t unpack_bits(const uint32_t* words, int64_t index, int bits);

struct GptqSpec {
  int bits = 4;
  int64_t group_size = 128;  // -1: per channel
  bool symmetric = true;     // informational: sym checkpoints still store zeros (2^(bits-1))
  bool v2 = false;           // checkpoint_format gptq_v2 (zeros stored without the -1)
};
// qzeros may be undefined only when... never: GPTQ always stores it. g_idx may be undefined.
Result<Tensor> gptq_to_runtime(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales, const Tensor& g_idx,
                               const GptqSpec& spec, int64_t n, int64_t k, const std::string& what);
Result<Tensor> awq_to_runtime(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales, int64_t group_size,
                              int64_t n, int64_t k, const std::string& what);
// weight_zero_point may be undefined (symmetric). act_int8: input_activations dynamic per token.
Result<Tensor> ct_int8_to_runtime(const Tensor& weight, const Tensor& weight_scale, const Tensor& weight_zero_point,
                                  bool act_int8, int64_t n, int64_t k, const std::string& what);

// Packed forms for writing (little-endian host layout; shapes outermost-first).
struct PackedLinear {
  struct Array {
    std::string suffix;          // "qweight", "weight_scale", ...
    std::string dtype;           // safetensors dtype name
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Array> arrays;
};
// Errors when the layout cannot hold the weight (bits/32 packing vs shapes, AWQ needs 4 bits).
// GPTQ v1 cannot store a zero point of 0 (it would wrap): pass v2 = true then (gptq_needs_v2).
Result<PackedLinear> pack_gptq(const Tensor& w, bool v2);
bool gptq_needs_v2(const Tensor& w);
Result<PackedLinear> pack_awq(const Tensor& w);
// 8-bit only; scales written as f32 [n, G]; zero points only when asymmetric.
Result<PackedLinear> pack_ct_int8(const Tensor& w);

}  // namespace nb::qformat
