// The device layer, continued: pinned host buffers, the current device, and CUDA graphs.
#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device.h"

namespace nb::cuda {

using detail::as_stream;

Result<PinnedBuffer> PinnedBuffer::allocate(size_t nbytes) {
  PinnedBuffer b;
  if (nbytes == 0) return b;
  NB_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&b.ptr_, nbytes, cudaHostAllocDefault));
  b.size_ = nbytes;
  return b;
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_ != nullptr) (void)cudaFreeHost(ptr_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) (void)cudaFreeHost(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Status set_device(int ordinal) {
  NB_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
  return Status::Ok();
}

Status memory_info(size_t* free_bytes, size_t* total_bytes) {
  NB_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(free_bytes, total_bytes));
  return Status::Ok();
}

Status Graph::begin_capture(void* stream) {
  // Thread-local mode: other host threads' CUDA calls (e.g. a server thread) do not invalidate it.
  NB_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal));
  return Status::Ok();
}

Result<Graph> Graph::end_capture(void* stream) {
  cudaGraph_t graph = nullptr;
  NB_CUDA_RETURN_IF_ERROR(cudaStreamEndCapture(as_stream(stream), &graph));
  Graph g;
  g.graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  NB_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&exec, graph, 0));
  g.exec_ = exec;
  return g;
}

Status Graph::launch(void* stream) const {
  NB_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), as_stream(stream)));
  return Status::Ok();
}

void Graph::reset() {
  if (exec_ != nullptr) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_ != nullptr) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = graph_ = nullptr;
}

Graph::~Graph() { reset(); }

Graph::Graph(Graph&& o) noexcept : graph_(std::exchange(o.graph_, nullptr)), exec_(std::exchange(o.exec_, nullptr)) {}

Graph& Graph::operator=(Graph&& o) noexcept {
  if (this != &o) {
    reset();
    graph_ = std::exchange(o.graph_, nullptr);
    exec_ = std::exchange(o.exec_, nullptr);
  }
  return *this;
}

}  // namespace nb::cuda
