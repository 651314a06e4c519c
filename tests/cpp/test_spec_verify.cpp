// Speculative sampling verification (engine/spec/verify): the emitted tokens must be distributed
// exactly as the target's warped distribution, whatever the draft. Synthetic "models" over a small
// vocab (next-token logits depend on the previous token) let us run >= 100,000 speculative
// generations and compare the joint distribution of the first TWO emitted tokens with
// p(a | c) p(b | a) by a chi-square test; the same test must reject a wrong acceptance rule.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "chi_square.h"
#include "engine/sampler.h"
#include "engine/spec/verify.h"

namespace nb {
namespace {

using testing::chi_square_p_value;
using testing::chi_square_test;
using testing::regularized_gamma_q;

TEST(ChiSquare, RegularizedGammaMatchesClosedForms) {
  for (double x : {0.01, 0.5, 1.0, 2.5, 7.0, 20.0, 60.0}) {
    EXPECT_NEAR(regularized_gamma_q(1.0, x), std::exp(-x), 1e-12 * std::max(1.0, std::exp(-x) * 1e3)) << x;
    EXPECT_NEAR(regularized_gamma_q(0.5, x), std::erfc(std::sqrt(x)), 1e-12) << x;
    for (int n : {2, 3, 5, 12, 40}) {  // Q(n, x) = e^-x sum_{k<n} x^k / k!
      double term = 1.0, sum = 0.0;
      for (int k = 0; k < n; ++k) {
        sum += term;
        term *= x / (k + 1);
      }
      const double want = std::exp(-x) * sum;
      EXPECT_NEAR(regularized_gamma_q(n, x), want, 1e-11 * std::max(want, 1e-3)) << n << " " << x;
    }
  }
}

TEST(ChiSquare, PValuesMatchTables) {
  // Critical values from the standard chi-square table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.4),
  // given to 3 decimals: the p-value at each is the table's upper-tail probability.
  struct Row { double df, crit, p; };
  for (const Row& r : {Row{1, 3.841, 0.05}, Row{1, 6.635, 0.01}, Row{10, 18.307, 0.05}, Row{10, 23.209, 0.01},
                       Row{30, 50.892, 0.01}, Row{100, 124.342, 0.05}, Row{35, 57.342, 0.01}}) {
    EXPECT_NEAR(chi_square_p_value(r.crit, r.df), r.p, r.p * 2e-3) << r.df << " " << r.crit;
  }
}

constexpr int kVocab = 6;

// logits[prev][next]: a random table per seed; the draft uses another seed (a poor draft).
std::vector<float> logit_table(uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> t(kVocab * kVocab);
  for (float& x : t) x = nd(rng);
  return t;
}

// [prev][next] warped distributions, made by the sampler exactly as the engine makes them.
std::vector<float> warped_table(const std::vector<float>& logits, const SamplingParams& sp) {
  Sampler s = std::move(Sampler::create(sp).value());
  std::vector<float> out(logits.size());
  for (int prev = 0; prev < kVocab; ++prev) {
    EXPECT_TRUE(s.distribution(std::span<const float>(logits).subspan(prev * kVocab, kVocab), {},
                               std::span<float>(out).subspan(prev * kVocab, kVocab)).ok());
  }
  return out;
}

struct JointResult {
  testing::ChiSquare chi;
  double mean_accepted = 0.0;
};

// Runs `runs` speculative generations from context token 0 until two tokens are emitted, with k
// drafts per step drawn from q; returns the chi-square test of the (first, second) token pairs
// against the target's p(a | 0) p(b | a). deterministic_draft: the draft proposes q's argmax and
// passes no q (the n-gram drafter's one-hot proposal).
JointResult run_joint(const SamplingParams& sp, int k, bool deterministic_draft, bool accept_always, int runs) {
  const std::vector<float> p = warped_table(logit_table(11, 1.5f), sp);
  const std::vector<float> q = warped_table(logit_table(97, 1.5f), sp);
  Sampler target = std::move(Sampler::create(sp).value());
  std::mt19937_64 draft_rng(1234);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  auto uniform = [&] { return accept_always ? 0.0 : target.uniform(); };
  std::vector<int64_t> counts(kVocab * kVocab, 0);
  int64_t accepted = 0, steps = 0;
  std::vector<int32_t> draft;
  std::vector<float> prows, qrows;
  for (int r = 0; r < runs; ++r) {
    std::vector<int32_t> emitted;
    int32_t last = 0;
    while (emitted.size() < 2) {
      draft.clear();
      qrows.clear();
      prows.assign(p.begin() + last * kVocab, p.begin() + (last + 1) * kVocab);
      int32_t prev = last;
      for (int i = 0; i < k; ++i) {
        std::span<const float> qi(q.data() + prev * kVocab, kVocab);
        int32_t x;
        if (deterministic_draft) {
          x = static_cast<int32_t>(std::max_element(qi.begin(), qi.end()) - qi.begin());
        } else {
          x = spec::draw_from_weights(qi, unif(draft_rng));
          qrows.insert(qrows.end(), qi.begin(), qi.end());
        }
        draft.push_back(x);
        prows.insert(prows.end(), p.begin() + x * kVocab, p.begin() + (x + 1) * kVocab);
        prev = x;
      }
      Result<spec::Verification> v = spec::verify_draft(draft, qrows, prows, kVocab, uniform);
      EXPECT_TRUE(v.ok());
      accepted += v->num_accepted;
      ++steps;
      emitted.insert(emitted.end(), v->tokens.begin(), v->tokens.end());
      last = emitted.back();
    }
    ++counts[emitted[0] * kVocab + emitted[1]];
  }
  std::vector<double> joint(kVocab * kVocab);
  for (int a = 0; a < kVocab; ++a)
    for (int b = 0; b < kVocab; ++b) joint[a * kVocab + b] = static_cast<double>(p[a]) * p[a * kVocab + b];
  return {chi_square_test(counts, joint), static_cast<double>(accepted) / static_cast<double>(steps)};
}

struct DistCase {
  const char* name;
  float temperature;
  float top_p;
  int top_k;
  int k;
  bool deterministic_draft;
};

class SpecDistribution : public ::testing::TestWithParam<DistCase> {};

TEST_P(SpecDistribution, FirstTwoTokensFollowTheTarget) {
  const DistCase& c = GetParam();
  SamplingParams sp;
  sp.temperature = c.temperature;
  sp.top_p = c.top_p;
  sp.top_k = c.top_k;
  sp.seed = 42;
  const JointResult r = run_joint(sp, c.k, c.deterministic_draft, /*accept_always=*/false, 100000);
  EXPECT_FALSE(r.chi.impossible_seen);
  EXPECT_GE(r.chi.min_expected_cell, 5) << "too few samples per cell for the chi-square approximation";
  EXPECT_GT(r.chi.p_value, 0.01) << "chi2 " << r.chi.stat << " df " << r.chi.df;
  RecordProperty("p_value", std::to_string(r.chi.p_value));
  RecordProperty("mean_accepted", std::to_string(r.mean_accepted));
  // The draft is poor but not useless: some drafts are accepted (the multi-token path is exercised).
  EXPECT_GT(r.mean_accepted, 0.05);
  // The test has power: accepting every draft the target allows gives the draft's distribution.
  const JointResult wrong = run_joint(sp, c.k, c.deterministic_draft, /*accept_always=*/true, 100000);
  EXPECT_LT(wrong.chi.p_value, 1e-6) << "chi2 " << wrong.chi.stat << " df " << wrong.chi.df;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SpecDistribution,
    ::testing::Values(DistCase{"temp1_k1", 1.0f, 1.0f, 0, 1, false}, DistCase{"temp1_k3", 1.0f, 1.0f, 0, 3, false},
                      DistCase{"top_p09_k2", 1.0f, 0.9f, 0, 2, false}, DistCase{"temp07_topk4_k4", 0.7f, 1.0f, 4, 4, false},
                      DistCase{"onehot_temp1_k3", 1.0f, 1.0f, 0, 3, true},
                      DistCase{"onehot_top_p09_k2", 1.0f, 0.9f, 0, 2, true}),
    [](const ::testing::TestParamInfo<DistCase>& i) { return std::string(i.param.name); });

TEST(SpecVerify, TopPRemovesTokensInTheTestTables) {
  // The top-p cases above must actually truncate, or they would not test warping.
  SamplingParams sp;
  sp.top_p = 0.9f;
  const std::vector<float> p = warped_table(logit_table(11, 1.5f), sp);
  const std::vector<float> q = warped_table(logit_table(97, 1.5f), sp);
  int zeros_p = 0, zeros_q = 0;
  for (int i = 0; i < kVocab * kVocab; ++i) zeros_p += p[i] == 0.0f, zeros_q += q[i] == 0.0f;
  EXPECT_GE(zeros_p, kVocab);
  EXPECT_GE(zeros_q, kVocab);
}

TEST(SpecVerify, GreedyAcceptsExactlyTheArgmaxPrefix) {
  // One-hot p (greedy target) and one-hot q: accept while the draft equals the argmax, then emit it.
  const int64_t v = 5;
  const std::vector<int32_t> argmax = {3, 1, 4, 0};  // target argmax at positions 0..3
  std::vector<float> p(4 * v, 0.0f);
  for (int i = 0; i < 4; ++i) p[i * v + argmax[i]] = 1.0f;
  std::mt19937_64 rng(7);
  auto u = [&] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
  for (bool with_q : {false, true}) {
    for (int first_wrong = 0; first_wrong <= 3; ++first_wrong) {
      std::vector<int32_t> draft = {3, 1, 4};
      if (first_wrong < 3) draft[first_wrong] = (argmax[first_wrong] + 1) % v;
      std::vector<float> q;
      if (with_q) {
        q.assign(3 * v, 0.0f);
        for (int i = 0; i < 3; ++i) q[i * v + draft[i]] = 1.0f;
      }
      for (int rep = 0; rep < 20; ++rep) {
        Result<spec::Verification> r = spec::verify_draft(draft, q, p, v, u);
        ASSERT_TRUE(r.ok());
        EXPECT_EQ(r->num_accepted, first_wrong);
        std::vector<int32_t> want(argmax.begin(), argmax.begin() + first_wrong + 1);
        EXPECT_EQ(r->tokens, want);
      }
    }
  }
}

TEST(SpecVerify, RejectsMalformedInput) {
  auto u = [] { return 0.5; };
  std::vector<float> p(3 * 4, 0.25f);
  EXPECT_FALSE(spec::verify_draft(std::vector<int32_t>{1, 2}, {}, std::span<const float>(p).first(8), 4, u).ok());
  EXPECT_FALSE(spec::verify_draft(std::vector<int32_t>{1, 9}, {}, p, 4, u).ok());
  EXPECT_FALSE(spec::verify_draft(std::vector<int32_t>{1, 2}, std::span<const float>(p).first(4), p, 4, u).ok());
}

}  // namespace
}  // namespace nb
