// The numbers a serving benchmark reports, and the randomness that drives it. The generator
// works from raw 64-bit outputs with formulas written here (not std::*_distribution, whose
// algorithms differ between standard libraries), so a seed gives the same workload everywhere.
#pragma once
#include <cstdint>
#include <vector>

namespace nb::bench_serve {

// SplitMix64 (Steele, Lea, Flood 2014): small, fast, passes BigCrush, and any seed is fine.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  // Uniform in (0, 1]: never 0, so -log(u) is finite.
  double next_open_unit();
  // Uniform integer in [lo, hi] (lo <= hi), without modulo bias (Lemire's multiply-and-reject).
  int64_t next_int(int64_t lo, int64_t hi);
  // Exponential with the given rate (events per unit time) by inversion: -ln(U) / rate.
  double next_exponential(double rate);

 private:
  uint64_t state_;
};

// Arrival offsets in seconds from the start of a run for `num_requests` requests of a Poisson
// process of `rate` requests/s (exponential gaps; the first request also waits one gap, as in
// vLLM's benchmark). rate = +inf (or any non-finite or non-positive value) sends all at t = 0.
std::vector<double> poisson_arrivals(int64_t num_requests, double rate, uint64_t seed);

// The p-th percentile (0 <= p <= 100) with linear interpolation between closest ranks, the
// definition numpy.percentile uses by default: rank = p/100 * (n - 1). NaN for an empty sample.
// Takes the sample by value: it is partially reordered.
double percentile(std::vector<double> values, double p);

struct Summary {
  int64_t count = 0;
  double mean = 0, stddev = 0, min = 0, max = 0;  // stddev: population (numpy's default ddof=0)
  double p50 = 0, p90 = 0, p99 = 0;               // all NaN when count == 0
};
Summary summarize(const std::vector<double>& values);

}  // namespace nb::bench_serve
