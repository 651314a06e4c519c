// The layer-by-layer quantization pipeline behind `nibble quantize`: embeds the calibration samples,
// then for each decoder layer runs it in f32 over every sample collecting its linears' input
// statistics, quantizes the layer with the chosen method, and recomputes the layer's outputs with
// the QUANTIZED weights so that layer i + 1 is calibrated on what the quantized model will feed it
// (as GPTQ and AWQ do). RTN needs no calibration and skips it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/weights.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/qlinear.h"
#include "quant/rtn.h"
#include "quant/smoothquant.h"
#include "tokenizer/tokenizer.h"

namespace nb::quant {

enum class QuantMethod { kRtn, kSmoothQuant, kAwq, kGptq };
Result<QuantMethod> parse_quant_method(const std::string& name);
const char* quant_method_name(QuantMethod m);

// What AWQ's scale search for q/k/v and gate/up minimises: the output error of the linears (exact,
// from the Gram matrix of all calibration tokens) or of the attention / MLP block after them
// (AutoAWQ's module2inspect, on awq_block_samples sequences; quant/awq_block.h).
enum class AwqLoss { kLinear, kBlock };
Result<AwqLoss> parse_awq_loss(const std::string& name);
// AWQ's v_proj -> o_proj scaling: kAuto is AutoAWQ's rule (only when the two weights have the same
// shape, i.e. no GQA); kOn / kOff force it. Names: auto, on, off.
enum class AwqVo { kAuto, kOn, kOff };
Result<AwqVo> parse_awq_vo(const std::string& name);
constexpr int64_t kAwqBlockSamples = 8;  // default calibration sequences the block loss is measured on

struct QuantizeOptions {
  QuantMethod method = QuantMethod::kRtn;
  QuantSpec spec;                 // smoothquant forces 8 bits, symmetric, per channel
  bool act_int8 = false;          // rtn: W8A8 without smoothing ("naive W8A8"); smoothquant: always
  double alpha = 0.5;             // smoothquant migration strength
  std::vector<double> site_alpha; // smoothquant: per input site (q/k/v, o, gate/up, down); empty = alpha everywhere
  bool alpha_search = false;      // smoothquant: per layer and site, the alpha of smooth_alpha_grid with the least W8A8 output error
  std::vector<double> smooth_alpha_grid = {0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95};
  int64_t alpha_search_tokens = 512;  // calibration tokens (spread over the samples) the search measures on
  bool act_order = false;         // gptq
  bool gptq_mse = false;          // gptq: GptqOptions::mse
  bool awq_duo_scaling = false;   // awq: AutoAWQ's duo scaling (AwqOptions::duo_scaling)
  bool awq_two_sided_clip = false;  // awq: AwqOptions::two_sided_clip
  AwqLoss awq_loss = AwqLoss::kBlock;
  int64_t awq_block_samples = kAwqBlockSamples;  // awq block loss: sequences (spread over the samples; all when fewer)
  // awq: calibrate layer i + 1 on the FLOAT layer i's output (AutoAWQ) instead of the quantized one.
  bool awq_float_inputs = false;
  AwqVo awq_vo = AwqVo::kAuto;  // awq: v -> o scaling (AwqVo)
  std::string calib_path;
  int64_t calib_samples = 32;
  int64_t calib_seqlen = 512;
  int num_threads = 2;
};

// Per-layer facts for the report (--report FILE).
struct LayerReport {
  int64_t layer = 0;
  // smoothquant: per input site (InputSite order), the top channels by max |x| before/after
  // smoothing and max over channels / median over channels of max |x|; the alpha used there.
  std::vector<SmoothSiteReport> smooth;
  std::vector<double> smooth_alpha;
  // awq: the chosen exponent and error / RTN error per scaling group (qkv, v->o, gate/up, up->down).
  std::vector<double> awq_alpha, awq_gain;
  // Output error ||X W^T - X Q^T||^2 summed over the layer's linears, relative to ||X W^T||^2
  // (gptq only).
  double relative_error = 0.0;
};

// (layer index done, total layers)
using QuantizeProgress = std::function<void(int64_t done, int64_t total)>;

// Quantizes `weights` (consumed; `tokenizer` may be null for RTN, which needs no calibration; linear weights of any dtype nibble loads). The returned model
// keeps the embeddings, final norm and head; its layer norms carry folded scales (SmoothQuant, AWQ);
// its LayerWeights linear tensors are left empty (the quantized linears are in layers).
Result<QuantizedModel> quantize_model(ModelWeights weights, const Tokenizer* tokenizer, const QuantizeOptions& options,
                                      const QuantizeProgress& progress, std::vector<LayerReport>* report);

}  // namespace nb::quant
