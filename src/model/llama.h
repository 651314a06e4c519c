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
#include "model/forward_backend.h"
#include "model/weights.h"

namespace nb {

// Where the forward writes and reads K/V: per layer, a pool of blocks
// [num_blocks, block_size, num_kv_heads, head_dim] f32. The engine owns the memory (a contiguous cache
// is one block per sequence; the paged cache shares the pools between sequences).
// With another dtype (f16: CPU only; int8, int4: CPU and GPU) each pool holds num_blocks blocks in that format
// (backend/kv_format.h: values, then scales and zeros, per block) and k/v point to their first byte.
struct KvPools {
  std::vector<float*> k;  // [num_layers]
  std::vector<float*> v;  // [num_layers]
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  KvCacheDType dtype = KvCacheDType::kF32;
};

// One sequence's part of a step: its num_tokens new tokens sit at positions start_pos.. and are
// consecutive in ForwardBatch::tokens.
struct SeqForward {
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  std::span<const int32_t> block_table;  // must cover positions [0, start_pos + num_tokens)
  bool want_logits = true;               // produce logits for this sequence
  // With want_logits: logits for EVERY one of its new tokens, in order, not only the last one
  // (speculative verification scores the last accepted token and k drafts in one forward).
  // ForwardBatch::all_logits turns this on for every sequence. Backends must honour both.
  bool all_logits = false;
};

// A step over one or more sequences (continuous batching): all their new tokens go through every
// matmul together; attention reads each sequence's own blocks.
struct ForwardBatch {
  std::span<const int32_t> tokens;  // [sum of num_tokens]
  std::vector<SeqForward> seqs;
  // Logits for every token of the sequences that want them (perplexity), or only their last token.
  bool all_logits = false;
  // When set: forward also writes each logits row's argmax here (ties to the lowest id, as the
  // sampler's greedy rule), and a device backend may then skip copying the logits to the host
  // (their contents are unspecified). Greedy decoding without penalties or logprobs uses it.
  int32_t* greedy_tokens = nullptr;
  // When set (greedy_tokens unset): forward also draws each logits row's token by the op
  // sample_rows (backend/ops.h) with sample_rows[r]'s settings and uniform, into sampled_tokens[r]
  // (-1: NaN/+inf or all -inf logits), and a device backend may skip copying the logits to the host
  // (their contents are then unspecified). engine/device_sampling.h says when the engine uses it.
  const SampleRowParams* sample_rows = nullptr;  // [rows]
  int32_t* sampled_tokens = nullptr;             // [rows]
  // When set on a model with a device backend: the logits stay on the device for
  // LlamaModel::logit_stats (forward's logits argument may be null). Ignored on the CPU.
  bool logits_on_device = false;

  static ForwardBatch single(std::span<const int32_t> tokens, int64_t start_pos, std::span<const int32_t> block_table,
                             bool all_logits = false) {
    ForwardBatch b;
    b.tokens = tokens;
    b.seqs.push_back({static_cast<int64_t>(tokens.size()), start_pos, block_table, true});
    b.all_logits = all_logits;
    return b;
  }
};

class LlamaModel {
 public:
  // Default for the most tokens one forward() call takes; longer prompts are fed in chunks.
  static constexpr int64_t kMaxChunkTokens = 256;

  static Result<std::unique_ptr<LlamaModel>> create(ModelWeights weights, int num_threads,
                                                    int64_t max_batch_tokens = kMaxChunkTokens);
  int64_t max_batch_tokens() const { return max_batch_tokens_; }

  const ModelConfig& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }
  ThreadPool& pool() { return pool_; }
  // The format of the KV caches made for this model (--kv-cache-dtype; f32 by default, which on a
  // GPU means the device dtype). int8 and int4 run on the CPU and the GPU; f16 is CPU only (an
  // error once a device backend is set).
  Status set_kv_cache_dtype(KvCacheDType t);
  KvCacheDType kv_cache_dtype() const { return kv_dtype_; }
  // The layout of one block of one layer's K (or V) pool in the KV caches made for this model.
  KvBlockFormat kv_block_format(int64_t block_size) const;
  // Exact mode multiplies quantized weights with f32 activations (the reference kernels) instead of
  // quantizing activations to 8 bits first; slower, used to compare logits with other implementations.
  void set_exact_matmul(bool exact) { exact_matmul_ = exact; }

  // Runs the batch, writing its K/V into `kv`. `logits` receives [rows, vocab] floats: for each
  // sequence with want_logits, in order, all its tokens' rows (all_logits) or its last token's row.
  Status forward(const ForwardBatch& batch, const KvPools& kv, float* logits);
  // After a forward with logits_on_device (device backends only): per-row next-token statistics
  // (LogitStatsParams, backend/ops.h) of its logits rows for `targets` [rows], against the last
  // logits of `ref` (a model on the same device) when ref is set; out is [rows, 4].
  Status logit_stats(const int32_t* targets, int64_t rows, const LlamaModel* ref, double* out);

  // Runs every forward on `backend` (the CUDA one) from now on; the CPU weights stay as loaded.
  void set_backend(std::unique_ptr<ForwardBackend> backend) { backend_ = std::move(backend); }
  ForwardBackend* backend() const { return backend_.get(); }
  // KV memory where forward() reads it: host memory, or the backend's device memory.
  Result<std::shared_ptr<void>> allocate_kv(int64_t nbytes);
  Status copy_kv(void* dst, const void* src, int64_t nbytes);
  // Bytes of one K/V element in the pools forward() uses: 4 (f32) on the CPU, the device dtype's on a GPU.
  int64_t kv_element_bytes() const { return backend_ ? backend_->kv_element_bytes() : 4; }

 private:
  LlamaModel(ModelWeights weights, int num_threads, int64_t max_batch_tokens);
  void matmul(const MatmulParams& p);
  void layer_forward(int64_t layer, int64_t num_tokens, const KvPools& kv);
  void build_attention_layout(const ForwardBatch& batch, const KvPools& kv);
  Status validate(const ForwardBatch& batch, const KvPools& kv) const;

  ModelWeights weights_;
  std::unique_ptr<ForwardBackend> backend_;
  ThreadPool pool_;
  bool exact_matmul_ = false;
  KvCacheDType kv_dtype_ = KvCacheDType::kF32;
  int64_t max_batch_tokens_;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  // Scratch activations for up to kMaxChunkTokens tokens.
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_;
  std::vector<int32_t> positions_;
  // The batch's attention layout, built once per forward and used by every layer.
  std::vector<int32_t> query_start_, seq_start_pos_, block_tables_;
  std::vector<int64_t> slot_mapping_;
  int64_t block_table_stride_ = 0, max_query_len_ = 0, max_context_len_ = 0;
  std::vector<float> out_rows_;  // final hidden states of the rows that want logits
};

}  // namespace nb
