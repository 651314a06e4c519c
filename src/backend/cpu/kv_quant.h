// Internal to backend/cpu: reading rows of a KV pool in any cache format (backend/kv_format.h).
#pragma once
#include <cstdint>

#include "backend/kv_format.h"

namespace nb::cpu {

// Slots [slot, slot + n) of one block, KV head h, dequantized into out[n][head_dim]. Equal, value for
// value, to ref::kv_dequantize_head.
void kv_dequantize_rows(const KvBlockFormat& f, const uint8_t* pool, int64_t slot, int64_t h, int64_t n, float* out);

}  // namespace nb::cpu
