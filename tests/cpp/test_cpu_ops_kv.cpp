// The batched CPU attention (cpu::batch_attention: the whole batch in one parallel region) against
// cpu::ref::batch_attention on random batches, and its batch invariance: a sequence's rows are
// bit-identical whether it is attended alone or inside any batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "test_cpu_ops_util.h"

namespace nb {
namespace {

// A random batch over a shared paged pool: sequence s has tokens[s] new query rows at positions
// start[s].., its blocks drawn from a shuffled pool with spare (NaN-filled) blocks, so reading any
// slot outside a sequence's own positions poisons the output.
struct PagedBatch {
  int64_t heads = 0, kv_heads = 0, hd = 0, bs = 0, stride = 0;
  std::vector<int64_t> tokens, start;
  std::vector<int32_t> query_start, start_pos, tables;
  std::vector<float> q, k, v;  // k, v: [pool_blocks, bs, kv_heads, hd]

  BatchAttentionParams params(float* out) const {
    BatchAttentionParams p{};
    p.q = q.data();
    p.out = out;
    p.k_cache = k.data();
    p.v_cache = v.data();
    p.block_tables = tables.data();
    p.query_start = query_start.data();
    p.start_pos = start_pos.data();
    p.block_table_stride = stride;
    p.num_seqs = static_cast<int64_t>(tokens.size());
    p.num_tokens = query_start.back();
    p.max_query_len = *std::max_element(tokens.begin(), tokens.end());
    p.max_context_len = 0;
    for (size_t s = 0; s < tokens.size(); ++s) p.max_context_len = std::max(p.max_context_len, start[s] + tokens[s]);
    p.block_size = bs;
    p.num_heads = heads;
    p.num_kv_heads = kv_heads;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(static_cast<float>(hd));
    return p;
  }
};

PagedBatch make_batch(int64_t heads, int64_t kv_heads, int64_t hd, int64_t bs, std::vector<int64_t> tokens,
                      std::vector<int64_t> start, uint32_t seed) {
  PagedBatch b;
  b.heads = heads;
  b.kv_heads = kv_heads;
  b.hd = hd;
  b.bs = bs;
  b.tokens = std::move(tokens);
  b.start = std::move(start);
  std::mt19937 rng(seed);
  int64_t blocks = 0;
  for (size_t s = 0; s < b.tokens.size(); ++s) {
    const int64_t need = (b.start[s] + b.tokens[s] + bs - 1) / bs;
    b.stride = std::max(b.stride, need);
    blocks += need;
  }
  const int64_t pool = blocks + 5;
  std::vector<int32_t> ids(static_cast<size_t>(pool));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.tables.assign(b.tokens.size() * static_cast<size_t>(b.stride), -1);
  const int64_t row = kv_heads * hd;
  b.k.assign(static_cast<size_t>(pool * bs * row), NAN);
  b.v = b.k;
  std::normal_distribution<float> nd;
  b.query_start = {0};
  size_t next = 0;
  for (size_t s = 0; s < b.tokens.size(); ++s) {
    const int64_t len = b.start[s] + b.tokens[s];
    for (int64_t i = 0; i < (len + bs - 1) / bs; ++i) b.tables[s * static_cast<size_t>(b.stride) + static_cast<size_t>(i)] = ids[next++];
    for (int64_t pos = 0; pos < len; ++pos) {
      const int64_t slot = b.tables[s * static_cast<size_t>(b.stride) + static_cast<size_t>(pos / bs)] * bs + pos % bs;
      for (int64_t e = 0; e < row; ++e) {
        b.k[static_cast<size_t>(slot * row + e)] = nd(rng);
        b.v[static_cast<size_t>(slot * row + e)] = nd(rng);
      }
    }
    b.query_start.push_back(b.query_start.back() + static_cast<int32_t>(b.tokens[s]));
    b.start_pos.push_back(static_cast<int32_t>(b.start[s]));
  }
  b.q = test::random_normal(static_cast<size_t>(b.query_start.back() * heads * hd), seed + 1, 2.f);
  return b;
}

struct BatchCase {
  int64_t heads, kv_heads, hd, bs;
  std::vector<int64_t> tokens, start;
};
const BatchCase kCases[] = {
    // Decode batches (one row each) over short and long (split) contexts.
    {9, 3, 64, 16, {1, 1, 1, 1, 1, 1, 1}, {0, 5, 130, 700, 31, 256, 1000}},
    // Mixed: chunked prefills beside decodes, a sequence with zero new rows.
    {9, 3, 64, 16, {17, 1, 0, 5, 1}, {0, 300, 4, 40, 128}},
    {4, 2, 128, 7, {3, 1, 2}, {50, 400, 9}},
    {6, 2, 20, 8, {1, 4, 1}, {300, 0, 77}},
    {8, 1, 64, 64, {1, 2}, {1000, 63}},
};

// Fast vs reference, 1..3 threads. Tolerance as in the single-sequence attention test: f32 rounding
// of dots, the 2-ulp exp and the chunk merge stay far below 2e-5 on these N(0,1)-valued outputs.
TEST(CpuKv, BatchAttentionMatchesReference) {
  uint32_t seed = 100;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const BatchCase& c : kCases) {
      const PagedBatch b = make_batch(c.heads, c.kv_heads, c.hd, c.bs, c.tokens, c.start, seed++);
      std::vector<float> want(b.q.size(), NAN), got(b.q.size(), NAN);
      cpu::ref::batch_attention(b.params(want.data()));
      cpu::batch_attention(b.params(got.data()), pool);
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_TRUE(std::isfinite(want[i]));
        ASSERT_NEAR(got[i], want[i], 2e-5) << "threads=" << threads << " hd=" << c.hd << " i=" << i;
      }
    }
  }
}

// Continuous batching relies on this: a sequence's output rows are the same bits alone (the
// single-sequence op) as inside a batch of other sequences.
TEST(CpuKv, BatchAttentionRowsAreIndependentOfTheBatch) {
  ThreadPool pool(2);
  uint32_t seed = 200;
  for (const BatchCase& c : kCases) {
    const PagedBatch b = make_batch(c.heads, c.kv_heads, c.hd, c.bs, c.tokens, c.start, seed++);
    std::vector<float> batched(b.q.size(), NAN);
    cpu::batch_attention(b.params(batched.data()), pool);
    const int64_t row = c.heads * c.hd;
    for (size_t s = 0; s < c.tokens.size(); ++s) {
      if (c.tokens[s] == 0) continue;
      std::vector<float> alone(static_cast<size_t>(c.tokens[s] * row), NAN);
      AttentionParams a{};
      a.q = b.q.data() + b.query_start[s] * row;
      a.out = alone.data();
      a.k_cache = b.k.data();
      a.v_cache = b.v.data();
      a.block_table = b.tables.data() + s * static_cast<size_t>(b.stride);
      a.block_size = c.bs;
      a.num_tokens = c.tokens[s];
      a.start_pos = c.start[s];
      a.num_heads = c.heads;
      a.num_kv_heads = c.kv_heads;
      a.head_dim = c.hd;
      a.scale = 1.f / std::sqrt(static_cast<float>(c.hd));
      cpu::attention(a, pool);
      ASSERT_EQ(0, std::memcmp(alone.data(), batched.data() + b.query_start[s] * row, alone.size() * sizeof(float)))
          << "sequence " << s;
    }
  }
}

}  // namespace
}  // namespace nb
