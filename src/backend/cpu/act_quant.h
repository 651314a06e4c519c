// Activation rows quantized to 8-bit blocks of 32 for the integer-dot matmul paths (llama.cpp's
// "vec_dot_type" Q8_0/Q8_1): each f32 row is quantized once per matmul call, then every weight row
// is dotted against it with 8-bit integer products and one f32 scale multiply per 32 elements.
//
// One quantized row of K = 32 * num_blocks elements is stored in groups of 4 blocks
// (num_groups = ceil(num_blocks / 4); blocks past num_blocks are all zero):
//   qs    [num_groups][128] int8  per group: elements 0..15 of blocks 0,1,2,3, then elements 16..31
//                                 of blocks 0,1,2,3 — the order a 4-bit weight group has after
//                                 "low nibbles | high nibbles", so a weight group and its activation
//                                 group line up as two 64-byte vectors each. In a 16-lane int32 dot
//                                 product (4 bytes per lane), lane j then only sees block j / 4.
//   scale [num_groups][16]  f32   block scale d of block i in lanes 4i..4i+3
//   corr  [num_groups][16]  i32   -bias * (sum of the 8 quantized values lane j multiplies): the
//                                 unsigned-offset correction for weights stored as q + bias (Q4_0:
//                                 bias 8, Q8_0: bias 128 after flipping the sign bit), used as the
//                                 initial accumulator of the integer dot product; exact in int32
//   sum   [num_groups][16]  f32   s = d * (float)sum(q) of block i in lanes 4i..4i+3 (Q4_1's min
//                                 term m * sum(x); one rounded multiply, see matmul_internal.h)
//   block_corr [num_groups * 4] i32  -bias * sum(q) of each block (the strip kernel's correction)
// Value of element e of block b: scale * qs, with qs = round_to_nearest_even(x / d), d = amax / 127.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nb::cpu {

struct ActQ8Layout {
  int64_t k = 0;
  int64_t num_blocks = 0;
  int64_t num_groups = 0;
  size_t scale_offset = 0;  // bytes from the row start; qs start at 0
  size_t corr_offset = 0;
  size_t sum_offset = 0;
  size_t block_corr_offset = 0;
  size_t row_bytes = 0;     // a multiple of 64, so every row of a 64-byte aligned buffer is aligned
};

// k must be a positive multiple of 32.
ActQ8Layout act_q8_layout(int64_t k);
// Quantizes one row x[k] into out[layout.row_bytes]. bias is the weight format's unsigned offset.
void quantize_act_row(const float* x, const ActQ8Layout& layout, int bias, uint8_t* out);
// The f32 values the integer kernels multiply by (scale * q), in natural element order. For tests:
// a matmul on these values must match the quantized-path result up to f32 summation error.
void dequantize_act_row(const uint8_t* row, const ActQ8Layout& layout, float* x);

namespace portable {
// The same quantization in plain C++ (what non-AVX-512 builds run); bit-identical output.
void quantize_act_row(const float* x, const ActQ8Layout& layout, int bias, uint8_t* out);
}  // namespace portable

}  // namespace nb::cpu
