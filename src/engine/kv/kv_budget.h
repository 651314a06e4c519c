// KV pool sizing from a fraction of the device's memory (vLLM's --gpu-memory-utilization).
//
// The process may use `utilization` x the device's total memory. Whatever it holds once the model
// is resident (weights, activation scratch, the CUDA context: total - free, measured after loading
// and before the engine allocates) is already spent; the KV cache gets the rest:
//
//   kv_bytes = floor(utilization * total) - (total - free) - block_bytes
//
// The last term is the engine's one extra block (static batching's padding block, allocated next
// to the pool), so the whole KV allocation, pool plus that block, stays within the fraction. Memory
// allocated later (cuBLAS workspace on the first GEMM, CUDA graphs) must fit in the remaining
// (1 - utilization) x total, as in vLLM.
#pragma once
#include <cstdint>

#include "core/status.h"

namespace nb {

// Bytes for the KV pool (Engine's kv_cache_bytes; >= block_bytes). Errors, each saying what to change:
// utilization outside (0, 1]; total unknown (0); free outside [0, total]; block_bytes < 1; and a
// fraction too small to hold one block after what is in use (raise --gpu-memory-utilization, or
// load less: a smaller --dtype, --max-batched-tokens or --max-num-seqs).
Result<int64_t> kv_cache_bytes_for_utilization(double utilization, int64_t total_bytes, int64_t free_bytes,
                                               int64_t block_bytes);

}  // namespace nb
