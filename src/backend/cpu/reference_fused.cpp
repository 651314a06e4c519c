// References for the fused decode ops of the CUDA backend (FusedLinearParams, RopeKvWriteParams),
// defined through the plain references: the norm in double, the products by ref::matmul, the
// epilogue in f32 — the GPU kernels differ only in accumulation order (and keep the normed input in
// f32 where the unfused path rounds it to the activation dtype).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace nb::cpu::ref {

void fused_linear(const FusedLinearParams& p) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  std::vector<float> xn(p.x, p.x + p.m * k);
  if (p.norm_weight != nullptr) {
    for (int64_t t = 0; t < p.m; ++t) {
      double ss = 0.0;
      for (int64_t i = 0; i < k; ++i) ss += static_cast<double>(p.x[t * k + i]) * p.x[t * k + i];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(k) + p.norm_eps);
      for (int64_t i = 0; i < k; ++i) xn[static_cast<size_t>(t * k + i)] = static_cast<float>(p.x[t * k + i] * inv * p.norm_weight[i]);
    }
  }
  std::vector<float> r(static_cast<size_t>(p.m * n));
  matmul({p.weight, xn.data(), r.data(), p.m});
  std::vector<float> r2;
  if (p.epilogue == LinearEpilogue::kSwiglu) {
    r2.resize(r.size());
    matmul({p.weight2, xn.data(), r2.data(), p.m});
  }
  for (int64_t t = 0; t < p.m; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      const float v = r[static_cast<size_t>(t * n + j)];
      switch (p.epilogue) {
        case LinearEpilogue::kStore: p.y[t * n + j] = v; break;
        case LinearEpilogue::kAddInto: p.y[t * n + j] += v; break;
        case LinearEpilogue::kSwiglu: {
          const float u = r2[static_cast<size_t>(t * n + j)];
          p.y[t * n + j] = v / (1.f + std::exp(-v)) * u;
          break;
        }
        case LinearEpilogue::kSplit: {
          const int64_t n2 = n - p.n0 - p.n1;
          if (j < p.n0) p.y[t * p.n0 + j] = v;
          else if (j < p.n0 + p.n1) p.y1[t * p.n1 + j - p.n0] = v;
          else p.y2[t * n2 + j - p.n0 - p.n1] = v;
          break;
        }
      }
    }
  }
}

void rope_kv_write(const RopeKvWriteParams& p) {
  rope(p.rope);
  kv_write(p.kv);
}

}  // namespace nb::cpu::ref
