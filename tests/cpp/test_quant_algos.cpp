// Quantization algorithms (src/quant/): RTN, GPTQ, AWQ search, SmoothQuant scales, against
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
#include "quant/calib.h"
#include "tiny_model.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/rtn.h"
#include "quant/smoothquant.h"

namespace nb::quant {
namespace {

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// Correlated activations X [tokens, in]: x = z A with a random mixing matrix, plus a few outlier
// channels of large magnitude (as LLM activations have).
std::vector<float> correlated_inputs(int64_t tokens, int64_t in, std::mt19937& rng) {
  const std::vector<float> z = randn(static_cast<size_t>(tokens * in), rng);
  const std::vector<float> a = randn(static_cast<size_t>(in * in), rng, 1.f / std::sqrt(static_cast<float>(in)));
  std::vector<float> x(static_cast<size_t>(tokens * in), 0.f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t k = 0; k < in; ++k) {
      const float zk = z[static_cast<size_t>(t * in + k)];
      for (int64_t j = 0; j < in; ++j) x[static_cast<size_t>(t * in + j)] += zk * a[static_cast<size_t>(k * in + j)];
    }
    for (int64_t j = 0; j < in; j += 17) x[static_cast<size_t>(t * in + j)] *= 8.f;
  }
  return x;
}

std::vector<double> gram_of(const std::vector<float>& x, int64_t tokens, int64_t in) {
  std::vector<double> g(static_cast<size_t>(in * in), 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* r = x.data() + t * in;
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t j = 0; j < in; ++j) g[static_cast<size_t>(i * in + j)] += static_cast<double>(r[i]) * r[j];
    }
  }
  return g;
}

// sum_t ||x_t (W - W')^T||^2 computed directly on the tokens.
double output_error(const std::vector<float>& x, int64_t tokens, const std::vector<float>& w,
                    const std::vector<float>& wq, int64_t out, int64_t in) {
  double e = 0.0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      double y = 0.0;
      for (int64_t j = 0; j < in; ++j) {
        y += static_cast<double>(x[static_cast<size_t>(t * in + j)]) *
             (w[static_cast<size_t>(o * in + j)] - wq[static_cast<size_t>(o * in + j)]);
      }
      e += y * y;
    }
  }
  return e;
}

std::vector<float> dequant(const QuantizedLinear& q) { return dequantize(q); }

// ---- RTN ----

// Independent RTN per the min-max definition, in double (scale not fp16-rounded: compared with a
// tolerance of the fp16 rounding of the scale).
TEST(QuantRtn, MatchesMinMaxDefinitionAndErrorBound) {
  std::mt19937 rng(3);
  const int64_t out = 16, in = 128;
  const std::vector<float> w = randn(static_cast<size_t>(out * in), rng, 0.05f);
  for (int bits : {3, 4, 8}) {
    for (int64_t gs : {int64_t{32}, int64_t{64}, int64_t{-1}}) {
      for (bool sym : {false, true}) {
        const QuantSpec spec{bits, gs, sym};
        auto q = rtn_quantize(w.data(), out, in, spec, "w");
        ASSERT_TRUE(q.ok()) << q.status().message();
        const std::vector<float> d = dequant(*q);
        const int64_t g = gs < 0 ? in : gs;
        for (int64_t o = 0; o < out; ++o) {
          for (int64_t g0 = 0; g0 < in; g0 += g) {
            double lo = 0, hi = 0;
            for (int64_t j = g0; j < g0 + g; ++j) {
              lo = std::min(lo, static_cast<double>(w[static_cast<size_t>(o * in + j)]));
              hi = std::max(hi, static_cast<double>(w[static_cast<size_t>(o * in + j)]));
            }
            const double scale = sym ? std::max(-lo, hi) / ((1 << (bits - 1)) - 1) : (hi - lo) / ((1 << bits) - 1);
            EXPECT_NEAR(q->scales[static_cast<size_t>(o * q->num_groups() + g0 / g)], scale, scale * 1e-3);
            for (int64_t j = g0; j < g0 + g; ++j) {
              const auto k = static_cast<size_t>(o * in + j);
              // Every weight lies inside the grid, so the error is at most half a step (plus the
              // zero point's rounding for asymmetric grids: one more half step at the edges).
              EXPECT_LE(std::fabs(d[k] - w[k]), scale * (sym ? 0.5005 : 1.0005)) << bits << " " << gs << " " << sym;
            }
          }
        }
        if (sym) {  // the largest |w| of row 0's first group is on the grid (up to the fp16 scale)
          const int64_t g = gs < 0 ? in : gs;
          const auto it = std::max_element(w.begin(), w.begin() + g, [](float a, float b) { return std::fabs(a) < std::fabs(b); });
          const auto k = static_cast<size_t>(it - w.begin());
          EXPECT_NEAR(d[k], w[k], std::fabs(w[k]) * 2e-3);
        }
      }
    }
  }
}

