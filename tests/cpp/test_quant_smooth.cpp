// SmoothQuant's scales, folding and alpha search, and the calibration forward (src/quant/), against
// independent references and mathematical properties.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/dtype.h"
#include "core/thread_pool.h"
#include "engine/contiguous_kv.h"
#include "quant/awq.h"
#include "quant/calib.h"
#include "quant/rtn.h"
#include "quant/smoothquant.h"
#include "quant_test_util.h"
#include "tiny_model.h"

namespace nb::quant {
namespace {

using testing_util::randn;

// n token ids (i * mul + add) % vocab, spread over the tiny model's vocabulary.
std::vector<int32_t> spread_ids(int64_t n, int64_t mul, int64_t add, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * mul + add) % vocab);
  return ids;
}

// The embeddings [ids.size(), dim] of ids: the first layer's input.
std::vector<float> embed(const ModelWeights& w, const std::vector<int32_t>& ids) {
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<float> x(static_cast<size_t>(n * w.config.dim));
  cpu::embedding({w.tok_embeddings, ids.data(), x.data(), n});
  return x;
}

// ---- SmoothQuant ----

TEST(QuantSmoothQuant, ProductUnchangedAndActivationMaxFlattened) {
  std::mt19937 rng(19);
  const int64_t in = 64, tokens = 200, out1 = 32, out2 = 48;
  std::vector<float> x = randn(static_cast<size_t>(tokens * in), rng);
  for (int64_t t = 0; t < tokens; ++t) {
    x[static_cast<size_t>(t * in + 3)] *= 60.f;  // outlier channels
    x[static_cast<size_t>(t * in + 40)] *= 25.f;
  }
  const std::vector<float> w1 = randn(static_cast<size_t>(out1 * in), rng, 0.05f);
  const std::vector<float> w2 = randn(static_cast<size_t>(out2 * in), rng, 0.05f);
  std::vector<float> amax(static_cast<size_t>(in), 0.f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < in; ++j) amax[static_cast<size_t>(j)] = std::max(amax[static_cast<size_t>(j)], std::fabs(x[static_cast<size_t>(t * in + j)]));
  }
  for (double alpha : {0.5, 0.8}) {
    const std::vector<float> s = smoothquant_scales(amax, {&w1, &w2}, {out1, out2}, in, alpha);
    // s_j = max|X_j|^a / max|W_j|^(1-a), W_j over both linears.
    for (int64_t j = 0; j < in; ++j) {
      float wm = 0.f;
      for (int64_t o = 0; o < out1; ++o) wm = std::max(wm, std::fabs(w1[static_cast<size_t>(o * in + j)]));
      for (int64_t o = 0; o < out2; ++o) wm = std::max(wm, std::fabs(w2[static_cast<size_t>(o * in + j)]));
      EXPECT_NEAR(s[static_cast<size_t>(j)], std::pow(amax[static_cast<size_t>(j)], alpha) / std::pow(wm, 1 - alpha),
                  1e-4 * s[static_cast<size_t>(j)]);
    }
    // (X / s)(W s)^T = X W^T.
    std::vector<float> ws = w1;
    scale_input_channels(ws, out1, in, s);
    for (int64_t t = 0; t < tokens; t += 7) {
      for (int64_t o = 0; o < out1; ++o) {
        double y = 0.0, ys = 0.0;
        for (int64_t j = 0; j < in; ++j) {
          const auto k = static_cast<size_t>(o * in + j);
          const float xv = x[static_cast<size_t>(t * in + j)];
          y += static_cast<double>(xv) * w1[k];
          ys += static_cast<double>(xv / s[static_cast<size_t>(j)]) * ws[k];
        }
        EXPECT_NEAR(ys, y, 1e-4 * (1.0 + std::fabs(y)));
      }
    }
    // Channel maxima of X / s are flatter: max/median shrinks.
    std::vector<float> after(static_cast<size_t>(in));
    for (int64_t j = 0; j < in; ++j) after[static_cast<size_t>(j)] = amax[static_cast<size_t>(j)] / s[static_cast<size_t>(j)];
    auto ratio = [](std::vector<float> v) {
      const float mx = *std::max_element(v.begin(), v.end());
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
      return mx / v[v.size() / 2];
    };
    EXPECT_LT(ratio(after), ratio(amax) / 3.f) << alpha;
  }
}

