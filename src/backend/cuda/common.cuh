// Internal to backend/cuda/ kernels: f32 <-> activation-type conversions and the dtype dispatch that
// turns a runtime act_dtype into a compile-time element type (one instantiation per dtype).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "core/dtype.h"
#include "core/status.h"

#if defined(NIBBLE_EMU)
namespace emu {
template <class F, class... Rest>
void launch(F f, dim3 g, dim3 b, Rest...);  // tests/gpu/emu/emu.h
}  // namespace emu
#endif

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

// Programmatic dependent launch (sm_90+). A kernel launched by launch_pdl may start while the kernel
// before it in the stream is still running, once every block of that kernel has called
// pdl_launch_dependents (or exited); it must call pdl_wait before it reads anything an earlier kernel
// writes or writes anything an earlier kernel reads — only constant data (weights) may be touched
// before. pdl_wait returns once the previous grid has completed and its writes are visible; since
// that grid waited for its own predecessor, everything earlier in the stream is complete too. Both
// are no-ops below sm_90 and for kernels launched without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Asynchronous global -> shared copies (sm_80+): N = 4, 8 or 16 bytes, both addresses N-aligned.
// Each thread's copies since its last cp_async_commit form a group; cp_async_wait<P>() returns once
// at most P of the thread's groups are still in flight (their bytes are then visible to this thread;
// other threads need a __syncthreads after their own wait). 16-byte copies bypass L1 (.cg).
template <int N>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem) {
  static_assert(N == 4 || N == 8 || N == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(NIBBLE_EMU)
  memcpy(smem, gmem, N);
#else
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (N == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(gmem), "n"(N) : "memory");
  }
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(NIBBLE_EMU)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int P>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(NIBBLE_EMU)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(P) : "memory");
#endif
}

// Launches kernel<<<grid, block, 0, stream>>>(args...), with programmatic stream serialization
// allowed when `pdl` (Context::pdl(): sm_90+ and not disabled by NIBBLE_PDL=0). Captured into CUDA
// graphs as programmatic edges.
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl,
                       Args&&... args) {
#if defined(NIBBLE_EMU)  // the CPU emulator (tests/gpu/emu): an ordinary emulated launch
  ::emu::launch([&]() { kernel(args...); }, grid, block);
  return cudaSuccess;
#endif
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace nb::cuda::detail
