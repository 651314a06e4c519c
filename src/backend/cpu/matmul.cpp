// nb::cpu::matmul: picks the kernel family by weight dtype (see matmul_quant.cpp, matmul_float.cpp).
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"

namespace nb::cpu {

void matmul(const MatmulParams& p, ThreadPool& pool) {
  if (p.m <= 0) return;
  switch (p.weight.dtype()) {
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
      return matmul_quantized(p, pool);
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return matmul_float(p, pool);
    case DType::kQGroup:
      return matmul_group(p, pool);
    default:
      // Integer storage types are not matmul weights in any supported checkpoint; the portable
      // path still gives the right answer through dequantize_row.
      return portable::matmul_float(p, pool);
  }
}

void embedding(const EmbeddingParams& p) {
  // One row per token, once per step: dequantize_row is already the right tool.
  const int64_t dim = p.table.dim(1);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    dequantize_row(p.table.dtype(), p.table.row<const void>(p.ids[t]), p.out + t * dim, dim);
  }
}

}  // namespace nb::cpu
