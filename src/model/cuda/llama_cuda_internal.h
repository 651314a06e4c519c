// Internal to src/model/cuda/: the CUDA forward backend's class (llama_cuda.cpp: weights, scratch,
// staging, graphs; llama_cuda_step.cpp: the layers a step enqueues). Not part of any interface.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device.h"
#include "model/forward_backend.h"
#include "model/llama.h"

namespace nb::cuda_model {

using cuda::Context;
using cuda::DeviceBuffer;
using cuda::PinnedBuffer;


inline size_t act_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

struct DeviceLayer {
  Tensor wqkv;  // [q_dim + 2 kv_dim, dim]: wq, wk, wv are its row ranges (one buffer, views)
  Tensor wq, wk, wv, wo, w_gate, w_up, w_down;
  const float* attn_norm = nullptr;
  const float* ffn_norm = nullptr;
};

// Batch description as the kernels read it; the device copy lives at fixed addresses.
struct StepLayout {
  int64_t tokens = 0, seqs = 0, rows = 0, stride = 0;
};

class CudaLlama final : public ForwardBackend {
 public:
  static Result<std::unique_ptr<CudaLlama>> create(const ModelWeights& w, const CudaForwardOptions& o);

  Result<std::shared_ptr<void>> allocate_kv(int64_t nbytes) override {
    NB_RETURN_IF_ERROR(cuda::set_device(options_.ordinal));
    NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::allocate(static_cast<size_t>(std::max<int64_t>(nbytes, 1))));
    NB_RETURN_IF_ERROR(cuda::fill_bytes(buf.data(), 0, buf.size(), ctx_->stream()));
    NB_RETURN_IF_ERROR(ctx_->synchronize());
    auto holder = std::make_shared<DeviceBuffer>(std::move(buf));
    return std::shared_ptr<void>(holder, holder->data());
  }

  Status copy_kv(void* dst, const void* src, int64_t nbytes) override {
    return cuda::copy_on_device(dst, src, static_cast<size_t>(nbytes), ctx_->stream());
  }

  Status forward(const ForwardBatch& batch, const KvPools& kv, float* logits) override;

  int64_t kv_element_bytes() const override { return static_cast<int64_t>(act_bytes(dtype_)); }

  int64_t free_memory_bytes() const override {
    size_t free_b = 0, total_b = 0;
    if (!cuda::memory_info(&free_b, &total_b).ok()) return 0;
    return static_cast<int64_t>(free_b);
  }

  int64_t total_memory_bytes() const override {
    size_t free_b = 0, total_b = 0;
    if (!cuda::memory_info(&free_b, &total_b).ok()) return 0;
    return static_cast<int64_t>(total_b);
  }

  Status logit_stats(const int32_t* targets, int64_t rows, const ForwardBackend* ref, double* out) override;

 private:  // ForwardBatch::sample_rows on the device (llama_cuda.cpp, forward()); allocated on first use
  Status sample_on_device(const ForwardBatch& batch, int64_t rows);
  DeviceBuffer sample_rows_d_;   // [max_rows] SampleRowParams
  PinnedBuffer sample_rows_h_;   // its staging
  int64_t last_rows_ = 0;        // logits rows of the last forward (logit_stats reads them)
  DeviceBuffer stats_d_;         // logit_stats: targets [max_rows] int32, then out [max_rows, 4] double
  PinnedBuffer stats_h_;         // its staging

 public:
  std::string describe() const override {
    return "cuda:" + std::to_string(options_.ordinal) + " " + ctx_->info().name + ", " +
           std::string(dtype_name(dtype_));
  }

 private:
  CudaLlama(const ModelConfig& c, const CudaForwardOptions& o) : config_(c), options_(o) {}
  Status upload_weights(const ModelWeights& w);
  Result<Tensor> upload(const Tensor& t, DType target);
  // A linear weight: 4-bit kQGroup packed for the W4A16 kernels when they take it, else as upload().
  Result<Tensor> upload_linear(const Tensor& t);
  bool w4_applies(const Tensor& t) const;
  // Converts t to `target` into dst (rows() * cols() elements of target).
  Status upload_into(const Tensor& t, DType target, void* dst);
  // Enqueues one decoder layer the unfused way (any batch) or fused for a few rows (decode).
  Status enqueue_layer(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len, const KvPools& kv);
  Status enqueue_layer_fused(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len,
                             const KvPools& kv);
  Status attention(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len, const KvPools& kv);
  bool fused_applies(int64_t tokens) const;
  // Fills the persistent decode step's params; false when that kernel does not take this step.
  bool decode_step_params(const StepLayout& s, int64_t max_context_len, const KvPools& kv, DecodeStepParams* out) const;
  bool fused_weights_ok() const;
  bool w4_weights_ok() const;  // every linear in the W4A16 layout: the decode step's W4 stages take them
  // FusedLinearParams for weight w, input x, output y, `rows` rows (the rest as the epilogue needs).
  FusedLinearParams fused_params(const Tensor& w, const float* x, float* y, int64_t rows,
                                 LinearEpilogue e = LinearEpilogue::kStore) const;
  Result<const float*> upload_f32(const Tensor& t);
  Status allocate_scratch();
  // Enqueues the forward for the staged batch (no host synchronization; capturable).
  Status enqueue(const StepLayout& s, int64_t max_query_len, int64_t max_context_len, const KvPools& kv);
  Status stage(const StepLayout& s);
  void* act(const DeviceBuffer& b) const { return b.data(); }
  // The activation buffers, typed as the op Params take them (act_dtype says what they hold).
  struct Acts {
    float *x, *xb, *q, *k, *v, *att, *ob, *hb, *hb2;
  };
  Acts acts() const {
    auto f = [](const DeviceBuffer& b) { return static_cast<float*>(b.data()); };
    return {f(x_), f(xb_), f(q_), f(k_), f(v_), f(att_), f(ob_), f(hb_), f(hb2_)};
  }
  const int32_t* staged(int64_t offset) const { return idx_d_.as<int32_t>() + offset; }

