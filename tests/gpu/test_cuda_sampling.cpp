// cuda::argmax vs cpu::ref::argmax on random rows with planted ties and NaNs (exact: integer output);
// cuda::logit_stats vs cpu::ref::logit_stats (both in double: they differ by summation order only).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

class CudaArgmax : public gpu_test::CudaTest {};

TEST_F(CudaArgmax, MatchesReferenceWithTiesAndNans) {
  for (const int64_t cols : {1, 7, 255, 256, 257, 32000, 49152}) {
    const int64_t rows = 37;
    std::vector<float> x = gpu_test::random_normal(static_cast<size_t>(rows * cols), 900 + static_cast<uint32_t>(cols));
    std::mt19937 rng(gpu_test::seed(17 + static_cast<uint32_t>(cols)));
    std::uniform_int_distribution<int64_t> col(0, cols - 1);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = x.data() + r * cols;
      if (r % 3 == 1) {  // a tie for the maximum at two (or more) places: the lower index must win
        const int64_t a = col(rng), b = col(rng);
        row[a] = row[b] = 100.f;
      }
      if (r % 5 == 2) row[col(rng)] = NAN;  // NaN never wins
      if (r % 7 == 3) row[0] = NAN;
      if (r == rows - 1) for (int64_t i = 0; i < cols; ++i) row[i] = -1.f;  // all equal: index 0
    }
    std::vector<int32_t> want(static_cast<size_t>(rows));
    cpu::ref::argmax({x.data(), want.data(), rows, cols});
    cuda::DeviceBuffer dx = upload(x);
    cuda::DeviceBuffer dout = poisoned(static_cast<size_t>(rows) * 4);
    NB_ASSERT_OK(cuda::argmax({dx.as<float>(), dout.as<int32_t>(), rows, cols}, ctx()));
    std::vector<int32_t> got(static_cast<size_t>(rows));
    NB_ASSERT_OK(cuda::copy_to_host(got.data(), dout.data(), got.size() * 4, ctx().stream()));
    NB_ASSERT_OK(ctx().synchronize());
    EXPECT_EQ(got, want) << "cols " << cols;
  }
}

class CudaLogitStats : public gpu_test::CudaTest {};

// Rows of a "model" and a nearby "reference" (logits + noise of stddev `noise`, so KL spans ~1e-6 .. 1),
// with -inf entries (masked tokens) in both, planted argmax ties, and with and without the reference.
TEST_F(CudaLogitStats, MatchesReference) {
  for (const int64_t vocab : {1, 255, 256, 1000, 49152}) {
    const int64_t rows = 41;
    std::vector<float> x = gpu_test::random_normal(static_cast<size_t>(rows * vocab), 300 + static_cast<uint32_t>(vocab), 3.f);
    std::vector<float> noise = gpu_test::random_normal(x.size(), 400 + static_cast<uint32_t>(vocab));
    std::vector<float> y(x.size());
    std::mt19937 rng(gpu_test::seed(23 + static_cast<uint32_t>(vocab)));
    std::uniform_int_distribution<int64_t> col(0, vocab - 1);
    std::vector<int32_t> targets(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = std::pow(10.f, -3.f + 3.f * static_cast<float>(r % 4) / 3.f);  // 1e-3 .. 1
      for (int64_t v = 0; v < vocab; ++v) {
        const size_t i = static_cast<size_t>(r * vocab + v);
        y[i] = x[i] + scale * noise[i];
      }
      targets[static_cast<size_t>(r)] = static_cast<int32_t>(col(rng));
      if (vocab > 2 && r % 5 == 1) {  // q = 0 (not at the target, whose NLL would be inf): no KL term
        y[static_cast<size_t>(r * vocab + (targets[static_cast<size_t>(r)] + 1) % vocab)] = -INFINITY;
      }
      if (vocab > 2 && r % 6 == 2) {  // an argmax tie: the lower id wins on both sides
        const int64_t a = col(rng), b = col(rng);
        x[static_cast<size_t>(r * vocab + a)] = x[static_cast<size_t>(r * vocab + b)] = 50.f;
      }
    }
    for (const bool with_ref : {true, false}) {
      const LogitStatsParams host{x.data(), with_ref ? y.data() : nullptr, targets.data(), nullptr, rows, vocab};
      std::vector<double> want(static_cast<size_t>(rows * 4));
      LogitStatsParams hp = host;
      hp.out = want.data();
      cpu::ref::logit_stats(hp);
      cuda::DeviceBuffer dx = upload(x), dy = upload(y);
      cuda::DeviceBuffer dt = upload(targets);
      cuda::DeviceBuffer dout = poisoned(want.size() * 8);
      NB_ASSERT_OK(cuda::logit_stats({dx.as<float>(), with_ref ? dy.as<float>() : nullptr, dt.as<int32_t>(),
                                      dout.as<double>(), rows, vocab},
                                     ctx()));
      std::vector<double> got(want.size());
      NB_ASSERT_OK(cuda::copy_to_host(got.data(), dout.data(), got.size() * 8, ctx().stream()));
      NB_ASSERT_OK(ctx().synchronize());
      for (size_t i = 0; i < want.size(); ++i) {
        // Double sums of up to 49152 terms in two orders differ by ~1e-13 relative; the GPU's KL is a
        // difference of two quantities of the size of the log-sum-exp (~25 here: E_q[y - x] and
        // lse y - lse x), hence an absolute 1e-10 beside 1e-9 relative. Agreement is exact.
        const double tol = i % 4 == 3 ? 0.0 : 1e-10 + 1e-9 * std::abs(want[i]);
        EXPECT_NEAR(got[i], want[i], tol) << "vocab " << vocab << " row " << i / 4 << " stat " << i % 4
                                          << (with_ref ? " with ref" : " no ref");
      }
    }
  }
}

}  // namespace
}  // namespace nb
