// BlockManager scenario tests: expected values are worked out by hand from the contract in
// block_manager.h (block counts, LRU order, which blocks are shared), not taken from a run.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "engine/kv/block_manager.h"

namespace nb {
namespace {

std::vector<int32_t> iota_tokens(int n, int32_t start) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

void expect_ok(const BlockManager& bm) {
  const Status st = bm.check_invariants();
  EXPECT_TRUE(st.ok()) << st.to_string();
}

// The acceptance figure: 16 requests sharing a 512-token system prompt (+16 distinct tokens each),
// admitted one after another (each after the previous one's prefill committed its blocks).
TEST(BlockManager, SharedSystemPromptUsesAnEighthOfBlocksAndPrefill) {
  constexpr int kBlock = 16, kSystem = 512, kSuffix = 16, kRequests = 16;
  auto run = [&](bool cache, int64_t* computed) {
    BlockManager bm(4096, kBlock, cache);
    *computed = 0;
    for (int r = 0; r < kRequests; ++r) {
      std::vector<int32_t> prompt = iota_tokens(kSystem, 1000);
      for (int32_t t : iota_tokens(kSuffix, 100000 + r * kSuffix)) prompt.push_back(t);
      Result<int64_t> cached = bm.allocate(static_cast<SeqId>(r), prompt);
      EXPECT_TRUE(cached.ok());
      *computed += static_cast<int64_t>(prompt.size()) - *cached;
      bm.commit_full_blocks(static_cast<SeqId>(r), prompt, static_cast<int64_t>(prompt.size()));
      expect_ok(bm);
    }
    return bm.num_used();
  };
  int64_t computed_shared = 0, computed_plain = 0;
  const int64_t used_shared = run(true, &computed_shared);
  const int64_t used_plain = run(false, &computed_plain);
  // Without sharing: 16 x (528 / 16) = 528 blocks and 16 x 528 prompt tokens.
  EXPECT_EQ(used_plain, kRequests * (kSystem + kSuffix) / kBlock);
  EXPECT_EQ(computed_plain, kRequests * (kSystem + kSuffix));
  // With sharing: the 32 system blocks once, plus one suffix block per request.
  EXPECT_EQ(used_shared, kSystem / kBlock + kRequests);
  EXPECT_EQ(computed_shared, kSystem + kRequests * kSuffix);
  EXPECT_LE(used_shared * 8, used_plain);
  EXPECT_LE(computed_shared * 8, computed_plain);
}

TEST(BlockManager, AlignedFullyCachedPromptRecomputesItsLastBlockPrivately) {
  BlockManager bm(8, 4, true);
  const auto prompt = iota_tokens(8, 1);
  ASSERT_EQ(*bm.allocate(1, prompt), 0);
  bm.commit_full_blocks(1, prompt, 8);
  Result<int64_t> cached = bm.allocate(2, prompt);
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(*cached, 4);  // not 8: the last token must be computed for its logits
  EXPECT_EQ(bm.block_table(2)[0], bm.block_table(1)[0]);
  EXPECT_NE(bm.block_table(2)[1], bm.block_table(1)[1]);
  EXPECT_EQ(bm.num_used(), 3);
  EXPECT_EQ(bm.prefix_queries(), 16);
  EXPECT_EQ(bm.prefix_hits(), 4);
  expect_ok(bm);
}

TEST(BlockManager, EvictsLeastRecentlyUsedCachedBlockAfterFreeOnes) {
  BlockManager bm(4, 4, true);
  const auto p1 = iota_tokens(5, 1), p2 = iota_tokens(5, 11);
  for (auto [seq, p] : {std::pair{SeqId{1}, p1}, std::pair{SeqId{2}, p2}}) {
    ASSERT_TRUE(bm.allocate(seq, p).ok());
    bm.commit_full_blocks(seq, p, 5);  // registers the first (full) block
    bm.free(seq);
  }
  // LRU (oldest first): p1's block, p2's block. Reusing p1's block makes p2's the oldest.
  ASSERT_EQ(*bm.allocate(3, p1), 4);
  bm.free(3);
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.num_used(), 0);
  // 3 blocks: the 2 free-uncached ones first, then one eviction, which must take p2's block.
  ASSERT_TRUE(bm.allocate(4, iota_tokens(4, 21), 8).ok());
  EXPECT_EQ(bm.block_table(4).size(), 3u);
  bm.free(4);
  EXPECT_EQ(*bm.allocate(5, p2), 0);
  EXPECT_EQ(*bm.allocate(6, p1), 4);
  expect_ok(bm);
}

TEST(BlockManager, ForkSharesBlocksAndCopiesOnWrite) {
  BlockManager bm(16, 4, true);
  ASSERT_TRUE(bm.allocate(1, iota_tokens(6, 1)).ok());  // 1 full + 1 half-filled block
  ASSERT_TRUE(bm.fork(1, 2).ok());
  const std::vector<int32_t> parent(bm.block_table(1).begin(), bm.block_table(1).end());
  EXPECT_EQ(std::vector<int32_t>(bm.block_table(2).begin(), bm.block_table(2).end()), parent);
  EXPECT_EQ(bm.num_used(), 2);
  EXPECT_EQ(bm.num_tokens(2), 6);
  expect_ok(bm);

  Result<std::vector<BlockCopy>> copies = bm.append_slots(1, 1);  // writes into the shared block
  ASSERT_TRUE(copies.ok());
  ASSERT_EQ(copies->size(), 1u);
  EXPECT_EQ((*copies)[0].src, parent[1]);
  EXPECT_EQ((*copies)[0].dst, bm.block_table(1)[1]);
  EXPECT_NE(bm.block_table(1)[1], parent[1]);
  EXPECT_EQ(bm.block_table(2)[1], parent[1]);  // the child keeps the original
  EXPECT_EQ(bm.block_table(1)[0], parent[0]);  // full blocks stay shared
  EXPECT_EQ(bm.num_used(), 3);
  expect_ok(bm);

  copies = bm.append_slots(2, 1);  // the child is now the original's only user: no copy
  ASSERT_TRUE(copies.ok());
  EXPECT_TRUE(copies->empty());
  copies = bm.append_slots(1, 3);  // fills its private block, then a new one: no copy
  ASSERT_TRUE(copies.ok());
  EXPECT_TRUE(copies->empty());
  EXPECT_EQ(bm.block_table(1).size(), 3u);
  EXPECT_EQ(bm.num_used(), 4);
  bm.free(1);
  bm.free(2);
  EXPECT_EQ(bm.num_used(), 0);
  expect_ok(bm);
}

TEST(BlockManager, ForkAtBlockBoundaryNeedsNoCopy) {
  BlockManager bm(8, 4, false);
  ASSERT_TRUE(bm.allocate(1, iota_tokens(8, 1)).ok());
  ASSERT_TRUE(bm.fork(1, 2).ok());
  Result<std::vector<BlockCopy>> copies = bm.append_slots(1, 1);
  ASSERT_TRUE(copies.ok());
  EXPECT_TRUE(copies->empty());
  EXPECT_EQ(bm.num_used(), 3);
  expect_ok(bm);
}

TEST(BlockManager, RollbackAcrossBlockBoundaries) {
  BlockManager bm(8, 4, true);
  ASSERT_TRUE(bm.allocate(1, iota_tokens(10, 1)).ok());
  EXPECT_EQ(bm.num_used(), 3);
  ASSERT_TRUE(bm.rollback(1, 3).ok());  // 7 tokens: 2 blocks
  EXPECT_EQ(bm.num_tokens(1), 7);
  EXPECT_EQ(bm.block_table(1).size(), 2u);
  EXPECT_EQ(bm.num_used(), 2);
  ASSERT_TRUE(bm.rollback(1, 7).ok());  // empty
  EXPECT_EQ(bm.block_table(1).size(), 0u);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(bm.rollback(1, 1).code(), StatusCode::kOutOfRange);
  Result<std::vector<BlockCopy>> copies = bm.append_slots(1, 5);
  ASSERT_TRUE(copies.ok());
  EXPECT_EQ(bm.block_table(1).size(), 2u);
  expect_ok(bm);

  // A reservation (extra_tokens) survives rollback: its blocks stay with the sequence.
  ASSERT_TRUE(bm.allocate(2, iota_tokens(2, 1), 10).ok());
  EXPECT_EQ(bm.block_table(2).size(), 3u);
  ASSERT_TRUE(bm.rollback(2, 2).ok());
  EXPECT_EQ(bm.block_table(2).size(), 3u);
  ASSERT_TRUE(bm.append_slots(2, 12).ok());
  EXPECT_EQ(bm.block_table(2).size(), 3u);
  expect_ok(bm);
}

TEST(BlockManager, RollbackIntoRegisteredBlock) {
  BlockManager bm(16, 4, true);
  const auto prompt = iota_tokens(9, 1);
  // Private: rewriting the registered block unregisters it (no copy); its key is gone.
  ASSERT_TRUE(bm.allocate(1, prompt).ok());
  bm.commit_full_blocks(1, prompt, 9);
  ASSERT_TRUE(bm.rollback(1, 3).ok());  // 6 tokens: block 1 half claimed, still registered
  Result<std::vector<BlockCopy>> copies = bm.append_slots(1, 2);
  ASSERT_TRUE(copies.ok());
  EXPECT_TRUE(copies->empty());
  EXPECT_EQ(*bm.allocate(2, prompt), 4);  // only block 0 is still cached
  bm.free(2);
  bm.free(1);
  expect_ok(bm);

  // Shared: sequence 4 hits both blocks of sequence 3, rolls back into the second: copy on write.
  ASSERT_TRUE(bm.allocate(3, prompt).ok());
  bm.commit_full_blocks(3, prompt, 9);
  ASSERT_EQ(*bm.allocate(4, prompt), 8);
  const int32_t shared = bm.block_table(4)[1];
  EXPECT_EQ(bm.block_table(3)[1], shared);
  ASSERT_TRUE(bm.rollback(4, 3).ok());
  copies = bm.append_slots(4, 1);
  ASSERT_TRUE(copies.ok());
  ASSERT_EQ(copies->size(), 1u);
  EXPECT_EQ((*copies)[0].src, shared);
  EXPECT_NE(bm.block_table(4)[1], shared);
  EXPECT_EQ(*bm.allocate(5, prompt), 8);  // the cached entry is intact
  expect_ok(bm);
}

TEST(BlockManager, DisabledCacheNeverShares) {
  BlockManager bm(8, 4, false);
  const auto prompt = iota_tokens(9, 1);
  ASSERT_EQ(*bm.allocate(1, prompt), 0);
  bm.commit_full_blocks(1, prompt, 9);
  ASSERT_EQ(*bm.allocate(2, prompt), 0);
  EXPECT_EQ(bm.num_used(), 6);
  EXPECT_EQ(bm.prefix_queries(), 0);
  EXPECT_EQ(bm.prefix_hits(), 0);
  EXPECT_FALSE(bm.can_allocate(prompt));  // 3 blocks needed, 2 free: no hits to help
  bm.free(1);
  bm.free(2);
  EXPECT_EQ(bm.num_free(), 8);
  expect_ok(bm);
}

TEST(BlockManager, CanAllocateCountsHitsAndRevivedBlocks) {
  BlockManager bm(3, 4, true);
  const auto prompt = iota_tokens(9, 1);
  ASSERT_TRUE(bm.allocate(1, prompt).ok());
  bm.commit_full_blocks(1, prompt, 9);
  EXPECT_FALSE(bm.can_allocate(iota_tokens(9, 100)));
  EXPECT_TRUE(bm.can_allocate(iota_tokens(1, 100)) == false);  // 0 free blocks
  bm.free(1);
  // 2 cached-unreferenced blocks + 1 free: the same prompt needs the 2 hits back and 1 fresh.
  EXPECT_TRUE(bm.can_allocate(prompt));
  EXPECT_FALSE(bm.can_allocate(prompt, 4));
  ASSERT_EQ(*bm.allocate(2, prompt), 8);
  EXPECT_EQ(bm.num_free(), 0);
  expect_ok(bm);
}

TEST(BlockManager, ErrorsAreStatusesAndChangeNothing) {
  BlockManager bm(2, 4, true);
  const auto prompt = iota_tokens(5, 1);
  ASSERT_TRUE(bm.allocate(1, prompt).ok());
  EXPECT_EQ(bm.allocate(1, prompt).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.allocate(2, {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.allocate(2, prompt, -1).status().code(), StatusCode::kInvalidArgument);
  Result<int64_t> full = bm.allocate(2, prompt);
  ASSERT_EQ(full.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("no free KV blocks"), std::string::npos);
  EXPECT_FALSE(bm.has_seq(2));
  EXPECT_FALSE(bm.can_append(1, 4));
  EXPECT_EQ(bm.append_slots(1, 4).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(bm.num_tokens(1), 5);
  EXPECT_EQ(bm.append_slots(9, 1).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(bm.append_slots(1, -1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.rollback(9, 1).code(), StatusCode::kNotFound);
  EXPECT_EQ(bm.rollback(1, 6).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(bm.rollback(1, -1).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(bm.fork(9, 10).code(), StatusCode::kNotFound);
  EXPECT_EQ(bm.fork(1, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(bm.block_table(9).empty());
  EXPECT_EQ(bm.num_tokens(9), 0);
  bm.free(9);  // unknown: no-op
  bm.commit_full_blocks(9, prompt, 5);
  EXPECT_EQ(bm.num_used(), 2);
  expect_ok(bm);
  BlockManager empty(0, 0, true);  // clamped, not crashed
  EXPECT_EQ(empty.block_size(), 1);
  EXPECT_FALSE(empty.can_allocate(prompt));
  EXPECT_EQ(empty.allocate(1, prompt).status().code(), StatusCode::kResourceExhausted);
  expect_ok(empty);
}

// Keys that collide (even across different prefixes) cost hits, never correctness.
uint64_t sum_key(uint64_t /*parent*/, std::span<const int32_t> toks) {
  return static_cast<uint64_t>(std::accumulate(toks.begin(), toks.end(), int64_t{0}));
}

TEST(BlockManager, HashCollisionsNeverServeWrongBlocks) {
  BlockManager bm(16, 2, true, sum_key);
  const std::vector<int32_t> x = {1, 2, 5, 6, 9}, x_swapped = {2, 1, 5, 6, 9};  // equal keys per block
  ASSERT_TRUE(bm.allocate(1, x).ok());
  bm.commit_full_blocks(1, x, 5);  // [1,2] and [5,6]|[1,2] registered
  EXPECT_EQ(*bm.allocate(2, x_swapped), 0);  // key of [2,1] finds [1,2]: tokens differ -> miss
  // Free the key of [1,2]: roll sequence 1 back into its first block and overwrite it.
  ASSERT_TRUE(bm.rollback(1, 4).ok());
  ASSERT_TRUE(bm.append_slots(1, 1).ok());
  bm.free(2);
  ASSERT_TRUE(bm.allocate(3, x_swapped).ok());
  bm.commit_full_blocks(3, x_swapped, 5);  // [2,1] takes the key; [5,6]'s entry has parent [1,2]
  // Same key, same tokens [5,6], but computed after [1,2]: must not be served after [2,1].
  EXPECT_EQ(*bm.allocate(4, x_swapped), 2);
  expect_ok(bm);
}

TEST(BlockManager, KeyMixesParentAndTokens) {
  const std::vector<int32_t> a = {1, 2, 3, 4}, b = {1, 2, 3, 5}, c = {2, 1, 3, 4};
  EXPECT_NE(prefix_block_key(7, a), prefix_block_key(7, b));
  EXPECT_NE(prefix_block_key(7, a), prefix_block_key(7, c));
  EXPECT_NE(prefix_block_key(7, a), prefix_block_key(8, a));
  EXPECT_EQ(prefix_block_key(7, a), prefix_block_key(7, a));
}

}  // namespace
}  // namespace nb
