#include "quant/rtn.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/dtype.h"

namespace nb::quant {

namespace {
// Rounds a positive scale to the nearest fp16 value, kept above fp16's smallest subnormal.
float fp16_scale(float s) {
  constexpr float kMinScale = 5.9604645e-08f;  // 2^-24
  if (!(s > kMinScale)) return kMinScale;
  return std::max(fp16_to_fp32(fp32_to_fp16(s)), kMinScale);
}
}  // namespace

Status validate_quant_spec(const QuantSpec& spec, int64_t in_features, const std::string& what) {
  if (spec.bits < 2 || spec.bits > 8) {
    return invalid_argument("--wbits must be in 2..8; got " + std::to_string(spec.bits));
  }
  if (spec.group_size == 0 || spec.group_size < -1) {
    return invalid_argument("--group-size must be positive or -1 (per channel); got " +
                            std::to_string(spec.group_size));
  }
  if (spec.group_size > 0 && in_features % spec.group_size != 0) {
    return invalid_argument("group size " + std::to_string(spec.group_size) + " does not divide the " +
                            std::to_string(in_features) + " input features of " + what +
                            "; pick a divisor (e.g. 32 or 64) or -1 for per-channel scales");
  }
  return Status::Ok();
}

GroupRange range_of(float lo, float hi, const QuantSpec& spec) {
  GroupRange r;
  if (spec.symmetric) {
    const float amax = std::max(-lo, hi);
    r.scale = fp16_scale(amax / static_cast<float>((1 << (spec.bits - 1)) - 1));
    r.zero = static_cast<float>(1 << (spec.bits - 1));
  } else {
    const int max_code = spec.max_code();
    r.scale = fp16_scale((hi - lo) / static_cast<float>(max_code));
    r.zero = std::clamp(std::nearbyint(-lo / r.scale), 0.f, static_cast<float>(max_code));
  }
  return r;
}

std::pair<float, float> group_min_max(const float* w, int64_t n, int64_t stride) {
  float lo = 0.f, hi = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = w[i * stride];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  return {lo, hi};
}

GroupRange group_range(const float* w, int64_t n, int64_t stride, const QuantSpec& spec) {
  const auto [lo, hi] = group_min_max(w, n, stride);
  return range_of(lo, hi, spec);
}

GroupRange group_range_mse(const float* w, int64_t n, int64_t stride, const QuantSpec& spec) {
  constexpr int kGrid = 100;
  constexpr float kMaxShrink = 0.8f, kNorm = 2.4f;
  const int max_code = spec.max_code();
  const auto [lo, hi] = group_min_max(w, n, stride);
  GroupRange best = range_of(lo, hi, spec);
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < static_cast<int>(kMaxShrink * kGrid); ++i) {
    const float shrink = 1.f - static_cast<float>(i) / kGrid;
    const GroupRange r = range_of(lo * shrink, hi * shrink, spec);
    double err = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const float v = w[j * stride];
      err += std::pow(std::abs(static_cast<double>(dequantize_code(quantize_code(v, r, max_code), r) - v)), kNorm);
    }
    if (err < best_err) {
      best_err = err;
      best = r;
    }
  }
  return best;
}

void rtn_quantize_row(const float* w, int64_t in, const QuantSpec& spec, uint8_t* codes, float* scales,
                      float* zeros) {
  const int64_t gs = spec.group_size < 0 ? in : spec.group_size;
  const int max_code = spec.max_code();
  for (int64_t g = 0; g * gs < in; ++g) {
    const int64_t n = std::min(gs, in - g * gs);
    const GroupRange r = group_range(w + g * gs, n, 1, spec);
    scales[g] = r.scale;
    if (!spec.symmetric) zeros[g] = r.zero;
    for (int64_t j = 0; j < n; ++j) codes[g * gs + j] = static_cast<uint8_t>(quantize_code(w[g * gs + j], r, max_code));
  }
}

Status check_finite(const float* w, int64_t n, const std::string& what) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(w[i])) {
      return invalid_argument(what + " has a non-finite weight (" + std::to_string(w[i]) + " at element " +
                              std::to_string(i) + "); the input model is corrupt, re-download or re-convert it");
    }
  }
  return Status::Ok();
}

QuantizedLinear allocate_quantized(int64_t out, int64_t in, const QuantSpec& spec) {
  QuantizedLinear q;
  q.bits = spec.bits;
  q.group_size = spec.group_size;
  q.symmetric = spec.symmetric;
  q.out_features = out;
  q.in_features = in;
  const int64_t ng = q.num_groups();
  q.q.resize(static_cast<size_t>(out * in));
  q.scales.resize(static_cast<size_t>(out * ng));
  if (!spec.symmetric) q.zeros.resize(static_cast<size_t>(out * ng));
  return q;
}

Result<QuantizedLinear> rtn_quantize(const float* w, int64_t out, int64_t in, const QuantSpec& spec,
                                     const std::string& what) {
  NB_RETURN_IF_ERROR(validate_quant_spec(spec, in, what));
  NB_RETURN_IF_ERROR(check_finite(w, out * in, what));
  QuantizedLinear q = allocate_quantized(out, in, spec);
  const int64_t ng = q.num_groups();
  for (int64_t o = 0; o < out; ++o) {
    rtn_quantize_row(w + o * in, in, spec, q.q.data() + o * in, q.scales.data() + o * ng,
                     spec.symmetric ? nullptr : q.zeros.data() + o * ng);
  }
  return q;
}

void fake_quantize_rows(float* w, int64_t out, int64_t in, const QuantSpec& spec) {
  const int64_t gs = spec.group_size < 0 ? in : spec.group_size;
  const int max_code = spec.max_code();
  for (int64_t o = 0; o < out; ++o) {
    float* row = w + o * in;
    for (int64_t g0 = 0; g0 < in; g0 += gs) {
      const int64_t n = std::min(gs, in - g0);
      const GroupRange r = group_range(row + g0, n, 1, spec);
      for (int64_t j = g0; j < g0 + n; ++j) row[j] = dequantize_code(quantize_code(row[j], r, max_code), r);
    }
  }
}

}  // namespace nb::quant
