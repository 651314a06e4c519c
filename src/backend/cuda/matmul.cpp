// Matmul through cuBLAS: y[m, n] = x[m, k] . W[n, k]^T with f32 accumulation.
// Row-major y^T = W . x^T is, in cuBLAS's column-major terms, C(n x m) = op_T(A: k x n) * B(k x m):
// W's rows (length k, contiguous) are A's columns, x's rows are B's columns, y's rows are C's columns.
#include <cublas_v2.h>

#include <climits>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/w8a8.h"
#include "core/group_quant.h"

namespace nb::cuda {

// gemv.cu: M <= 2 rows with f16/bf16 weights and 16-byte aligned rows.
bool gemv_applies(const MatmulParams& p);
Status gemv(const MatmulParams& p, Context& ctx, bool f32_out);
// w4_matmul.cu: kQGroup device weights made by upload_w4.
Status w4_matmul(const MatmulParams& p, Context& ctx, bool f32_out);

namespace {

Result<cudaDataType_t> blas_type(DType weight, DType act) {
  if (weight == DType::kF32 && act == DType::kF32) return CUDA_R_32F;
  if (weight == DType::kF16 && act == DType::kF16) return CUDA_R_16F;
  if (weight == DType::kBF16 && act == DType::kBF16) return CUDA_R_16BF;
  return unimplemented("matmul: weights " + std::string(dtype_name(weight)) + " with activations " +
                       std::string(dtype_name(act)) +
                       " are not supported on CUDA; use f16 or bf16 weights with activations of the same dtype, or "
                       "f32 with f32 (quantized weights must be repacked at load)");
}

Status gemm(const MatmulParams& p, Context& ctx, bool f32_out) {
  const Tensor& w = p.weight;
  if (w.ndim() != 2 || w.device() != Device::kCUDA) {
    return invalid_argument("matmul: the weight must be a 2-D device tensor (Device::kCUDA); got " + w.describe());
  }
  if (w.dtype() == DType::kQGroup && w.group_quant() != nullptr && w.group_quant()->act_int8) {
    // W8A8 device weights (w8a8.h): y in act_dtype only.
    if (f32_out) return unimplemented("matmul_to_f32: W8A8 weights write act_dtype outputs; use matmul");
    return matmul_w8a8(p, ctx);
  }
  if (w.dtype() == DType::kQGroup) return w4_matmul(p, ctx, f32_out);
  NB_ASSIGN_OR_RETURN(const cudaDataType_t type, blas_type(w.dtype(), p.act_dtype));
  const cudaDataType_t out_type = f32_out ? CUDA_R_32F : type;
  const int64_t n = w.dim(0), k = w.dim(1), m = p.m;
  if (m <= 0 || n <= 0) return Status::Ok();
  if (gemv_applies(p)) return gemv(p, ctx, f32_out);  // 1-2 rows: the bandwidth-bound kernel (gemv.cu)
  if (n > INT_MAX || k > INT_MAX || m > INT_MAX) return invalid_argument("matmul: dimensions exceed cuBLAS's int range");
  const float alpha = 1.f, beta = 0.f;
  NB_CUDA_RETURN_IF_ERROR(cublasGemmEx(static_cast<cublasHandle_t>(ctx.blas()), CUBLAS_OP_T, CUBLAS_OP_N,
                                       static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, w.data(),
                                       type, static_cast<int>(k), p.x, type, static_cast<int>(k), &beta, p.y, out_type,
                                       static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::Ok();
}

}  // namespace

Status matmul(const MatmulParams& p, Context& ctx) { return gemm(p, ctx, false); }
Status matmul_to_f32(const MatmulParams& p, Context& ctx) { return gemm(p, ctx, true); }

}  // namespace nb::cuda
