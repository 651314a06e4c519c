// AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
// Acceleration"): per input channel scales s that protect the weights of salient channels (those
// with large activations) from rounding, chosen by a grid search s = s_X^a, a in [0, 1], where s_X is
// the mean |x| of the channel over the calibration tokens. A scaled linear computes (x / s) . Q(W s)^T;
// 1/s is folded into the op that produces x (the RMSNorm weight, or the rows of v_proj / up_proj).
// Then a clipping search shrinks each group's range to the value that minimises its output error.
//
// The error of a candidate is the exact squared output error of the linears over all calibration
// tokens, computed from the Gram matrix G = sum_t x_t x_t^T of their input:
//   sum_t ||x_t (W - W')^T||^2 = sum_o d_o^T G d_o,   d_o = row o of W - W'.
// (AutoAWQ measures the same error on the tokens themselves; with G it costs in^2 per row instead of
// one pass over all tokens per grid point.) By default the output error is taken at the group's
// linears (q/k/v together; gate/up together; o; down). A problem may instead carry a block loss
// (AutoAWQ's "module2inspect": the error after the attention or the MLP that follows the linears,
// quant/awq_block.h); the search then minimises that.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/thread_pool.h"
#include "quant/rtn.h"

namespace nb::quant {

struct AwqOptions {
  int num_grid = 20;         // a = i / num_grid for i = 0..num_grid (a = 0 is plain RTN)
  int clip_grid = 20;        // clip ratios 1 - i / clip_grid ...
  double max_shrink = 0.5;   // ... down to 1 - max_shrink
  // AutoAWQ's duo scaling: s = s_X^a / (s_W^(1-a) + 1e-4), s_W = mean over output rows of |w| / max|w|
  // of the row's group (per scaled channel); plain RTN (s = 1) is always a candidate too.
  bool duo_scaling = false;
  // Clipping of an asymmetric grid: besides AutoAWQ's symmetric clamp [-c, c], try shrinking the two
  // ends of [min(w, 0), max(w, 0)] independently (each by the same ratios), keeping the best per group.
  bool two_sided_clip = false;
};

// Linears that read one input and are scaled together.
struct AwqScaleProblem {
  std::vector<const std::vector<float>*> weights;  // each [out_features[i], in]
  std::vector<int64_t> out_features;
  int64_t in = 0;
  const std::vector<float>* gram = nullptr;  // [in, in] of the input
  std::vector<float> x_mean;                 // [num_scales] mean |x| per scaled channel
  // Input channel j is scaled by s[channel_map[j]]; empty = identity (num_scales == in). Lets one
  // scale of a v_proj output channel cover the o_proj inputs of every query head sharing it (GQA).
  std::vector<int32_t> channel_map;
  // Optional block loss of the candidate weights W'_k = Q(W_k diag(s)) diag(s)^-1, one per entry of
  // `weights`, in that order. When set, the search minimises it instead of the Gram error.
  std::function<double(const std::vector<std::vector<float>>& candidates)> block_loss;
};

struct AwqScaleResult {
  std::vector<float> scales;  // [num_scales]
  double alpha = 0.0;         // the chosen exponent
  double error = 0.0;         // output error (or block loss) with these scales
  double rtn_error = 0.0;     // the same at a = 0 (plain RTN)
};

AwqScaleResult awq_search_scales(const AwqScaleProblem& problem, const QuantSpec& spec, const AwqOptions& options,
                                 ThreadPool& pool);

// Output error sum_o d_o^T G d_o of W [out, in] against fake_quant(W diag(s)) diag(s)^-1, where
// s_full [in] (empty = no scaling).
double awq_output_error(const std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s_full,
                        const std::vector<float>& gram, const QuantSpec& spec, ThreadPool& pool);

// Clipping search: for every row and group, the clamp [-c, c], c = max|w| * (1 - i / clip_grid) (or,
// with two_sided_clip, [min * r1, max * r2]) with the least output error of that group (error through
// the group's diagonal block of G); w is clamped to it in place. Returns the total output error after clipping.
double awq_search_clip(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& gram,
                       const QuantSpec& spec, const AwqOptions& options, ThreadPool& pool);

// fake_quant(W diag(s)) diag(s)^-1 for W [out, in], s_full [in] (empty = no scaling): what the
// scaled, quantized linear computes on the unscaled input.
std::vector<float> awq_scaled_fake_quant(const std::vector<float>& w, int64_t out, int64_t in,
                                         const std::vector<float>& s_full, const QuantSpec& spec);

// Multiplies input channel j of w [out, in] by s[j].
void scale_input_channels(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s);
// Divides output channel (row) o of w [out, in] by s[o] (a norm weight is [dim, 1]).
void divide_output_channels(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s);
// G -> diag(1/s) G diag(1/s): the Gram of the input after it was divided by s.
void scale_gram(std::vector<float>& gram, int64_t in, const std::vector<float>& s);

}  // namespace nb::quant
