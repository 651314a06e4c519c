// SequenceRunner: generation for one sequence on a contiguous KV cache (generate, chat, bench).
// It remembers which tokens have K/V in the cache, so a new context that extends or shares a prefix
// with the previous one (a chat's next turn) recomputes only the tokens after the common prefix.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/status.h"
#include "engine/contiguous_kv.h"
#include "engine/sampler.h"
#include "model/llama.h"

namespace nb {

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  std::vector<int32_t> stop_ids;  // generation ends after one of these is sampled (it is not emitted)
};

enum class StopReason { kMaxTokens, kStopToken, kContextFull, kCallback };
const char* stop_reason_name(StopReason r);

struct GenerateStats {
  int64_t num_prompt_tokens = 0;   // context tokens given
  int64_t num_reused_tokens = 0;   // of those, already in the KV cache
  int64_t num_generated = 0;
  double prefill_seconds = 0;      // computing the non-reused context tokens
  double decode_seconds = 0;       // everything after the first sampled token
  StopReason stop = StopReason::kMaxTokens;
};

class SequenceRunner {
 public:
  // capacity: most tokens (context + generated) the sequence may hold; at most the model's context.
  SequenceRunner(LlamaModel& model, int64_t capacity);

  // Makes `context` the sequence (reusing the cached common prefix), then samples up to
  // max_new_tokens tokens. on_token(id) is called for each emitted token; returning false stops.
  Result<GenerateStats> generate(std::span<const int32_t> context, Sampler& sampler, const GenerateOptions& options,
                                 const std::function<bool(int32_t)>& on_token);

  // Computes K/V for all tokens and returns the last token's logits (used by generate and bench).
  Result<std::span<const float>> evaluate(std::span<const int32_t> context);

  // generate() draws on the model's device when engine/device_sampling.h allows (NIBBLE_GPU_SAMPLING=0: never).

  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t capacity() const { return capacity_; }
  void reset() { tokens_.clear(); num_cached_ = 0; }

 private:
  LlamaModel& model_;
  int64_t capacity_;
  Result<ContiguousKvCache> kv_;  // an allocation failure is reported by evaluate()
  std::vector<int32_t> tokens_;  // the sequence; the first num_cached_ have K/V in the cache
  int64_t num_cached_ = 0;
  int64_t last_reused_ = 0;  // tokens the last evaluate() found already cached
  std::vector<float> logits_;

  // evaluate(), with the last token's row drawn on the device when `row` is set (into *token).
  Result<std::span<const float>> evaluate_drawing(std::span<const int32_t> context, const SampleRowParams* row,
                                                  int32_t* token);
};

}  // namespace nb
