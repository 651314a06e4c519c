// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers"): quantizes a linear weight column by column, spreading each column's rounding
// error over the not-yet-quantized columns through the inverse Hessian of the layer's
// reconstruction error ||X W^T - X Q^T||^2, H = 2 X^T X / n.
//
// As in the paper (Algorithm 1) and its reference code: dead input channels (H_jj = 0) are zeroed;
// optional act-order visits columns by decreasing H_jj; damping adds 1% of the mean diagonal; the
// sweep uses U = the upper Cholesky factor of H^-1 (row i of U is the update direction after column
// i, U_ii its pivot); updates are lazy in blocks of 128 columns (within a block column by column,
// then one rank-128 update of the columns after it; the block is rounded to a multiple or divisor of the
// group size so a group's grid always sees fully updated weights). Group scales/zeros are chosen from the current
// (error-updated) weights when the sweep reaches a group's first column; with act-order groups are
// consecutive in visiting order and g_idx records each input channel's group.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "quant/qlinear.h"
#include "quant/rtn.h"

namespace nb::quant {

struct GptqOptions {
  bool act_order = false;
  int64_t block_size = 128;
  double damp_percent = 0.01;  // of the mean Hessian diagonal
  bool mse = false;            // each group's grid by group_range_mse (the reference code's `mse`), not min-max
};

// w: [out, in] f32; hessian: [in, in] (any positive multiple of X^T X: the scale cancels).
Result<QuantizedLinear> gptq_quantize(const float* w, int64_t out, int64_t in, const std::vector<double>& hessian,
                                      const QuantSpec& spec, const GptqOptions& options, ThreadPool& pool,
                                      const std::string& what);

// Upper Cholesky factor U of the inverse of the symmetric positive definite [n, n] matrix h
// (h^-1 = U^T U), through h = L L^T, M = L^-1, h^-1 = M^T M. Fails if h is not positive definite.
Result<std::vector<double>> inverse_upper_cholesky(std::vector<double> h, int64_t n, ThreadPool& pool);

}  // namespace nb::quant