TEST(QuantRtn, RejectsBadGroupSizeAndNonFinite) {
  std::vector<float> w(4 * 96, 0.1f);
  auto r = rtn_quantize(w.data(), 4, 96, QuantSpec{4, 64, false}, "layer 3 q_proj");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not divide"), std::string::npos);
  EXPECT_NE(r.status().message().find("layer 3 q_proj"), std::string::npos);
  w[200] = std::nanf("");
  r = rtn_quantize(w.data(), 4, 96, QuantSpec{4, 32, false}, "layer 3 q_proj");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("non-finite"), std::string::npos);
  EXPECT_FALSE(rtn_quantize(w.data(), 4, 96, QuantSpec{9, 32, false}, "x").ok());
}

// group_range_mse against a brute force written from the reference GPTQ code's loop: every shrink
// 1 - i/100 (i < 80), min-max grid of the shrunk range, sum |dq - w|^2.4, first minimum kept; never
// worse than min-max (shrink 1 is a candidate), and strictly better on some Gaussian groups (a lone
// large outlier is usually cheaper to keep: clipping it costs its whole excess to the power 2.4).
TEST(QuantRtn, MseGridSearchMatchesBruteForceAndNeverLosesToMinMax) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  int improved = 0;
  for (const bool sym : {false, true}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> w(64);
      for (float& v : w) v = nd(rng);
      if (trial % 2 == 1) w[static_cast<size_t>(trial) % 64] = 12.f;  // an outlier
      const QuantSpec spec{4, 64, sym};
      auto err = [&](const GroupRange& r) {
        double e = 0.0;
        for (float v : w) e += std::pow(std::abs(static_cast<double>((quantize_code(v, r, 15) - r.zero) * r.scale - v)), 2.4);
        return e;
      };
      double best = INFINITY;
      float best_shrink = 1.f;
      for (int i = 0; i < 80; ++i) {
        const float p = 1.f - static_cast<float>(i) / 100.f;
        float lo = 0.f, hi = 0.f;
        for (float v : w) lo = std::min(lo, v), hi = std::max(hi, v);
        GroupRange r;
        if (sym) {
          r.scale = fp16_to_fp32(fp32_to_fp16(std::max(-lo * p, hi * p) / 7.f));
          r.zero = 8.f;
        } else {
          r.scale = fp16_to_fp32(fp32_to_fp16((hi - lo) * p / 15.f));
          r.zero = std::clamp(std::nearbyint(-lo * p / r.scale), 0.f, 15.f);
        }
        if (err(r) < best) best = err(r), best_shrink = p;
      }
      const GroupRange got = group_range_mse(w.data(), 64, 1, spec);
      EXPECT_NEAR(err(got), best, 1e-9 * best) << "sym " << sym << " trial " << trial;
      EXPECT_LE(err(got), err(group_range(w.data(), 64, 1, spec)));
      improved += best_shrink < 1.f && err(got) < err(group_range(w.data(), 64, 1, spec));
    }
  }
  EXPECT_GT(improved, 5);
}

// ---- GPTQ ----

TEST(QuantGptq, InverseUpperCholesky) {
  std::mt19937 rng(5);
  const int64_t n = 40, t = 200;
  const std::vector<float> x = correlated_inputs(t, n, rng);
  std::vector<double> h = gram_of(x, t, n);
  ThreadPool pool(2);
  auto u = inverse_upper_cholesky(h, n, pool);
  ASSERT_TRUE(u.ok());
  // H (U^T U) = I, and U is upper triangular.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) EXPECT_EQ((*u)[static_cast<size_t>(i * n + j)], 0.0);
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        double hinv_kj = 0.0;
        for (int64_t m = 0; m < n; ++m) hinv_kj += (*u)[static_cast<size_t>(m * n + k)] * (*u)[static_cast<size_t>(m * n + j)];
        s += h[static_cast<size_t>(i * n + k)] * hinv_kj;
      }
      EXPECT_NEAR(s, i == j ? 1.0 : 0.0, 1e-8);
    }
  }
  std::vector<double> not_pd(4, 0.0);
  not_pd[0] = 1.0;
  not_pd[3] = -1.0;
  EXPECT_FALSE(inverse_upper_cholesky(not_pd, 2, pool).ok());
}

