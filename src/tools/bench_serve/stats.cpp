#include "tools/bench_serve/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nb::bench_serve {

uint64_t Rng::next_u64() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Rng::next_open_unit() {
  // The top 53 bits give every double of the form k * 2^-53; adding 1 maps [0, 2^53) to (0, 1].
  return static_cast<double>((next_u64() >> 11) + 1) * 0x1.0p-53;
}

int64_t Rng::next_int(int64_t lo, int64_t hi) {
  const uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;  // 0: all 2^64
  if (range == 0) return static_cast<int64_t>(next_u64());
  // Lemire 2019, "Fast Random Integer Generation in an Interval": reject the low products that
  // would make some results one more likely than others.
  const uint64_t threshold = (0 - range) % range;
  while (true) {
    const unsigned __int128 m = static_cast<unsigned __int128>(next_u64()) * range;
    if (static_cast<uint64_t>(m) >= threshold) {
      return static_cast<int64_t>(static_cast<uint64_t>(lo) + static_cast<uint64_t>(m >> 64));
    }
  }
}

double Rng::next_exponential(double rate) { return -std::log(next_open_unit()) / rate; }

std::vector<double> poisson_arrivals(int64_t num_requests, double rate, uint64_t seed) {
  std::vector<double> t(static_cast<size_t>(std::max<int64_t>(num_requests, 0)), 0.0);
  if (!std::isfinite(rate) || rate <= 0) return t;
  Rng rng(seed);
  double now = 0;
  for (double& x : t) {
    now += rng.next_exponential(rate);
    x = now;
  }
  return t;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(lo), values.end());
  const double a = values[lo];
  if (hi == lo || rank == static_cast<double>(lo)) return a;
  // After nth_element the elements past lo are all >= a; the next order statistic is their minimum.
  const double b = *std::min_element(values.begin() + static_cast<std::ptrdiff_t>(lo) + 1, values.end());
  return a + (b - a) * (rank - static_cast<double>(lo));
}

Summary summarize(const std::vector<double>& values) {
  Summary s;
  s.count = static_cast<int64_t>(values.size());
  if (values.empty()) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    s.mean = s.stddev = s.min = s.max = s.p50 = s.p90 = s.p99 = nan;
    return s;
  }
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  double sq = 0;
  for (double v : values) sq += (v - s.mean) * (v - s.mean);
  s.stddev = std::sqrt(sq / static_cast<double>(values.size()));
  s.min = *std::min_element(values.begin(), values.end());
  s.max = *std::max_element(values.begin(), values.end());
  s.p50 = percentile(values, 50);
  s.p90 = percentile(values, 90);
  s.p99 = percentile(values, 99);
  return s;
}

}  // namespace nb::bench_serve
