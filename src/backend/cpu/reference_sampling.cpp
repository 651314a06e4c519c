// Reference for the sampling-side ops (ArgmaxParams).
#include <cmath>

#include "backend/cpu/cpu_ops.h"

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

}  // namespace nb::cpu::ref