// The paper's GPTQ in its original (OBS) form, written independently of the implementation: after
// quantizing column i (in order), W[:, j>i] -= err_i * Hinv[i, j] / Hinv[i, i], then column i is
// eliminated from Hinv (Hinv -= Hinv[:, i] Hinv[i, :] / Hinv[i, i]). Groups are chosen from the
// updated weights when the sweep reaches their first column. Unblocked, double precision.
std::vector<float> reference_gptq(std::vector<double> w, int64_t out, int64_t in, std::vector<double> h,
                                  const QuantSpec& spec) {
  double mean = 0.0;
  for (int64_t i = 0; i < in; ++i) mean += h[static_cast<size_t>(i * in + i)];
  for (int64_t i = 0; i < in; ++i) h[static_cast<size_t>(i * in + i)] += 0.01 * mean / static_cast<double>(in);
  // Hinv by Gauss-Jordan.
  std::vector<double> a = h, inv(static_cast<size_t>(in * in), 0.0);
  for (int64_t i = 0; i < in; ++i) inv[static_cast<size_t>(i * in + i)] = 1.0;
  for (int64_t c = 0; c < in; ++c) {
    const double p = a[static_cast<size_t>(c * in + c)];
    for (int64_t j = 0; j < in; ++j) {
      a[static_cast<size_t>(c * in + j)] /= p;
      inv[static_cast<size_t>(c * in + j)] /= p;
    }
    for (int64_t r = 0; r < in; ++r) {
      if (r == c) continue;
      const double f = a[static_cast<size_t>(r * in + c)];
      for (int64_t j = 0; j < in; ++j) {
        a[static_cast<size_t>(r * in + j)] -= f * a[static_cast<size_t>(c * in + j)];
        inv[static_cast<size_t>(r * in + j)] -= f * inv[static_cast<size_t>(c * in + j)];
      }
    }
  }
  const int64_t gs = spec.group_size < 0 ? in : spec.group_size;
  std::vector<float> result(static_cast<size_t>(out * in));
  std::vector<GroupRange> range(static_cast<size_t>(out));
  for (int64_t i = 0; i < in; ++i) {
    const double d = inv[static_cast<size_t>(i * in + i)];
    for (int64_t o = 0; o < out; ++o) {
      double* row = w.data() + o * in;
      if (i % gs == 0) {
        std::vector<float> grp(row + i, row + i + gs);
        range[static_cast<size_t>(o)] = group_range(grp.data(), gs, 1, spec);
      }
      const GroupRange r = range[static_cast<size_t>(o)];
      const float qv = dequantize_code(quantize_code(static_cast<float>(row[i]), r, spec.max_code()), r);
      result[static_cast<size_t>(o * in + i)] = qv;
      const double err = (row[i] - qv) / d;
      for (int64_t j = i + 1; j < in; ++j) row[j] -= err * inv[static_cast<size_t>(i * in + j)];
    }
    std::vector<double> ci(static_cast<size_t>(in));
    for (int64_t r = 0; r < in; ++r) ci[static_cast<size_t>(r)] = inv[static_cast<size_t>(r * in + i)];
    for (int64_t r = 0; r < in; ++r) {
      for (int64_t j = 0; j < in; ++j) inv[static_cast<size_t>(r * in + j)] -= ci[static_cast<size_t>(r)] * ci[static_cast<size_t>(j)] / d;
    }
  }
  return result;
}