// smooth_layer folds the scales of all four input sites (q/k/v into the attention norm, o_proj's
// into v_proj's rows with one scale per kv channel under GQA, gate/up into the FFN norm, down_proj's
// into up_proj's rows): before any quantization the smoothed float layer computes the same outputs,
// and each site's input really is divided by its scale (the smoothed forward's per channel max |x|
// equals the reported max |x / s|; a site left unfolded or folded into the wrong rows fails one of the two).
TEST(QuantSmoothQuant, FoldingAllFourSitesLeavesTheFloatModelUnchanged) {
  ModelWeights w = testing::tiny_weights(23, 256);
  const ModelConfig c = w.config;
  ASSERT_LT(c.num_kv_heads, c.num_heads);  // GQA: the v -> o mapping is exercised
  const int64_t n = 32;
  const std::vector<int32_t> ids = spread_ids(n, 53, 11, c.vocab_size);
  ThreadPool pool(2);
  LayerRunner runner(c, n, pool);
  std::vector<float> x = embed(w, ids);
  const std::vector<std::array<double, kNumInputSites>> alphas = {{0.5, 0.5, 0.5, 0.5}, {0.85, 0.85, 0.85, 0.85}, {0.3, 0.6, 0.7, 0.9}};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto d = dense_layer(w, l);
    ASSERT_TRUE(d.ok()) << d.status().message();
    std::vector<SiteStats> stats(kNumInputSites);
    const int64_t dims[] = {c.dim, c.num_heads * c.head_dim, c.dim, c.hidden_dim};
    for (int s = 0; s < kNumInputSites; ++s) stats[static_cast<size_t>(s)].dim = dims[s];
    std::vector<float> y = x;
    runner.forward(*d, y.data(), [&](InputSite site, const float* a, int64_t tokens) {
      runner.accumulate(stats[static_cast<size_t>(site)], a, tokens, false);
    });
    std::array<const std::vector<float>*, kNumInputSites> amax{};
    for (size_t s = 0; s < amax.size(); ++s) amax[s] = &stats[s].abs_max;
    for (const auto& alpha : alphas) {
      DenseLayer sm = *d;
      const auto rep = smooth_layer(sm, c, amax, alpha);
      for (size_t k = 0; k < sm.w.size(); ++k) EXPECT_NE(sm.w[k], d->w[k]) << "linear " << k << " not rescaled";
      std::vector<SiteStats> after(kNumInputSites);
      for (int s = 0; s < kNumInputSites; ++s) after[static_cast<size_t>(s)].dim = dims[s];
      std::vector<float> ys = x;
      runner.forward(sm, ys.data(), [&](InputSite site, const float* a, int64_t tokens) {
        runner.accumulate(after[static_cast<size_t>(site)], a, tokens, false);
      });
      float scale = 0.f, diff = 0.f;
      for (size_t i = 0; i < y.size(); ++i) {
        scale = std::max(scale, std::fabs(y[i]));
        diff = std::max(diff, std::fabs(y[i] - ys[i]));
      }
      // f32 forward of the same function with reordered roundings: a few ulp of the largest value.
      EXPECT_LE(diff, 2e-5f * scale) << "layer " << l << " alpha " << alpha[0] << "," << alpha[1] << "," << alpha[2] << "," << alpha[3];
      for (int s = 0; s < kNumInputSites; ++s) {
        ASSERT_EQ(rep[static_cast<size_t>(s)].top.size(), 5u);
        for (const ChannelMax& t : rep[static_cast<size_t>(s)].top) {
          const float got = after[static_cast<size_t>(s)].abs_max[static_cast<size_t>(t.channel)];
          EXPECT_NEAR(got, t.after, 1e-4f * t.after) << "site " << s << " channel " << t.channel;
          EXPECT_NE(t.after, t.before) << "site " << s << " channel " << t.channel;
        }
      }
    }
    x = y;
  }
}

