// Round-to-nearest (RTN) group-wise quantization: the quantizer every method shares. GPTQ calls
// group_range/quantize_code as its sweep reaches each group; AWQ searches scales and clipping around
// fake_quantize_rows; SmoothQuant and naive W8A8 use rtn_quantize with 8 bits, symmetric, per channel.
//
// Grid (the QuantizedLinear convention, w = (q - zero) * scale):
//   asymmetric: lo = min(min w, 0), hi = max(max w, 0); scale = (hi - lo) / (2^bits - 1);
//               zero = round(-lo / scale) in [0, 2^bits - 1]   (the GPTQ/AutoAWQ min-max quantizer)
//   symmetric:  scale = max|w| / (2^(bits-1) - 1); zero = 2^(bits-1), so codes span
//               [1, 2^bits - 1] and +-max|w| are exact (INT8: the usual absmax / 127)
// Scales are rounded to fp16 before the codes are chosen, so checkpoints that store fp16 scales
// (GPTQ, AutoAWQ) reproduce the in-memory model exactly.
#pragma once
#include <cstdint>
#include <string>
#include <utility>

#include "core/status.h"
#include "quant/qlinear.h"

namespace nb::quant {

struct QuantSpec {
  int bits = 4;               // 2..8
  int64_t group_size = 128;   // input channels per group; -1 = one group per output row
  bool symmetric = false;
  int max_code() const { return (1 << bits) - 1; }
};

// Checks bits and that group_size divides in_features (no padding is done); `what` names the layer.
Status validate_quant_spec(const QuantSpec& spec, int64_t in_features, const std::string& what);

struct GroupRange {
  float scale = 1.f;
  float zero = 0.f;  // integral
};

// [min(w, 0), max(w, 0)] of the n values w[0], w[stride], ...
std::pair<float, float> group_min_max(const float* w, int64_t n, int64_t stride);
// The grid for the range [lo, hi] (lo <= 0 <= hi) under spec; values outside go to the end codes.
GroupRange range_of(float lo, float hi, const QuantSpec& spec);
// The grid for the n values w[0], w[stride], ... under spec: range_of(min(w, 0), max(w, 0)).
GroupRange group_range(const float* w, int64_t n, int64_t stride, const QuantSpec& spec);
// The reference GPTQ code's `mse` grid search (Quantizer.find_params): of the shrinks 1, 0.99, ...,
// 0.21, the grid with the least sum of |dequantized - w|^2.4 over the group (ties: the larger range).
GroupRange group_range_mse(const float* w, int64_t n, int64_t stride, const QuantSpec& spec);

inline int quantize_code(float w, GroupRange r, int max_code) {
  const float q = __builtin_nearbyintf(w / r.scale) + r.zero;
  return q < 0.f ? 0 : q > static_cast<float>(max_code) ? max_code : static_cast<int>(q);
}
inline float dequantize_code(int q, GroupRange r) { return (static_cast<float>(q) - r.zero) * r.scale; }

// Quantizes one row of `in` weights: codes[in], scales/zeros[num_groups] (zeros unused if symmetric).
void rtn_quantize_row(const float* w, int64_t in, const QuantSpec& spec, uint8_t* codes, float* scales,
                      float* zeros);

// A QuantizedLinear of spec's shape with codes, scales (and zeros if asymmetric) allocated.
QuantizedLinear allocate_quantized(int64_t out, int64_t in, const QuantSpec& spec);

// RTN of a [out, in] f32 weight. Fails on a bad spec or a NaN/Inf weight (names `what`).
Result<QuantizedLinear> rtn_quantize(const float* w, int64_t out, int64_t in, const QuantSpec& spec,
                                     const std::string& what);

// Quantize-then-dequantize in place (the weight the quantized layer computes with).
void fake_quantize_rows(float* w, int64_t out, int64_t in, const QuantSpec& spec);

// Returns an error naming `what` and the first bad element if w has a NaN or Inf.
Status check_finite(const float* w, int64_t n, const std::string& what);

}  // namespace nb::quant
