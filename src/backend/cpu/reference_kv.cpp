// Reference KV cache formats (backend/kv_format.h): quantize one (token, KV head) vector on write
// and dequantize it on read, written straight from the format's definition. The fast paths
// (kv_write.cpp) produce the same bytes and the same dequantized floats.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kv_quant.h"
#include "core/dtype.h"

namespace nb::cpu::ref {

void kv_quantize_head(const KvBlockFormat& f, uint8_t* pool, int64_t slot, int64_t h, const float* x) {
  const int64_t d = f.head_dim;
  uint8_t* q = pool + f.value_offset(slot, h);
  switch (f.dtype) {
    case KvCacheDType::kF32:
      std::memcpy(q, x, static_cast<size_t>(d) * sizeof(float));
      return;
    case KvCacheDType::kF16:
      for (int64_t i = 0; i < d; ++i) kv_store_f16(q + 2 * i, x[i]);
      return;
    case KvCacheDType::kInt8: {
      // Symmetric: scale = absmax / 127 (as stored, f16), q = round(x / scale).
      float amax = 0.f;
      for (int64_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
      const uint16_t sb = kv_int8_scale_bits(amax);  // the rule: backend/kv_format.h
      std::memcpy(pool + f.scale_offset(slot, h), &sb, 2);
      const float s = kv_f16_value(sb);
      for (int64_t i = 0; i < d; ++i) q[i] = static_cast<uint8_t>(static_cast<int8_t>(kv_int8_code(x[i], s)));
      return;
    }
    case KvCacheDType::kInt4: {
      // Asymmetric: scale and zero chosen by the format's rule (least squared error among clipped ranges).
      const KvScaleZeroBits sz = kv_int4_choose_scale_zero(d, x);  // the rule: backend/kv_format.h
      std::memcpy(pool + f.zero_offset(slot, h), &sz.zero, 2);
      std::memcpy(pool + f.scale_offset(slot, h), &sz.scale, 2);
      const float s = kv_f16_value(sz.scale), z = kv_f16_value(sz.zero);
      std::memset(q, 0, static_cast<size_t>(d / 2));
      for (int64_t i = 0; i < d; ++i) q[i / 2] = static_cast<uint8_t>(q[i / 2] | kv_int4_code(x[i], s, z) << (4 * (i % 2)));
      return;
    }
  }
}

void kv_dequantize_head(const KvBlockFormat& f, const uint8_t* pool, int64_t slot, int64_t h, float* out) {
  const int64_t d = f.head_dim;
  const uint8_t* q = pool + f.value_offset(slot, h);
  switch (f.dtype) {
    case KvCacheDType::kF32:
      std::memcpy(out, q, static_cast<size_t>(d) * sizeof(float));
      return;
    case KvCacheDType::kF16:
      for (int64_t i = 0; i < d; ++i) out[i] = kv_load_f16(q + 2 * i);
      return;
    case KvCacheDType::kInt8: {
      const double s = kv_load_f16(pool + f.scale_offset(slot, h));
      for (int64_t i = 0; i < d; ++i) out[i] = static_cast<float>(static_cast<int8_t>(q[i]) * s);
      return;
    }
    case KvCacheDType::kInt4: {
      const double s = kv_load_f16(pool + f.scale_offset(slot, h));
      const double z = kv_load_f16(pool + f.zero_offset(slot, h));
      for (int64_t i = 0; i < d; ++i) out[i] = static_cast<float>(((q[i / 2] >> (4 * (i % 2))) & 15) * s + z);
      return;
    }
  }
}

void hadamard(const HadamardParams& p) {
  const int64_t d = p.dim;
  const double norm = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> y(static_cast<size_t>(d));
  for (int64_t v = 0; v < p.num_vectors; ++v) {
    float* x = p.x + v * d;
    for (int64_t i = 0; i < d; ++i) {
      double acc = 0.0;
      for (int64_t j = 0; j < d; ++j) acc += (__builtin_popcountll(static_cast<uint64_t>(i & j)) % 2 ? -x[j] : x[j]);
      y[static_cast<size_t>(i)] = acc * norm;
    }
    for (int64_t i = 0; i < d; ++i) x[i] = static_cast<float>(y[static_cast<size_t>(i)]);
  }
}

}  // namespace nb::cpu::ref
