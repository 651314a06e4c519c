// Shared by the sample_rows tests (tests/cpp: CPU reference vs Sampler; tests/gpu: CUDA vs the
// reference): where the CDF edges of the Sampler's distribution lie, to tell a rounding-level
// disagreement (u within `tol` of an edge between the two tokens) from a wrong token.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "backend/ops.h"
#include "engine/sampler.h"

namespace nb::sampling_test {

inline SamplingParams params_of(const SampleRowParams& r) {
  SamplingParams p;
  p.temperature = r.temperature;
  p.top_k = r.top_k;
  p.top_p = r.top_p;
  p.min_p = r.min_p;
  return p;
}

// True if tokens a and b (a != b) can both be right for uniform u: some CDF edge (in id order) of
// the Sampler's distribution between them lies within tol of u.
inline bool near_edge_between(std::span<const float> logits, const SampleRowParams& r, int32_t a, int32_t b,
                              double tol) {
  if (a < 0 || b < 0) return false;
  auto s = Sampler::create(params_of(r));
  std::vector<float> probs(logits.size());
  if (!s.ok() || !s->distribution(logits, {}, probs).ok()) return false;
  const int32_t lo = std::min(a, b), hi = std::max(a, b);
  double cum = 0.0;
  for (int32_t i = 0; i < hi; ++i) {
    cum += probs[static_cast<size_t>(i)];
    if (i >= lo && std::fabs(cum - r.uniform) < tol) return true;  // the edge after token i
  }
  return false;
}

// The uniforms a Sampler seeded with `seed` draws, in order (Sampler::next_uniform's formula).
class UniformMirror {
 public:
  explicit UniformMirror(uint64_t seed) : rng_(seed) {}
  double next() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

 private:
  std::mt19937_64 rng_;
};

}  // namespace nb::sampling_test
