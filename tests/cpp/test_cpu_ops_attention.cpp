// CPU paged attention: the fast path against nb::cpu::ref::attention through permuted block tables,
// and the reference against properties (one key returns V, softmax weights sum to 1, causality,
// paging does not change the result).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "test_cpu_ops_util.h"

namespace nb {
namespace {

// A paged cache for one sequence of `num_positions` positions inside a pool of spare blocks, with a
// shuffled block table. Unused slots hold NaN, so reading anything but the sequence's own slots
// poisons the output.
struct PagedKv {
  int64_t block_size = 0, num_kv_heads = 0, head_dim = 0;
  std::vector<float> k, v;  // [pool_blocks, block_size, num_kv_heads, head_dim]
  std::vector<int32_t> table;

  float* slot(std::vector<float>& c, int64_t pos, int64_t kvh) {
    const int64_t b = table[static_cast<size_t>(pos / block_size)];
    return c.data() + ((b * block_size + pos % block_size) * num_kv_heads + kvh) * head_dim;
  }
};

PagedKv make_kv(int64_t num_positions, int64_t block_size, int64_t kv_heads, int64_t hd, uint32_t seed,
                bool identity_table = false) {
  PagedKv kv;
  kv.block_size = block_size;
  kv.num_kv_heads = kv_heads;
  kv.head_dim = hd;
  const int64_t used = (num_positions + block_size - 1) / block_size;
  const int64_t pool = identity_table ? used : used + 3;
  const size_t n = static_cast<size_t>(pool * block_size * kv_heads * hd);
  kv.k.assign(n, NAN);
  kv.v.assign(n, NAN);
  std::vector<int32_t> ids(static_cast<size_t>(pool));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed);
  if (!identity_table) std::shuffle(ids.begin(), ids.end(), rng);
  kv.table.assign(ids.begin(), ids.begin() + used);
  std::normal_distribution<float> nd;
  for (int64_t pos = 0; pos < num_positions; ++pos)
    for (int64_t h = 0; h < kv_heads; ++h) {
      float* kp = kv.slot(kv.k, pos, h);
      float* vp = kv.slot(kv.v, pos, h);
      for (int64_t i = 0; i < hd; ++i) {
        kp[i] = nd(rng);
        vp[i] = nd(rng);
      }
    }
  return kv;
}

AttentionParams params(const std::vector<float>& q, std::vector<float>& out, const PagedKv& kv, int64_t tokens,
                       int64_t start_pos, int64_t heads) {
  AttentionParams p{};
  p.q = q.data();
  p.out = out.data();
  p.k_cache = kv.k.data();
  p.v_cache = kv.v.data();
  p.block_table = kv.table.data();
  p.block_size = kv.block_size;
  p.num_tokens = tokens;
  p.start_pos = start_pos;
  p.num_heads = heads;
  p.num_kv_heads = kv.num_kv_heads;
  p.head_dim = kv.head_dim;
  p.scale = 1.f / std::sqrt(static_cast<float>(kv.head_dim));
  return p;
}

// The fast path differs from the double reference by f32 rounding: scores (dot of hd terms), the
// 2-ulp exp, and the p-weighted sum over <= ~1000 keys (plus the chunk merge). Outputs are convex combinations of N(0,1) V
// entries, so 2e-5 absolute is ~100x the expected error and far below any indexing bug (O(0.1)).
TEST(CpuOps, AttentionMatchesReference) {
  struct Case {
    int64_t heads, kv_heads, hd, tokens, start_pos, block_size;
  };
  const Case cases[] = {
      {4, 4, 64, 1, 0, 16},  {4, 4, 64, 1, 37, 16}, {9, 3, 64, 1, 40, 4},  {9, 3, 64, 17, 0, 16},
      {9, 3, 64, 5, 7, 1},   {6, 2, 20, 3, 29, 8},  {9, 3, 64, 17, 23, 64}, {8, 8, 32, 64, 0, 16},
      {4, 2, 128, 3, 50, 7}, {3, 1, 16, 2, 9, 3},
      // Decode over long contexts: the keys are split into chunks whose partials are merged.
      {9, 3, 64, 1, 700, 16}, {4, 4, 128, 2, 400, 32}, {6, 2, 20, 1, 300, 8}, {8, 1, 64, 1, 1000, 64},
  };
  uint32_t seed = 1;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const Case& c : cases) {
      const PagedKv kv = make_kv(c.start_pos + c.tokens, c.block_size, c.kv_heads, c.hd, seed++);
      // q ~ N(0, 4): scores up to ~+-25, a sharp softmax (max shift and exp range both matter).
      const auto q = test::random_normal(static_cast<size_t>(c.tokens * c.heads * c.hd), seed++, 2.f);
      std::vector<float> want(q.size()), got(q.size(), NAN);
      cpu::ref::attention(params(q, want, kv, c.tokens, c.start_pos, c.heads));
      cpu::attention(params(q, got, kv, c.tokens, c.start_pos, c.heads), pool);
      for (size_t i = 0; i < q.size(); ++i) {
        ASSERT_TRUE(std::isfinite(want[i]));
        ASSERT_NEAR(got[i], want[i], 2e-5) << "heads=" << c.heads << "/" << c.kv_heads << " tokens=" << c.tokens
                                           << " start=" << c.start_pos << " bs=" << c.block_size << " i=" << i;
      }
    }
  }
}

