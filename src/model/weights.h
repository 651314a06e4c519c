// ModelWeights: the tensors of a Llama-family model in their stored dtypes (zero-copy views into
// the mmap'd checkpoint where possible). Linear weights are [out_features, in_features].
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace nb {

struct LayerWeights {
  Tensor attn_norm;  // [dim] f32
  Tensor wq;         // [num_heads * head_dim, dim]
  Tensor wk;         // [num_kv_heads * head_dim, dim]
  Tensor wv;         // [num_kv_heads * head_dim, dim]
  Tensor wo;         // [dim, num_heads * head_dim]
  Tensor ffn_norm;   // [dim] f32
  Tensor w_gate;     // [hidden_dim, dim]
  Tensor w_up;       // [hidden_dim, dim]
  Tensor w_down;     // [dim, hidden_dim]
};

struct ModelWeights {
  ModelConfig config;
  Tensor tok_embeddings;  // [vocab, dim], any dtype (rows dequantized on lookup)
  Tensor final_norm;      // [dim] f32
  Tensor output;          // [vocab, dim]; the same tensor as tok_embeddings when tied
  std::vector<LayerWeights> layers;

  // Total parameters and stored bytes of all tensors (tied output counted once).
  int64_t num_params() const;
  int64_t num_bytes() const;
};

struct LoadedModel {
  ModelWeights weights;
  TokenizerSource tokenizer;
  std::string chat_template;  // Jinja text the model ships, empty if none
  std::string format;         // "gguf", "llama2c", "safetensors"
};

// Loads a model from a .gguf file, a llama2.c .bin file or an HF directory (config.json +
// *.safetensors). Norm weights are converted to f32; linear weights keep their stored dtype.
Result<LoadedModel> load_model(const std::string& path);

}  // namespace nb
