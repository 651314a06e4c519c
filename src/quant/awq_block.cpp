#include "quant/awq_block.h"

#include <string>

namespace nb::quant {

Result<AwqBlockLoss> AwqBlockLoss::create(const ModelConfig& config, const DenseLayer& layer, AwqBlockInputs inputs,
                                          int64_t seq_len, ThreadPool& pool) {
  const auto want = static_cast<size_t>(inputs.num_seqs * seq_len * config.dim);
  if (inputs.num_seqs < 1 || inputs.attn_in.size() != want || inputs.ffn_in.size() != want) {
    return invalid_argument("AWQ block loss: inputs of " + std::to_string(inputs.attn_in.size()) + " / " +
                            std::to_string(inputs.ffn_in.size()) + " values, expected " + std::to_string(inputs.num_seqs) +
                            " sequences x " + std::to_string(seq_len) + " tokens x " + std::to_string(config.dim));
  }
  return AwqBlockLoss(config, layer, std::move(inputs), seq_len, pool);
}

AwqBlockLoss::AwqBlockLoss(const ModelConfig& config, const DenseLayer& layer, AwqBlockInputs inputs, int64_t seq_len,
                           ThreadPool& pool)
    : config_(config),
      wo_(layer.w[static_cast<size_t>(LinearKind::kO)]),
      w_down_(layer.w[static_cast<size_t>(LinearKind::kDown)]),
      inputs_(std::move(inputs)),
      seq_len_(seq_len),
      pool_(&pool),
      runner_(std::make_unique<LayerRunner>(config, seq_len, pool)) {
  const auto n = static_cast<size_t>(num_tokens() * config_.dim);
  attn_ref_.resize(n);
  mlp_ref_.resize(n);
  out_.resize(n);
  const auto w = [&](LinearKind k) -> const std::vector<float>& { return layer.w[static_cast<size_t>(k)]; };
  const int64_t step = seq_len_ * config_.dim;
  for (int64_t i = 0; i < inputs_.num_seqs; ++i) {
    runner_->attention_block(w(LinearKind::kQ), w(LinearKind::kK), w(LinearKind::kV), wo_, inputs_.attn_in.data() + i * step,
                             attn_ref_.data() + i * step, {});
    runner_->mlp_block(w(LinearKind::kGate), w(LinearKind::kUp), w_down_, inputs_.ffn_in.data() + i * step,
                       mlp_ref_.data() + i * step, {});
  }
}

double AwqBlockLoss::squared_error(const std::vector<float>& got, const std::vector<float>& ref) const {
  double e = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    e += d * d;
  }
  return e;
}

double AwqBlockLoss::attention_loss(const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv) {
  const int64_t step = seq_len_ * config_.dim;
  for (int64_t i = 0; i < inputs_.num_seqs; ++i) {
    runner_->attention_block(wq, wk, wv, wo_, inputs_.attn_in.data() + i * step, out_.data() + i * step, {});
  }
  return squared_error(out_, attn_ref_);
}

double AwqBlockLoss::mlp_loss(const std::vector<float>& w_gate, const std::vector<float>& w_up) {
  const int64_t step = seq_len_ * config_.dim;
  for (int64_t i = 0; i < inputs_.num_seqs; ++i) {
    runner_->mlp_block(w_gate, w_up, w_down_, inputs_.ffn_in.data() + i * step, out_.data() + i * step, {});
  }
  return squared_error(out_, mlp_ref_);
}

}  // namespace nb::quant