using AttnFn = void (*)(const AttentionParams&);
void fast_attention_2t(const AttentionParams& p) {
  ThreadPool pool(2);
  cpu::attention(p, pool);
}
const AttnFn kImpls[] = {&cpu::ref::attention, &fast_attention_2t};

// The first token of a sequence sees one key: softmax weight 1, output exactly its V row.
TEST(CpuOps, AttentionWithOneKeyReturnsV) {
  for (AttnFn fn : kImpls) {
    PagedKv kv = make_kv(1, 4, 2, 32, 3);
    const auto q = test::random_normal(4 * 32, 4, 5.f);
    std::vector<float> out(q.size());
    fn(params(q, out, kv, 1, 0, 4));
    for (int64_t h = 0; h < 4; ++h) {
      const float* v = kv.slot(kv.v, 0, h / 2);
      for (int64_t i = 0; i < 32; ++i) EXPECT_NEAR(out[static_cast<size_t>(h * 32 + i)], v[i], 1e-6);
    }
  }
}

// With every V row equal to 1 the output is sum_j p_j, which must be 1 for every token and head;
// with every V row equal to its position j the output is the mean position under p, and when all
// keys are equal (p uniform over the j <= t visible ones) that is t / 2 — causality included.
TEST(CpuOps, AttentionSoftmaxWeightsSumToOneAndAreCausal) {
  for (AttnFn fn : kImpls) {
    const int64_t tokens = 12, hd = 16;
    PagedKv kv = make_kv(tokens, 5, 1, hd, 7);
    const auto q = test::random_normal(static_cast<size_t>(tokens * 3 * hd), 8, 3.f);
    for (auto& x : kv.v) x = std::isnan(x) ? x : 1.f;
    std::vector<float> out(q.size());
    fn(params(q, out, kv, tokens, 0, 3));
    for (float x : out) EXPECT_NEAR(x, 1.f, 1e-6);
    for (int64_t pos = 0; pos < tokens; ++pos) {
      float* k = kv.slot(kv.k, pos, 0);
      float* v = kv.slot(kv.v, pos, 0);
      std::fill(k, k + hd, 0.5f);
      std::fill(v, v + hd, static_cast<float>(pos));
    }
    fn(params(q, out, kv, tokens, 0, 3));
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t i = 0; i < 3 * hd; ++i) EXPECT_NEAR(out[static_cast<size_t>(t * 3 * hd + i)], t / 2.0, 1e-5) << t;
  }
}

// Paging is invisible: the same K/V in one contiguous block (identity table) and scattered over
// shuffled blocks of several sizes give the same output; decoding the last token alone with
// start_pos > 0 gives the same output as that token's row of a full prefill.
TEST(CpuOps, AttentionIndependentOfPagingAndChunking) {
  const int64_t n = 23, heads = 6, kv_heads = 2, hd = 32;
  const PagedKv flat = make_kv(n, n, kv_heads, hd, 11, /*identity_table=*/true);
  const auto q = test::random_normal(static_cast<size_t>(n * heads * hd), 12);
  for (AttnFn fn : kImpls) {
    std::vector<float> want(q.size());
    fn(params(q, want, flat, n, 0, heads));
    for (int64_t bs : {1, 3, 8, 32}) {
      PagedKv paged = make_kv(n, bs, kv_heads, hd, static_cast<uint32_t>(bs));
      PagedKv src = flat;
      for (int64_t pos = 0; pos < n; ++pos)
        for (int64_t h = 0; h < kv_heads; ++h) {
          std::copy_n(src.slot(src.k, pos, h), hd, paged.slot(paged.k, pos, h));
          std::copy_n(src.slot(src.v, pos, h), hd, paged.slot(paged.v, pos, h));
        }
      std::vector<float> got(q.size());
      fn(params(q, got, paged, n, 0, heads));
      for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-6) << "bs=" << bs;
      // Last token only, as a decode step at start_pos = n - 1.
      const std::vector<float> q_last(q.end() - heads * hd, q.end());
      std::vector<float> last(q_last.size());
      fn(params(q_last, last, paged, 1, n - 1, heads));
      for (size_t i = 0; i < last.size(); ++i) ASSERT_NEAR(last[i], want[want.size() - last.size() + i], 1e-6);
    }
  }
}

}  // namespace
}  // namespace nb
