// Sampler tests. References are written independently here: a full sort + cumulate + filter of the
// softmax in double precision, the chi-square distribution from the regularised incomplete gamma
// function (itself checked against textbook critical values), and the penalty formulas applied
// token by token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "chi_square.h"
#include "engine/sampler.h"

namespace nb {
namespace {

// The chi-square p-value, Q(k/2, x/2): tests/cpp/chi_square.h.
using testing::chi_square_p_value;

TEST(ChiSquare, PValueMatchesTextbookCriticalValues) {
  // Critical values from standard chi-square tables (upper-tail probability, dof, value).
  EXPECT_NEAR(chi_square_p_value(3.841, 1), 0.05, 1e-4);
  EXPECT_NEAR(chi_square_p_value(18.307, 10), 0.05, 1e-4);
  EXPECT_NEAR(chi_square_p_value(23.209, 10), 0.01, 1e-4);
  EXPECT_NEAR(chi_square_p_value(59.703, 30), 0.001, 1e-5);
  EXPECT_NEAR(chi_square_p_value(2.733, 8), 0.95, 1e-4);
  EXPECT_NEAR(chi_square_p_value(124.342, 100), 0.05, 1e-4);
}

// ---- reference: the renormalised truncated distribution, written the plain way ------------------
// `margin`: how far every cumulative sum / min-p comparison must sit from its threshold, so that
// float-vs-double rounding cannot flip a token (0 disables the check).
std::vector<double> reference_distribution(const std::vector<float>& logits, const SamplingParams& p,
                                           double margin = 1e-5) {
  const size_t n = logits.size();
  const double t = p.temperature;
  std::vector<double> z(n);
  for (size_t i = 0; i < n; ++i) z[i] = logits[i] / t;
  const double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> prob(n);
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += prob[i] = std::exp(z[i] - mx);
  for (double& v : prob) v /= s;
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return prob[a] > prob[b]; });
  std::vector<size_t> kept = idx;
  auto renorm = [&] {
    double tot = 0;
    for (size_t i : kept) tot += prob[i];
    for (size_t i : kept) prob[i] /= tot;
  };
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) kept.resize(p.top_k), renorm();
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < kept.size()) {
      cum += prob[kept[keep++]];
      // The test logits are chosen so no cumulative sum sits on the boundary.
      if (margin > 0) {
        EXPECT_GT(std::fabs(cum - p.top_p), margin) << "test logits put a cumulative sum on the top_p boundary";
      }
      if (cum >= p.top_p) break;
    }
    kept.resize(keep);
    renorm();
  }
  if (p.min_p > 0.0f) {
    const double pmax = prob[kept[0]];
    std::vector<size_t> k2;
    for (size_t i : kept) {
      if (margin > 0) {
        EXPECT_GT(std::fabs(prob[i] - p.min_p * pmax), margin * pmax) << "test logits put a token on the min_p boundary";
      }
      if (prob[i] >= p.min_p * pmax) k2.push_back(i);
    }
    kept = k2;
    renorm();
  }
  std::vector<double> out(n, 0.0);
  for (size_t i : kept) out[i] = prob[i];
  return out;
}

std::vector<float> test_logits(size_t n) {
  std::vector<float> l(n);
  for (size_t i = 0; i < n; ++i) l[i] = static_cast<float>(2.5 * std::sin(1.7 * i + 0.3) + 0.05 * i);
  return l;
}

struct ChiCase {
  const char* name;
  SamplingParams params;
};

void PrintTo(const ChiCase& c, std::ostream* os) { *os << c.name; }

class SamplerChiSquare : public ::testing::TestWithParam<ChiCase> {};

TEST_P(SamplerChiSquare, FrequenciesMatchRenormalisedDistribution) {
  const SamplingParams& p = GetParam().params;
  const std::vector<float> logits = test_logits(40);
  const std::vector<double> expect = reference_distribution(logits, p);
  auto sampler = Sampler::create(p);
  ASSERT_TRUE(sampler.ok()) << sampler.status().to_string();
  constexpr int kDraws = 200000;
  std::vector<int> counts(logits.size(), 0);
  for (int d = 0; d < kDraws; ++d) {
    auto tok = sampler->sample(logits);
    ASSERT_TRUE(tok.ok());
    ASSERT_GE(*tok, 0);
    ASSERT_LT(*tok, static_cast<int32_t>(logits.size()));
    ++counts[*tok];
  }
  double stat = 0;
  int bins = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (expect[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " was filtered out but got sampled";
      continue;
    }
    const double e = expect[i] * kDraws;
    ASSERT_GE(e, 5.0) << "bin too small for the chi-square approximation";
    stat += (counts[i] - e) * (counts[i] - e) / e;
    ++bins;
  }
  ASSERT_GE(bins, 2) << "case keeps a single token; chi-square says nothing";
  const double pv = chi_square_p_value(stat, bins - 1);
  EXPECT_GT(pv, 0.001) << GetParam().name << ": chi2=" << stat << " dof=" << bins - 1;
}

