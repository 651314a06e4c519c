// A small random-weight Llama (f32) for engine tests: fast enough to run hundreds of sequences,
// with a context long enough for prefix-sharing scenarios.
#pragma once
#include <random>

#include "model/llama.h"

namespace nb::testing {

inline Tensor random_tensor(std::initializer_list<int64_t> shape, std::mt19937& rng, float scale) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::normal_distribution<float> nd(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = nd(rng);
  return t;
}

inline ModelWeights tiny_weights(uint32_t seed = 1, int64_t max_seq_len = 4096) {
  ModelWeights w;
  ModelConfig& c = w.config;
  c.dim = 64;
  c.hidden_dim = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 512;
  c.max_seq_len = max_seq_len;
  c.tied_embeddings = true;
  std::mt19937 rng(seed);
  w.tok_embeddings = random_tensor({c.vocab_size, c.dim}, rng, 1.0f);
  w.output = w.tok_embeddings;
  w.final_norm = random_tensor({c.dim}, rng, 0.1f);
  for (int64_t i = 0; i < c.dim; ++i) w.final_norm.ptr<float>()[i] += 1.f;
  const float s = 0.15f;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights L;
    L.attn_norm = random_tensor({c.dim}, rng, 0.1f);
    L.ffn_norm = random_tensor({c.dim}, rng, 0.1f);
    for (int64_t i = 0; i < c.dim; ++i) {
      L.attn_norm.ptr<float>()[i] += 1.f;
      L.ffn_norm.ptr<float>()[i] += 1.f;
    }
    L.wq = random_tensor({c.num_heads * c.head_dim, c.dim}, rng, s);
    L.wk = random_tensor({c.num_kv_heads * c.head_dim, c.dim}, rng, s);
    L.wv = random_tensor({c.num_kv_heads * c.head_dim, c.dim}, rng, s);
    L.wo = random_tensor({c.dim, c.num_heads * c.head_dim}, rng, s);
    L.w_gate = random_tensor({c.hidden_dim, c.dim}, rng, s);
    L.w_up = random_tensor({c.hidden_dim, c.dim}, rng, s);
    L.w_down = random_tensor({c.dim, c.hidden_dim}, rng, s);
    w.layers.push_back(std::move(L));
  }
  return w;
}

}  // namespace nb::testing
