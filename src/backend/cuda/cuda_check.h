// Internal to backend/cuda/: turns cudaError_t / cublasStatus_t into Status with the failing call and
// its file:line, so an error seen far away says where it came from.
//   NB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(...));   // any cudaError_t or cublasStatus_t expression
//   NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());     // after every kernel launch
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/status.h"

namespace nb::cuda::detail {

Status cuda_status(cudaError_t e, const char* call, const char* file, int line);
Status cublas_status(cublasStatus_t s, const char* call, const char* file, int line);

inline Status check(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return Status::Ok();
  // The error is reported here; consume it so a later cudaGetLastError() does not report it again
  // against an unrelated call (sticky errors, e.g. a kernel fault, keep failing every call anyway).
  (void)cudaGetLastError();
  return cuda_status(e, call, file, line);
}
inline Status check(cublasStatus_t s, const char* call, const char* file, int line) {
  return s == CUBLAS_STATUS_SUCCESS ? Status::Ok() : cublas_status(s, call, file, line);
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace nb::cuda::detail

#define NB_CUDA_RETURN_IF_ERROR(expr) \
  NB_RETURN_IF_ERROR(::nb::cuda::detail::check((expr), #expr, __FILE__, __LINE__))
