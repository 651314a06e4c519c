// Timing for the GPU benchmark commands (bench gpu, gemm, kv, w8a8): one implementation.
#pragma once
#ifdef NIBBLE_HAVE_CUDA
#include <functional>

#include "backend/cuda/device.h"
#include "core/status.h"

namespace nb::tools {

// Median over `runs` bursts of the mean seconds of one call, timed with CUDA events on ctx's stream
// around each burst of back-to-back calls fn(0), ..., fn(reps - 1) (the index lets a caller rotate
// buffers). reps <= 0: as many as make a burst last about 50 ms (from one timed call). One untimed
// burst first (warm-up, first-call setup, graph capture).
// graph: the burst is captured once into a CUDA graph and each run launches that graph, so host
// launch costs (which can exceed a small kernel's time) stay out, as in the engine's decode graphs.
Result<double> time_gpu(cuda::Context& ctx, int runs, int reps, const std::function<Status(int)>& fn,
                        bool graph = false);

}  // namespace nb::tools
#endif
