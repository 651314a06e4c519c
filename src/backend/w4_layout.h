// W4Layout: the device layout of a 4-bit group-quantized linear weight (a kQGroup tensor with bits
// 4, core/group_quant.h) as the CUDA W4A16 kernels read it (backend/cuda/w4_matmul.cu). Plain C++:
// made on the host at load time (w4_pack), copied to the device as one buffer, and unpacked again by
// the round-trip test (w4_unpack_code / w4_unpack_params).
//
// Design (after the ideas of Marlin / TensorRT-LLM's fpA_intB, no code taken): the kernel multiplies
// 16 weight rows x 16 inputs per tensor-core mma.m16n8k16 with the weights as the A operand, so the
// codes are stored exactly in A-fragment order: one 16-byte load per lane holds that lane's 32 codes
// for 16 rows x 64 inputs (4 mmas), and a warp's 32 lanes read 512 contiguous bytes.
//
//   rows are padded to n_pad = ceil(N / 64) * 64 (codes 0, scale 0, zero 0: padded rows give 0);
//   K must be a multiple of 64 (kChunk); a group (group_size a multiple of 64, or one group per row)
//   covers whole chunks, so one lane's 32 codes share one (scale, zero) per row.
//
//   codes:  uint32 words [n_pad / 16 tiles][K / 64 chunks][32 lanes][4 words t]
//           lane = 4 * gid + tig (gid = lane / 4, tig = lane % 4); word t, nibble p = reg + 4 * h
//           (reg 0..3, h 0..1) holds the code of
//             row = 16 * tile + gid + 8 * (reg & 1)
//             col = 64 * chunk + 16 * tig + 4 * t + 2 * (reg >> 1) + h
//           i.e. A-fragment register `reg` of k-tile t, half h (the PTX ISA m16n8k16 layout: a0/a1
//           row gid, a2/a3 row gid+8, a4..a7 the same rows at k + 8), with the k order inside the
//           64-column chunk permuted so that the same lane's B fragments (activations) of the 4
//           k-tiles are 16 contiguous inputs: x[16 * tig .. 16 * tig + 16). The product does not
//           depend on the order of k inside the chunk, the A and B operands use the same one.
//           Nibbles p and p + 4 are the two halves of one f16x2 register: (w & 0x000f000f) and
//           (w & 0x00f000f0) give two codes each with one mask (the 0x6400 exponent trick).
//   params: uint32 [n_pad / 16 tiles][num_groups][16 rows]: f16 scale in the low half, f16 zero
//           point in the high half (an integer 0..15; 8 for symmetric).
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace nb {

struct W4Layout {
  static constexpr int64_t kTileRows = 16;   // rows per mma tile
  static constexpr int64_t kChunk = 64;      // inputs per 16-byte lane load
  static constexpr int64_t kRowAlign = 64;   // rows are padded to this (the kernel's rows per block)
  int64_t n = 0, k = 0, n_pad = 0;
  int64_t group_size = 0;  // in inputs, a multiple of kChunk (k for one group per row)
  int64_t num_groups = 0;  // ceil(k / group_size); the last group may be partial
  bool symmetric = false;
  std::vector<uint32_t> codes;   // see above
  std::vector<uint32_t> params;  // see above

  int64_t num_chunks() const { return k / kChunk; }
  int64_t code_bytes() const { return static_cast<int64_t>(codes.size()) * 4; }
  int64_t param_bytes() const { return static_cast<int64_t>(params.size()) * 4; }
  // The one device buffer: codes, then params (both 16-byte aligned).
  int64_t total_bytes() const { return code_bytes() + param_bytes(); }
};

// Whether a kQGroup tensor can take the W4 layout; the Status says why not and what to do.
Status w4_check(const Tensor& qgroup);

// Repacks a host kQGroup tensor (bits 4, contiguous groups, weight-only) into W4Layout. Scales are
// rounded to f16 (an error if one is not finite there: > 65504).
Result<W4Layout> w4_pack(const Tensor& qgroup);

// Stacks host kQGroup weights with the same in_features, bits, group size and symmetry (no
// act-order) along the rows: [sum n_i, k], e.g. q/k/v or gate/up as one weight, so one W4 product
// reads them in one launch. The codes, scales and zero points are copied, not requantized.
Result<Tensor> concat_group_quant_rows(const std::vector<Tensor>& parts);

// Code (0..15) of weight (row, col) read back from the layout.
int w4_unpack_code(const W4Layout& l, int64_t row, int64_t col);
// f16 bits of scale and zero of (row, group).
void w4_unpack_params(const W4Layout& l, int64_t row, int64_t group, uint16_t* scale, uint16_t* zero);

}  // namespace nb
