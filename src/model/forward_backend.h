// ForwardBackend: a device that runs LlamaModel's forward instead of the CPU (the CUDA backend).
// LlamaModel owns one when created for a device; everything above the model (engine, KV storage,
// scheduler) stays device-agnostic: KV memory comes from allocate_kv() and block copies go through
// copy_kv(), so the pools' pointers are device pointers the engine never dereferences.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace nb {

struct ForwardBatch;
struct KvPools;
struct ModelWeights;

class ForwardBackend {
 public:
  virtual ~ForwardBackend() = default;
  // Zeroed memory for the KV pools, owned by the returned pointer.
  virtual Result<std::shared_ptr<void>> allocate_kv(int64_t nbytes) = 0;
  // Copies bytes between two places of KV memory this backend allocated.
  virtual Status copy_kv(void* dst, const void* src, int64_t nbytes) = 0;
  // Same contract as LlamaModel::forward; `logits` is host memory.
  virtual Status forward(const ForwardBatch& batch, const KvPools& kv, float* logits) = 0;
  // Bytes of one K or V element in the KV pools (the device dtype: 2 for f16/bf16, 4 for f32).
  virtual int64_t kv_element_bytes() const = 0;
  // Device memory still free after the weights and scratch (sizes the KV pool); 0 if unknown.
  virtual int64_t free_memory_bytes() const = 0;
  // The device's whole memory (what --gpu-memory-utilization is a fraction of); 0 if unknown.
  virtual int64_t total_memory_bytes() const = 0;
  virtual std::string describe() const = 0;  // "cuda:0 NVIDIA H100 80GB HBM3, f16"
  // Evaluation (`nibble eval`): after a forward with ForwardBatch::logits_on_device, the
  // LogitStatsParams rows (backend/ops.h) of its `rows` logits rows against `targets` (host), and
  // against the logits of `ref`'s last forward (a backend on the same device) when ref is set;
  // `out` is host memory [rows, 4].
  virtual Status logit_stats(const int32_t* targets, int64_t rows, const ForwardBackend* ref, double* out) {
    (void)targets, (void)rows, (void)ref, (void)out;
    return unimplemented("logit_stats: this backend keeps no logits on its device");
  }
};

// Options of the CUDA backend (`--device cuda`, `--dtype`).
struct CudaForwardOptions {
  int ordinal = 0;
  std::string dtype = "f16";  // activation/weight dtype on the device: f16, bf16 or f32
  int64_t max_batch_tokens = 256;
  int64_t max_seqs = 256;     // most sequences in one forward
  bool cuda_graphs = true;    // capture decode steps per bucketed batch size
};

// Uploads the weights (dequantizing block-quantized ones to the device dtype). Defined in
// backend/cuda when the build has CUDA; otherwise returns an error saying so.
Result<std::unique_ptr<ForwardBackend>> create_cuda_forward(const ModelWeights& weights,
                                                            const CudaForwardOptions& options);

}  // namespace nb
