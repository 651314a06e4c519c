// The CPU references for the ops the batched GPU path adds (cpu::ref::add_rms_norm, kv_write,
// batch_attention) against independent computations written here: the formula in double, slot
// bookkeeping, and softmax attention over an unpaged copy of each sequence's K/V.
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

TEST(CpuBatchRef, AddRmsNormUpdatesResidualAndNormalizesIt) {
  const int64_t rows = 3, dim = 37;
  auto x = test::random_normal(rows * dim, 1, 2.f);
  const auto r = test::random_normal(rows * dim, 2);
  const auto w = test::random_normal(dim, 3);
  const auto x0 = x;
  std::vector<float> y(x.size(), NAN);
  cpu::ref::add_rms_norm({x.data(), r.data(), w.data(), y.data(), rows, dim, 1e-5f});
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) {
      const size_t e = static_cast<size_t>(i * dim + j);
      ASSERT_EQ(x[e], x0[e] + r[e]);  // one f32 add, stored
      ss += static_cast<double>(x[e]) * x[e];
    }
    const double inv = 1 / std::sqrt(ss / dim + 1e-5);
    for (int64_t j = 0; j < dim; ++j) {
      const size_t e = static_cast<size_t>(i * dim + j);
      EXPECT_NEAR(y[e], x[e] * inv * w[static_cast<size_t>(j)], 1e-6 * (1 + std::fabs(y[e])));
    }
  }
}

TEST(CpuBatchRef, KvWriteFillsMappedSlotsOnly) {
  const int64_t tokens = 6, heads = 2, hd = 5, slots = 11, row = heads * hd;
  const auto k = test::random_normal(tokens * row, 4);
  const auto v = test::random_normal(tokens * row, 5);
  std::vector<float> kc(slots * row, -7.f), vc(slots * row, -9.f);
  const std::vector<int64_t> mapping = {3, 10, -1, 0, 7, -1};
  cpu::ref::kv_write({k.data(), v.data(), kc.data(), vc.data(), mapping.data(), tokens, heads, hd});
  std::vector<int> written(slots, -1);
  for (int64_t t = 0; t < tokens; ++t)
    if (mapping[static_cast<size_t>(t)] >= 0) written[static_cast<size_t>(mapping[static_cast<size_t>(t)])] = static_cast<int>(t);
  for (int64_t sl = 0; sl < slots; ++sl)
    for (int64_t e = 0; e < row; ++e) {
      const int t = written[static_cast<size_t>(sl)];
      const size_t c = static_cast<size_t>(sl * row + e);
      EXPECT_EQ(kc[c], t < 0 ? -7.f : k[static_cast<size_t>(t * row + e)]);
      EXPECT_EQ(vc[c], t < 0 ? -9.f : v[static_cast<size_t>(t * row + e)]);
    }
}

// Softmax attention over contiguous K/V [positions, kv_heads, hd] for tokens at start..start+n-1.
std::vector<double> naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, int64_t n, int64_t start, int64_t heads,
                                    int64_t kv_heads, int64_t hd) {
  std::vector<double> out(static_cast<size_t>(n * heads * hd));
  const double scale = 1 / std::sqrt(static_cast<double>(hd));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / (heads / kv_heads);
      std::vector<double> p(static_cast<size_t>(start + t + 1));
      for (int64_t j = 0; j <= start + t; ++j) {
        double s = 0;
        for (int64_t i = 0; i < hd; ++i) s += double(q[static_cast<size_t>((t * heads + h) * hd + i)]) * k[static_cast<size_t>((j * kv_heads + kvh) * hd + i)];
        p[static_cast<size_t>(j)] = s * scale;
      }
      const double mx = *std::max_element(p.begin(), p.end());
      double sum = 0;
      for (double& x : p) sum += (x = std::exp(x - mx));
      for (int64_t i = 0; i < hd; ++i) {
        double a = 0;
        for (int64_t j = 0; j <= start + t; ++j) a += p[static_cast<size_t>(j)] * v[static_cast<size_t>((j * kv_heads + kvh) * hd + i)];
        out[static_cast<size_t>((t * heads + h) * hd + i)] = a / sum;
      }
    }
  return out;
}

TEST(CpuBatchRef, BatchAttentionEqualsPerSequenceSoftmax) {
  const int64_t heads = 6, kv_heads = 2, hd = 8, bs = 3;
  const std::vector<int64_t> tokens = {4, 1, 0, 7}, start = {0, 9, 2, 5};
  const int64_t num_seqs = 4, stride = 6;
  const int64_t row = kv_heads * hd;
  std::vector<int32_t> qs = {0};
  for (int64_t n : tokens) qs.push_back(qs.back() + static_cast<int32_t>(n));
  int64_t blocks = 0;
  for (int64_t s = 0; s < num_seqs; ++s) blocks += (start[s] + tokens[s] + bs - 1) / bs;
  std::vector<int32_t> ids(static_cast<size_t>(blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(7);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs * stride), -1);
  std::vector<float> kc(static_cast<size_t>(blocks * bs * row), NAN), vc = kc;
  const auto q = test::random_normal(static_cast<size_t>(qs.back() * heads * hd), 8, 2.f);
  std::vector<std::vector<float>> k_seq, v_seq;  // unpaged copies per sequence
  size_t next = 0;
  std::normal_distribution<float> nd;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t len = start[s] + tokens[s];
    for (int64_t b = 0; b < (len + bs - 1) / bs; ++b) tables[static_cast<size_t>(s * stride + b)] = ids[next++];
    k_seq.emplace_back(static_cast<size_t>(len * row));
    v_seq.emplace_back(static_cast<size_t>(len * row));
    for (int64_t pos = 0; pos < len; ++pos)
      for (int64_t e = 0; e < row; ++e) {
        const int64_t slot = tables[static_cast<size_t>(s * stride + pos / bs)] * bs + pos % bs;
        kc[static_cast<size_t>(slot * row + e)] = k_seq.back()[static_cast<size_t>(pos * row + e)] = nd(rng);
        vc[static_cast<size_t>(slot * row + e)] = v_seq.back()[static_cast<size_t>(pos * row + e)] = nd(rng);
      }
  }
  std::vector<int32_t> sp(start.begin(), start.end());
  std::vector<float> out(q.size(), NAN);
  BatchAttentionParams p{};
  p.q = q.data();
  p.out = out.data();
  p.k_cache = kc.data();
  p.v_cache = vc.data();
  p.block_tables = tables.data();
  p.query_start = qs.data();
  p.start_pos = sp.data();
  p.block_table_stride = stride;
  p.num_seqs = num_seqs;
  p.num_tokens = qs.back();
  p.max_query_len = 7;
  p.max_context_len = 12;
  p.block_size = bs;
  p.num_heads = heads;
  p.num_kv_heads = kv_heads;
  p.head_dim = hd;
  p.scale = 1.f / std::sqrt(static_cast<float>(hd));
  cpu::ref::batch_attention(p);
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (tokens[s] == 0) continue;
    const std::vector<float> qsub(q.begin() + qs[s] * heads * hd, q.begin() + qs[s + 1] * heads * hd);
    const auto want = naive_attention(qsub, k_seq[s], v_seq[s], tokens[s], start[s], heads, kv_heads, hd);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(out[static_cast<size_t>(qs[s] * heads * hd) + i], want[i], 1e-6) << "seq " << s << " i " << i;
    }
  }
}

}  // namespace
}  // namespace nb
