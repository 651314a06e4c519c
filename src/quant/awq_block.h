// AWQ's block loss (AutoAWQ's "module2inspect"): the scale search for the linears that read a norm's
// output is judged by the error of the whole block that follows them, not of the linears alone:
//   q/k/v:   || attn_o(x; Wq', Wk', Wv', Wo) - attn_o(x; Wq, Wk, Wv, Wo) ||^2
//            attn_o = o_proj(causal attention(rope(x Wq^T), rope(x Wk^T), x Wv^T)); o_proj in float
//   gate/up: || mlp(x; Wg', Wu', Wd) - mlp(x; Wg, Wu, Wd) ||^2,  mlp = (silu(x Wg^T) * x Wu^T) Wd^T
// summed over the sampled tokens, x the attention-norm / FFN-norm output of the float layer on the
// calibration inputs (AutoAWQ's choice for these two groups; v -> o and up -> down keep the
// per-linear error, which is the block there). Attention needs whole sequences, so the loss is taken
// on a subsample of calibration sequences (QuantizeOptions::awq_block_samples).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "quant/calib.h"

namespace nb::quant {

// Norm outputs of the sampled sequences: each [num_seqs * seq_len, dim], sequence after sequence.
struct AwqBlockInputs {
  std::vector<float> attn_in, ffn_in;
  int64_t num_seqs = 0;
};

class AwqBlockLoss {
 public:
  // Runs the float blocks of `layer` on the inputs once for the reference outputs. Errors when the
  // inputs' sizes do not match num_seqs * seq_len * dim.
  static Result<AwqBlockLoss> create(const ModelConfig& config, const DenseLayer& layer, AwqBlockInputs inputs,
                                     int64_t seq_len, ThreadPool& pool);

  // Squared error of the attention sub-block (q/k/v replaced, o_proj float) over the sampled tokens.
  double attention_loss(const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv);
  // Squared error of the MLP (gate/up replaced, down_proj float) over the sampled tokens.
  double mlp_loss(const std::vector<float>& w_gate, const std::vector<float>& w_up);

  int64_t num_tokens() const { return inputs_.num_seqs * seq_len_; }

 private:
  AwqBlockLoss(const ModelConfig& config, const DenseLayer& layer, AwqBlockInputs inputs, int64_t seq_len, ThreadPool& pool);
  double squared_error(const std::vector<float>& got, const std::vector<float>& ref) const;

  ModelConfig config_;
  std::vector<float> wo_, w_down_;  // the float consumers
  AwqBlockInputs inputs_;
  int64_t seq_len_;
  ThreadPool* pool_;
  std::unique_ptr<LayerRunner> runner_;
  std::vector<float> attn_ref_, mlp_ref_, out_;  // [num_seqs * seq_len, dim]
};

}  // namespace nb::quant