SamplingParams make(float t, int k, float top_p, float min_p, uint64_t seed) {
  SamplingParams p;
  p.temperature = t;
  p.top_k = k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.seed = seed;
  return p;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SamplerChiSquare,
    ::testing::Values(ChiCase{"t1", make(1.0f, 0, 1.0f, 0.0f, 1)}, ChiCase{"t07", make(0.7f, 0, 1.0f, 0.0f, 2)},
                      ChiCase{"t15", make(1.5f, 0, 1.0f, 0.0f, 3)}, ChiCase{"topk10", make(1.0f, 10, 1.0f, 0.0f, 4)},
                      ChiCase{"topp09", make(1.0f, 0, 0.9f, 0.0f, 5)}, ChiCase{"minp01", make(1.0f, 0, 1.0f, 0.1f, 6)},
                      ChiCase{"t07_topk12_topp09", make(0.7f, 12, 0.9f, 0.0f, 7)},
                      ChiCase{"all", make(0.8f, 15, 0.95f, 0.05f, 8)},
                      ChiCase{"topp05_minp02", make(1.2f, 0, 0.5f, 0.2f, 9)}),
    [](const auto& info) { return std::string(info.param.name); });

// ---- determinism -------------------------------------------------------------------------------

std::vector<int32_t> draw_sequence(uint64_t seed, int n, const std::vector<float>& logits, float top_p = 1.0f) {
  SamplingParams p;
  p.seed = seed;
  p.top_p = top_p;
  auto s = Sampler::create(p);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(*s->sample(logits));
  return out;
}

TEST(Sampler, SameSeedSameSequenceDifferentSeedDifferent) {
  const auto logits = test_logits(40);
  EXPECT_EQ(draw_sequence(42, 1000, logits), draw_sequence(42, 1000, logits));
  EXPECT_EQ(draw_sequence(42, 1000, logits, 0.8f), draw_sequence(42, 1000, logits, 0.8f));
  EXPECT_NE(draw_sequence(42, 1000, logits), draw_sequence(43, 1000, logits));
}

TEST(Sampler, RngIsTheStandardMersenneTwister) {
  // Platform independence rests on std::mt19937_64 being fully specified: the standard fixes its
  // 10000th output. Uniforms are then top-53-bits * 2^-53, plain arithmetic.
  std::mt19937_64 e(std::mt19937_64::default_seed);
  e.discard(9999);
  EXPECT_EQ(e(), 9981545732273789042ull);
}

TEST(Sampler, GreedyIsArgmaxTiesToLowestId) {
  SamplingParams p;
  p.temperature = 0.0f;
  auto s = Sampler::create(p);
  const auto logits = test_logits(40);
  const int32_t arg = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  EXPECT_EQ(*s->sample(logits), arg);
  std::vector<float> tie = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f};
  EXPECT_EQ(*s->sample(tie), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p;
  p.top_k = 1;
  p.seed = 9;
  auto s = Sampler::create(p);
  const auto logits = test_logits(64);
  const int32_t arg = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (int i = 0; i < 200; ++i) EXPECT_EQ(*s->sample(logits), arg);
}

// ---- penalties against the formulas ----------------------------------------------------------

TEST(Sampler, PenaltiesMatchFormulas) {
  SamplingParams p;
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.25f;
  p.penalty_last_n = 6;
  auto s = Sampler::create(p);
  std::vector<float> logits = {1.0f, -2.0f, 0.5f, 3.0f, -0.7f, 2.2f, 0.0f, -1.5f};
  // prompt: 0 1 3 3 ; generated: 3 5 5 1 5
  const std::vector<int32_t> hist = {0, 1, 3, 3, 3, 5, 5, 1, 5};
  const TokenHistory h{hist, 4};
  std::vector<float> got = logits;
  ASSERT_TRUE(s->apply_penalties(got, h).ok());

  std::vector<float> want = logits;
  // Repetition: distinct tokens of the last 6 (3 3 5 5 1 5) = {1, 3, 5}.
  for (int t : {1, 3, 5}) want[t] = want[t] > 0 ? want[t] / 1.3f : want[t] * 1.3f;
  // Presence/frequency over generated tokens: 3 x1, 5 x3, 1 x1.
  want[3] -= 0.4f + 0.25f * 1;
  want[5] -= 0.4f + 0.25f * 3;
  want[1] -= 0.4f + 0.25f * 1;
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]) << i;

  // Token 0 appears only in the prompt, outside the window: untouched. Token 3's prompt copies do
  // not count toward frequency.
  EXPECT_EQ(got[0], logits[0]);
}

