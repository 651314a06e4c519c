// Randomized property tests of BlockManager. The independent model: a shadow map seq -> tokens and
// a simulated K/V store (one int per slot). The test plays the engine: it writes each token id into
// its slot when the slot is claimed (computing it), performs the returned BlockCopy pairs, and
// after EVERY operation reads each live sequence back through its block table. Any sharing,
// copy-on-write, rollback or prefix-cache mistake serves some sequence a wrong token here; a
// prefix-cache hit is also checked at allocation time (the cached slots must already hold the
// prompt's tokens). check_invariants() runs after every operation too.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/kv/block_manager.h"

namespace nb {
namespace {

struct FuzzConfig {
  int64_t num_blocks;
  int64_t block_size;
  bool cache;
  BlockKeyFn key_fn;  // nullptr = the real key
  uint32_t seed;
  int num_ops;
};

// Collides constantly, to prove hits are verified, not trusted: it ignores the parent (equal
// blocks after different prefixes collide) and sums the tokens (permutations collide).
uint64_t weak_key(uint64_t /*parent*/, std::span<const int32_t> toks) {
  uint64_t sum = 0;
  for (int32_t t : toks) sum += static_cast<uint32_t>(t);
  return sum;
}

class Fuzzer {
 public:
  explicit Fuzzer(const FuzzConfig& c)
      : c_(c),
        bm_(c.num_blocks, c.block_size, c.cache, c.key_fn ? c.key_fn : prefix_block_key),
        rng_(c.seed),
        store_(static_cast<size_t>(c.num_blocks * c.block_size), -1) {
    // A few shared prefixes so that prompts hit the cache; a tiny alphabet so that independently
    // generated blocks also coincide (concurrent registration of the same prefix).
    for (int p = 0; p < 3; ++p) {
      std::vector<int32_t> v(static_cast<size_t>(c.block_size * (2 + p) + p));
      for (auto& t : v) t = token();
      prefixes_.push_back(v);
    }
  }

  void run() {
    for (int op = 0; op < c_.num_ops; ++op) {
      const int r = pick(0, 99);
      if (r < 22 || shadow_.empty()) {
        allocate();
      } else if (r < 47) {
        append();
      } else if (r < 62) {
        commit();
      } else if (r < 69) {
        fork();
      } else if (r < 79) {
        rollback();
      } else if (r < 93) {
        release();
      } else {
        misuse();
      }
      verify(op);
      if (testing::Test::HasFatalFailure()) return;
    }
    EXPECT_GT(num_ok_allocs_, c_.num_ops / 20);
    EXPECT_GT(num_failed_, 0) << "the pool never ran out: pressure/eviction paths went untested";
    if (c_.cache) {
      EXPECT_GT(bm_.prefix_hits(), 0);
    }
    while (!shadow_.empty()) {
      bm_.free(shadow_.begin()->first);
      shadow_.erase(shadow_.begin());
      ASSERT_TRUE(bm_.check_invariants().ok()) << bm_.check_invariants().to_string();
    }
    EXPECT_EQ(bm_.num_used(), 0);
    EXPECT_EQ(bm_.num_free(), bm_.num_blocks());
  }

 private:
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  int32_t token() { return pick(0, 2); }
  SeqId any_seq() {
    auto it = shadow_.begin();
    std::advance(it, pick(0, static_cast<int>(shadow_.size()) - 1));
    return it->first;
  }
  int64_t slot(SeqId s, int64_t pos) const {
    const auto table = bm_.block_table(s);
    return table[static_cast<size_t>(pos / c_.block_size)] * c_.block_size + pos % c_.block_size;
  }
  void write(SeqId s, int64_t from) {  // "compute" the K/V of positions [from, end)
    const auto& toks = shadow_[s];
    for (auto pos = from; pos < static_cast<int64_t>(toks.size()); ++pos) store_[slot(s, pos)] = toks[pos];
  }

