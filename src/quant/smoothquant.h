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

#include "core/thread_pool.h"
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

// Inputs of the four sites on a subsample of calibration tokens ([tokens, site dim] each), for the
// per-site alpha search.
struct SmoothSiteSamples {
  std::array<std::vector<float>, kNumInputSites> x;
  int64_t tokens = 0;
};

// Per-site alpha search (the paper tunes alpha per model; this tunes it per layer and input): for
// each site and each alpha of the grid, the W8A8 output error of the linears reading it,
//   sum_k || X W_k^T - Q_tok(X / s) Q_row(W_k s)^T ||^2   over the sampled tokens
// (Q_tok: per-token absmax/127 INT8 as the runtime, Q_row: the per-channel INT8 weight grid), and
// picks the alpha with the least error. Sites are independent: folding 1/s into v_proj's or
// up_proj's rows does not change their per-row INT8 error. Returns the chosen alpha per site.
std::array<double, kNumInputSites> smooth_search_alpha(const DenseLayer& d, const ModelConfig& c,
                                                       const std::array<const std::vector<float>*, kNumInputSites>& act_absmax,
                                                       const SmoothSiteSamples& samples, const std::vector<double>& grid,
                                                       ThreadPool& pool);

}  // namespace nb::quant