TEST(QuantGptq, MatchesUnblockedObsReference) {
  std::mt19937 rng(7);
  const int64_t out = 12, in = 96, tokens = 400;
  const std::vector<float> x = correlated_inputs(tokens, in, rng);
  const std::vector<double> h = gram_of(x, tokens, in);
  const std::vector<float> w = randn(static_cast<size_t>(out * in), rng, 0.05f);
  ThreadPool pool(2);
  for (const QuantSpec spec : {QuantSpec{4, 32, false}, QuantSpec{3, -1, false}, QuantSpec{4, 32, true}}) {
    GptqOptions opt;
    opt.block_size = 40;  // blocks that do not align with the groups
    auto q = gptq_quantize(w.data(), out, in, h, spec, opt, pool, "w");
    ASSERT_TRUE(q.ok()) << q.status().message();
    const std::vector<float> got = dequant(*q);
    const std::vector<float> ref = reference_gptq(std::vector<double>(w.begin(), w.end()), out, in, h, spec);
    // Float vs double arithmetic may flip a rounding tie now and then; the outputs must agree on
    // almost every weight and give the same layer error.
    int64_t mismatched = 0;
    for (size_t k = 0; k < got.size(); ++k) mismatched += std::fabs(got[k] - ref[k]) > 1e-6f * (1.f + std::fabs(ref[k]));
    EXPECT_LE(mismatched, static_cast<int64_t>(got.size()) / 100) << spec.bits << " " << spec.group_size;
    const double e_got = output_error(x, tokens, w, got, out, in);
    const double e_ref = output_error(x, tokens, w, ref, out, in);
    EXPECT_NEAR(e_got, e_ref, 0.02 * e_ref);
  }
}

TEST(QuantGptq, BeatsRtnOnCorrelatedInputsAndEqualsItForDiagonalHessian) {
  std::mt19937 rng(11);
  const int64_t out = 32, in = 128, tokens = 600;
  const std::vector<float> x = correlated_inputs(tokens, in, rng);
  const std::vector<float> w = randn(static_cast<size_t>(out * in), rng, 0.05f);
  ThreadPool pool(2);
  for (const QuantSpec spec : {QuantSpec{4, 64, false}, QuantSpec{3, 64, false}, QuantSpec{4, -1, true}}) {
    for (bool act_order : {false, true}) {
      GptqOptions opt;
      opt.act_order = act_order;
      auto g = gptq_quantize(w.data(), out, in, gram_of(x, tokens, in), spec, opt, pool, "w");
      auto r = rtn_quantize(w.data(), out, in, spec, "w");
      ASSERT_TRUE(g.ok() && r.ok());
      // Per-channel: one group, so act-order needs (and writes) no g_idx.
      EXPECT_EQ(g->g_idx.size(), act_order && spec.group_size > 0 ? static_cast<size_t>(in) : 0u);
      const double eg = output_error(x, tokens, w, dequant(*g), out, in);
      const double er = output_error(x, tokens, w, dequant(*r), out, in);
      EXPECT_LT(eg, 0.8 * er) << spec.bits << " act_order " << act_order;
    }
  }
  // With a diagonal Hessian no error is propagated: GPTQ is RTN (same codes).
  std::vector<double> diag(static_cast<size_t>(in * in), 0.0);
  for (int64_t i = 0; i < in; ++i) diag[static_cast<size_t>(i * in + i)] = 1.0 + i % 5;
  const QuantSpec spec{4, 32, false};
  auto g = gptq_quantize(w.data(), out, in, diag, spec, GptqOptions{}, pool, "w");
  auto r = rtn_quantize(w.data(), out, in, spec, "w");
  ASSERT_TRUE(g.ok() && r.ok());
  EXPECT_EQ(g->q, r->q);
  EXPECT_EQ(g->scales, r->scales);
  // ... and with --gptq-mse, each group's grid is group_range_mse of the raw group, codes by it.
  GptqOptions mse;
  mse.mse = true;
  auto gm = gptq_quantize(w.data(), out, in, diag, spec, mse, pool, "w");
  ASSERT_TRUE(gm.ok());
  int shrunk = 0;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t gi = 0; gi < in / 32; ++gi) {
      const float* grp = w.data() + o * in + gi * 32;
      const GroupRange want = group_range_mse(grp, 32, 1, spec);
      const size_t at = static_cast<size_t>(o * (in / 32) + gi);
      EXPECT_EQ(gm->scales[at], want.scale);
      EXPECT_EQ(gm->zeros[at], want.zero);
      for (int64_t j = 0; j < 32; ++j) {
        EXPECT_EQ(gm->q[static_cast<size_t>(o * in + gi * 32 + j)], quantize_code(grp[j], want, 15));
      }
      shrunk += gm->scales[at] < r->scales[at];
    }
  }
  EXPECT_GT(shrunk, 0);  // the search did change some grids
}