TEST(Sampler, RepetitionWindowWholeHistoryAndOff) {
  std::vector<float> logits = {1.0f, -1.0f, 2.0f};
  const std::vector<int32_t> hist = {0, 1, 2};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.penalty_last_n = -1;
  auto all = Sampler::create(p);
  std::vector<float> a = logits;
  ASSERT_TRUE(all->apply_penalties(a, {hist, 3}).ok());
  EXPECT_EQ(a, (std::vector<float>{0.5f, -2.0f, 1.0f}));
  p.penalty_last_n = 0;
  auto off = Sampler::create(p);
  std::vector<float> b = logits;
  ASSERT_TRUE(off->apply_penalties(b, {hist, 3}).ok());
  EXPECT_EQ(b, logits);
}

TEST(Sampler, PenaltyChangesGreedyChoice) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.frequency_penalty = 1.0f;
  auto s = Sampler::create(p);
  std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  const std::vector<int32_t> hist = {0};
  EXPECT_EQ(*s->sample(logits, {hist, 0}), 1);  // 2 - 1 = 1 < 1.5
  EXPECT_EQ(*s->sample(logits, {hist, 1}), 0);  // the 0 is prompt: no frequency penalty
}

// ---- logprobs -------------------------------------------------------------------------------

TEST(Sampler, LogprobsAreLogSoftmaxAfterTemperatureAndSumToOne) {
  // Truncation (top-k here, min-p's in-place masking in the second case) must not change the
  // reported distribution.
  for (const auto& [k, min_p] : {std::pair<int, float>{5, 0.0f}, std::pair<int, float>{0, 0.3f}}) {
    SamplingParams p;
    p.temperature = 0.7f;
    p.top_k = k;
    p.min_p = min_p;
    p.top_logprobs = 20;
    p.seed = 3;
    auto s = Sampler::create(p);
    const auto logits = test_logits(20);
    SampleOutput out;
    auto tok = s->sample(logits, {}, &out);
    ASSERT_TRUE(tok.ok());
    ASSERT_EQ(out.top.size(), 20u);
    double mx = -1e30, sum = 0, prob_sum = 0;
    for (float l : logits) mx = std::max(mx, l / 0.7);
    for (float l : logits) sum += std::exp(l / 0.7 - mx);
    for (size_t i = 0; i < out.top.size(); ++i) {
      const auto& e = out.top[i];
      EXPECT_NEAR(e.logprob, logits[e.token] / 0.7 - mx - std::log(sum), 1e-5);
      if (i > 0) {
        EXPECT_GE(out.top[i - 1].logprob, e.logprob);
      }
      prob_sum += std::exp(e.logprob);
    }
    EXPECT_NEAR(prob_sum, 1.0, 1e-5);
    EXPECT_NEAR(out.logprob, logits[*tok] / 0.7 - mx - std::log(sum), 1e-5);
  }
}

// ---- large vocab: the partial-sort top-p path keeps exactly the reference nucleus ----------------

