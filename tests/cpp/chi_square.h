// Pearson's chi-square goodness-of-fit test for the sampling-distribution tests: the statistic and
// its p-value through the regularized upper incomplete gamma function Q(a, x) (series for x < a + 1,
// Lentz's continued fraction otherwise; Numerical Recipes ch. 6.2). Tested against closed forms
// and table values in test_spec_verify.cpp and test_sampler.cpp; used by both.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace nb::testing {

// Q(a, x) = Gamma(a, x) / Gamma(a), a > 0, x >= 0.
inline double regularized_gamma_q(double a, double x) {
  if (x <= 0.0) return 1.0;
  const double log_prefix = -x + a * std::log(x) - std::lgamma(a);
  if (x < a + 1.0) {  // P(a, x) = e^-x x^a / Gamma(a) * sum_n x^n / (a (a+1) ... (a+n))
    double term = 1.0 / a, sum = term;
    for (int n = 1; n < 10000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::fabs(term) < std::fabs(sum) * 1e-16) break;
    }
    return 1.0 - sum * std::exp(log_prefix);
  }
  // Continued fraction for Q(a, x), modified Lentz.
  const double tiny = 1e-300;
  double b = x + 1.0 - a, c = 1.0 / tiny, d = 1.0 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < tiny) d = tiny;
    c = b + an / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1.0) < 1e-16) break;
  }
  return std::exp(log_prefix) * h;
}

// P(X >= stat) for X ~ chi-square with df degrees of freedom.
inline double chi_square_p_value(double stat, double df) { return regularized_gamma_q(df / 2.0, stat / 2.0); }

struct ChiSquare {
  double stat = 0.0;
  int64_t df = 0;
  double p_value = 0.0;
  int64_t min_expected_cell = 0;  // smallest expected count among cells with positive probability
  bool impossible_seen = false;   // a cell of probability 0 was observed
};

// observed: counts per cell; probs: the hypothesised probability of each cell (summing to 1).
inline ChiSquare chi_square_test(const std::vector<int64_t>& observed, const std::vector<double>& probs) {
  int64_t n = 0;
  for (int64_t o : observed) n += o;
  ChiSquare r;
  r.min_expected_cell = std::numeric_limits<int64_t>::max();
  int64_t cells = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    if (probs[i] <= 0.0) {
      if (observed[i] > 0) r.impossible_seen = true;
      continue;
    }
    const double e = probs[i] * static_cast<double>(n);
    r.stat += (static_cast<double>(observed[i]) - e) * (static_cast<double>(observed[i]) - e) / e;
    r.min_expected_cell = std::min(r.min_expected_cell, static_cast<int64_t>(e));
    ++cells;
  }
  r.df = cells - 1;
  r.p_value = r.impossible_seen ? 0.0 : chi_square_p_value(r.stat, static_cast<double>(r.df));
  return r;
}

}  // namespace nb::testing
