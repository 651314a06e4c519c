// The device layer: wrappers that turn every CUDA runtime / cuBLAS return code into a Status.
#include "backend/cuda/device.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "backend/cuda/cuda_check.h"

namespace nb::cuda {

namespace detail {

Status cuda_status(cudaError_t e, const char* call, const char* file, int line) {
  std::string msg = std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ") from " + call + " at " +
                    file + ":" + std::to_string(line);
  if (e == cudaErrorMemoryAllocation) {
    return resource_exhausted(msg + "; free device memory (smaller model, batch or KV pool) and retry");
  }
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
    return failed_precondition(msg + "; check `nvidia-smi` or build without -DNIBBLE_CUDA=ON");
  }
  return internal_error(msg + "; rerun with CUDA_LAUNCH_BLOCKING=1 (or under compute-sanitizer) to find the kernel");
}

Status cublas_status(cublasStatus_t s, const char* call, const char* file, int line) {
  std::string msg = std::string(cublasGetStatusName(s)) + " (" + cublasGetStatusString(s) + ") from " + call +
                    " at " + file + ":" + std::to_string(line);
  if (s == CUBLAS_STATUS_ALLOC_FAILED) return resource_exhausted(msg + "; free device memory and retry");
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) return unimplemented(msg + "; this dtype/shape is not supported by cuBLAS here");
  return internal_error(msg);
}

}  // namespace detail

using detail::as_stream;

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so later calls do not report it
    return 0;
  }
  return count;
}

Result<DeviceInfo> device_info(int ordinal) {
  cudaDeviceProp prop{};
  NB_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, ordinal));
  DeviceInfo info;
  info.name = prop.name;
  info.ordinal = ordinal;
  info.major = prop.major;
  info.minor = prop.minor;
  info.num_sms = prop.multiProcessorCount;
  info.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  info.shared_per_block_optin = prop.sharedMemPerBlockOptin;
  int current = 0;
  NB_CUDA_RETURN_IF_ERROR(cudaGetDevice(&current));
  NB_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
  const cudaError_t e = cudaMemGetInfo(&info.free_bytes, &info.total_bytes);
  NB_CUDA_RETURN_IF_ERROR(cudaSetDevice(current));
  NB_CUDA_RETURN_IF_ERROR(e);
  return info;
}

Result<DeviceBuffer> DeviceBuffer::allocate(size_t nbytes) {
  DeviceBuffer b;
  if (nbytes == 0) return b;
  NB_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, nbytes));
  b.size_ = nbytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  // A destructor cannot return a Status; a failing cudaFree means the context is already broken and
  // the error resurfaces at the next checked call.
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Status copy_to_device(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return Status::Ok();
  NB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, as_stream(stream)));
  return Status::Ok();
}

Status copy_to_host(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return Status::Ok();
  NB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, as_stream(stream)));
  return Status::Ok();
}

Status copy_on_device(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return Status::Ok();
  NB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, as_stream(stream)));
  return Status::Ok();
}

Status fill_bytes(void* dst, int value, size_t nbytes, void* stream) {
  if (nbytes == 0) return Status::Ok();
  NB_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, value, nbytes, as_stream(stream)));
  return Status::Ok();
}

Status synchronize(void* stream) {
  NB_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(as_stream(stream)));
  // A kernel fault surfaces at the synchronize; also report a launch error nobody checked.
  NB_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Result<std::unique_ptr<Context>> Context::create(int ordinal, size_t workspace_bytes) {
  const int count = device_count();
  if (ordinal < 0 || ordinal >= count) {
    return failed_precondition("CUDA device " + std::to_string(ordinal) + " requested but " + std::to_string(count) +
                               " visible; check `nvidia-smi` and CUDA_VISIBLE_DEVICES");
  }
  NB_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
  std::unique_ptr<Context> ctx(new Context());
  NB_ASSIGN_OR_RETURN(ctx->info_, device_info(ordinal));
  cudaStream_t stream = nullptr;
  NB_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ctx->stream_ = stream;
  cublasHandle_t handle = nullptr;
  NB_CUDA_RETURN_IF_ERROR(cublasCreate(&handle));
  ctx->blas_ = handle;
  NB_CUDA_RETURN_IF_ERROR(cublasSetStream(handle, stream));
  // Plain f32 GEMMs stay full f32 (no TF32), so the f32 path matches the CPU to ~1e-6.
  NB_CUDA_RETURN_IF_ERROR(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
  NB_ASSIGN_OR_RETURN(ctx->workspace_, DeviceBuffer::allocate(workspace_bytes));
  NB_ASSIGN_OR_RETURN(ctx->blas_workspace_, DeviceBuffer::allocate(32u << 20));
  NB_CUDA_RETURN_IF_ERROR(cublasSetWorkspace(handle, ctx->blas_workspace_.data(), ctx->blas_workspace_.size()));
  NB_ASSIGN_OR_RETURN(ctx->sync_counters_, DeviceBuffer::allocate(kSyncCounters * sizeof(int32_t)));
  NB_CUDA_RETURN_IF_ERROR(cudaMemset(ctx->sync_counters_.data(), 0, ctx->sync_counters_.size()));
  const char* pdl_env = std::getenv("NIBBLE_PDL");
  ctx->set_pdl(pdl_env == nullptr || std::string(pdl_env) != "0");
  return ctx;
}

Context::~Context() {
  if (blas_ != nullptr) (void)cublasDestroy(static_cast<cublasHandle_t>(blas_));
  if (stream_ != nullptr) (void)cudaStreamDestroy(as_stream(stream_));
}

}  // namespace nb::cuda