TEST(Sampler, LargeVocabTopPNeverLeavesNucleus) {
  const size_t vocab = 128256;
  std::vector<float> logits(vocab);
  for (size_t i = 0; i < vocab; ++i) logits[i] = static_cast<float>(0.8 * std::sin(0.37 * i) + 0.3 * std::cos(0.011 * i));
  SamplingParams p;
  p.top_p = 0.3f;  // the nucleus holds thousands of tokens: several rounds of the partial sort
  p.seed = 11;
  // Token probabilities here are ~1e-5, finer than float rounding of the running sum can resolve
  // at the boundary, so the sampler may keep one token more or fewer than the double reference.
  const std::vector<double> ref = reference_distribution(logits, p, 0.0);
  const size_t nucleus = static_cast<size_t>(std::count_if(ref.begin(), ref.end(), [](double v) { return v > 0; }));
  EXPECT_GT(nucleus, 2000u);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<size_t> rank(vocab);
  for (size_t r = 0; r < vocab; ++r) rank[order[r]] = r;
  auto s = Sampler::create(p);
  // Frequencies over 10 rank bins of the nucleus (so each bin expects hundreds of draws) must fit
  // the reference: this exercises the sampler's threshold-bisection path for large nuclei.
  constexpr int kDraws = 5000, kBins = 10;
  std::vector<double> bin_p(kBins, 0.0);
  for (size_t r = 0; r < nucleus; ++r) bin_p[r * kBins / nucleus] += ref[order[r]];
  std::vector<int> bin_n(kBins, 0);
  for (int i = 0; i < kDraws; ++i) {
    const int32_t t = *s->sample(logits);
    ASSERT_LE(rank[t], nucleus) << "token " << t << " is outside the nucleus";
    ++bin_n[std::min<size_t>(rank[t], nucleus - 1) * kBins / nucleus];
  }
  double stat = 0;
  for (int b = 0; b < kBins; ++b) stat += (bin_n[b] - bin_p[b] * kDraws) * (bin_n[b] - bin_p[b] * kDraws) / (bin_p[b] * kDraws);
  EXPECT_GT(chi_square_p_value(stat, kBins - 1), 0.001) << "chi2=" << stat;
}

// ---- validation and bad input ------------------------------------------------------------------

TEST(Sampler, ValidateNamesFieldAndValue) {
  SamplingParams p;
  p.top_p = 1.5f;
  EXPECT_EQ(p.validate().message(), "top_p must be in (0, 1]; got 1.5");
  p = {};
  p.temperature = -0.5f;
  EXPECT_NE(p.validate().message().find("temperature"), std::string::npos);
  p = {};
  p.min_p = std::nanf("");
  EXPECT_FALSE(p.validate().ok());
  p = {};
  p.top_k = -3;
  EXPECT_FALSE(p.validate().ok());
  p = {};
  p.top_logprobs = 21;
  EXPECT_FALSE(p.validate().ok());
  p = {};
  p.repetition_penalty = 0.0f;
  EXPECT_FALSE(p.validate().ok());
  EXPECT_FALSE(Sampler::create(p).ok());
}

TEST(SamplerRobust, BadLogitsAndHistoryAreErrors) {
  auto s = Sampler::create({});
  EXPECT_FALSE(s->sample(std::vector<float>{}).ok());
  EXPECT_FALSE(s->sample(std::vector<float>{1.0f, std::nanf("")}).ok());
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(s->sample(std::vector<float>{-inf, -inf}).ok());
  EXPECT_FALSE(s->sample(std::vector<float>{0.0f, inf}).ok());
  const std::vector<int32_t> bad = {0, 7};
  EXPECT_FALSE(s->sample(std::vector<float>{1.0f, 2.0f}, {bad, 0}).ok());
  const std::vector<int32_t> good = {0, 1};
  EXPECT_FALSE(s->sample(std::vector<float>{1.0f, 2.0f}, {good, 3}).ok());
  // -inf entries are masked tokens and must never be drawn.
  std::vector<float> masked = {-inf, 0.0f, -inf, 1.0f};
  for (int i = 0; i < 1000; ++i) {
    const int32_t t = *s->sample(masked);
    EXPECT_TRUE(t == 1 || t == 3);
  }
}

TEST(SamplerFuzz, RandomParamsAlwaysReturnAValidKeptToken) {
  std::mt19937_64 rng(5);
  for (int iter = 0; iter < 300; ++iter) {
    const size_t vocab = 1 + rng() % 300;
    std::vector<float> logits(vocab);
    for (float& l : logits) l = static_cast<float>(static_cast<int64_t>(rng() % 2001) - 1000) / 100.0f;
    SamplingParams p;
    p.temperature = static_cast<float>(rng() % 300) / 100.0f;
    p.top_k = static_cast<int>(rng() % (vocab + 2));
    p.top_p = static_cast<float>(1 + rng() % 100) / 100.0f;
    p.min_p = static_cast<float>(rng() % 101) / 100.0f;
    p.top_logprobs = static_cast<int>(rng() % 21);
    p.seed = rng();
    auto s = Sampler::create(p);
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    SampleOutput out;
    auto t = s->sample(logits, {}, &out);
    ASSERT_TRUE(t.ok());
    ASSERT_GE(*t, 0);
    ASSERT_LT(static_cast<size_t>(*t), vocab);
    EXPECT_EQ(out.top.size(), std::min(vocab, static_cast<size_t>(p.top_logprobs)));
    EXPECT_LE(out.logprob, 0.0f);
  }
}

}  // namespace
}  // namespace nb
