// The CUDA device layer, includable from plain C++ (no CUDA header here): device discovery,
// Status-returning memory/stream wrappers, a DeviceBuffer that owns device memory, and the Context
// every op launches on (one stream, one cuBLAS handle, one workspace).
// Streams and library handles are opaque `void*` (cudaStream_t / cublasHandle_t inside cuda/).
// All copies are asynchronous on the given stream; call synchronize() before reading results on the
// host or freeing host memory a copy still reads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace nb::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (callers skip GPU work).
int device_count();

// Properties the ops plan their launches with.
struct DeviceInfo {
  std::string name;
  int ordinal = 0;
  int major = 0, minor = 0;           // compute capability
  int num_sms = 0;
  size_t total_bytes = 0, free_bytes = 0;
  size_t l2_bytes = 0;
  size_t shared_per_block_optin = 0;  // bytes a block may use after opting in
};
Result<DeviceInfo> device_info(int ordinal);

// Owns `size()` bytes of device memory (cudaFree on destruction). Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static Result<DeviceBuffer> allocate(size_t nbytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return size_; }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// Page-locked host memory (cudaHostAlloc): staging for asynchronous copies. Move-only.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static Result<PinnedBuffer> allocate(size_t nbytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return size_; }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

// Makes `ordinal` the calling thread's current device (each host thread has its own).
Status set_device(int ordinal);
// Free and total bytes of the current device.
Status memory_info(size_t* free_bytes, size_t* total_bytes);

Status copy_to_device(void* dst, const void* src, size_t nbytes, void* stream);
Status copy_to_host(void* dst, const void* src, size_t nbytes, void* stream);
Status copy_on_device(void* dst, const void* src, size_t nbytes, void* stream);
// Sets every byte of [dst, dst + nbytes) to `value` (cudaMemsetAsync).
Status fill_bytes(void* dst, int value, size_t nbytes, void* stream);
Status synchronize(void* stream);

// One stream + one cuBLAS handle bound to it + one scratch buffer, on one device. Ops take a
// Context& and enqueue on its stream; nothing is synchronized unless the caller asks. The workspace
// is sized once at creation (allocating mid-step would break CUDA graph capture); an op that needs
// more returns resource_exhausted saying how much (see attention_workspace_bytes in ops.h here).
class Context {
 public:
  static Result<std::unique_ptr<Context>> create(int ordinal = 0, size_t workspace_bytes = 64u << 20);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  void* stream() const { return stream_; }
  void* blas() const { return blas_; }  // cublasHandle_t
  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.size(); }
  const DeviceInfo& info() const { return info_; }
  Status synchronize() const { return cuda::synchronize(stream_); }

  // Keys per split of decode attention; 0 (default) picks it from the batch and the SM count.
  // Tests set it to force split-K on short contexts.
  int64_t decode_split_keys() const { return decode_split_keys_; }
  void set_decode_split_keys(int64_t keys) { decode_split_keys_ = keys; }

  // Whether kernels that support it are launched with programmatic dependent launch (overlapping
  // their start with the previous kernel's tail): sm_90+ unless the environment sets NIBBLE_PDL=0.
  bool pdl() const { return pdl_; }
  void set_pdl(bool on) { pdl_ = on && info_.major >= 9; }

  // kSyncCounters int32 counters, zero at creation, for kernels whose blocks count who finished last
  // (decode attention's merge); such a kernel sets every counter it used back to 0 before it ends.
  static constexpr int64_t kSyncCounters = 65536;
  int32_t* sync_counters() const { return static_cast<int32_t*>(sync_counters_.data()); }

 private:
  Context() = default;
  DeviceInfo info_;
  void* stream_ = nullptr;
  void* blas_ = nullptr;
  DeviceBuffer workspace_;
  DeviceBuffer sync_counters_;
  DeviceBuffer blas_workspace_;  // given to cuBLAS so it never allocates (required under graph capture)
  int64_t decode_split_keys_ = 0;
  bool pdl_ = false;
};

// A CUDA graph captured from the work enqueued on a stream between begin_capture and end_capture
// (kernels, cuBLAS calls, device copies — no allocation and no host synchronization inside), then
// replayed with one launch. Pointers and launch shapes are frozen at capture. Move-only.
class Graph {
 public:
  Graph() = default;
  static Status begin_capture(void* stream);
  // Ends the capture started on `stream` and instantiates it; on a capture error the stream is
  // left out of capture mode and the error returned.
  static Result<Graph> end_capture(void* stream);
  Status launch(void* stream) const;
  ~Graph();
  Graph(Graph&& o) noexcept;
  Graph& operator=(Graph&& o) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

 private:
  void reset();
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

}  // namespace nb::cuda
