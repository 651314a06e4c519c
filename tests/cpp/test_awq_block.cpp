// AWQ's block loss (quant/awq_block.h, AutoAWQ's module2inspect) against an independent double
// precision forward of the attention and MLP sub-blocks (GQA, RoPE, causal, positions restarting at
// 0 in every sampled sequence), and the scale search driven by it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "quant/awq.h"
#include "quant/awq_block.h"
#include "quant/calib.h"
#include "tiny_model.h"

namespace nb::quant {
namespace {

constexpr int kQ = static_cast<int>(LinearKind::kQ), kK = static_cast<int>(LinearKind::kK),
              kV = static_cast<int>(LinearKind::kV), kO = static_cast<int>(LinearKind::kO),
              kGate = static_cast<int>(LinearKind::kGate), kUp = static_cast<int>(LinearKind::kUp),
              kDown = static_cast<int>(LinearKind::kDown);

// y [tokens, out] = x [tokens, in] W^T in double.
std::vector<double> linear(const std::vector<double>& x, int64_t tokens, const std::vector<float>& w, int64_t out, int64_t in) {
  std::vector<double> y(static_cast<size_t>(tokens * out), 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t j = 0; j < in; ++j) s += x[static_cast<size_t>(t * in + j)] * w[static_cast<size_t>(o * in + j)];
      y[static_cast<size_t>(t * out + o)] = s;
    }
  }
  return y;
}

// RoPE of every head of x [n, heads * hd] at positions 0..n-1, in double.
void rope_ref(const ModelConfig& c, std::vector<double>& x, int64_t n, int64_t heads) {
  const int64_t hd = c.head_dim, half = hd / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  rope_inv_freq(c, inv.data());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = x.data() + t * heads * hd + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const double a = static_cast<double>(t) * inv[static_cast<size_t>(i)], cs = std::cos(a), sn = std::sin(a);
        const int64_t i0 = c.rope_style == RopeStyle::kInterleaved ? 2 * i : i;
        const int64_t i1 = c.rope_style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
        const double x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * cs - x1 * sn;
        v[i1] = x0 * sn + x1 * cs;
      }
    }
  }
}

// o_proj(causal GQA attention) of each sequence of x [seqs * n, dim], in double.
std::vector<double> attention_ref(const ModelConfig& c, const std::vector<float>& x, int64_t seqs, int64_t n,
                                  const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv,
                                  const std::vector<float>& wo) {
  const int64_t dim = c.dim, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd;
  std::vector<double> y;
  for (int64_t s = 0; s < seqs; ++s) {
    const std::vector<double> xs(x.begin() + s * n * dim, x.begin() + (s + 1) * n * dim);
    std::vector<double> q = linear(xs, n, wq, q_dim, dim), k = linear(xs, n, wk, kv_dim, dim), v = linear(xs, n, wv, kv_dim, dim);
    rope_ref(c, q, n, nh);
    rope_ref(c, k, n, nkv);
    std::vector<double> att(static_cast<size_t>(n * q_dim), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t g = h / (nh / nkv);
        std::vector<double> p(static_cast<size_t>(t + 1));
        double mx = -1e300, sum = 0.0;
        for (int64_t u = 0; u <= t; ++u) {
          double d = 0.0;
          for (int64_t i = 0; i < hd; ++i) d += q[static_cast<size_t>(t * q_dim + h * hd + i)] * k[static_cast<size_t>(u * kv_dim + g * hd + i)];
          p[static_cast<size_t>(u)] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, p[static_cast<size_t>(u)]);
        }
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int64_t i = 0; i < hd; ++i) {
            att[static_cast<size_t>(t * q_dim + h * hd + i)] += p[static_cast<size_t>(u)] / sum * v[static_cast<size_t>(u * kv_dim + g * hd + i)];
          }
        }
      }
    }
    const std::vector<double> o = linear(att, n, wo, dim, q_dim);
    y.insert(y.end(), o.begin(), o.end());
  }
  return y;
}

