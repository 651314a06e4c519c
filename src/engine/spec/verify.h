// Speculative sampling's verification step, exactly as Leviathan et al. 2023 (Algorithm 1) and
// Chen et al. 2023 (Algorithm 2) define it. For draft tokens x_1..x_k drawn from the draft's
// distributions q_1..q_k and the target's distributions p_1..p_{k+1} at the same positions (all
// from ONE target forward over the k+1 positions):
//   for i = 1..k: accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
//                 on the first rejection emit a token drawn from normalise(max(0, p_i - q_i)) and stop;
//   all k accepted: emit a bonus token drawn from p_{k+1}.
// Every emitted token is then distributed exactly as sampling the target alone would give, for any q.
//
// p and q are the WARPED distributions (penalties, temperature, top-k/top-p/min-p applied the same way
// to both: Sampler::distribution). A deterministic proposal (n-gram lookup, no draft model) is q =
// one-hot at x_i: pass an empty q. Then x_i is accepted with probability p_i(x_i) and the residual is
// p_i with x_i removed. Greedy decoding is the case where p (and q) are one-hot at the argmax: a draft
// token is accepted iff it is the target's argmax, and the correction is the argmax.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/status.h"

namespace nb::spec {

struct Verification {
  std::vector<int32_t> tokens;  // the accepted drafts, then one token from the target (correction or bonus)
  int64_t num_accepted = 0;     // drafts accepted (tokens.size() - 1)
};

// draft: [k] proposed tokens; q: [k, vocab] draft distributions, or empty for a deterministic proposal;
// p: [k + 1, vocab] target distributions; uniform() returns draws in [0, 1) (the sequence's RNG).
// Distributions need not be exactly normalised (rounding); each row must have positive mass.
Result<Verification> verify_draft(std::span<const int32_t> draft, std::span<const float> q, std::span<const float> p,
                                  int64_t vocab, const std::function<double()>& uniform);

// Draws an id from the unnormalised weights w (>= 0, positive total) with one uniform draw u in [0, 1):
// the first id whose cumulative weight exceeds u * total.
int32_t draw_from_weights(std::span<const float> w, double u);

}  // namespace nb::spec
