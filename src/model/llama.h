// The Llama-family forward pass (Llama 1/2/3, Mistral, SmolLM2, TinyLlamas) on the CPU backend:
// RMSNorm, RoPE (+ scaling), grouped-query attention over a block-table KV cache, SwiGLU, tied or
// separate output head. Activations and accumulation are f32; weights stay in their stored dtype.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "backend/ops.h"
#include "core/thread_pool.h"
#include "model/weights.h"

namespace nb {

// Where the forward writes and reads K/V: per layer, a pool of blocks
// [num_blocks, block_size, num_kv_heads, head_dim] f32. The engine owns the memory (a contiguous cache
// is one block per sequence; the paged cache shares the pools between sequences).
struct KvPools {
  std::vector<float*> k;  // [num_layers]
  std::vector<float*> v;  // [num_layers]
  int64_t num_blocks = 0;
  int64_t block_size = 0;
};

// One sequence's step: tokens[i] sits at position start_pos + i.
struct ForwardBatch {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  std::span<const int32_t> block_table;  // must cover positions [0, start_pos + tokens.size())
  bool all_logits = false;               // logits for every token (perplexity) or only the last
};

class LlamaModel {
 public:
  // Largest number of tokens one forward() call takes; longer prompts are fed in chunks.
  static constexpr int64_t kMaxChunkTokens = 256;

  static Result<std::unique_ptr<LlamaModel>> create(ModelWeights weights, int num_threads);

  const ModelConfig& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }
  ThreadPool& pool() { return pool_; }
  // Exact mode multiplies quantized weights with f32 activations (the reference kernels) instead of
  // quantizing activations to 8 bits first; slower, used to compare logits with other implementations.
  void set_exact_matmul(bool exact) { exact_matmul_ = exact; }

  // Runs the batch, writing its K/V into `kv`. `logits` receives [n, vocab] floats where n is
  // tokens.size() with all_logits, else 1 (the last token).
  Status forward(const ForwardBatch& batch, const KvPools& kv, float* logits);

 private:
  LlamaModel(ModelWeights weights, int num_threads);
  void matmul(const MatmulParams& p);
  void layer_forward(int64_t layer, int64_t num_tokens, const ForwardBatch& batch, const KvPools& kv);

  ModelWeights weights_;
  ThreadPool pool_;
  bool exact_matmul_ = false;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  // Scratch activations for up to kMaxChunkTokens tokens.
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_;
  std::vector<int32_t> positions_;
};

}  // namespace nb
