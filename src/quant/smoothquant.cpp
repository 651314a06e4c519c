#include "quant/smoothquant.h"

#include <algorithm>
#include <cmath>

namespace nb::quant {

std::vector<float> smoothquant_scales(const std::vector<float>& act_absmax,
                                      const std::vector<const std::vector<float>*>& weights,
                                      const std::vector<int64_t>& out_features, int64_t in, double alpha) {
  std::vector<float> w_max(static_cast<size_t>(in), 0.f);
  for (size_t k = 0; k < weights.size(); ++k) {
    const std::vector<float>& w = *weights[k];
    for (int64_t o = 0; o < out_features[k]; ++o) {
      for (int64_t j = 0; j < in; ++j) {
        w_max[static_cast<size_t>(j)] = std::max(w_max[static_cast<size_t>(j)], std::fabs(w[static_cast<size_t>(o * in + j)]));
      }
    }
  }
  std::vector<float> s(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) {
    // The reference clamps both maxima at 1e-5 so dead channels give finite scales.
    const double a = std::max(static_cast<double>(act_absmax[static_cast<size_t>(j)]), 1e-5);
    const double w = std::max(static_cast<double>(w_max[static_cast<size_t>(j)]), 1e-5);
    s[static_cast<size_t>(j)] = static_cast<float>(std::max(std::pow(a, alpha) / std::pow(w, 1.0 - alpha), 1e-5));
  }
  return s;
}

}  // namespace nb::quant
