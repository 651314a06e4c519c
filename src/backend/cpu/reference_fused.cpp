// References for the fused decode ops of the CUDA backend (FusedLinearParams, RopeKvWriteParams,
// DecodeStepParams: the ops in turn),
// defined through the plain references: the norm in double, the products by ref::matmul, the
// epilogue in f32 — the GPU kernels differ only in accumulation order (and keep the normed input in
// f32 where the unfused path rounds it to the activation dtype).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace nb::cpu::ref {

void fused_linear(const FusedLinearParams& p) {
  const int64_t n = p.weight.dim(0), k = p.weight.dim(1);
  std::vector<float> xn(p.x, p.x + p.m * k);
  if (p.norm_weight != nullptr) {
    for (int64_t t = 0; t < p.m; ++t) {
      double ss = 0.0;
      for (int64_t i = 0; i < k; ++i) ss += static_cast<double>(p.x[t * k + i]) * p.x[t * k + i];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(k) + p.norm_eps);
      for (int64_t i = 0; i < k; ++i) xn[static_cast<size_t>(t * k + i)] = static_cast<float>(p.x[t * k + i] * inv * p.norm_weight[i]);
    }
  }
  std::vector<float> r(static_cast<size_t>(p.m * n));
  matmul({p.weight, xn.data(), r.data(), p.m});
  std::vector<float> r2;
  if (p.epilogue == LinearEpilogue::kSwiglu) {
    r2.resize(r.size());
    matmul({p.weight2, xn.data(), r2.data(), p.m});
  }
  for (int64_t t = 0; t < p.m; ++t) {
    for (int64_t j = 0; j < n; ++j) {
      const float v = r[static_cast<size_t>(t * n + j)];
      switch (p.epilogue) {
        case LinearEpilogue::kStore: p.y[t * n + j] = v; break;
        case LinearEpilogue::kAddInto: p.y[t * n + j] += v; break;
        case LinearEpilogue::kSwiglu: {
          const float u = r2[static_cast<size_t>(t * n + j)];
          p.y[t * n + j] = v / (1.f + std::exp(-v)) * u;
          break;
        }
        case LinearEpilogue::kSplit: {
          const int64_t n2 = n - p.n0 - p.n1;
          if (j < p.n0) p.y[t * p.n0 + j] = v;
          else if (j < p.n0 + p.n1) p.y1[t * p.n1 + j - p.n0] = v;
          else p.y2[t * n2 + j - p.n0 - p.n1] = v;
          break;
        }
      }
    }
  }
}

void rope_kv_write(const RopeKvWriteParams& p) {
  rope(p.rope);
  kv_write(p.kv);
}

void decode_step(const DecodeStepParams& p) {
  const int64_t q_dim = p.num_heads * p.head_dim, kv_dim = p.num_kv_heads * p.head_dim;
  const int32_t query_start[2] = {0, 1};
  // One row through a fused linear: y (op) W . norm(x) [and W2 for SwiGLU].
  auto linear = [&](const Tensor& w, const Tensor* w2, const float* x, const float* norm, float* y, LinearEpilogue e) {
    FusedLinearParams f{};
    f.weight = w;
    if (w2 != nullptr) f.weight2 = *w2;
    f.x = x;
    f.norm_weight = norm;
    f.norm_eps = p.norm_eps;
    f.y = y;
    f.y1 = p.k;
    f.y2 = p.v;
    f.n0 = q_dim;
    f.n1 = kv_dim;
    f.m = 1;
    f.epilogue = e;
    fused_linear(f);
  };
  for (const DecodeStepLayer& l : p.layers) {
    if (l.wk.ndim() == 2) {  // q, k and v apart
      linear(l.wqkv, nullptr, p.x, l.attn_norm, p.q, LinearEpilogue::kStore);
      linear(l.wk, nullptr, p.x, l.attn_norm, p.k, LinearEpilogue::kStore);
      linear(l.wv, nullptr, p.x, l.attn_norm, p.v, LinearEpilogue::kStore);
    } else {
      linear(l.wqkv, nullptr, p.x, l.attn_norm, p.q, LinearEpilogue::kSplit);
    }
    const RopeParams rp{p.q, p.k, p.position, p.inv_freq, 1, p.num_heads, p.num_kv_heads, p.head_dim, p.rope_style};
    const KvWriteParams kp{p.k, p.v, l.k_cache, l.v_cache, p.slot, 1, p.num_kv_heads, p.head_dim};
    rope_kv_write({rp, kp});
    BatchAttentionParams ap{};
    ap.q = p.q;
    ap.out = p.att;
    ap.k_cache = l.k_cache;
    ap.v_cache = l.v_cache;
    ap.block_tables = p.block_table;
    ap.query_start = query_start;
    ap.start_pos = p.start_pos;
    ap.block_table_stride = (p.max_context_len + p.block_size - 1) / p.block_size;
    ap.num_seqs = 1;
    ap.num_tokens = 1;
    ap.max_query_len = 1;
    ap.max_context_len = p.max_context_len;
    ap.block_size = p.block_size;
    ap.num_heads = p.num_heads;
    ap.num_kv_heads = p.num_kv_heads;
    ap.head_dim = p.head_dim;
    ap.scale = p.scale;
    batch_attention(ap);
    linear(l.wo, nullptr, p.att, nullptr, p.x, LinearEpilogue::kAddInto);
    linear(l.w_gate, &l.w_up, p.x, l.ffn_norm, p.hb, LinearEpilogue::kSwiglu);
    linear(l.w_down, nullptr, p.hb, nullptr, p.x, LinearEpilogue::kAddInto);
  }
}

}  // namespace nb::cpu::ref
