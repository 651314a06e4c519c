// Quantization algorithms (src/quant/): RTN, GPTQ, the AWQ searches, against independent references
// and mathematical properties (SmoothQuant and the calibration forward: test_quant_smooth.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/dtype.h"
#include "core/thread_pool.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/rtn.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

using testing_util::correlated_inputs;
using testing_util::gram_of;
using testing_util::output_error;
using testing_util::randn;

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

}  // namespace
}  // namespace nb::quant
