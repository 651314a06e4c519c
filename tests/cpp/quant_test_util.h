// Shared by the quantization tests (test_quant_algos.cpp, test_quant_smooth.cpp): random inputs
// and the exact output error, computed directly.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace nb::quant::testing_util {

inline std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// Correlated activations X [tokens, in]: x = z A with a random mixing matrix, plus a few outlier
// channels of large magnitude (as LLM activations have).
inline std::vector<float> correlated_inputs(int64_t tokens, int64_t in, std::mt19937& rng) {
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

inline std::vector<double> gram_of(const std::vector<float>& x, int64_t tokens, int64_t in) {
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
inline double output_error(const std::vector<float>& x, int64_t tokens, const std::vector<float>& w,
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

}  // namespace nb::quant::testing_util