// The per-site alpha search picks, for every site, the grid alpha whose W8A8 output error
// (per-token INT8 activations of X / s, per-row INT8 weights of W s) is least, the error computed
// here independently in double on the same tokens.
TEST(QuantSmoothQuant, AlphaSearchPicksTheLeastW8A8Error) {
  ModelWeights w = testing::tiny_weights(29, 256);
  const ModelConfig c = w.config;
  const int64_t n = 48;
  const std::vector<int32_t> ids = spread_ids(n, 31, 7, c.vocab_size);
  ThreadPool pool(2);
  LayerRunner runner(c, n, pool);
  std::vector<float> x = embed(w, ids);
  auto d = dense_layer(w, 0);
  ASSERT_TRUE(d.ok());
  const int64_t dims[] = {c.dim, c.num_heads * c.head_dim, c.dim, c.hidden_dim};
  std::vector<SiteStats> stats(kNumInputSites);
  SmoothSiteSamples samples;
  samples.tokens = n;
  for (int s = 0; s < kNumInputSites; ++s) stats[static_cast<size_t>(s)].dim = dims[s];
  runner.forward(*d, x.data(), [&](InputSite site, const float* a, int64_t tokens) {
    runner.accumulate(stats[static_cast<size_t>(site)], a, tokens, false);
    samples.x[static_cast<size_t>(site)].assign(a, a + tokens * dims[static_cast<int>(site)]);
  });
  // An outlier input channel at every site, so the alphas matter.
  for (int s = 0; s < kNumInputSites; ++s) {
    for (int64_t t = 0; t < n; ++t) samples.x[static_cast<size_t>(s)][static_cast<size_t>(t * dims[s] + 5)] *= 40.f;
    stats[static_cast<size_t>(s)].abs_max[5] *= 40.f;
  }
  std::array<const std::vector<float>*, kNumInputSites> amax{};
  for (size_t s = 0; s < amax.size(); ++s) amax[s] = &stats[s].abs_max;
  const std::vector<double> grid = {0.2, 0.5, 0.8, 0.95};
  const auto chosen = smooth_search_alpha(*d, c, amax, samples, grid, pool);
  for (int s = 0; s < kNumInputSites; ++s) {
    std::vector<double> err;
    for (double alpha : grid) {
      std::array<double, kNumInputSites> a{};
      a.fill(alpha);
      DenseLayer sm = *d;
      smooth_layer(sm, c, amax, a);
      // The site's scales s, read off the first consumer (q, o, gate, down: none of them has its
      // rows rescaled by another site); the site input becomes x / s and every consumer W diag(s).
      const int first[] = {static_cast<int>(LinearKind::kQ), static_cast<int>(LinearKind::kO), static_cast<int>(LinearKind::kGate),
                           static_cast<int>(LinearKind::kDown)};
      const int64_t in = dims[s];
      std::vector<double> sc(static_cast<size_t>(in));
      for (int64_t j = 0; j < in; ++j) {
        sc[static_cast<size_t>(j)] = static_cast<double>(sm.w[static_cast<size_t>(first[s])][static_cast<size_t>(j)]) /
                                     d->w[static_cast<size_t>(first[s])][static_cast<size_t>(j)];
      }
      double e = 0.0;
      for (int k = 0; k < kNumLinearKinds; ++k) {
        if (input_site(static_cast<LinearKind>(k)) != static_cast<InputSite>(s)) continue;
        const int64_t out = linear_out_features(c, static_cast<LinearKind>(k));
        const std::vector<float>& w0 = d->w[static_cast<size_t>(k)];
        std::vector<float> ws(w0.size());
        for (int64_t o = 0; o < out; ++o) {
          for (int64_t j = 0; j < in; ++j) ws[static_cast<size_t>(o * in + j)] = static_cast<float>(w0[static_cast<size_t>(o * in + j)] * sc[static_cast<size_t>(j)]);
        }
        // Per-row symmetric INT8: scale = f16(max|w| / 127), nearest codes.
        std::vector<double> wq(static_cast<size_t>(out * in));
        for (int64_t o = 0; o < out; ++o) {
          float m = 0.f;
          for (int64_t j = 0; j < in; ++j) m = std::max(m, std::fabs(ws[static_cast<size_t>(o * in + j)]));
          const double st = fp16_to_fp32(fp32_to_fp16(m / 127.f));
          for (int64_t j = 0; j < in; ++j) {
            const double q = st > 0 ? std::clamp(std::nearbyint(ws[static_cast<size_t>(o * in + j)] / st), -127.0, 127.0) : 0.0;
            wq[static_cast<size_t>(o * in + j)] = q * st;
          }
        }
        const std::vector<float>& xs = samples.x[static_cast<size_t>(s)];
        for (int64_t t = 0; t < n; ++t) {
          std::vector<double> xq(static_cast<size_t>(in));
          float am = 0.f;
          for (int64_t j = 0; j < in; ++j) am = std::max(am, std::fabs(static_cast<float>(xs[static_cast<size_t>(t * in + j)] / sc[static_cast<size_t>(j)])));
          const float at = am / 127.f;
          for (int64_t j = 0; j < in; ++j) {
            xq[static_cast<size_t>(j)] = at > 0 ? std::nearbyint(static_cast<float>(xs[static_cast<size_t>(t * in + j)] / sc[static_cast<size_t>(j)]) / at) * at : 0.0;
          }
          for (int64_t o = 0; o < out; ++o) {
            double y = 0.0, yq = 0.0;
            for (int64_t j = 0; j < in; ++j) {
              y += static_cast<double>(xs[static_cast<size_t>(t * in + j)]) * w0[static_cast<size_t>(o * in + j)];
              yq += xq[static_cast<size_t>(j)] * wq[static_cast<size_t>(o * in + j)];
            }
            e += (y - yq) * (y - yq);
          }
        }
      }
      err.push_back(e);
    }
    const size_t best = static_cast<size_t>(std::min_element(err.begin(), err.end()) - err.begin());
    const size_t got = static_cast<size_t>(std::find(grid.begin(), grid.end(), chosen[static_cast<size_t>(s)]) - grid.begin());
    ASSERT_LT(got, grid.size());
    // The search's f32 sums may order near-ties differently: the chosen error is within 1e-3 of the least.
    EXPECT_LE(err[got], err[best] * 1.001) << "site " << s << ": chose " << grid[got] << ", least error at " << grid[best];
    EXPECT_GT(*std::max_element(err.begin(), err.end()), 1.01 * err[best]) << "site " << s << ": the alphas do not matter here";
  }
}

