#ifdef NIBBLE_HAVE_CUDA
#include "tools/bench_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "tools/bench_commands.h"

namespace nb::tools {

Result<double> time_gpu(cuda::Context& ctx, int runs, int reps, const std::function<Status(int)>& fn, bool graph) {
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
  struct Events {
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    ~Events() {
      if (e0 != nullptr) cudaEventDestroy(e0);
      if (e1 != nullptr) cudaEventDestroy(e1);
    }
  } ev;
  if (cudaEventCreate(&ev.e0) != cudaSuccess || cudaEventCreate(&ev.e1) != cudaSuccess) {
    return internal_error("benchmark timing: cudaEventCreate failed");
  }
  if (reps <= 0) {
    NB_RETURN_IF_ERROR(fn(0));
    NB_RETURN_IF_ERROR(ctx.synchronize());
    const auto t0 = std::chrono::steady_clock::now();
    NB_RETURN_IF_ERROR(fn(0));
    NB_RETURN_IF_ERROR(ctx.synchronize());
    const double once = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    reps = static_cast<int>(std::clamp(0.05 / std::max(once, 1e-7), 3.0, 2000.0));
  }
  for (int i = 0; i < reps; ++i) NB_RETURN_IF_ERROR(fn(i));
  NB_RETURN_IF_ERROR(ctx.synchronize());
  cuda::Graph g;
  if (graph) {
    NB_RETURN_IF_ERROR(cuda::Graph::begin_capture(stream));
    Status st = Status::Ok();
    for (int i = 0; i < reps && st.ok(); ++i) st = fn(i);
    Result<cuda::Graph> captured = cuda::Graph::end_capture(stream);  // ends the capture either way
    NB_RETURN_IF_ERROR(st);
    if (!captured.ok()) return captured.status();
    g = std::move(captured).value();
    NB_RETURN_IF_ERROR(g.launch(stream));  // the graph's first launch uploads it: untimed
    NB_RETURN_IF_ERROR(ctx.synchronize());
  }
  std::vector<double> t;
  for (int r = 0; r < runs; ++r) {
    cudaEventRecord(ev.e0, stream);
    if (graph) {
      NB_RETURN_IF_ERROR(g.launch(stream));
    } else {
      for (int i = 0; i < reps; ++i) NB_RETURN_IF_ERROR(fn(i));
    }
    cudaEventRecord(ev.e1, stream);
    if (cudaEventSynchronize(ev.e1) != cudaSuccess) return internal_error("benchmark timing: a timed call failed on the GPU");
    float ms = 0.f;
    cudaEventElapsedTime(&ms, ev.e0, ev.e1);
    t.push_back(static_cast<double>(ms) * 1e-3 / reps);
  }
  return median(t);
}

}  // namespace nb::tools
#endif
