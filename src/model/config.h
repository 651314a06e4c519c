// ModelConfig: the shape of a Llama-family model, filled by the loaders from llama2.c headers,
// GGUF metadata or HF config.json.
#pragma once
#include <cstdint>
#include <string>

#include "core/status.h"

namespace nb {

// Which elements RoPE rotates together.
//  kInterleaved: pairs (x[2i], x[2i+1])  — llama2.c checkpoints and GGUF "llama" (Q/K permuted on export)
//  kHalf:        pairs (x[i], x[i+d/2])  — HF transformers checkpoints (rotate_half)
enum class RopeStyle : uint8_t { kInterleaved, kHalf };

struct RopeScaling {
  enum class Type : uint8_t { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  float factor = 1.f;
  float low_freq_factor = 1.f;    // llama3
  float high_freq_factor = 4.f;   // llama3
  int64_t original_max_position = 8192;  // llama3
};

struct ModelConfig {
  std::string architecture = "llama";
  std::string name;
  int64_t dim = 0;           // hidden size
  int64_t hidden_dim = 0;    // FFN intermediate size
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;      // usually dim / num_heads
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;   // context length
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;

  // Checks that the dimensions are positive and consistent (heads divide, GQA groups integral).
  Status validate() const;
};

// RoPE inverse frequencies (head_dim / 2 values) with the configured scaling applied.
void rope_inv_freq(const ModelConfig& config, float* inv_freq);

}  // namespace nb
