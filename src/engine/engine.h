// Engine: owns requests and runs the step loop on its own thread (continuous batching over a paged
// KV cache). Thread-safe API: submit() and cancel() may be called from any thread; outputs are
// delivered through each request's callback ON THE ENGINE THREAD — callbacks must be quick and must
// not block (push to a queue and wake your own loop). No global state: several engines may coexist.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/sampler.h"

namespace nb {

class LlamaModel;
namespace spec {
class Drafter;
}

using RequestId = uint64_t;

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

struct GenerationRequest {
  std::vector<int32_t> prompt;     // token ids (BOS/template already applied)
  SamplingParams sampling;
  int64_t max_tokens = 16;         // new tokens at most
  std::vector<int32_t> stop_ids;   // sampling one of these finishes with kStop (the id is not emitted)
  bool logprobs = false;           // report each token's logprob (+ sampling.top_logprobs alternatives)
  bool speculative = true;         // use the engine's drafter (when it has one) for this request
};

// One step's output for a request: the tokens generated in that step (usually one; several with
// speculative decoding) and, when finished, why. `finished` outputs are the last for the request.
struct RequestOutput {
  RequestId id = 0;
  std::vector<int32_t> tokens;
  std::vector<SampleOutput> logprobs;  // parallel to tokens when the request asked for logprobs
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;                   // when finish_reason == kError
  int64_t num_prompt_tokens = 0;
  int64_t num_cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int64_t num_generated = 0;             // so far
  // Speculative decoding, so far: drafts verified, drafts accepted, verification steps, and the
  // steps that rejected a draft (the per-draft acceptance rate is accepted / (accepted + rejections)).
  int64_t num_draft_tokens = 0, num_accepted_tokens = 0, num_spec_steps = 0, num_spec_rejections = 0;
};

using OutputCallback = std::function<void(const RequestOutput&)>;

enum class BatchingPolicy { kContinuous, kStatic };
enum class KvLayout { kPaged, kContiguous };

struct EngineConfig {
  int64_t kv_cache_bytes = 256ll << 20;   // --kv-cache-memory
  int64_t block_size = 16;                // tokens per KV block
  int64_t max_num_seqs = 256;             // running sequences at most
  int64_t max_batched_tokens = 512;       // tokens per step (chunked-prefill budget)
  bool enable_prefix_cache = true;
  BatchingPolicy batching = BatchingPolicy::kContinuous;
  KvLayout kv_layout = KvLayout::kPaged;  // kContiguous: each request reserves its max length up front
  // Speculative decoding (engine/spec/): each step, running decodes of requests with
  // `speculative` get up to num_speculative_tokens drafts, verified in the same forward.
  std::shared_ptr<spec::Drafter> drafter;  // null: off
  int64_t num_speculative_tokens = 4;      // K (the most, when adaptive)
  // Adaptive K per sequence (the "heuristic" schedule of Hugging Face assisted generation): +2 after
  // a step that accepted every draft, -1 (down to 1) after one that rejected a draft.
  bool adaptive_speculative_tokens = false;
  int64_t speculative_max_running = 4;     // off while more sequences run (it costs throughput there)
};

struct EngineStats {
  int64_t num_waiting = 0, num_running = 0;
  int64_t num_blocks_total = 0, num_blocks_used = 0, num_blocks_free = 0;
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;  // in tokens
  int64_t num_preemptions = 0;
  int64_t num_blocks_allocated = 0;         // blocks claimed fresh (not from the prefix cache), total
  int64_t num_steps = 0;
  int64_t num_prompt_tokens_computed = 0;   // prefill work actually done (excludes cache hits)
  int64_t num_generated_tokens = 0;
  int64_t num_padding_tokens = 0;           // static batching: rows computed for finished requests' slots
  int64_t num_requests_finished = 0;
  int64_t num_spec_steps = 0;               // verification steps (a sequence's step with drafts)
  int64_t num_draft_tokens = 0, num_accepted_tokens = 0, num_spec_rejections = 0;
  // Where the engine thread's time goes (wall clock, seconds since start): the model's forward in
  // steps that ran prompt tokens (prefill chunks, maybe with decodes) and in steps that did not
  // (decode only), and the rest of every step (scheduling, batch assembly, sampling on the host,
  // emitting outputs). Time outside steps is the engine waiting for work. A step's counts and forward
  // time are in the stats before its outputs reach the callbacks; its host time only after them.
  int64_t num_prefill_steps = 0;            // steps that ran at least one prompt token
  double prefill_forward_seconds = 0, decode_forward_seconds = 0, step_host_seconds = 0;
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(LlamaModel& model, const EngineConfig& config);
  ~Engine();  // stops the loop; pending requests finish with kCancelled

  // Validates and queues a request (errors: empty prompt, prompt + max_tokens beyond the context,
  // bad sampling params, more KV than the whole cache). The callback receives every output.
  Result<RequestId> submit(GenerationRequest request, OutputCallback callback);
  // Cancels a request; its blocks are freed at the start of the next step and its callback gets a
  // final output with kCancelled. Unknown or finished ids are ignored.
  void cancel(RequestId id);
  EngineStats stats() const;
  const EngineConfig& config() const;
  const LlamaModel& model() const;

 private:
  Engine() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nb
