// Sampler: turns one sequence's logits into the next token.
//
// Processing order (the one vLLM and llama.cpp use):
//   penalties -> temperature -> top-k -> top-p -> min-p -> draw
// temperature 0 means greedy: the argmax of the penalised logits, ties going to the lowest id.
// The draw is the inverse CDF of distribution() in id order: a uniform u in [0, 1) picks the first
// surviving id, walking ids upward, whose running weight exceeds u x the total. The device op
// sample_rows (backend/ops.h) states the same rule; its CPU reference is checked against sample().
//
// Determinism: each Sampler owns a std::mt19937_64 seeded with SamplingParams::seed. The engine's
// output is fully specified by the C++ standard, and uniforms are made from its raw bits here (not
// with std::uniform_real_distribution, whose algorithm is implementation-defined), so a given seed
// gives the same tokens run after run and across standard libraries for the same logits. Caveat:
// a build for another CPU may round exp() differently in the last bit (FMA contraction), which
// changes a draw only when the uniform lands within ~1e-7 of a bucket boundary.
//
// Logprobs: reported values are the log-softmax of the logits after penalties and temperature and
// BEFORE top-k/top-p/min-p truncation (for temperature 0, after penalties at temperature 1). This is
// the model's distribution as OpenAI reports it; the token actually drawn was drawn from the
// truncated, renormalised distribution, so its reported logprob is the untruncated one.
//
// Cost per token for a vocab of V, all O(V) with no full sort: one copy, the sparse penalties, a
// scale, a max and a vectorized exp pass (plus sums per 512-id block, so the draw walks one block).
// top-k/top-p first find a weight threshold (relative to the top token) that keeps enough tokens
// or mass, with vectorized counting passes, then select among those few candidates
// (nth_element / bisection); a nucleus of more than 4096 tokens is found by bisecting on the
// weight instead. min-p is one pass. Ties are broken by lower id everywhere, so results do not
// depend on the standard library's selection algorithms.
//
// Not thread-safe: one Sampler per sequence.
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "core/status.h"

namespace nb {

struct SamplingParams {
  float temperature = 1.0f;        // 0 = greedy
  int top_k = 0;                   // 0 = off
  float top_p = 1.0f;              // (0, 1]; 1 = off
  float min_p = 0.0f;              // [0, 1]; 0 = off; keep tokens with p >= min_p * p_max
  // CTRL / llama.cpp style: for each distinct token among the last penalty_last_n tokens of the
  // history (prompt included), a positive logit is divided by it and a negative one multiplied.
  float repetition_penalty = 1.0f;
  // OpenAI semantics over the GENERATED tokens only: logit -= presence * [count > 0] + frequency * count.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int penalty_last_n = 64;         // window for repetition_penalty; 0 = none, -1 = whole history
  uint64_t seed = 0;
  int top_logprobs = 0;            // how many top alternatives to report (0..kMaxTopLogprobs)

  static constexpr int kMaxTopLogprobs = 20;

  // Checks every field; the message names the field, the valid range and the value given.
  Status validate() const;
};

// The tokens one sequence has seen so far, oldest first: the prompt, then the generated tokens.
struct TokenHistory {
  std::span<const int32_t> tokens;
  size_t num_prompt = 0;  // tokens[0, num_prompt) are the prompt; the rest were generated
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleOutput {
  float logprob = 0.0f;             // the chosen token's logprob (see the header comment)
  std::vector<TokenLogprob> top;    // top_logprobs entries, most likely first, ties by lower id
};

class Sampler {
 public:
  // Validates the params; the RNG starts from params.seed.
  static Result<Sampler> create(const SamplingParams& params);

  // Picks the next token. `logits` has one entry per vocab id. History ids outside the vocab are
  // an error (they would mean the caller mixed up sequences). When `out` is given, it receives the
  // chosen token's logprob and params.top_logprobs alternatives.
  Result<int32_t> sample(std::span<const float> logits, TokenHistory history = {},
                         SampleOutput* out = nullptr);

  // The logits after penalties only, as sample() computes them (exposed for tests and for
  // speculative decoding, which needs the same processed distribution).
  Status apply_penalties(std::span<float> logits, TokenHistory history);

  // The distribution sample() draws from, written to `probs` (one entry per vocab id, summing to 1):
  // penalties, temperature, then top-k/top-p/min-p and renormalisation; greedy (temperature 0) gives
  // a one-hot at the argmax. Speculative decoding warps the target's and the draft's logits with it.
  Status distribution(std::span<const float> logits, TokenHistory history, std::span<float> probs);
  // The logprobs sample() would report had it chosen `token` from these logits.
  Status logprobs(std::span<const float> logits, TokenHistory history, int32_t token, SampleOutput* out);
  // A uniform draw in [0, 1) from this sampler's RNG (speculative acceptance tests, residual draws).
  double uniform() { return next_uniform(); }

  const SamplingParams& params() const { return params_; }

 private:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

  double next_uniform();  // in [0, 1), from 53 raw bits
  // work_ = logits after penalties and temperature (greedy: penalties only), checked; returns their max.
  Result<float> prepare(std::span<const float> logits, TokenHistory history);
  // probs_[i] = exp(work_[i] - mx), block_sums_ per kBlock ids; returns the total.
  double exp_pass(float mx);
  // cand_ = a most-likely prefix of the vocab holding >= min_count ids and >= min_mass weight.
  void collect_candidates(size_t min_count, double min_mass);
  void collect_at_least(float t);  // cand_ = ids with probs_ >= t, in id order
  void mask_below(float t);        // probs_[i] = 0 where < t; block sums recomputed
  // Top-p over the whole vocab when the nucleus is large: cand_ = the nucleus, unordered.
  void nucleus_by_threshold(double target);
  // Applies top-k/top-p/min-p: cand_ = the survivors; returns their weight, or -1 when no
  // truncation is active (draw from the whole vocab).
  double truncate();
  int32_t draw_from_vocab(double total);
  int32_t draw_from_candidates(double total);
  void fill_logprobs(int32_t chosen, float mx, bool have_probs, SampleOutput* out);

  static constexpr size_t kMaxSelectCandidates = 4096;  // above: nucleus_by_threshold
  static constexpr size_t kBlock = 512;  // ids per block sum: the draw walks one block, not the vocab

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Scratch reused across calls so the hot path does not allocate.
  std::vector<float> work_;       // [vocab] processed logits
  std::vector<float> probs_;      // [vocab] exp(logit - max): unnormalised probabilities
  std::vector<double> block_sums_;  // [ceil(vocab / kBlock)] sums of probs_
  double total_weight_ = 0.0;       // sum of probs_ before truncation (the logprob normaliser)
  std::vector<int32_t> cand_;     // surviving candidate ids
  std::vector<int32_t> ties_;     // tokens in the top-p threshold band; the draw's block of candidates
  std::vector<double> cand_block_sums_;  // [ceil(vocab / kBlock)] candidate weight per block (the draw)
  std::vector<int32_t> counts_;   // sorted history ids, for counting
};

}  // namespace nb
