// Reference for the sampling-side ops (ArgmaxParams, SampleRowsParams, LogitStatsParams): plain loops and a full
// sort, written from the rule in backend/ops.h rather than from the Sampler's fast paths.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/sampling_exp.h"

namespace nb::cpu::ref {

void argmax(const ArgmaxParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.cols;
    int64_t best = 0;
    for (int64_t i = 1; i < p.cols; ++i) {
      // Strictly greater keeps the lowest index on ties; a NaN at 0 loses to any number.
      if (x[i] > x[best] || (std::isnan(x[best]) && !std::isnan(x[i]))) best = i;
    }
    p.out[r] = static_cast<int32_t>(best);
  }
}

namespace {

int32_t sample_row(const float* x, int64_t vocab, const SampleRowParams& s) {
  const auto n = static_cast<size_t>(vocab);
  std::vector<float> z(x, x + n);
  if (s.temperature != 0.0f && s.temperature != 1.0f) {
    const float inv = 1.0f / s.temperature;
    for (float& v : z) v *= inv;
  }
  for (float v : z) {
    if (std::isnan(v) || v == std::numeric_limits<float>::infinity()) return -1;
  }
  const float m = *std::max_element(z.begin(), z.end());
  if (m == -std::numeric_limits<float>::infinity()) return -1;
  if (s.temperature == 0.0f) return static_cast<int32_t>(std::find(z.begin(), z.end(), m) - z.begin());
  std::vector<float> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = sampling_exp(z[i] - m);

  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  size_t keep = n;
  if (s.top_k > 0 && static_cast<size_t>(s.top_k) < n) keep = static_cast<size_t>(s.top_k);
  if (s.top_p < 1.0f) {
    double total = 0.0;
    for (size_t j = 0; j < keep; ++j) total += w[order[j]];
    const double target = static_cast<double>(s.top_p) * total;
    double cum = 0.0;
    size_t j = 0;
    while (j < keep && cum < target) cum += w[order[j++]];
    keep = std::max<size_t>(j, 1);
  }
  std::vector<char> kept(n, 0);
  for (size_t j = 0; j < keep; ++j) kept[order[j]] = 1;
  if (s.min_p > 0.0f) {
    for (size_t i = 0; i < n; ++i) kept[i] = kept[i] && w[i] >= s.min_p;
  }
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += kept[i] ? w[i] : 0.0;
  const double target = s.uniform * total;
  double cum = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < n; ++i) {
    if (!kept[i] || w[i] == 0.0f) continue;
    cum += w[i];
    last = static_cast<int32_t>(i);
    if (target < cum) return last;
  }
  return last;  // rounding put the target at the very end: the last drawable token
}

}  // namespace

void sample_rows(const SampleRowsParams& p) {
  for (int64_t r = 0; r < p.num_rows; ++r) p.out[r] = sample_row(p.x + r * p.vocab, p.vocab, p.rows[r]);
}

namespace {

// log_softmax of one row in double: the maximum, then log of the sum of exp(x - max).
std::vector<double> log_softmax_row(const float* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - m);
  const double lse = m + std::log(sum);
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<double>(x[i]) - lse;
  return out;
}

}  // namespace

void logit_stats(const LogitStatsParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.logits + r * p.vocab;
    const std::vector<double> lp = log_softmax_row(x, p.vocab);
    const auto t = static_cast<size_t>(p.targets[r]);
    double* o = p.out + 4 * r;
    o[0] = -lp[t];
    o[1] = 0.0;
    o[2] = 0.0;
    o[3] = 1.0;
    if (p.ref_logits == nullptr) continue;
    const float* y = p.ref_logits + r * p.vocab;
    const std::vector<double> lq = log_softmax_row(y, p.vocab);
    double kl = 0.0;
    for (size_t v = 0; v < lq.size(); ++v) {
      const double q = std::exp(lq[v]);
      if (q > 0.0) kl += q * (lq[v] - lp[v]);
    }
    int32_t am = 0, aq = 0;
    argmax({x, &am, 1, p.vocab});
    argmax({y, &aq, 1, p.vocab});
    o[1] = -lq[t];
    o[2] = kl;
    o[3] = am == aq ? 1.0 : 0.0;
  }
}

}  // namespace nb::cpu::ref
