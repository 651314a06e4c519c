// GroupQuant: the run-time description of a group-wise integer-quantized linear weight (GPTQ, AWQ,
// RTN, SmoothQuant W8A8). Such a weight is a Tensor of dtype kQGroup whose data are the codes, one
// unsigned byte per element ([out_features, in_features] row-major, so rows()/cols()/row_nbytes()
// keep their plain meaning), and whose Tensor::group_quant() points at this struct:
//
//   w[n][j] = (q[n][j] - zero[n][g(j)]) * scale[n][g(j)]
//   g(j) = g_idx.empty() ? j / group_size : g_idx[j]        (group_size == -1: one group per row)
//   symmetric: zero = 2^(bits-1) for every group (zeros is empty)
//
// act_int8 (W8A8): the matmul also quantizes each activation row to int8 (absmax / 127 per row,
// round to nearest even) and forms exact int32 products per group; it is part of the weight's
// meaning, so every backend (reference included) computes it that way.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace nb {

struct GroupQuant {
  int bits = 4;                // 2..8
  int64_t group_size = 128;    // -1: one group per output row
  bool symmetric = false;
  bool act_int8 = false;
  int64_t num_groups = 1;      // per row
  std::vector<float> scales;   // [N, num_groups]
  std::vector<float> zeros;    // [N, num_groups]; empty when symmetric
  std::vector<int32_t> g_idx;  // [K] or empty
  // The kernels' layout, made once by make_group_quant_tensor, tiles of 32 rows (rows past N are 0):
  //   weight-only: [ceil(N / 32)][K][32]: code (32t + r, i) at (t * K + i) * 32 + r, so one step over
  //                i reads the 32 rows' codes of column i as one 32-byte vector;
  //   act_int8 with K % 4 == 0: [ceil(N / 32)][K / 4][32][4]: code (32t + r, 4c + j) at
  //                ((t * K / 4 + c) * 32 + r) * 4 + j, the operand order of a VNNI dot of 4 bytes.
  static constexpr int64_t kTileRows = 32;
  std::vector<uint8_t> tiled;

  float zero(int64_t n, int64_t g) const {
    return symmetric ? static_cast<float>(1 << (bits - 1)) : zeros[static_cast<size_t>(n * num_groups + g)];
  }
  float scale(int64_t n, int64_t g) const { return scales[static_cast<size_t>(n * num_groups + g)]; }
  int64_t group_of(int64_t j) const {
    return !g_idx.empty() ? g_idx[static_cast<size_t>(j)] : group_size < 0 ? 0 : j / group_size;
  }
  // Groups are the contiguous ranges [g * group_size, (g + 1) * group_size) (no act-order g_idx, or
  // a g_idx equal to j / group_size).
  bool contiguous_groups() const { return g_idx.empty(); }
};

// num_groups for in_features k and a group size (-1 = per channel).
inline int64_t group_count(int64_t k, int64_t group_size) {
  return group_size < 0 ? 1 : (k + group_size - 1) / group_size;
}

// Checks a GroupQuant against [n, k] and the codes: bits in 2..8, group_size -1 or positive,
// vector sizes, codes < 2^bits, zeros in [0, 2^bits) and integral, finite scales, g_idx entries in
// range. `what` names the tensor in the message. A g_idx equal to j / group_size is dropped.
Status validate_group_quant(GroupQuant& q, int64_t n, int64_t k, const uint8_t* codes, const std::string& what);

// Wraps codes [n, k] (moved in) and validated parameters into a kQGroup tensor.
Result<Tensor> make_group_quant_tensor(std::vector<uint8_t> codes, int64_t n, int64_t k, GroupQuant q,
                                       const std::string& what);

// Row r of any weight tensor as f32: kQGroup through its GroupQuant, every other dtype through
// dequantize_row.
void dequantize_tensor_row(const Tensor& t, int64_t r, float* dst);

}  // namespace nb