// (silu(x Wg^T) * x Wu^T) Wd^T, in double.
std::vector<double> mlp_ref(const ModelConfig& c, const std::vector<float>& x, int64_t tokens, const std::vector<float>& wg,
                            const std::vector<float>& wu, const std::vector<float>& wd) {
  const std::vector<double> xd(x.begin(), x.end());
  const std::vector<double> g = linear(xd, tokens, wg, c.hidden_dim, c.dim), u = linear(xd, tokens, wu, c.hidden_dim, c.dim);
  std::vector<double> h(g.size());
  for (size_t i = 0; i < h.size(); ++i) h[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return linear(h, tokens, wd, c.dim, c.hidden_dim);
}

double squared_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double e = 0.0;
  for (size_t i = 0; i < a.size(); ++i) e += (a[i] - b[i]) * (a[i] - b[i]);
  return e;
}

// A tiny GQA layer (4 query heads on 2 kv heads) and norm outputs of 2 sequences of 24 tokens with
// two outlier channels (so that the AWQ exponent matters).
struct Fixture {
  ModelConfig c;
  DenseLayer d;
  AwqBlockInputs in;
  int64_t seq_len = 24;
  Fixture() {
    ModelWeights w = testing::tiny_weights(31, 256);
    c = w.config;
    d = std::move(dense_layer(w, 0).value());
    in.num_seqs = 2;
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto* x : {&in.attn_in, &in.ffn_in}) {
      x->resize(static_cast<size_t>(in.num_seqs * seq_len * c.dim));
      for (size_t i = 0; i < x->size(); ++i) (*x)[i] = nd(rng) * ((i % static_cast<size_t>(c.dim)) % 23 == 5 ? 12.f : 1.f);
    }
  }
  const std::vector<float>& w(int k) const { return d.w[static_cast<size_t>(k)]; }
  int64_t out(int k) const { return linear_out_features(c, static_cast<LinearKind>(k)); }
  double attention_ref_loss(const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv) const {
    return squared_diff(attention_ref(c, in.attn_in, in.num_seqs, seq_len, wq, wk, wv, w(kO)),
                        attention_ref(c, in.attn_in, in.num_seqs, seq_len, w(kQ), w(kK), w(kV), w(kO)));
  }
  double mlp_ref_loss(const std::vector<float>& wg, const std::vector<float>& wu) const {
    const int64_t tokens = in.num_seqs * seq_len;
    return squared_diff(mlp_ref(c, in.ffn_in, tokens, wg, wu, w(kDown)), mlp_ref(c, in.ffn_in, tokens, w(kGate), w(kUp), w(kDown)));
  }
};

TEST(QuantAwqBlock, LossesMatchADoubleForwardOfTheBlocks) {
  Fixture f;
  ASSERT_LT(f.c.num_kv_heads, f.c.num_heads);  // GQA
  ThreadPool pool(2);
  auto block = AwqBlockLoss::create(f.c, f.d, f.in, f.seq_len, pool);
  ASSERT_TRUE(block.ok()) << block.status().message();
  // The float weights reproduce the reference outputs exactly (same f32 computation).
  EXPECT_EQ(block->attention_loss(f.w(kQ), f.w(kK), f.w(kV)), 0.0);
  EXPECT_EQ(block->mlp_loss(f.w(kGate), f.w(kUp)), 0.0);

  std::mt19937 rng(9);
  std::uniform_real_distribution<float> ud(0.5f, 2.f);
  const QuantSpec spec{4, 16, false};
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<float> s(static_cast<size_t>(f.c.dim));
    for (float& v : s) v = trial == 0 ? 1.f : ud(rng);
    auto cand = [&](int k) { return awq_scaled_fake_quant(f.w(k), f.out(k), f.c.dim, s, spec); };
    const double attn = block->attention_loss(cand(kQ), cand(kK), cand(kV));
    const double attn_ref = f.attention_ref_loss(cand(kQ), cand(kK), cand(kV));
    EXPECT_GT(attn_ref, 0.0);
    EXPECT_NEAR(attn, attn_ref, 1e-3 * attn_ref) << "trial " << trial;
    const double mlp = block->mlp_loss(cand(kGate), cand(kUp));
    const double mlp_ref_v = f.mlp_ref_loss(cand(kGate), cand(kUp));
    EXPECT_GT(mlp_ref_v, 0.0);
    EXPECT_NEAR(mlp, mlp_ref_v, 1e-3 * mlp_ref_v) << "trial " << trial;
  }
  // Sizes that do not match the sequences are an error, not a crash.
  AwqBlockInputs bad = f.in;
  bad.ffn_in.pop_back();
  EXPECT_FALSE(AwqBlockLoss::create(f.c, f.d, bad, f.seq_len, pool).ok());
}

