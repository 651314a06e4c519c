// Helpers shared by the CPU op tests: seeded random data and weight tensors of any dtype whose
// storage is exactly row_bytes * rows (no slack, so ASan catches any read past the last row).
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace nb::test {

inline std::vector<float> random_normal(size_t n, uint32_t seed, float stddev = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// A [rows, cols] weight of `dtype` quantized from N(0, 1) values with a per-row scale spread over
// two decades, like real layers (rows of very different magnitude share one matrix).
struct TestWeight {
  std::shared_ptr<std::vector<uint8_t>> bytes;
  Tensor tensor;
};
inline TestWeight make_weight(DType dtype, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> v = random_normal(static_cast<size_t>(rows * cols), seed);
  std::mt19937 rng(seed ^ 0x9e3779b9u);
  std::uniform_real_distribution<float> ud(-1.f, 1.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = 0.1f * std::pow(10.f, ud(rng));
    for (int64_t c = 0; c < cols; ++c) v[static_cast<size_t>(r * cols + c)] *= s;
  }
  TestWeight w;
  const size_t rb = row_bytes(dtype, cols);
  w.bytes = std::make_shared<std::vector<uint8_t>>(rb * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row(dtype, v.data() + r * cols, w.bytes->data() + rb * static_cast<size_t>(r), cols);
  }
  w.tensor = Tensor::view(w.bytes->data(), {rows, cols}, dtype, w.bytes);
  return w;
}

// The weight dequantized to f32 (row-major [rows, cols]), through the core's dequantize_row.
inline std::vector<float> dequantized(const Tensor& w) {
  std::vector<float> out(static_cast<size_t>(w.rows() * w.cols()));
  for (int64_t r = 0; r < w.rows(); ++r) dequantize_row(w.dtype(), w.row<const void>(r), out.data() + r * w.cols(), w.cols());
  return out;
}

}  // namespace nb::test
