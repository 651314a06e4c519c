// Writes new K/V rows into the paged cache (the fast path of ref::kv_write).
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace nb::cpu {

void kv_write(const KvWriteParams& p) {
  const int64_t row = p.num_kv_heads * p.head_dim;
  const size_t row_bytes = static_cast<size_t>(row) * sizeof(float);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping[t];
    if (slot < 0) continue;  // padding row
    std::memcpy(p.k_cache + slot * row, p.k + t * row, row_bytes);
    std::memcpy(p.v_cache + slot * row, p.v + t * row, row_bytes);
  }
}

}  // namespace nb::cpu
