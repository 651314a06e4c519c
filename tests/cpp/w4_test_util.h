// Random 4-bit kQGroup weights for the W4 layout tests (tests/cpp/test_w4_layout.cpp) and the CUDA
// W4A16 tests (tests/gpu/test_cuda_w4.cpp): codes uniform in 0..15, zero points uniform integers in
// 0..15 (asymmetric) or none (symmetric: 8), scales around `scale` with random sign, rounded to f16
// so that the device copy (f16 scales, backend/w4_layout.h) holds exactly the reference's values.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/group_quant.h"

namespace nb::w4_test {

inline Result<Tensor> random_w4(int64_t n, int64_t k, int64_t group_size, bool symmetric, uint32_t seed,
                                float scale = 0.01f) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> mag(0.5f, 1.5f);
  GroupQuant q;
  q.bits = 4;
  q.group_size = group_size;
  q.symmetric = symmetric;
  q.num_groups = group_count(k, group_size);
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));
  q.scales.resize(static_cast<size_t>(n * q.num_groups));
  for (float& s : q.scales) {
    const float v = mag(rng) * scale * (code(rng) < 8 ? -1.f : 1.f);
    s = fp16_to_fp32(fp32_to_fp16(v));
  }
  if (!symmetric) {
    q.zeros.resize(q.scales.size());
    for (float& z : q.zeros) z = static_cast<float>(code(rng));
  }
  return make_group_quant_tensor(std::move(codes), n, k, std::move(q), "w4_test");
}

}  // namespace nb::w4_test
