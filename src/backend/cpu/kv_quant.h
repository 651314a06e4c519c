// Internal to backend/cpu: reading rows of a KV pool in any cache format (backend/kv_format.h).
#pragma once
#include <cstdint>
#include <cstring>

#include "backend/kv_format.h"
#include "core/dtype.h"

namespace nb::cpu {

// The f16 scale/zero fields of a pool (2 bytes, any alignment).
inline float kv_load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}
inline void kv_store_f16(uint8_t* p, float v) {
  const uint16_t h = fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// Slots [slot, slot + n) of one block, KV head h, dequantized into out[n][head_dim]. Equal, value for
// value, to ref::kv_dequantize_head.
void kv_dequantize_rows(const KvBlockFormat& f, const uint8_t* pool, int64_t slot, int64_t h, int64_t n, float* out);

}  // namespace nb::cpu
