// SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization
// for Large Language Models"): migrates activation outliers into the weights with per input channel
// scales s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (W_j: column j of every linear reading X), so that
// X diag(s)^-1 and diag(s) W^T are both easy to quantize to INT8 while their product is unchanged.
// 1/s folds into the op producing X; all four linear inputs of a Llama layer have one that is exact:
//   q/k/v input (attention norm output): the attention RMSNorm weight;
//   gate/up input (FFN norm output):     the FFN RMSNorm weight;
//   o_proj input (attention output):     v_proj's output rows (attention output = softmax weights x V,
//                                        linear in V; with GQA a v channel feeds the same o_proj input
//                                        column of every query head of its group, so the scale is one
//                                        per kv channel: max of |x| and of |W| over those columns);
//   down_proj input (SwiGLU product):    up_proj's output rows (silu(gate) * up is linear in up).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "quant/calib.h"

namespace nb::quant {

// act_absmax: [in] max |x_j| over the calibration tokens; weights: each [out_i, in].
std::vector<float> smoothquant_scales(const std::vector<float>& act_absmax,
                                      const std::vector<const std::vector<float>*>& weights,
                                      const std::vector<int64_t>& out_features, int64_t in, double alpha);

// The same with input channels sharing scales: input channel j uses scale channel_map[j] (of
// num_scales); the maxima of |x| and |W| are taken over every input channel mapped to a scale.
std::vector<float> smoothquant_scales_mapped(const std::vector<float>& act_absmax,
                                             const std::vector<const std::vector<float>*>& weights,
                                             const std::vector<int64_t>& out_features, int64_t in, double alpha,
                                             const std::vector<int32_t>& channel_map, int64_t num_scales);

// Per input site (InputSite order: q/k/v in, o in, gate/up in, down in).
struct ChannelMax {
  int64_t channel = 0;
  float before = 0.f;  // max |x| of the input channel
  float after = 0.f;   // max |x / s| after smoothing
};
struct SmoothSiteReport {
  std::vector<ChannelMax> top;  // the 5 channels with the largest max |x| before smoothing
  // max over channels / median over channels of max |x|, before and after smoothing.
  float ratio_before = 0.f, ratio_after = 0.f;
};

// Smooths the four sites of layer d in place: scales from act_absmax[site] (max |x| per input
// channel of the float layer) and alpha[site]; 1/s folded into the producers listed above, s into
// the consumers' input columns. The float layer computes the same function afterwards.
std::array<SmoothSiteReport, kNumInputSites> smooth_layer(DenseLayer& d, const ModelConfig& c,
                                                          const std::array<const std::vector<float>*, kNumInputSites>& act_absmax,
                                                          const std::array<double, kNumInputSites>& alpha);

}  // namespace nb::quant
