// SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization
// for Large Language Models"): migrates activation outliers into the weights with per input channel
// scales s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (W_j: column j of every linear reading X), so that
// X diag(s)^-1 and diag(s) W^T are both easy to quantize to INT8 while their product is unchanged.
// 1/s folds into the preceding RMSNorm weight. As in the paper's Llama recipe, q/k/v (attention norm)
// and gate/up (FFN norm) are smoothed; o_proj and down_proj are not (their inputs come from attention
// and SwiGLU, with no per-channel op to fold into that is exact for all heads).
#pragma once
#include <cstdint>
#include <vector>

namespace nb::quant {

// act_absmax: [in] max |x_j| over the calibration tokens; weights: each [out_i, in].
std::vector<float> smoothquant_scales(const std::vector<float>& act_absmax,
                                      const std::vector<const std::vector<float>*>& weights,
                                      const std::vector<int64_t>& out_features, int64_t in, double alpha);

}  // namespace nb::quant
