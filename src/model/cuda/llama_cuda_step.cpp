// The layers of one CUDA forward step (CudaLlama::enqueue): the general path (any batch: cuBLAS
// GEMMs, or the GEMV / W4A16 / W8A8 kernels through cuda::matmul, and separate glue ops) and the
// fused decode path for one or two rows (cuda::fused_linear, rope_kv_write, decode_attention; five
// launches a layer; with an int8/int4 KV cache the general glue replaces rope_kv_write and
// decode_attention, which read only the act-dtype cache); for one sequence the persistent decode
// step (cuda::decode_step, f16/bf16 or W4 weights) and its stage profile (report_step_profile).
#include <cmath>
#include <cstdio>
#include <vector>

#include "backend/cuda/w8a8.h"
#include "core/group_quant.h"
#include "model/cuda/llama_cuda_internal.h"

namespace nb::cuda_model {

bool CudaLlama::fused_weights_ok() const {
  // Every linear's shape and dtype must suit the kernel (K % 8: stories260K's hidden 172 does not;
  // packed W4A16 and W8A8 weights go through matmul). Checked once, after the upload.
  for (const DeviceLayer& w : layers_) {
    for (const Tensor* t : {&w.wqkv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      if (t->dtype() == DType::kQGroup) return false;
      if (!cuda::fused_linear_applies(fused_params(*t, acts().x, acts().q, 1))) return false;
    }
  }
  return !layers_.empty();
}

bool CudaLlama::w4_weights_ok() const {
  // Every linear packed for the W4A16 kernels (upload_w4; a weight it declined was dequantized).
  for (const DeviceLayer& w : layers_) {
    for (const Tensor* t : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      const GroupQuant* g = t->dtype() == DType::kQGroup ? t->group_quant() : nullptr;
      if (g == nullptr || g->bits != 4 || g->act_int8) return false;
    }
  }
  return !layers_.empty();
}

bool CudaLlama::fused_applies(int64_t tokens) const {
  // The weights passed at creation; what is left to check is the number of rows.
  return fusion_ && fused_weights_ && cuda::fused_linear_applies(fused_params(layers_[0].wqkv, acts().x, acts().q, tokens));
}

FusedLinearParams CudaLlama::fused_params(const Tensor& w, const float* x, float* y, int64_t rows,
                                          LinearEpilogue e) const {
  FusedLinearParams f{};
  f.weight = w;
  f.x = x;
  f.y = y;
  f.m = rows;
  f.epilogue = e;
  f.act_dtype = dtype_;
  return f;
}

Status CudaLlama::attention(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len,
                            const KvPools& kv) {
  const ModelConfig& c = config_;
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  const auto* di = idx_d_.as<int32_t>();
  BatchAttentionParams ap{};
  ap.q = acts().q;
  ap.out = acts().att;
  ap.k_cache = kv.k[l];
  ap.v_cache = kv.v[l];
  ap.block_tables = di + o.tables;
  ap.query_start = di + o.qstart;
  ap.start_pos = di + o.startpos;
  ap.block_table_stride = s.stride;
  ap.num_seqs = s.seqs;
  ap.num_tokens = s.tokens;
  ap.max_query_len = max_query_len;
  ap.max_context_len = max_context_len;
  ap.block_size = kv.block_size;
  ap.num_heads = c.num_heads;
  ap.num_kv_heads = c.num_kv_heads;
  ap.head_dim = c.head_dim;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  ap.act_dtype = dtype_;
  ap.cache_dtype = kv.dtype;  // f32: the act-dtype cache; int8/int4: pools (both kernels read them)
  // The decode kernel when it takes the batch and its split workspace fits; the general one otherwise.
  if (fusion_ && cuda::decode_attention_applies(ap) && cuda::decode_attention(ap, *ctx_).ok()) return Status::Ok();
  return cuda::batch_attention(ap, *ctx_);
}

Status CudaLlama::rope_kv_attention(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len,
                                    const KvPools& kv) {
  const ModelConfig& c = config_;
  Context& ctx = *ctx_;
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  const auto* di = idx_d_.as<int32_t>();
  const int64_t n = s.tokens, hd = c.head_dim;
  const auto [x, xb, q, k, v, att, ob, hb, hb2] = acts();
  const DType a = dtype_;
  NB_RETURN_IF_ERROR(
      cuda::rope({q, k, di + o.positions, inv_freq_.as<float>(), n, c.num_heads, c.num_kv_heads, hd, c.rope_style, a},
                 ctx));
  // Quantized caches keep K and V rotated (backend/kv_format.h): q, k and v rotated alike here, the
  // attention output back below, as LlamaModel::layer_forward does.
  const bool rotated = kv_cache_rotated(kv.dtype, hd);
  if (rotated) {
    NB_RETURN_IF_ERROR(cuda::hadamard({q, n * c.num_heads, hd, a}, ctx));
    NB_RETURN_IF_ERROR(cuda::hadamard({k, n * c.num_kv_heads, hd, a}, ctx));
    NB_RETURN_IF_ERROR(cuda::hadamard({v, n * c.num_kv_heads, hd, a}, ctx));
  }
  KvWriteParams wp{k, v, kv.k[l], kv.v[l], slots_d_.as<int64_t>(), n, c.num_kv_heads, hd, a};
  wp.cache_dtype = kv.dtype;  // f32: the act-dtype cache
  wp.cache_block_size = kv.block_size;
  NB_RETURN_IF_ERROR(cuda::kv_write(wp, ctx));
  NB_RETURN_IF_ERROR(attention(l, s, max_query_len, max_context_len, kv));
  if (rotated) NB_RETURN_IF_ERROR(cuda::hadamard({att, n * c.num_heads, hd, a}, ctx));
  return Status::Ok();
}

Status CudaLlama::enqueue_layer(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len,
                                const KvPools& kv) {
  const ModelConfig& c = config_;
  Context& ctx = *ctx_;
  const int64_t n = s.tokens, dim = c.dim;
  const auto [x, xb, q, k, v, att, ob, hb, hb2] = acts();
  const DType a = dtype_;
  const DeviceLayer& w = layers_[l];
  // Linears reading the normed input xb: W8A8 models have its int8 codes from the norm that wrote it
  // (w8a8_norm_codes), the same codes each linear would make.
  auto shared_input = [&](const Tensor* ws[], void* ys[], int count) -> Status {
    for (int i = 0; i < count; ++i) {
      if (w8q_.data() != nullptr && is_w8a8(*ws[i])) {
        NB_RETURN_IF_ERROR(cuda::matmul_w8a8_quantized(*ws[i], w8q_.as<int8_t>(), w8d_.as<float>(), ys[i], n, a, ctx));
      } else {
        NB_RETURN_IF_ERROR(cuda::matmul({*ws[i], xb, static_cast<float*>(ys[i]), n, a}, ctx));
      }
    }
    return Status::Ok();
  };
  // xb = attn_norm(x) on entry (the previous layer's last op, or the first norm).
  const Tensor* qkv_w[] = {&w.wq, &w.wk, &w.wv};
  void* qkv_y[] = {q, k, v};
  NB_RETURN_IF_ERROR(shared_input(qkv_w, qkv_y, 3));
  NB_RETURN_IF_ERROR(rope_kv_attention(l, s, max_query_len, max_context_len, kv));
  NB_RETURN_IF_ERROR(cuda::matmul({w.wo, att, ob, n, a}, ctx));
  NB_RETURN_IF_ERROR(cuda::add_rms_norm(w8a8_norm_codes(AddRmsNormParams{x, ob, w.ffn_norm, xb, n, dim, c.norm_eps, a}), ctx));
  const Tensor* gu_w[] = {&w.w_gate, &w.w_up};
  void* gu_y[] = {hb, hb2};
  NB_RETURN_IF_ERROR(shared_input(gu_w, gu_y, 2));
  // W8A8 down_proj reads the codes SwiGLU writes of its output (w8q_ is free again: gate and up are done).
  SwigluParams sw{hb, hb2, hb, n * c.hidden_dim, a};
  const bool down_codes = w8q_.data() != nullptr && is_w8a8(w.w_down);
  if (down_codes) {
    sw.out_codes = w8q_.as<int8_t>();
    sw.out_scales = w8d_.as<float>();
    sw.cols = c.hidden_dim;
  }
  NB_RETURN_IF_ERROR(cuda::swiglu(sw, ctx));
  if (down_codes) {
    NB_RETURN_IF_ERROR(cuda::matmul_w8a8_quantized(w.w_down, w8q_.as<int8_t>(), w8d_.as<float>(), ob, n, a, ctx));
  } else {
    NB_RETURN_IF_ERROR(cuda::matmul({w.w_down, hb, ob, n, a}, ctx));
  }
  const float* next_norm = l + 1 < layers_.size() ? layers_[l + 1].attn_norm : final_norm_;
  return cuda::add_rms_norm(w8a8_norm_codes(AddRmsNormParams{x, ob, next_norm, xb, n, dim, c.norm_eps, a}), ctx);
}

// Five launches a layer: [norm -> q|k|v], rope + KV write, attention, [o_proj -> += x],
// [norm -> gate, up -> SwiGLU], [down_proj -> += x]. x is the residual stream throughout; the norms
// happen inside the linears that consume them.
Status CudaLlama::enqueue_layer_fused(size_t l, const StepLayout& s, int64_t max_query_len, int64_t max_context_len,
                                      const KvPools& kv) {
  const ModelConfig& c = config_;
  Context& ctx = *ctx_;
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  const auto* di = idx_d_.as<int32_t>();
  const int64_t n = s.tokens;
  const auto [x, xb, q, k, v, att, ob, hb, hb2] = acts();
  const DType a = dtype_;
  const DeviceLayer& w = layers_[l];
  FusedLinearParams f = fused_params(w.wqkv, x, q, n, LinearEpilogue::kSplit);
  f.norm_weight = w.attn_norm;
  f.norm_eps = c.norm_eps;
  f.y1 = k;
  f.y2 = v;
  f.n0 = w.wq.rows();
  f.n1 = w.wk.rows();
  NB_RETURN_IF_ERROR(cuda::fused_linear(f, ctx));
  if (kv.dtype == KvCacheDType::kF32) {  // the act-dtype cache: rope + KV write in one pass
    const RopeParams rp{q, k, di + o.positions, inv_freq_.as<float>(), n, c.num_heads, c.num_kv_heads,
                        c.head_dim, c.rope_style, a};
    const KvWriteParams kp{k, v, kv.k[l], kv.v[l], slots_d_.as<int64_t>(), n, c.num_kv_heads, c.head_dim, a};
    NB_RETURN_IF_ERROR(cuda::rope_kv_write({rp, kp}, ctx));
    NB_RETURN_IF_ERROR(attention(l, s, max_query_len, max_context_len, kv));
  } else {  // int8/int4 pools: the general glue (rope_kv_write and decode_attention read act-dtype caches only)
    NB_RETURN_IF_ERROR(rope_kv_attention(l, s, max_query_len, max_context_len, kv));
  }
  NB_RETURN_IF_ERROR(cuda::fused_linear(fused_params(w.wo, att, x, n, LinearEpilogue::kAddInto), ctx));
  f = fused_params(w.w_gate, x, hb, n, LinearEpilogue::kSwiglu);
  f.weight2 = w.w_up;
  f.norm_weight = w.ffn_norm;
  f.norm_eps = c.norm_eps;
  NB_RETURN_IF_ERROR(cuda::fused_linear(f, ctx));
  return cuda::fused_linear(fused_params(w.w_down, hb, x, n, LinearEpilogue::kAddInto), ctx);
}

// One sequence, one token, act-dtype cache: the whole step as one persistent kernel (decode_step.cu).
bool CudaLlama::decode_step_params(const StepLayout& s, int64_t max_context_len, const KvPools& kv,
                                   DecodeStepParams* out) const {
  if (!decode_step_ || s.tokens != 1 || s.seqs != 1 || !(fused_applies(1) || w4_weights_)) return false;
  if (kv.dtype != KvCacheDType::kF32) return false;  // the act-dtype cache (int8/int4 pools: the layer path)
  const ModelConfig& c = config_;
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  const auto* di = idx_d_.as<int32_t>();
  const auto [x, xb, q, k, v, att, ob, hb, hb2] = acts();
  DecodeStepParams& p = *out;
  p.layers.clear();
  for (size_t l = 0; l < layers_.size(); ++l) {
    const DeviceLayer& w = layers_[l];
    if (w4_weights_) {  // q, k and v apart (W4A16: packed one by one)
      p.layers.push_back({w.wq, w.wo, w.w_gate, w.w_up, w.w_down, w.attn_norm, w.ffn_norm, kv.k[l], kv.v[l], w.wk, w.wv});
    } else {
      p.layers.push_back({w.wqkv, w.wo, w.w_gate, w.w_up, w.w_down, w.attn_norm, w.ffn_norm, kv.k[l], kv.v[l], {}, {}});
    }
  }
  p.x = x;
  p.q = q;
  p.k = k;
  p.v = v;
  p.att = att;
  p.hb = hb;
  p.block_table = di + o.tables;
  p.start_pos = di + o.startpos;
  p.position = di + o.positions;
  p.slot = slots_d_.as<int64_t>();
  p.inv_freq = inv_freq_.as<float>();
  p.block_size = kv.block_size;
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.max_context_len = max_context_len;
  p.norm_eps = c.norm_eps;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.rope_style = c.rope_style;
  p.act_dtype = dtype_;
  p.profile = step_profile_ && layers_.size() * 15 + 1 < Context::kSyncCounters / 4 ? profile_buffer() : nullptr;
  return cuda::decode_step_applies(p, *ctx_);
}

Status CudaLlama::enqueue(const StepLayout& s, int64_t max_query_len, int64_t max_context_len, const KvPools& kv) {
  const ModelConfig& c = config_;
  Context& ctx = *ctx_;
  const IdxOffsets o = idx_offsets(max_tokens_, max_seqs_, max_rows_, max_table_);
  const auto* di = idx_d_.as<int32_t>();
  const int64_t n = s.tokens, dim = c.dim;
  float* x = acts().x;
  float* xb = acts().xb;
  const DType a = dtype_;

  NB_RETURN_IF_ERROR(cuda::embedding({embed_, di + o.tokens, x, n, a}, ctx));
  DecodeStepParams dp;
  if (decode_step_params(s, max_context_len, kv, &dp)) {
    NB_RETURN_IF_ERROR(cuda::decode_step(dp, ctx));
    NB_RETURN_IF_ERROR(cuda::rms_norm({x, final_norm_, xb, n, dim, c.norm_eps, a}, ctx));
  } else if (fused_applies(n)) {
    for (size_t l = 0; l < layers_.size(); ++l) NB_RETURN_IF_ERROR(enqueue_layer_fused(l, s, max_query_len, max_context_len, kv));
    NB_RETURN_IF_ERROR(cuda::rms_norm({x, final_norm_, xb, n, dim, c.norm_eps, a}, ctx));
  } else {
    NB_RETURN_IF_ERROR(cuda::rms_norm(w8a8_norm_codes(RmsNormParams{x, layers_[0].attn_norm, xb, n, dim, c.norm_eps, a}), ctx));
    for (size_t l = 0; l < layers_.size(); ++l) NB_RETURN_IF_ERROR(enqueue_layer(l, s, max_query_len, max_context_len, kv));
  }
  if (s.rows == 0) return Status::Ok();
  // xb holds every row's final-normed hidden state; gather the rows that want logits.
  const int64_t shape[2] = {n, dim};
  const Tensor normed = Tensor::view(xb, shape, 2, a, nullptr, Device::kCUDA);
  auto* xg = static_cast<float*>(act(xg_));
  NB_RETURN_IF_ERROR(cuda::embedding({normed, di + o.rows, xg, s.rows, a}, ctx));
  return cuda::matmul_to_f32({output_, xg, logits_d_.as<float>(), s.rows, a}, ctx);
}

Status CudaLlama::report_step_profile() {
  // [5 layers + 1] stage starts; W4 stages also write [2 per stage] (input staged, sums done).
  const size_t n = layers_.size() * 5 + 1, n2 = w4_weights_ ? layers_.size() * 10 : 0;
  std::vector<uint64_t> t(n + n2);
  NB_RETURN_IF_ERROR(cuda::copy_to_host(t.data(), profile_buffer(), (n + n2) * 8, ctx_->stream()));
  NB_RETURN_IF_ERROR(ctx_->synchronize());
  if (t[n - 1] == prof_last_end_) return Status::Ok();  // this step did not run the step kernel
  prof_last_end_ = t[n - 1];
  prof_sum_.resize(5 + 15, 0.0);
  for (size_t i = 0; i + 1 < n; ++i) {
    prof_sum_[i % 5] += static_cast<double>(t[i + 1] - t[i]);
    if (n2 > 0 && i % 5 != 1) {  // a W4 stage: barrier -> staged -> sums -> next barrier
      const uint64_t staged = t[n + 2 * i], sums = t[n + 2 * i + 1];
      prof_sum_[5 + 3 * (i % 5)] += static_cast<double>(staged - t[i]);
      prof_sum_[5 + 3 * (i % 5) + 1] += static_cast<double>(sums - staged);
      prof_sum_[5 + 3 * (i % 5) + 2] += static_cast<double>(t[i + 1] - sums);
    }
  }
  if (++prof_steps_ % 64 != 0) return Status::Ok();
  const double per = 1e-3 / static_cast<double>(prof_steps_ * static_cast<int64_t>(layers_.size()));
  if (n2 > 0) {
    std::fprintf(stderr, "decode_step W4 stages (us a layer: staging / units / sums + barrier):");
    for (int st : {0, 2, 3, 4}) {
      std::fprintf(stderr, "  %s %.2f/%.2f/%.2f", st == 0 ? "q|k|v" : st == 2 ? "o_proj" : st == 3 ? "gate/up" : "down",
                   prof_sum_[5 + 3 * st] * per, prof_sum_[6 + 3 * st] * per, prof_sum_[7 + 3 * st] * per);
    }
    std::fprintf(stderr, "\n");
  }
  std::fprintf(stderr,
               "decode_step profile (%lld steps, us a layer): q|k|v %.2f  attention %.2f  o_proj %.2f  gate/up %.2f  "
               "down %.2f  (each to the next stage's barrier)\n",
               static_cast<long long>(prof_steps_), prof_sum_[0] * per, prof_sum_[1] * per, prof_sum_[2] * per,
               prof_sum_[3] * per, prof_sum_[4] * per);
  return Status::Ok();
}

}  // namespace nb::cuda_model
