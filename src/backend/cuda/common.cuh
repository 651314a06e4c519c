// Internal to backend/cuda/ kernels: f32 <-> activation-type conversions and the dtype dispatch that
// turns a runtime act_dtype into a compile-time element type (one instantiation per dtype).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/status.h"

namespace nb::cuda::detail {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls f(T{}) with T = float, __half or __nv_bfloat16 for act_dtype f32, f16, bf16.
template <typename F>
Status dispatch_act(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::kF32: return f(float{});
    case DType::kF16: return f(__half{});
    case DType::kBF16: return f(__nv_bfloat16{});
    default:
      return unimplemented(std::string(op) + ": activations of dtype " + std::string(dtype_name(t)) +
                           " are not supported on CUDA; use f32, f16 or bf16");
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace nb::cuda::detail
