// References for the ops the batched GPU path adds: the fused residual add + RMSNorm, the KV write
// through a slot mapping (quantizing into the KV cache formats), and multi-sequence attention. Each is defined by the plain references
// (rms_norm, attention), so a GPU kernel tested against these is tested against the same ground truth.
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace nb::cpu::ref {

void add_rms_norm(const AddRmsNormParams& p) {
  const int64_t n = p.rows * p.dim;
  for (int64_t i = 0; i < n; ++i) p.x[i] += p.residual[i];
  RmsNormParams r{p.x, p.weight, p.y, p.rows, p.dim, p.eps};
  r.y_codes = p.y_codes;
  r.y_scales = p.y_scales;
  rms_norm(r);
}

void kv_write(const KvWriteParams& p) {
  if (p.cache_dtype != KvCacheDType::kF32) {
    const KvBlockFormat f{p.cache_dtype, p.cache_block_size, p.num_kv_heads, p.head_dim};
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      const int64_t slot = p.slot_mapping[t];
      if (slot < 0) continue;  // padding row
      for (int64_t h = 0; h < p.num_kv_heads; ++h) {
        const int64_t at = (t * p.num_kv_heads + h) * p.head_dim;
        kv_quantize_head(f, reinterpret_cast<uint8_t*>(p.k_cache), slot, h, p.k + at);
        kv_quantize_head(f, reinterpret_cast<uint8_t*>(p.v_cache), slot, h, p.v + at);
      }
    }
    return;
  }
  const int64_t row = p.num_kv_heads * p.head_dim;
  const size_t row_bytes = static_cast<size_t>(row) * sizeof(float);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping[t];
    if (slot < 0) continue;  // padding row
    std::memcpy(p.k_cache + slot * row, p.k + t * row, row_bytes);
    std::memcpy(p.v_cache + slot * row, p.v + t * row, row_bytes);
  }
}

void batch_attention(const BatchAttentionParams& p) {
  const int64_t row = p.num_heads * p.head_dim;
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    const int64_t first = p.query_start[s];
    const int64_t count = p.query_start[s + 1] - first;
    if (count <= 0) continue;
    AttentionParams a{};
    a.q = p.q + first * row;
    a.out = p.out + first * row;
    a.k_cache = p.k_cache;
    a.v_cache = p.v_cache;
    a.block_table = p.block_tables + s * p.block_table_stride;
    a.block_size = p.block_size;
    a.num_tokens = count;
    a.start_pos = p.start_pos[s];
    a.num_heads = p.num_heads;
    a.num_kv_heads = p.num_kv_heads;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.cache_dtype = p.cache_dtype;
    attention(a);
  }
}

}  // namespace nb::cpu::ref
