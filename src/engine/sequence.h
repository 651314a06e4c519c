// Sequence: one request's state inside the engine (owned by the engine, scheduled by the Scheduler).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/engine.h"
#include "engine/sampler.h"

namespace nb {

struct Sequence {
  enum class State { kWaiting, kRunning, kFinished };

  RequestId id = 0;
  uint64_t arrival = 0;          // FCFS order; preemption takes the newest first
  GenerationRequest request;
  OutputCallback callback;
  Sampler sampler;
  std::vector<int32_t> tokens;   // prompt + generated
  int64_t num_prompt = 0;        // the original prompt's length
  int64_t num_computed = 0;      // tokens whose K/V is in the cache
  int64_t num_generated = 0;
  int64_t num_cached_prompt = 0; // prompt tokens the prefix cache served at first admission
  bool admitted_once = false;
  State state = State::kWaiting;
  // Speculative decoding: the last num_draft entries of `tokens` are draft tokens (not yet
  // verified) with their draft distributions [num_draft, vocab] (empty: one-hot proposals).
  int64_t num_draft = 0;
  std::vector<float> draft_q;
  int64_t num_draft_tokens = 0;     // drafts proposed so far (verified, accepted or not)
  int64_t num_accepted_tokens = 0;  // of those, accepted
  int64_t num_spec_steps = 0;       // verification steps
  int64_t num_spec_rejections = 0;  // of those, steps that rejected a draft
  int64_t spec_k = 0;               // adaptive K: drafts to ask for next (0: not started)

  Sequence(RequestId rid, uint64_t order, GenerationRequest req, OutputCallback cb, Sampler s)
      : id(rid), arrival(order), request(std::move(req)), callback(std::move(cb)), sampler(std::move(s)) {
    tokens = request.prompt;
    num_prompt = static_cast<int64_t>(tokens.size());
  }
  // Tokens still to run through the model before the next sample (the whole prompt at first, one
  // token while decoding, everything after a preemption).
  int64_t num_pending() const { return static_cast<int64_t>(tokens.size()) - num_computed; }
  bool is_prefilling() const { return num_pending() - num_draft > 1; }
  // Removes unverified draft tokens (before a preemption, or when the step has no room for them).
  void drop_draft() {
    tokens.resize(tokens.size() - static_cast<size_t>(num_draft));
    num_draft = 0;
    draft_q.clear();
  }
};

}  // namespace nb