  // Quantized paths: int8/int4 KV pools (backend/kv_format.h) and W8A8 weights (backend/cuda/w8a8.h).
  // rope on q and k; for a rotated cache format (kv_cache_rotated) the Hadamard rotation of q, k and v;
  // the new K/V into the pools in kv.dtype; attention into att, rotated back: the CPU forward's
  // sequence (LlamaModel::layer_forward). The unfused layer's glue for every cache format, and the
  // fused layer's for the formats its decode kernels do not read (anything but the act-dtype cache).
  Status rope_kv_attention(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len,
                           const KvPools& kv);
  // kQGroup with int8 activations (what `nibble quantize --act-int8` / smoothquant make).
  static bool is_w8a8(const Tensor& t);
  // Such a weight (cuda::w8a8_check must pass, else the error says why) in its device layout
  // (w8a8_repack), as the kQGroup device view cuda::matmul runs through matmul_w8a8.
  Result<Tensor> upload_w8a8(const Tensor& t);

  ModelConfig config_;
  CudaForwardOptions options_;
  DType dtype_ = DType::kF16;
  std::unique_ptr<Context> ctx_;
  std::vector<DeviceBuffer> owned_;  // weights
  Tensor embed_, output_;
  const float* final_norm_ = nullptr;
  std::vector<DeviceLayer> layers_;
  DeviceBuffer inv_freq_;
  // Activations for up to max_batch_tokens rows.
  DeviceBuffer x_, xb_, q_, k_, v_, att_, ob_, hb_, hb2_, xg_, logits_d_;
  // W8A8 models: the normed input's int8 codes [tokens, dim] and scales [tokens], made once for the
  // linears that share it (q, k, v; gate, up), and SwiGLU's output's [tokens, hidden] for down_proj.
  // Empty for other models.
  DeviceBuffer w8q_, w8d_;
  // A norm that writes xb, made to write xb's codes and scales into w8q_ / w8d_ too (W8A8 models).
  template <typename P>
  P w8a8_norm_codes(P p) const {
    if (w8q_.data() != nullptr) {
      p.y_codes = static_cast<int8_t*>(w8q_.data());
      p.y_scales = static_cast<float*>(w8d_.data());
    }
    return p;
  }
  // Staging: int32 [tokens | positions | query_start | start_pos | rows | block tables], int64 slots.
  int64_t max_tokens_ = 0, max_seqs_ = 0, max_rows_ = 0, max_table_ = 0;
  DeviceBuffer idx_d_, slots_d_, greedy_d_;
  PinnedBuffer idx_h_, slots_h_, logits_h_, greedy_h_;
  int32_t* h_tokens_ = nullptr;
  int32_t* h_positions_ = nullptr;
  int32_t* h_qstart_ = nullptr;
  int32_t* h_startpos_ = nullptr;
  int32_t* h_rows_ = nullptr;
  int32_t* h_tables_ = nullptr;
  // Graphs by (bucket, tokens a sequence, logit rows a sequence, K pool of layer 0, block size, table
  // stride, context bucket).
  static constexpr int64_t kMaxGraphQuery = 16;
  std::map<std::tuple<int64_t, int64_t, int64_t, const void*, int64_t, int64_t, int64_t>, cuda::Graph> graphs_;
  bool w4_fallback_noted_ = false;
  bool fused_weights_ = false;  // fused_weights_ok(), once after the upload
  bool w4_weights_ = false;     // w4_weights_ok(), once after the upload
  bool fusion_ = true;  // decode fusions (NIBBLE_DECODE_FUSION=0 turns them off, for comparison)
  bool decode_step_ = true;  // the persistent decode-step kernel (NIBBLE_DECODE_STEP=0 turns it off)
  // NIBBLE_DECODE_STEP_PROFILE=1 (diagnostics): the step kernel's stage times, summed per stage over
  // the layers, printed to stderr every 64 steps (report_step_profile, after each batch-1 step).
  bool step_profile_ = false;
  std::vector<double> prof_sum_;
  int64_t prof_steps_ = 0;
  uint64_t prof_last_end_ = 0;
  uint64_t* profile_buffer() const {
    return reinterpret_cast<uint64_t*>(ctx_->sync_counters() + Context::kSyncCounters / 2);
  }
  Status report_step_profile();
};

// Offsets (in int32 elements) of the staging regions.
struct IdxOffsets {
  int64_t tokens, positions, qstart, startpos, rows, tables, total;
};
inline IdxOffsets idx_offsets(int64_t max_tokens, int64_t max_seqs, int64_t max_rows, int64_t max_table) {
  IdxOffsets o{};
  o.tokens = 0;
  o.positions = o.tokens + max_tokens;
  o.qstart = o.positions + max_tokens;
  o.startpos = o.qstart + max_seqs + 1;
  o.rows = o.startpos + max_seqs;
  o.tables = o.rows + max_rows;
  o.total = o.tables + max_table;
  return o;
}

}  // namespace nb::cuda_model
