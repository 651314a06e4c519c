// QuantizedLinear: the in-memory form of one group-wise integer-quantized linear layer, shared by
// the quantization algorithms (RTN, GPTQ, AWQ, SmoothQuant: src/quant/), the checkpoint writers and
// readers (GPTQ, AutoAWQ GEMM, compressed-tensors) and the execution kernels' repacking.
//
//   w[o][j] = (q[o][j] - zero[o][g(j)]) * scale[o][g(j)]
//   g(j) = g_idx.empty() ? j / group_size : g_idx[j]       (group_size == -1: one group per row)
//   symmetric: zero = 2^(bits-1) for every group (the zeros vector is empty)
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/group_quant.h"
#include "core/status.h"
#include "model/weights.h"

namespace nb::quant {

struct QuantizedLinear {
  int bits = 4;                // 2..8
  int64_t group_size = 128;    // input channels per group; -1 = per output channel
  bool symmetric = false;
  int64_t out_features = 0;
  int64_t in_features = 0;
  std::vector<uint8_t> q;      // [out_features, in_features] codes in [0, 2^bits), unpacked
  std::vector<float> scales;   // [out_features, num_groups()]
  std::vector<float> zeros;    // [out_features, num_groups()] integer zero points stored as float; empty if symmetric
  std::vector<int32_t> g_idx;  // [in_features] group of each input channel (GPTQ act-order); empty = j / group_size

  int64_t num_groups() const {
    return group_size < 0 ? 1 : (in_features + group_size - 1) / group_size;
  }
};

// The seven linears of a Llama decoder layer, in this order.
enum class LinearKind { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
constexpr int kNumLinearKinds = 7;

// A whole quantized model: `weights` holds everything that is not quantized (embeddings, norms —
// possibly rescaled by SmoothQuant/AWQ folding —, the output head); layers[l][kind] the quantized linears.
struct QuantizedModel {
  ModelWeights weights;
  std::vector<std::array<QuantizedLinear, kNumLinearKinds>> layers;
  std::string method;     // "rtn", "gptq", "awq", "smoothquant"
  bool act_int8 = false;  // W8A8: activations quantized per token to int8 at run time
};

// ---- helpers (src/quant/qlinear.cpp) ----

// Checks sizes, code range, zero range, finite scales, g_idx range and that group_size divides
// in_features (when there is no g_idx); `what` names the layer in the message.
Status validate(const QuantizedLinear& l, const std::string& what = "quantized linear");
// The f32 weight [out_features, in_features] the codes stand for (the formula above).
std::vector<float> dequantize(const QuantizedLinear& l);
// The run-time kQGroup tensor (codes copied; act_int8 = W8A8 execution).
Result<Tensor> to_tensor(const QuantizedLinear& l, bool act_int8, const std::string& what = "quantized linear");
// Back from a kQGroup tensor (error for any other dtype).
Result<QuantizedLinear> from_tensor(const Tensor& t, const std::string& what = "weight");

// The tensor of `kind` in a layer's weights (wq, wk, ... w_down).
Tensor& linear_of(LayerWeights& w, LinearKind kind);
const Tensor& linear_of(const LayerWeights& w, LinearKind kind);
// The HF module name of `kind` ("self_attn.q_proj", ..., "mlp.down_proj").
const char* hf_linear_name(LinearKind kind);

// ModelWeights whose seven linears per layer are the kQGroup tensors of qm (everything else shared
// with qm.weights): what LlamaModel runs.
Result<ModelWeights> runtime_weights(const QuantizedModel& qm);

}  // namespace nb::quant
