// Drafters for speculative decoding: cheap proposals of the next k tokens of a sequence, verified
// by the target model in one forward (engine/spec/verify.h). Three kinds, one interface:
//  - n-gram / prompt lookup (no model): match the sequence's last n tokens earlier in the sequence
//    and propose what followed (llama.cpp's lookup decoding, vLLM's ngram proposer); a
//    deterministic proposal, so q is one-hot and Draft::q stays empty;
//  - a separate draft LlamaModel over the same tokenizer (its vocab size must equal the target's);
//  - a self-draft: the target's first N layers with its final norm and head (truncate_layers).
// Model drafters draw each draft token from their own warped distribution q (the request's
// sampling params, Sampler::distribution), with their own RNG, and return q for the verification.
//
// Called on the engine thread only; a drafter keeps per-sequence state (the draft model's KV) keyed
// by the sequence id, and finds by itself how much of it is still valid: the caller may change a
// sequence's tokens arbitrarily between calls (rejections, preemption), and calls release() when the
// sequence is gone.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "engine/sampler.h"
#include "model/weights.h"

namespace nb {
class LlamaModel;
}

namespace nb::spec {

struct DraftRequest {
  uint64_t seq_id = 0;
  std::span<const int32_t> tokens;  // the sequence so far: prompt, then generated tokens
  size_t num_prompt = 0;
  int64_t k = 0;                    // drafts wanted (the drafter may return fewer, even none)
  const SamplingParams* sampling = nullptr;  // the request's; model drafters warp q with them
};

struct Draft {
  std::vector<int32_t> tokens;  // at most k
  std::vector<float> q;         // [tokens.size(), vocab] the draft distributions; empty: one-hot
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual Result<Draft> propose(const DraftRequest& request) = 0;
  virtual void release(uint64_t seq_id) = 0;
  virtual const char* name() const = 0;
};

struct NgramOptions {
  int64_t min_n = 1;  // shortest suffix to match
  int64_t max_n = 4;  // longest; the longest suffix that matches wins, its most recent occurrence
};
Result<std::unique_ptr<Drafter>> make_ngram_drafter(const NgramOptions& options);

struct ModelDrafterOptions {
  int64_t kv_cache_bytes = 64ll << 20;  // the draft's own paged KV pool
  int64_t block_size = 16;
};
// `draft` must outlive the drafter; its vocab must equal target_vocab_size.
Result<std::unique_ptr<Drafter>> make_model_drafter(LlamaModel& draft, int64_t target_vocab_size,
                                                    const ModelDrafterOptions& options);

// The target's first num_layers layers with its embeddings, final norm and head, sharing every
// tensor (views of the same memory, nothing copied): the self-draft model's weights.
Result<ModelWeights> truncate_layers(const ModelWeights& weights, int64_t num_layers);

}  // namespace nb::spec
