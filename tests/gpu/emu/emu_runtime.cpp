// Used by tests/gpu/emu/run.sh only (see there).
#define private public
#include "backend/cuda/device.h"
#undef private
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cstdlib>
#include <cstring>
#include <utility>
#include "core/status.h"
namespace nb::cuda {
namespace detail {
Status cuda_status(cudaError_t e, const char* call, const char* file, int line) { return internal_error(call); }
Status cublas_status(cublasStatus_t s, const char* call, const char* file, int line) { return internal_error(call); }
}
int device_count() { return 1; }
Result<DeviceInfo> device_info(int) { DeviceInfo i; i.name = "emu"; i.num_sms = 132; i.major = 9; return i; }
Result<DeviceBuffer> DeviceBuffer::allocate(size_t n) { DeviceBuffer b; if (!n) return b; b.ptr_ = std::malloc(n); b.size_ = n; return b; }
DeviceBuffer::~DeviceBuffer() { std::free(ptr_); }
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept { if (this != &o) { std::free(ptr_); ptr_ = std::exchange(o.ptr_, nullptr); size_ = std::exchange(o.size_, 0);} return *this; }
Status copy_to_device(void* d, const void* s, size_t n, void*) { if (n) std::memcpy(d, s, n); return Status::Ok(); }
Status copy_to_host(void* d, const void* s, size_t n, void*) { if (n) std::memcpy(d, s, n); return Status::Ok(); }
Status copy_on_device(void* d, const void* s, size_t n, void*) { if (n) std::memmove(d, s, n); return Status::Ok(); }
Status fill_bytes(void* d, int v, size_t n, void*) { if (n) std::memset(d, v, n); return Status::Ok(); }
Status synchronize(void*) { return Status::Ok(); }
Result<std::unique_ptr<Context>> Context::create(int ordinal, size_t ws) {
  std::unique_ptr<Context> c(new Context());
  c->info_.num_sms = 132;
  auto b = DeviceBuffer::allocate(ws);
  c->workspace_ = std::move(b).value();
  c->sync_counters_ = std::move(DeviceBuffer::allocate(kSyncCounters * sizeof(int32_t))).value();
  std::memset(c->sync_counters_.data(), 0, c->sync_counters_.size());
  return c;
}
Context::~Context() {}
}