TEST(QuantGptq, DeadChannelsAndActOrderGroups) {
  std::mt19937 rng(13);
  const int64_t out = 8, in = 64, tokens = 300;
  std::vector<float> x = correlated_inputs(tokens, in, rng);
  for (int64_t t = 0; t < tokens; ++t) x[static_cast<size_t>(t * in + 5)] = 0.f;  // channel 5 never fires
  const std::vector<float> w = randn(static_cast<size_t>(out * in), rng, 0.05f);
  ThreadPool pool(2);
  GptqOptions opt;
  opt.act_order = true;
  auto g = gptq_quantize(w.data(), out, in, gram_of(x, tokens, in), QuantSpec{4, 16, false}, opt, pool, "w");
  ASSERT_TRUE(g.ok()) << g.status().message();
  const std::vector<float> d = dequant(*g);
  for (int64_t o = 0; o < out; ++o) EXPECT_NEAR(d[static_cast<size_t>(o * in + 5)], 0.f, 1e-6f);  // zeroed
  // Each group holds group_size channels.
  std::vector<int> count(4, 0);
  for (int32_t gi : g->g_idx) ++count[static_cast<size_t>(gi)];
  for (int c : count) EXPECT_EQ(c, 16);
}

// ---- AWQ ----

TEST(QuantAwq, GramErrorMatchesTokenErrorAndSearchNeverWorseThanRtn) {
  std::mt19937 rng(17);
  const int64_t out = 24, in = 64, tokens = 500;
  const std::vector<float> x = correlated_inputs(tokens, in, rng);
  const std::vector<double> gd = gram_of(x, tokens, in);
  const std::vector<float> gram(gd.begin(), gd.end());
  const std::vector<float> w = randn(static_cast<size_t>(out * in), rng, 0.05f);
  ThreadPool pool(2);
  const QuantSpec spec{3, 32, false};
  // The Gram-matrix error equals the error measured on the tokens.
  std::vector<float> wq = w;
  fake_quantize_rows(wq.data(), out, in, spec);
  const double direct = output_error(x, tokens, w, wq, out, in);
  EXPECT_NEAR(awq_output_error(w, out, in, {}, gram, spec, pool), direct, 1e-3 * direct);

  AwqScaleProblem p;
  p.weights = {&w};
  p.out_features = {out};
  p.in = in;
  p.gram = &gram;
  p.x_mean.assign(static_cast<size_t>(in), 0.f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < in; ++j) p.x_mean[static_cast<size_t>(j)] += std::fabs(x[static_cast<size_t>(t * in + j)]) / tokens;
  }
  for (bool duo : {false, true}) {  // duo: AutoAWQ's s_X^a / s_W^(1-a); plain RTN is still a candidate
    AwqOptions opt;
    opt.duo_scaling = duo;
    const AwqScaleResult r = awq_search_scales(p, spec, opt, pool);
    EXPECT_LT(r.error, r.rtn_error) << duo;  // outlier channels: scaling helps here
    EXPECT_NEAR(r.rtn_error, direct, 1e-3 * direct) << duo;  // a = 0 (plain) / the identity (duo) is RTN
    // The reported error is that of the returned scales, checked on the tokens: x/s . Q(W s).
    std::vector<float> ws = w;
    scale_input_channels(ws, out, in, r.scales);
    fake_quantize_rows(ws.data(), out, in, spec);
    std::vector<float> back(ws.size());
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t j = 0; j < in; ++j) back[static_cast<size_t>(o * in + j)] = ws[static_cast<size_t>(o * in + j)] / r.scales[static_cast<size_t>(j)];
    }
    EXPECT_NEAR(output_error(x, tokens, w, back, out, in), r.error, 1e-3 * r.error);
  }

  // Clipping never increases the error of RTN on the (unscaled) weights.
  std::vector<float> wc = w;
  const double clipped = awq_search_clip(wc, out, in, gram, spec, AwqOptions{}, pool);
  std::vector<float> wcq = wc;
  fake_quantize_rows(wcq.data(), out, in, spec);
  const double e_clip = output_error(x, tokens, w, wcq, out, in);
  EXPECT_LE(e_clip, direct * 1.0001);
  // The per-group errors the search optimises ignore cross-group terms; the total is close to it.
  EXPECT_GT(clipped, 0.0);
}