  void allocate() {
    if (shadow_.size() >= 10) return release();
    std::vector<int32_t> prompt;
    if (pick(0, 3) != 0) {
      const auto& p = prefixes_[static_cast<size_t>(pick(0, 2))];
      prompt.assign(p.begin(), p.begin() + pick(1, static_cast<int>(p.size())));
    }
    for (int i = pick(prompt.empty() ? 1 : 0, static_cast<int>(2 * c_.block_size)); i > 0; --i) prompt.push_back(token());
    const int64_t extra = pick(0, 4) == 0 ? pick(0, static_cast<int>(3 * c_.block_size)) : 0;
    const SeqId s = next_id_++;
    const bool can = bm_.can_allocate(prompt, extra);
    Result<int64_t> cached = bm_.allocate(s, prompt, extra);
    ASSERT_EQ(can, cached.ok()) << "can_allocate disagrees with allocate";
    if (!cached.ok()) {
      ASSERT_EQ(cached.status().code(), StatusCode::kResourceExhausted);
      ASSERT_FALSE(bm_.has_seq(s));
      ++num_failed_;
      return;
    }
    ++num_ok_allocs_;
    if (c_.cache) expected_queries_ += static_cast<int64_t>(prompt.size());  // successful allocations only
    const int64_t c = *cached;
    ASSERT_EQ(c % c_.block_size, 0);
    ASSERT_GE(c, 0);
    ASSERT_LT(c, static_cast<int64_t>(prompt.size()));
    if (!c_.cache) {
      ASSERT_EQ(c, 0);
    }
    expected_hits_ += c;
    ASSERT_EQ(static_cast<int64_t>(bm_.block_table(s).size()),
              (static_cast<int64_t>(prompt.size()) + extra + c_.block_size - 1) / c_.block_size);
    shadow_[s] = prompt;
    for (int64_t pos = 0; pos < c; ++pos) {
      ASSERT_EQ(store_[slot(s, pos)], prompt[pos]) << "prefix cache served wrong K/V at position " << pos;
    }
    write(s, c);
  }

  void append() {
    const SeqId s = any_seq();
    auto& toks = shadow_[s];
    const int n = pick(0, static_cast<int>(c_.block_size) + 2);
    const bool can = bm_.can_append(s, n);
    const auto before = std::vector<int32_t>(bm_.block_table(s).begin(), bm_.block_table(s).end());
    Result<std::vector<BlockCopy>> copies = bm_.append_slots(s, n);
    ASSERT_EQ(can, copies.ok()) << "can_append disagrees with append_slots";
    if (!copies.ok()) {
      ASSERT_EQ(copies.status().code(), StatusCode::kResourceExhausted);
      ASSERT_EQ(bm_.num_tokens(s), static_cast<int64_t>(toks.size()));
      ++num_failed_;
      return;
    }
    const auto table = bm_.block_table(s);
    for (const BlockCopy& cp : *copies) {
      ASSERT_NE(cp.src, cp.dst);
      ASSERT_NE(std::find(table.begin(), table.end(), cp.dst), table.end()) << "copy target not in the table";
      ASSERT_NE(std::find(before.begin(), before.end(), cp.src), before.end()) << "copy source was not ours";
      std::copy_n(store_.begin() + cp.src * c_.block_size, c_.block_size, store_.begin() + cp.dst * c_.block_size);
    }
    const auto from = static_cast<int64_t>(toks.size());
    for (int i = 0; i < n; ++i) toks.push_back(token());
    write(s, from);
  }

  void commit() {
    const SeqId s = any_seq();
    const auto& toks = shadow_[s];
    const int64_t computed = pick(0, 2) == 0 ? pick(0, static_cast<int>(toks.size())) : static_cast<int64_t>(toks.size());
    bm_.commit_full_blocks(s, toks, computed);
  }

  void fork() {
    if (shadow_.size() >= 10) return release();
    const SeqId parent = any_seq();
    const SeqId child = next_id_++;
    ASSERT_TRUE(bm_.fork(parent, child).ok());
    shadow_[child] = shadow_[parent];
  }

