// The first CUDA code: proves the toolchain builds for sm_80 and sm_90a. Real kernels come with the
// CUDA backend issue. backend/cuda/ is the only folder that includes CUDA headers.
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/device_check.h"

namespace nb::cuda {

namespace {
__global__ void axpy_kernel(int n, float a, const float* __restrict__ x, float* __restrict__ y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
}  // namespace

std::string describe_devices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return "no CUDA device";
  std::string s;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, i);
    s += std::to_string(i) + ": " + prop.name + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
         ", " + std::to_string(prop.totalGlobalMem >> 20) + " MiB)\n";
  }
  return s;
}

bool run_axpy_selftest() {
  const int n = 1 << 16;
  float *x = nullptr, *y = nullptr;
  if (cudaMallocManaged(&x, n * sizeof(float)) != cudaSuccess) return false;
  if (cudaMallocManaged(&y, n * sizeof(float)) != cudaSuccess) return false;
  for (int i = 0; i < n; ++i) { x[i] = static_cast<float>(i); y[i] = 1.f; }
  axpy_kernel<<<(n + 255) / 256, 256>>>(n, 2.f, x, y);
  bool ok = cudaDeviceSynchronize() == cudaSuccess;
  for (int i = 0; ok && i < n; ++i) ok = y[i] == 2.f * static_cast<float>(i) + 1.f;
  cudaFree(x);
  cudaFree(y);
  return ok;
}

}  // namespace nb::cuda
