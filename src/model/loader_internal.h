// Shared pieces of the model loaders (loader_gguf.cpp, loader_llama2c.cpp, loader_hf.cpp).
// Each format turns its container into a ModelConfig plus a name -> Tensor lookup; assemble_weights
// then checks every tensor's shape and dtype against the config in one place.
#pragma once
#include <functional>
#include <string>

#include "core/status.h"
#include "core/tensor.h"
#include "model/weights.h"

namespace nb {

// How a checkpoint names the tensors of a Llama model. Layer tensors are
// layer_prefix + N + "." + suffix.
struct TensorNames {
  std::string embed, final_norm, output;
  std::string layer_prefix;
  std::string attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down;
};
extern const TensorNames kGgufNames;
extern const TensorNames kHfNames;

// Returns the tensor stored under `name`, a kNotFound Status when the checkpoint has no such tensor,
// or another error (e.g. an unsupported dtype).
using TensorGetter = std::function<Result<Tensor>(const std::string& name)>;

// Fetches and checks every tensor of the model. A missing output tensor means tied embeddings when
// `allow_tied` (config.tied_embeddings is set accordingly).
Result<ModelWeights> assemble_weights(ModelConfig config, const TensorNames& names, const TensorGetter& get,
                                      bool allow_tied);

// An owned f32 copy of any supported tensor (norm weights are kept as f32).
Tensor to_f32(const Tensor& t);

// Error unless `t` has exactly `expected` (outermost-first) and a dtype a matmul/embedding can read.
Status check_tensor(const std::string& name, const Tensor& t, std::initializer_list<int64_t> expected);

// Wraps an HF checkpoint's getter so that "<module>.weight" of a quantized linear module is unpacked
// from the layout `quant_config_json` (config.json's quantization_config) names: GPTQ, AutoAWQ GEMM
// or compressed-tensors int-quantized (loader_hf_quant.cpp).
Result<TensorGetter> quantized_tensor_getter(const std::string& quant_config_json, TensorGetter raw, const std::string& where);

Result<LoadedModel> load_gguf_model(const std::string& path);
Result<LoadedModel> load_llama2c_model(const std::string& path);
Result<LoadedModel> load_hf_model(const std::string& dir);

}  // namespace nb