  void rollback() {
    const SeqId s = any_seq();
    auto& toks = shadow_[s];
    const int k = pick(0, std::min(static_cast<int>(toks.size()), static_cast<int>(2 * c_.block_size + 1)));
    ASSERT_TRUE(bm_.rollback(s, k).ok());
    toks.resize(toks.size() - static_cast<size_t>(k));
  }

  void release() {
    const SeqId s = any_seq();
    bm_.free(s);
    shadow_.erase(s);
  }

  void misuse() {  // every misuse is an error Status and changes nothing
    const SeqId s = any_seq();
    const std::vector<int32_t> prompt = {1, 2};
    EXPECT_EQ(bm_.allocate(s, prompt).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(bm_.rollback(s, static_cast<int64_t>(shadow_[s].size()) + 1).code(), StatusCode::kOutOfRange);
    EXPECT_EQ(bm_.append_slots(next_id_ + 1000, 1).status().code(), StatusCode::kNotFound);
    EXPECT_EQ(bm_.fork(s, s).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(bm_.fork(next_id_ + 1000, next_id_ + 1001).code(), StatusCode::kNotFound);
    bm_.free(next_id_ + 1000);  // unknown: no-op
  }

  void verify(int op) {
    const Status st = bm_.check_invariants();
    ASSERT_TRUE(st.ok()) << "after op " << op << ": " << st.to_string();
    ASSERT_EQ(bm_.prefix_queries(), expected_queries_);
    ASSERT_EQ(bm_.prefix_hits(), expected_hits_);
    int64_t referenced = 0;
    std::vector<char> seen(static_cast<size_t>(c_.num_blocks), 0);
    for (const auto& [s, toks] : shadow_) {
      ASSERT_TRUE(bm_.has_seq(s));
      ASSERT_EQ(bm_.num_tokens(s), static_cast<int64_t>(toks.size()));
      for (int32_t b : bm_.block_table(s)) {
        ASSERT_GE(b, 0);
        ASSERT_LT(b, c_.num_blocks);
        if (!seen[b]) ++referenced;
        seen[b] = 1;
      }
      for (size_t pos = 0; pos < toks.size(); ++pos) {
        ASSERT_EQ(store_[slot(s, static_cast<int64_t>(pos))], toks[pos])
            << "after op " << op << ": sequence " << s << " reads a wrong token at position " << pos;
      }
    }
    ASSERT_EQ(bm_.num_used(), referenced);
    ASSERT_EQ(bm_.num_free() + bm_.num_used(), bm_.num_blocks());
  }

  FuzzConfig c_;
  BlockManager bm_;
  std::mt19937 rng_;
  std::vector<int32_t> store_;
  std::vector<std::vector<int32_t>> prefixes_;
  std::map<SeqId, std::vector<int32_t>> shadow_;
  SeqId next_id_ = 1;
  int64_t expected_queries_ = 0, expected_hits_ = 0;
  int num_ok_allocs_ = 0, num_failed_ = 0;
};

TEST(BlockManagerFuzz, RandomOpsKeepInvariantsAndServeExactTokens) {
  const std::vector<FuzzConfig> configs = {
      {24, 4, true, nullptr, 1, 1500},  {24, 4, true, nullptr, 2, 1500},  {40, 2, true, nullptr, 3, 1500},
      {16, 1, true, nullptr, 4, 1000},  {32, 8, true, nullptr, 5, 1000},  {24, 4, false, nullptr, 6, 1000},
      {24, 4, true, weak_key, 7, 1500}, {40, 2, true, weak_key, 8, 1000},
  };
  for (const FuzzConfig& c : configs) {
    SCOPED_TRACE("seed " + std::to_string(c.seed) + " block_size " + std::to_string(c.block_size));
    Fuzzer(c).run();
    if (testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace nb
