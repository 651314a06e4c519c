// Calibration for the layer-by-layer quantizers: tokenized calibration samples, a decoder layer as
// plain f32 matrices (DenseLayer), its f32 forward over one sample with a hook on the input of every
// linear, and the per-input statistics the methods need (Gram matrix X^T X for GPTQ's Hessian and
// AWQ's exact output error, mean |x| for AWQ, max |x| for SmoothQuant).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "model/weights.h"
#include "quant/qlinear.h"
#include "tokenizer/tokenizer.h"

namespace nb::quant {

// Splits the calibration text's tokens into num_samples windows of seq_len tokens spread evenly
// over the text (no BOS, as GPTQ's and AWQ's calibration windows). Errors when the file is missing
// or has fewer than num_samples * seq_len tokens.
Result<std::vector<std::vector<int32_t>>> make_calibration_samples(const Tokenizer& tokenizer, const std::string& path,
                                                                   int64_t num_samples, int64_t seq_len);

// The places a linear reads its input from: q/k/v share the attention norm's output, gate/up the
// FFN norm's; o reads the attention output, down the SwiGLU product.
enum class InputSite { kAttnIn = 0, kAttnOut, kFfnIn, kFfnMid };
constexpr int kNumInputSites = 4;
InputSite input_site(LinearKind kind);
const char* linear_name(LinearKind kind);  // "q_proj", ... (HF names)
int64_t linear_out_features(const ModelConfig& c, LinearKind kind);
int64_t linear_in_features(const ModelConfig& c, LinearKind kind);

struct DenseLayer {
  std::vector<float> attn_norm, ffn_norm;                // [dim]
  std::array<std::vector<float>, kNumLinearKinds> w;     // [out, in] per LinearKind
};

// Layer `l` dequantized to f32; fails on NaN/Inf weights, naming the tensor.
Result<DenseLayer> dense_layer(const ModelWeights& weights, int64_t l);

// Statistics of one input site over all calibration tokens.
struct SiteStats {
  int64_t dim = 0;
  int64_t count = 0;             // tokens seen
  std::vector<double> gram;      // [dim, dim] sum_t x_t x_t^T
  std::vector<double> abs_sum;   // [dim] sum_t |x_tj|
  std::vector<float> abs_max;    // [dim] max_t |x_tj|
  std::vector<float> gram_f32() const;  // gram as f32
};

// Runs decoder layers in f32 on one calibration sample at a time (positions 0..seq_len-1,
// contiguous KV), with the model's own cpu ops.
class LayerRunner {
 public:
  using Observer = std::function<void(InputSite site, const float* x, int64_t tokens)>;
  LayerRunner(const ModelConfig& config, int64_t seq_len, ThreadPool& pool);

  // x: [seq_len, dim] hidden states, replaced by the layer's output. observe (may be empty) sees
  // each site's input [seq_len, site dim].
  void forward(const DenseLayer& layer, float* x, const Observer& observe);

  // The two sub-blocks of forward, on the normed input xn [seq_len, dim]; out [seq_len, dim] may
  // alias xn. attention_block: o_proj(attention(rope(xn Wq^T), rope(xn Wk^T), xn Wv^T)), causal,
  // positions 0..seq_len-1 (observe sees kAttnOut); mlp_block: (silu(xn Wg^T) * xn Wu^T) Wd^T
  // (observe sees kFfnMid). Weights [out, in] as in DenseLayer.
  void attention_block(const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv,
                       const std::vector<float>& wo, const float* xn, float* out, const Observer& observe);
  void mlp_block(const std::vector<float>& w_gate, const std::vector<float>& w_up, const std::vector<float>& w_down,
                 const float* xn, float* out, const Observer& observe);
  int64_t seq_len() const { return seq_len_; }

  // Adds x [tokens, dim] to stats (gram only when with_gram).
  void accumulate(SiteStats& stats, const float* x, int64_t tokens, bool with_gram);

 private:
  void matmul(const std::vector<float>& w, int64_t out, int64_t in, const float* x, float* y);

  ModelConfig config_;
  int64_t seq_len_;
  ThreadPool& pool_;
  std::vector<float> inv_freq_, xb_, q_, k_, v_, att_, hb_, hb2_, xt_, gram_;
  std::vector<int32_t> positions_;
};

}  // namespace nb::quant
