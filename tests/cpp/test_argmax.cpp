// cpu::ref::argmax (the greedy fast path the engine uses when no request needs logits) agrees with
// the Sampler's greedy rule (temperature 0: argmax, ties to the lowest id) on random rows with ties.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "engine/sampler.h"

namespace nb {
namespace {

TEST(Argmax, AgreesWithGreedySampler) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 3.f);
  SamplingParams sp;
  sp.temperature = 0;
  auto sampler = Sampler::create(sp);
  ASSERT_TRUE(sampler.ok());
  for (const int64_t cols : {1, 2, 33, 1000, 49152}) {
    const int64_t rows = 50;
    std::vector<float> x(static_cast<size_t>(rows * cols));
    for (float& v : x) v = nd(rng);
    std::uniform_int_distribution<int64_t> col(0, cols - 1);
    for (int64_t r = 0; r < rows; r += 2) {  // ties for the top in every other row
      const int64_t a = col(rng), b = col(rng);
      x[static_cast<size_t>(r * cols + a)] = x[static_cast<size_t>(r * cols + b)] = 50.f;
    }
    // Rounded to a coarse grid in some rows: many ties everywhere.
    for (int64_t i = 0; i < cols; ++i) x[static_cast<size_t>(cols + i)] = static_cast<float>(static_cast<int>(x[static_cast<size_t>(cols + i)]));
    std::vector<int32_t> got(static_cast<size_t>(rows));
    cpu::ref::argmax({x.data(), got.data(), rows, cols});
    for (int64_t r = 0; r < rows; ++r) {
      auto want = sampler->sample(std::span<const float>(x.data() + r * cols, static_cast<size_t>(cols)));
      ASSERT_TRUE(want.ok());
      EXPECT_EQ(got[static_cast<size_t>(r)], *want) << "cols " << cols << " row " << r;
    }
  }
}

}  // namespace
}  // namespace nb
