// Used by tests/gpu/emu/run_w4.sh only: what the W4 tests call besides w4_matmul.cu, on the host.
//   cuda::matmul / matmul_to_f32: the device-weight check of matmul.cpp, then w4_matmul (kQGroup
//   weights only: the emulator does not run cuBLAS or the f16 GEMV).
//   cuda::Graph: unimplemented (GraphCaptureAndReplay skips).
//   cublasGemmEx: a plain host GEMM (op(A) = A^T, op(B) = B, f16/bf16/f32 element types, f32 sums) for
//   the W4 prefill path's dequantize + GEMM slabs.
#include <cublas_v2.h>

#include <cstring>
#include <string>

#include "backend/cuda/cuda_ops.h"
#include "core/dtype.h"

namespace nb::cuda {
Status w4_matmul(const MatmulParams& p, Context& ctx, bool f32_out);
namespace {
Status emu_matmul(const MatmulParams& p, Context& ctx, bool f32_out) {
  if (p.weight.ndim() != 2 || p.weight.device() != Device::kCUDA) {
    return invalid_argument("matmul: the weight must be a 2-D device tensor (Device::kCUDA); got " + p.weight.describe());
  }
  if (p.weight.dtype() != DType::kQGroup) return unimplemented("emu: only W4 weights are emulated");
  return w4_matmul(p, ctx, f32_out);
}
}  // namespace
Status matmul(const MatmulParams& p, Context& ctx) { return emu_matmul(p, ctx, false); }
Status matmul_to_f32(const MatmulParams& p, Context& ctx) { return emu_matmul(p, ctx, true); }
// No CUDA graphs in the emulator: capture reports unimplemented (the graph test skips).
Status Graph::begin_capture(void*) { return unimplemented("emu: no CUDA graphs"); }
Result<Graph> Graph::end_capture(void*) { return unimplemented("emu: no CUDA graphs"); }
Status Graph::launch(void*) const { return unimplemented("emu: no CUDA graphs"); }
Graph::~Graph() = default;
Graph::Graph(Graph&&) noexcept {}
Graph& Graph::operator=(Graph&&) noexcept { return *this; }
}  // namespace nb::cuda

namespace {
float load(const void* base, size_t i, cudaDataType_t t) {
  if (t == CUDA_R_32F) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return t == CUDA_R_16F ? nb::fp16_to_fp32(h) : nb::bf16_to_fp32(h);
}
void store(void* base, size_t i, cudaDataType_t t, float v) {
  if (t == CUDA_R_32F) {
    static_cast<float*>(base)[i] = v;
  } else {
    static_cast<uint16_t*>(base)[i] = t == CUDA_R_16F ? nb::fp32_to_fp16(v) : nb::fp32_to_bf16(v);
  }
}
}  // namespace

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                                       int k, const void* alpha, const void* A, cudaDataType Atype, int lda,
                                       const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                                       cudaDataType Ctype, int ldc, cublasComputeType_t, cublasGemmAlgo_t) {
  if (transa != CUBLAS_OP_T || transb != CUBLAS_OP_N) return CUBLAS_STATUS_NOT_SUPPORTED;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float acc = 0.f;
      for (int l = 0; l < k; ++l) {
        acc += load(A, static_cast<size_t>(l) + static_cast<size_t>(i) * lda, Atype) *
               load(B, static_cast<size_t>(l) + static_cast<size_t>(j) * ldb, Btype);
      }
      const size_t ci = static_cast<size_t>(i) + static_cast<size_t>(j) * ldc;
      store(C, ci, Ctype, al * acc + (be != 0.f ? be * load(C, ci, Ctype) : 0.f));
    }
  return CUBLAS_STATUS_SUCCESS;
}
