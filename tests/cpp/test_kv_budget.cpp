// kv_cache_bytes_for_utilization (engine/kv/kv_budget.h): vLLM's --gpu-memory-utilization arithmetic,
// exact byte counts and the error cases with what their messages must tell the user.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "engine/kv/kv_budget.h"

namespace nb {
namespace {

constexpr int64_t kGiB = 1ll << 30;
constexpr int64_t kBlock = 3 << 20;  // 3 MiB: not a divisor of the sizes below

TEST(KvBudget, FractionOfTotalLessWhatIsInUseLessThePaddingBlock) {
  // 80 GiB device, 10 GiB in use after loading, 0.9: 72 - 10 GiB, minus the engine's extra block.
  const int64_t total = 80 * kGiB, free = 70 * kGiB;
  Result<int64_t> kv = kv_cache_bytes_for_utilization(0.9, total, free, kBlock);
  ASSERT_TRUE(kv.ok()) << kv.status().to_string();
  EXPECT_EQ(*kv, static_cast<int64_t>(0.9 * static_cast<double>(total)) - 10 * kGiB - kBlock);
  // The whole KV allocation (pool blocks + 1) stays within the fraction and wastes < 1 block of it.
  const int64_t blocks = *kv / kBlock + 1;
  EXPECT_LE(blocks * kBlock, static_cast<int64_t>(0.9 * static_cast<double>(total)) - 10 * kGiB);
  EXPECT_GT((blocks + 1) * kBlock, static_cast<int64_t>(0.9 * static_cast<double>(total)) - 10 * kGiB);
}

TEST(KvBudget, UtilizationOneGivesAllFreeMemoryButOneBlock) {
  Result<int64_t> kv = kv_cache_bytes_for_utilization(1.0, 16 * kGiB, 5 * kGiB, kBlock);
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(*kv, 5 * kGiB - kBlock);
}

TEST(KvBudget, OddSizesFloorTheFraction) {
  // floor(0.5 * 1001) = 500; in use 100; block 7: 500 - 100 - 7.
  Result<int64_t> kv = kv_cache_bytes_for_utilization(0.5, 1001, 901, 7);
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(*kv, 393);
}

TEST(KvBudget, UtilizationOutsideZeroOneIsRejected) {
  for (double u : {0.0, -0.1, 1.0000001, 2.0, 90.0}) {
    Result<int64_t> kv = kv_cache_bytes_for_utilization(u, 80 * kGiB, 70 * kGiB, kBlock);
    ASSERT_FALSE(kv.ok()) << u;
    EXPECT_EQ(kv.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(kv.status().message().find("--gpu-memory-utilization must be in (0, 1]"), std::string::npos)
        << kv.status().message();
  }
  EXPECT_FALSE(kv_cache_bytes_for_utilization(std::nan(""), 80 * kGiB, 70 * kGiB, kBlock).ok());
}

TEST(KvBudget, TooLittleLeftSaysWhatToRaise) {
  // 0.5 of 80 GiB = 40 GiB, but 45 GiB is already in use.
  Result<int64_t> kv = kv_cache_bytes_for_utilization(0.5, 80 * kGiB, 35 * kGiB, kBlock);
  ASSERT_FALSE(kv.ok());
  EXPECT_EQ(kv.status().code(), StatusCode::kResourceExhausted);
  const std::string& m = kv.status().message();
  EXPECT_NE(m.find("45.00 GiB is already in use"), std::string::npos) << m;
  EXPECT_NE(m.find("raise --gpu-memory-utilization to at least 0.563"), std::string::npos) << m;  // (45 GiB + 6 MiB) / 80 GiB
  EXPECT_NE(m.find("--kv-cache-memory"), std::string::npos) << m;
}

TEST(KvBudget, RoomForExactlyTwoBlocksIsTheEdge) {
  // allowed - used == 2 blocks: one pool block + the padding block fit; one byte less does not.
  const int64_t total = 1000 * kBlock, used = 100 * kBlock;
  const double u = 102.0 / 1000.0;  // floor(u * total) may round below 102 blocks: use the exact product
  const int64_t allowed = static_cast<int64_t>(u * static_cast<double>(total));
  Result<int64_t> kv = kv_cache_bytes_for_utilization(u, total, total - used, kBlock);
  if (allowed - used >= 2 * kBlock) {
    ASSERT_TRUE(kv.ok());
    EXPECT_EQ(*kv, allowed - used - kBlock);
  } else {
    EXPECT_FALSE(kv.ok());
  }
  Result<int64_t> one = kv_cache_bytes_for_utilization(1.0, total, 2 * kBlock, kBlock);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, kBlock);
  EXPECT_FALSE(kv_cache_bytes_for_utilization(1.0, total, 2 * kBlock - 1, kBlock).ok());
}

TEST(KvBudget, DeviceFullEvenAtOneSaysSo) {
  Result<int64_t> kv = kv_cache_bytes_for_utilization(1.0, 80 * kGiB, kBlock, kBlock);
  ASSERT_FALSE(kv.ok());
  EXPECT_NE(kv.status().message().find("the device is too full"), std::string::npos) << kv.status().message();
}

TEST(KvBudget, BadReadingsAreErrors) {
  EXPECT_EQ(kv_cache_bytes_for_utilization(0.9, 0, 0, kBlock).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(kv_cache_bytes_for_utilization(0.9, kGiB, 2 * kGiB, kBlock).ok());  // free > total
  EXPECT_FALSE(kv_cache_bytes_for_utilization(0.9, kGiB, -1, kBlock).ok());
  EXPECT_FALSE(kv_cache_bytes_for_utilization(0.9, kGiB, kGiB, 0).ok());
}

}  // namespace
}  // namespace nb
