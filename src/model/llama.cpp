#include "model/llama.h"

#include <cmath>
#include <cstring>
#include <string>

#include "backend/cpu/cpu_ops.h"

namespace nb {

Result<std::unique_ptr<LlamaModel>> LlamaModel::create(ModelWeights weights, int num_threads) {
  NB_RETURN_IF_ERROR(weights.config.validate());
  if (static_cast<int64_t>(weights.layers.size()) != weights.config.num_layers) {
    return invalid_argument("model has " + std::to_string(weights.layers.size()) + " layers but config says " +
                            std::to_string(weights.config.num_layers));
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(weights), num_threads));
}

LlamaModel::LlamaModel(ModelWeights weights, int num_threads)
    : weights_(std::move(weights)), pool_(num_threads) {
  const ModelConfig& c = weights_.config;
  inv_freq_.resize(static_cast<size_t>(c.head_dim / 2));
  rope_inv_freq(c, inv_freq_.data());
  const auto t = static_cast<size_t>(kMaxChunkTokens);
  const auto q_dim = static_cast<size_t>(c.num_heads * c.head_dim);
  const auto kv_dim = static_cast<size_t>(c.num_kv_heads * c.head_dim);
  x_.resize(t * static_cast<size_t>(c.dim));
  xb_.resize(t * std::max(static_cast<size_t>(c.dim), q_dim));
  q_.resize(t * q_dim);
  k_.resize(t * kv_dim);
  v_.resize(t * kv_dim);
  att_.resize(t * q_dim);
  hb_.resize(t * static_cast<size_t>(c.hidden_dim));
  hb2_.resize(t * static_cast<size_t>(c.hidden_dim));
  positions_.resize(t);
}

Status LlamaModel::forward(const ForwardBatch& batch, const KvPools& kv, float* logits) {
  const ModelConfig& c = weights_.config;
  const auto n = static_cast<int64_t>(batch.tokens.size());
  if (n == 0 || n > kMaxChunkTokens) {
    return invalid_argument("forward takes 1.." + std::to_string(kMaxChunkTokens) + " tokens, got " +
                            std::to_string(n));
  }
  const int64_t end = batch.start_pos + n;
  if (batch.start_pos < 0 || end > c.max_seq_len) {
    return out_of_range("position " + std::to_string(end) + " exceeds the context length " +
                        std::to_string(c.max_seq_len) + "; use a shorter prompt or fewer new tokens");
  }
  const int64_t blocks_needed = (end + kv.block_size - 1) / kv.block_size;
  if (static_cast<int64_t>(batch.block_table.size()) < blocks_needed) {
    return internal_error("block table too short for position " + std::to_string(end));
  }
  for (int64_t i = 0; i < blocks_needed; ++i) {
    const int32_t b = batch.block_table[static_cast<size_t>(i)];
    if (b < 0 || b >= kv.num_blocks) return internal_error("block table entry out of range");
  }
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = batch.tokens[static_cast<size_t>(i)];
    if (id < 0 || id >= c.vocab_size) {
      return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                              std::to_string(c.vocab_size) + ")");
    }
    positions_[static_cast<size_t>(i)] = static_cast<int32_t>(batch.start_pos + i);
  }

  cpu::embedding({weights_.tok_embeddings, batch.tokens.data(), x_.data(), n});
  for (int64_t l = 0; l < c.num_layers; ++l) layer_forward(l, n, batch, kv);

  // Final norm and output head, only for the rows whose logits are wanted.
  const int64_t first = batch.all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  float* xr = x_.data() + first * c.dim;
  cpu::rms_norm({xr, weights_.final_norm.ptr<float>(), xr, rows, c.dim, c.norm_eps});
  matmul({weights_.output, xr, logits, rows});
  return Status::Ok();
}

void LlamaModel::matmul(const MatmulParams& p) {
  if (exact_matmul_) {
    // The reference is single-threaded; split the output rows across the pool.
    pool_.parallel_for(p.weight.dim(0), [&](int64_t b, int64_t e) {
      const size_t rb = p.weight.row_nbytes();
      const int64_t shape[2] = {e - b, p.weight.dim(1)};
      Tensor part = Tensor::view(static_cast<uint8_t*>(p.weight.data()) + static_cast<size_t>(b) * rb, shape, 2,
                                 p.weight.dtype());
      std::vector<float> y(static_cast<size_t>(p.m * (e - b)));
      cpu::ref::matmul({part, p.x, y.data(), p.m});
      for (int64_t r = 0; r < p.m; ++r) {
        std::memcpy(p.y + r * p.weight.dim(0) + b, y.data() + r * (e - b), static_cast<size_t>(e - b) * 4);
      }
    }, 16);
    return;
  }
  cpu::matmul(p, pool_);
}

void LlamaModel::layer_forward(int64_t l, int64_t n, const ForwardBatch& batch, const KvPools& kv) {
  const ModelConfig& c = weights_.config;
  const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
  const int64_t dim = c.dim, hd = c.head_dim;
  const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;

  // Attention block.
  cpu::rms_norm({x_.data(), w.attn_norm.ptr<float>(), xb_.data(), n, dim, c.norm_eps});
  matmul({w.wq, xb_.data(), q_.data(), n});
  matmul({w.wk, xb_.data(), k_.data(), n});
  matmul({w.wv, xb_.data(), v_.data(), n});
  cpu::rope({q_.data(), k_.data(), positions_.data(), inv_freq_.data(), n, c.num_heads, c.num_kv_heads, hd,
             c.rope_style});
  // Write K/V into the slots of positions start_pos.. through the block table.
  float* k_pool = kv.k[static_cast<size_t>(l)];
  float* v_pool = kv.v[static_cast<size_t>(l)];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = batch.start_pos + i;
    const int64_t block = batch.block_table[static_cast<size_t>(pos / kv.block_size)];
    const int64_t slot = block * kv.block_size + pos % kv.block_size;
    std::memcpy(k_pool + slot * kv_dim, k_.data() + i * kv_dim, static_cast<size_t>(kv_dim) * sizeof(float));
    std::memcpy(v_pool + slot * kv_dim, v_.data() + i * kv_dim, static_cast<size_t>(kv_dim) * sizeof(float));
  }
  AttentionParams ap{};
  ap.q = q_.data();
  ap.out = att_.data();
  ap.k_cache = k_pool;
  ap.v_cache = v_pool;
  ap.block_table = batch.block_table.data();
  ap.block_size = kv.block_size;
  ap.num_tokens = n;
  ap.start_pos = batch.start_pos;
  ap.num_heads = c.num_heads;
  ap.num_kv_heads = c.num_kv_heads;
  ap.head_dim = hd;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cpu::attention(ap, pool_);
  matmul({w.wo, att_.data(), xb_.data(), n});
  for (int64_t i = 0; i < n * dim; ++i) x_[static_cast<size_t>(i)] += xb_[static_cast<size_t>(i)];

  // Feed-forward block.
  const int64_t hidden = c.hidden_dim;
  cpu::rms_norm({x_.data(), w.ffn_norm.ptr<float>(), xb_.data(), n, dim, c.norm_eps});
  matmul({w.w_gate, xb_.data(), hb_.data(), n});
  matmul({w.w_up, xb_.data(), hb2_.data(), n});
  cpu::swiglu({hb_.data(), hb2_.data(), hb_.data(), n * hidden});
  matmul({w.w_down, hb_.data(), xb_.data(), n});
  for (int64_t i = 0; i < n * dim; ++i) x_[static_cast<size_t>(i)] += xb_[static_cast<size_t>(i)];
  (void)q_dim;
}

}  // namespace nb