// ---- calibration forward ----

// The calibration pipeline's f32 layer-by-layer forward (LayerRunner over DenseLayers), followed by
// the final norm and head, gives the model's own logits: the statistics are taken on what the model
// computes. The observer sees each site's input with the right width.
TEST(QuantCalib, LayerRunnerMatchesModelForward) {
  ModelWeights w = testing::tiny_weights(21, 256);
  const ModelConfig c = w.config;
  const int64_t n = 24;
  const std::vector<int32_t> ids = spread_ids(n, 37, 5, c.vocab_size);
  auto model = std::move(LlamaModel::create(w, 2, 512).value());
  auto kv = ContiguousKvCache::create(*model, 256);
  ASSERT_TRUE(kv.ok());
  std::vector<float> expect(static_cast<size_t>(n * c.vocab_size));
  ASSERT_TRUE(model->forward(ForwardBatch::single(ids, 0, kv->block_table(), true), kv->pools(), expect.data()).ok());

  ThreadPool pool(2);
  LayerRunner runner(c, n, pool);
  std::vector<float> x = embed(w, ids);
  int sites_seen = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto d = dense_layer(w, l);
    ASSERT_TRUE(d.ok()) << d.status().message();
    runner.forward(*d, x.data(), [&](InputSite site, const float*, int64_t tokens) {
      EXPECT_EQ(tokens, n);
      ++sites_seen;
      (void)site;
    });
  }
  EXPECT_EQ(sites_seen, kNumInputSites * c.num_layers);
  std::vector<float> h(x.size()), got(expect.size());
  cpu::rms_norm({x.data(), w.final_norm.ptr<float>(), h.data(), n, c.dim, c.norm_eps});
  cpu::matmul({w.output, h.data(), got.data(), n}, pool);
  for (int64_t t = 0; t < n; ++t) {
    float amax = 0.f, diff = 0.f;
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      const auto k = static_cast<size_t>(t * c.vocab_size + v);
      amax = std::max(amax, std::fabs(expect[k]));
      diff = std::max(diff, std::fabs(expect[k] - got[k]));
    }
    EXPECT_LE(diff, 1e-4f * amax) << "position " << t;
  }
}

}  // namespace
}  // namespace nb::quant