TEST(QuantAwq, TwoSidedClipNeverWorseAndWinsOnSkewedGroups) {
  std::mt19937 rng(23);
  const int64_t out = 16, in = 64, tokens = 400, gs = 32;
  const std::vector<float> x = correlated_inputs(tokens, in, rng);
  const std::vector<double> gd = gram_of(x, tokens, in);
  const std::vector<float> gram(gd.begin(), gd.end());
  std::vector<float> w = randn(static_cast<size_t>(out * in), rng, 0.05f);
  // Skew every other group: one large positive weight, so [min, max] is lopsided and a symmetric
  // clamp [-c, c] can only shrink the top end.
  for (int64_t o = 0; o < out; o += 2) w[static_cast<size_t>(o * in + (o % gs))] = 0.4f;
  ThreadPool pool(2);
  // The error the search reports for the weights it leaves: each group's d^T G_gg d, d = w - Q(clamped w).
  auto group_errors = [&](const std::vector<float>& clipped, const QuantSpec& spec) {
    std::vector<float> q = clipped;
    fake_quantize_rows(q.data(), out, in, spec);
    double e = 0.0;
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t g0 = 0; g0 < in; g0 += gs) {
        for (int64_t a = g0; a < g0 + gs; ++a) {
          for (int64_t b = g0; b < g0 + gs; ++b) {
            e += static_cast<double>(w[static_cast<size_t>(o * in + a)] - q[static_cast<size_t>(o * in + a)]) *
                 gram[static_cast<size_t>(a * in + b)] * (w[static_cast<size_t>(o * in + b)] - q[static_cast<size_t>(o * in + b)]);
          }
        }
      }
    }
    return e;
  };
  for (bool symmetric : {false, true}) {
    const QuantSpec spec{4, gs, symmetric};
    AwqOptions sym_opt, two_opt;
    two_opt.two_sided_clip = true;
    std::vector<float> w_sym = w, w_two = w;
    const double e_sym = awq_search_clip(w_sym, out, in, gram, spec, sym_opt, pool);
    const double e_two = awq_search_clip(w_two, out, in, gram, spec, two_opt, pool);
    EXPECT_NEAR(group_errors(w_sym, spec), e_sym, 1e-3 * e_sym) << symmetric;
    EXPECT_NEAR(group_errors(w_two, spec), e_two, 1e-3 * e_two) << symmetric;
    if (symmetric) {
      EXPECT_EQ(w_two, w_sym);  // a symmetric grid has one range to shrink: the same search
    } else {
      EXPECT_LE(e_two, e_sym);          // its candidates include every symmetric one
      EXPECT_LT(e_two, 0.98 * e_sym);   // and the lopsided groups gain from shrinking the ends apart
    }
  }
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
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 53 + 11) % c.vocab_size);
  ThreadPool pool(2);
  LayerRunner runner(c, n, pool);
  std::vector<float> x(static_cast<size_t>(n * c.dim));
  cpu::embedding({w.tok_embeddings, ids.data(), x.data(), n});
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
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 31 + 7) % c.vocab_size);
  ThreadPool pool(2);
  LayerRunner runner(c, n, pool);
  std::vector<float> x(static_cast<size_t>(n * c.dim));
  cpu::embedding({w.tok_embeddings, ids.data(), x.data(), n});
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
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 5) % c.vocab_size);
  auto model = std::move(LlamaModel::create(w, 2, 512).value());
  auto kv = ContiguousKvCache::create(*model, 256);
  ASSERT_TRUE(kv.ok());
  std::vector<float> expect(static_cast<size_t>(n * c.vocab_size));
  ASSERT_TRUE(model->forward(ForwardBatch::single(ids, 0, kv->block_table(), true), kv->pools(), expect.data()).ok());

  ThreadPool pool(2);
  LayerRunner runner(c, n, pool);
  std::vector<float> x(static_cast<size_t>(n * c.dim));
  cpu::embedding({w.tok_embeddings, ids.data(), x.data(), n});
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