// awq_search_scales with the block loss picks the exponent whose block loss, computed independently
// in double for every grid point (s = mean|x|^a / sqrt(max * min)), is least, and reports that loss.
TEST(QuantAwqBlock, SearchPicksTheLeastBlockLoss) {
  Fixture f;
  ThreadPool pool(2);
  auto block = AwqBlockLoss::create(f.c, f.d, f.in, f.seq_len, pool);
  ASSERT_TRUE(block.ok()) << block.status().message();
  const QuantSpec spec{3, 16, false};
  const int64_t dim = f.c.dim, tokens = f.in.num_seqs * f.seq_len;
  std::vector<float> gram(static_cast<size_t>(dim * dim), 0.f);  // unused by a block-loss search
  for (bool attention : {true, false}) {
    const std::vector<float>& x = attention ? f.in.attn_in : f.in.ffn_in;
    const std::vector<int> kinds = attention ? std::vector<int>{kQ, kK, kV} : std::vector<int>{kGate, kUp};
    AwqScaleProblem p;
    for (int k : kinds) {
      p.weights.push_back(&f.d.w[static_cast<size_t>(k)]);
      p.out_features.push_back(f.out(k));
    }
    p.in = dim;
    p.gram = &gram;
    p.x_mean.assign(static_cast<size_t>(dim), 0.f);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < dim; ++j) p.x_mean[static_cast<size_t>(j)] += std::fabs(x[static_cast<size_t>(t * dim + j)]) / static_cast<float>(tokens);
    }
    if (attention) {
      p.block_loss = [&](const std::vector<std::vector<float>>& w) { return block->attention_loss(w[0], w[1], w[2]); };
    } else {
      p.block_loss = [&](const std::vector<std::vector<float>>& w) { return block->mlp_loss(w[0], w[1]); };
    }
    AwqOptions opt;
    opt.num_grid = 10;
    const AwqScaleResult r = awq_search_scales(p, spec, opt, pool);

    std::vector<double> loss;
    for (int i = 0; i <= opt.num_grid; ++i) {
      const double a = static_cast<double>(i) / opt.num_grid;
      // The scales as the search forms them (f32), so both quantize the same weights.
      std::vector<float> s(static_cast<size_t>(dim));
      for (int64_t j = 0; j < dim; ++j) {
        s[static_cast<size_t>(j)] = std::max(static_cast<float>(std::pow(static_cast<double>(p.x_mean[static_cast<size_t>(j)]), a)), 1e-4f);
      }
      const float norm = std::sqrt(*std::max_element(s.begin(), s.end()) * *std::min_element(s.begin(), s.end()));
      for (float& v : s) v /= norm;
      std::vector<std::vector<float>> cand;
      for (int k : kinds) cand.push_back(awq_scaled_fake_quant(f.w(k), f.out(k), dim, s, spec));
      loss.push_back(attention ? f.attention_ref_loss(cand[0], cand[1], cand[2]) : f.mlp_ref_loss(cand[0], cand[1]));
    }
    const double least = *std::min_element(loss.begin(), loss.end());
    const auto chosen = static_cast<size_t>(std::lround(r.alpha * opt.num_grid));
    ASSERT_LT(chosen, loss.size());
    EXPECT_LE(loss[chosen], least * 1.001) << (attention ? "attention" : "mlp") << ": chose a = " << r.alpha;
    EXPECT_NEAR(r.error, loss[chosen], 2e-3 * loss[chosen]);
    EXPECT_NEAR(r.rtn_error, loss[0], 2e-3 * loss[0]);
    EXPECT_GT(*std::max_element(loss.begin(), loss.end()), 1.05 * least) << "the exponents do not matter here";
  }
}

}  // namespace
}  // namespace nb::quant
