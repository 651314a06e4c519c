// cpu::ref::sample_rows (the rule of backend/ops.h, written with a full sort) against the engine's
// Sampler (its fast paths: thresholds, nth_element, block sums) on random logits: the Sampler's RNG
// is mirrored so both draw with the same uniform, and every draw must give the same token unless
// the uniform lies within 1e-6 of a CDF edge between the two tokens (rounding of the sums).
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "engine/sampler.h"
#include "sampling_test_util.h"

namespace nb {
namespace {

std::vector<float> random_logits(size_t vocab, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(vocab);
  for (float& x : v) x = nd(rng);
  // Exact ties (the order breaks them by id) and a masked token.
  for (size_t i = 0; i + 7 < vocab; i += vocab / 5) v[i + 7] = v[i];
  v[vocab / 2] = -INFINITY;
  return v;
}

TEST(SampleRowsRef, SameTokenAsSamplerForTheSameUniform) {
  const std::vector<SampleRowParams> settings = {
      {1.0f, 0, 1.0f, 0.0f, 0}, {0.8f, 0, 1.0f, 0.0f, 0},   {0.8f, 40, 0.9f, 0.05f, 0}, {0.7f, 0, 0.9f, 0.0f, 0},
      {1.2f, 0, 0.5f, 0.2f, 0}, {1.0f, 0, 1.0f, 0.1f, 0},   {0.6f, 12, 1.0f, 0.0f, 0},  {1.0f, 1, 1.0f, 0.0f, 0},
      {0.0f, 0, 1.0f, 0.0f, 0}, {1.5f, 5000, 0.99f, 0.0f, 0}, {0.9f, 0, 0.999f, 0.0f, 0}};
  int draws = 0, edge_cases = 0;
  for (size_t vocab : {size_t{50}, size_t{1000}, size_t{32000}}) {
    for (float scale : {1.0f, 4.0f}) {
      const std::vector<float> logits = random_logits(vocab, scale, static_cast<uint32_t>(vocab) + (scale > 2 ? 1 : 0));
      for (size_t c = 0; c < settings.size(); ++c) {
        SampleRowParams row = settings[c];
        SamplingParams sp = sampling_test::params_of(row);
        sp.seed = 1000 + c;
        auto sampler = Sampler::create(sp);
        ASSERT_TRUE(sampler.ok());
        sampling_test::UniformMirror mirror(sp.seed);
        const int n = vocab > 10000 ? 60 : 300;
        for (int d = 0; d < n; ++d) {
          row.uniform = row.temperature == 0.0f ? 0.0 : mirror.next();
          auto want = sampler->sample(logits);
          ASSERT_TRUE(want.ok());
          int32_t got = -2;
          cpu::ref::sample_rows({logits.data(), &row, &got, 1, static_cast<int64_t>(vocab)});
          ++draws;
          if (got == *want) continue;
          ASSERT_TRUE(sampling_test::near_edge_between(logits, row, got, *want, 1e-6))
              << "vocab " << vocab << " scale " << scale << " setting " << c << " draw " << d << ": reference " << got
              << ", Sampler " << *want << ", u " << row.uniform;
          ++edge_cases;
        }
      }
    }
  }
  std::printf("  %d draws, %d differ at a CDF edge (|u - edge| < 1e-6)\n", draws, edge_cases);
  EXPECT_LE(edge_cases, 2);
}

TEST(SampleRowsRef, InvalidLogitsGiveMinusOne) {
  std::vector<float> x = {0.5f, NAN, 1.0f, -INFINITY, INFINITY, -INFINITY};
  const SampleRowParams rows[3] = {{0.8f, 0, 1.0f, 0.0f, 0.5}, {0.8f, 0, 1.0f, 0.0f, 0.5}, {0.0f, 0, 1.0f, 0.0f, 0.0}};
  const float* base[3] = {x.data(), x.data() + 2, x.data() + 3};  // NaN; +inf; all -inf (greedy)
  const int64_t len[3] = {3, 3, 1};
  for (int i = 0; i < 3; ++i) {
    int32_t out = 7;
    cpu::ref::sample_rows({base[i], &rows[i], &out, 1, len[i]});
    EXPECT_EQ(out, -1) << i;
  }
}

}  // namespace
}  // namespace nb
