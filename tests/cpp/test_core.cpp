#include <gtest/gtest.h>
#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "core/thread_pool.h"

namespace nb {
namespace {

// Independent reference: the CPU's F16C conversion instructions.
TEST(DType, Fp16MatchesF16cOnAllHalfValues) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ours = fp16_to_fp32(static_cast<uint16_t>(h));
    const float hw = _cvtsh_ss(static_cast<uint16_t>(h));
    if (std::isnan(hw)) {
      EXPECT_TRUE(std::isnan(ours)) << h;
    } else {
      EXPECT_EQ(ours, hw) << h;
      EXPECT_EQ(fp32_to_fp16(ours), h) << h;  // round trip is exact for every non-NaN half
    }
  }
}

TEST(DType, Fp32ToFp16RoundsLikeF16c) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    const uint16_t hw = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    ASSERT_EQ(fp32_to_fp16(f), hw) << f;
  }
}

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly halfway between bf16 neighbours 1 and 1+2^-7: ties to even -> 1.
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
}

TEST(DType, BlockQuantRoundTripErrorIsBounded) {
  std::mt19937 rng(2);
  std::normal_distribution<float> nd;
  std::vector<float> x(256), y(256);
  for (auto& v : x) v = nd(rng);
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    std::vector<uint8_t> buf(row_bytes(t, 256));
    quantize_row(t, x.data(), buf.data(), 256);
    dequantize_row(t, buf.data(), y.data(), 256);
    for (int b = 0; b < 256 / 32; ++b) {
      float mn = x[b * 32], mx = x[b * 32];
      for (int j = 0; j < 32; ++j) { mn = std::min(mn, x[b * 32 + j]); mx = std::max(mx, x[b * 32 + j]); }
      const float amax = std::max(std::fabs(mn), std::fabs(mx));
      // Half a quantization step, plus the f16 rounding of the scale (and min) times the largest code.
      const float step = t == DType::kQ8_0 ? amax / 127 : t == DType::kQ4_0 ? amax / 8 : (mx - mn) / 15;
      const float tol = 0.5f * step + 16 * amax * 1e-3f + 1e-6f;
      for (int j = 0; j < 32; ++j) ASSERT_NEAR(y[b * 32 + j], x[b * 32 + j], tol) << dtype_name(t);
    }
  }
}

TEST(Status, ResultCarriesValueOrError) {
  Result<int> good = 3;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 3);
  Result<int> bad = invalid_argument("n must be positive; pass -n 16");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().to_string(), "invalid argument: n must be positive; pass -n 16");
}

TEST(ThreadPool, ParallelForCoversRangeExactlyOnce) {
  ThreadPool pool(3);
  for (int64_t n : {1, 2, 7, 1000, 4097}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    for (int rep = 0; rep < 50; ++rep) {
      pool.parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
      }, 4);
    }
    for (auto& h : hits) ASSERT_EQ(h.load(), 50);
  }
}

}  // namespace
}  // namespace nb
