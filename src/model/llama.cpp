#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>

#include "backend/cpu/cpu_ops.h"

namespace nb {

namespace {
struct alignas(64) Line64 {
  unsigned char bytes[64];
};
}  // namespace

Result<std::unique_ptr<LlamaModel>> LlamaModel::create(ModelWeights weights, int num_threads,
                                                     int64_t max_batch_tokens) {
  NB_RETURN_IF_ERROR(weights.config.validate());
  if (static_cast<int64_t>(weights.layers.size()) != weights.config.num_layers) {
    return invalid_argument("model has " + std::to_string(weights.layers.size()) + " layers but config says " +
                            std::to_string(weights.config.num_layers));
  }
  if (max_batch_tokens < 1 || max_batch_tokens > (1 << 16)) {
    return invalid_argument("max batch tokens must be in [1, 65536]; got " + std::to_string(max_batch_tokens));
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(weights), num_threads, max_batch_tokens));
}

LlamaModel::LlamaModel(ModelWeights weights, int num_threads, int64_t max_batch_tokens)
    : weights_(std::move(weights)), pool_(num_threads), max_batch_tokens_(max_batch_tokens) {
  const ModelConfig& c = weights_.config;
  inv_freq_.resize(static_cast<size_t>(c.head_dim / 2));
  rope_inv_freq(c, inv_freq_.data());
  const auto t = static_cast<size_t>(max_batch_tokens);
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
  out_rows_.resize(t * static_cast<size_t>(c.dim));
}

Status LlamaModel::validate(const ForwardBatch& batch, const KvPools& kv) const {
  const ModelConfig& c = weights_.config;
  const auto n = static_cast<int64_t>(batch.tokens.size());
  if (n == 0 || n > max_batch_tokens_) {
    return invalid_argument("forward takes 1.." + std::to_string(max_batch_tokens_) + " tokens, got " +
                            std::to_string(n));
  }
  if (backend_ && kv.dtype == KvCacheDType::kF16) {
    return failed_precondition("an f16 KV cache is a CPU format; on a GPU the default cache is already in the device "
                               "dtype (--dtype), and int8 / int4 run there too");
  }
  int64_t covered = 0;
  for (const SeqForward& sq : batch.seqs) {
    if (sq.num_tokens <= 0) return internal_error("a sequence in the batch has no tokens");
    covered += sq.num_tokens;
    const int64_t end = sq.start_pos + sq.num_tokens;
    if (sq.start_pos < 0 || end > c.max_seq_len) {
      return out_of_range("position " + std::to_string(end) + " exceeds the context length " +
                          std::to_string(c.max_seq_len) + "; use a shorter prompt or fewer new tokens");
    }
    const int64_t blocks_needed = (end + kv.block_size - 1) / kv.block_size;
    if (static_cast<int64_t>(sq.block_table.size()) < blocks_needed) {
      return internal_error("block table too short for position " + std::to_string(end));
    }
    for (int64_t i = 0; i < blocks_needed; ++i) {
      const int32_t b = sq.block_table[static_cast<size_t>(i)];
      if (b < 0 || b >= kv.num_blocks) return internal_error("block table entry out of range");
    }
  }
  if (covered != n) return internal_error("the sequences' token counts do not add up to the batch");
  for (int32_t id : batch.tokens) {
    if (id < 0 || id >= c.vocab_size) {
      return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                              std::to_string(c.vocab_size) + ")");
    }
  }
  return Status::Ok();
}

Status LlamaModel::set_kv_cache_dtype(KvCacheDType t) {
  if (t == KvCacheDType::kF16 && backend_) {
    return invalid_argument("--kv-cache-dtype f16 is a CPU format; with a GPU device leave it at f32 (the cache is then "
                            "in the device dtype, --dtype) or use int8 / int4");
  }
  kv_dtype_ = t;
  return Status::Ok();
}

KvBlockFormat LlamaModel::kv_block_format(int64_t block_size) const {
  const ModelConfig& c = weights_.config;
  // The default device pool holds elements of the device dtype in the f32 layout: f16 (or bf16, same
  // size). The int8 / int4 formats are the same bytes on every backend.
  KvCacheDType t = kv_dtype_;
  if (backend_ && t == KvCacheDType::kF32) t = backend_->kv_element_bytes() == 2 ? KvCacheDType::kF16 : KvCacheDType::kF32;
  return {t, block_size, c.num_kv_heads, c.head_dim};
}

Result<std::shared_ptr<void>> LlamaModel::allocate_kv(int64_t nbytes) {
  if (nbytes < 0) return invalid_argument("negative KV cache size");
  if (backend_) return backend_->allocate_kv(nbytes);
  const auto n = static_cast<size_t>((nbytes + 63) / 64);
  auto* mem = new (std::nothrow) Line64[n]();
  if (mem == nullptr) {
    return resource_exhausted("cannot allocate " + std::to_string(nbytes) +
                              " bytes of KV cache; lower --kv-cache-memory or --ctx-size");
  }
  return std::shared_ptr<void>(mem, [](void* p) { delete[] static_cast<Line64*>(p); });
}

Status LlamaModel::copy_kv(void* dst, const void* src, int64_t nbytes) {
  if (backend_) return backend_->copy_kv(dst, src, nbytes);
  std::memcpy(dst, src, static_cast<size_t>(nbytes));
  return Status::Ok();
}

Status LlamaModel::logit_stats(const int32_t* targets, int64_t rows, const LlamaModel* ref, double* out) {
  if (!backend_ || (ref != nullptr && !ref->backend_)) {
    return failed_precondition("logit_stats: the model and the reference must run on a device; on the CPU, take "
                               "cpu::ref::logit_stats of the host logits");
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0 || targets[r] >= weights_.config.vocab_size) {
      return invalid_argument("logit_stats: target " + std::to_string(targets[r]) + " is outside the vocabulary");
    }
  }
  return backend_->logit_stats(targets, rows, ref != nullptr ? ref->backend_.get() : nullptr, out);
}

Status LlamaModel::forward(const ForwardBatch& batch, const KvPools& kv, float* logits) {
  NB_RETURN_IF_ERROR(validate(batch, kv));
  if (backend_) return backend_->forward(batch, kv, logits);
  const ModelConfig& c = weights_.config;
  const auto n = static_cast<int64_t>(batch.tokens.size());
  build_attention_layout(batch, kv);

  cpu::embedding({weights_.tok_embeddings, batch.tokens.data(), x_.data(), n});
  for (int64_t l = 0; l < c.num_layers; ++l) layer_forward(l, n, kv);

  // Final norm and output head, only for the rows whose logits are wanted.
  int64_t rows = 0;
  int64_t t = 0;
  for (const SeqForward& sq : batch.seqs) {
    if (sq.want_logits) {
      const int64_t first = (batch.all_logits || sq.all_logits) ? t : t + sq.num_tokens - 1;
      const int64_t count = t + sq.num_tokens - first;
      std::memcpy(out_rows_.data() + rows * c.dim, x_.data() + first * c.dim,
                  static_cast<size_t>(count * c.dim) * sizeof(float));
      rows += count;
    }
    t += sq.num_tokens;
  }
  if (rows == 0) return Status::Ok();
  cpu::rms_norm({out_rows_.data(), weights_.final_norm.ptr<float>(), out_rows_.data(), rows, c.dim, c.norm_eps});
  matmul({weights_.output, out_rows_.data(), logits, rows});
  if (batch.greedy_tokens != nullptr) cpu::ref::argmax({logits, batch.greedy_tokens, rows, c.vocab_size});
  if (batch.sample_rows != nullptr) cpu::ref::sample_rows({logits, batch.sample_rows, batch.sampled_tokens, rows, c.vocab_size});
  return Status::Ok();
}

void LlamaModel::matmul(const MatmulParams& p) {
  if (exact_matmul_ && p.weight.dtype() == DType::kQGroup) {
    cpu::ref::matmul(p);  // a kQGroup tensor cannot be sliced by rows (its GroupQuant covers all rows)
    return;
  }
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

void LlamaModel::build_attention_layout(const ForwardBatch& batch, const KvPools& kv) {
  const size_t num_seqs = batch.seqs.size();
  query_start_.assign(num_seqs + 1, 0);
  seq_start_pos_.resize(num_seqs);
  slot_mapping_.resize(batch.tokens.size());
  block_table_stride_ = 0;
  max_query_len_ = 0;
  max_context_len_ = 0;
  for (const SeqForward& sq : batch.seqs) {
    const int64_t end = sq.start_pos + sq.num_tokens;
    block_table_stride_ = std::max(block_table_stride_, (end + kv.block_size - 1) / kv.block_size);
    max_query_len_ = std::max(max_query_len_, sq.num_tokens);
    max_context_len_ = std::max(max_context_len_, end);
  }
  block_tables_.assign(num_seqs * static_cast<size_t>(block_table_stride_), 0);
  int64_t t = 0;
  for (size_t s = 0; s < num_seqs; ++s) {
    const SeqForward& sq = batch.seqs[s];
    const int64_t used = (sq.start_pos + sq.num_tokens + kv.block_size - 1) / kv.block_size;
    std::copy_n(sq.block_table.begin(), used, block_tables_.begin() + static_cast<int64_t>(s) * block_table_stride_);
    seq_start_pos_[s] = static_cast<int32_t>(sq.start_pos);
    for (int64_t i = 0; i < sq.num_tokens; ++i, ++t) {
      const int64_t pos = sq.start_pos + i;
      positions_[static_cast<size_t>(t)] = static_cast<int32_t>(pos);
      const int64_t block = sq.block_table[static_cast<size_t>(pos / kv.block_size)];
      slot_mapping_[static_cast<size_t>(t)] = block * kv.block_size + pos % kv.block_size;
    }
    query_start_[s + 1] = static_cast<int32_t>(t);
  }
}

void LlamaModel::layer_forward(int64_t l, int64_t n, const KvPools& kv) {
  const ModelConfig& c = weights_.config;
  const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
  const int64_t dim = c.dim, hd = c.head_dim;

  // Attention block.
  cpu::rms_norm({x_.data(), w.attn_norm.ptr<float>(), xb_.data(), n, dim, c.norm_eps});
  matmul({w.wq, xb_.data(), q_.data(), n});
  matmul({w.wk, xb_.data(), k_.data(), n});
  matmul({w.wv, xb_.data(), v_.data(), n});
  cpu::rope({q_.data(), k_.data(), positions_.data(), inv_freq_.data(), n, c.num_heads, c.num_kv_heads, hd,
             c.rope_style});
  // Quantized caches keep K and V rotated (backend/kv_format.h): rotate q, k and v alike here and
  // the attention output back below.
  const bool rotated = kv_cache_rotated(kv.dtype, hd);
  if (rotated) {
    cpu::hadamard({q_.data(), n * c.num_heads, hd});
    cpu::hadamard({k_.data(), n * c.num_kv_heads, hd});
    cpu::hadamard({v_.data(), n * c.num_kv_heads, hd});
  }
  // The batch's new K/V go into their slots, then one attention call covers every sequence.
  float* k_pool = kv.k[static_cast<size_t>(l)];
  float* v_pool = kv.v[static_cast<size_t>(l)];
  KvWriteParams wp{k_.data(), v_.data(), k_pool, v_pool, slot_mapping_.data(), n, c.num_kv_heads, hd};
  wp.cache_dtype = kv.dtype;
  wp.cache_block_size = kv.block_size;
  cpu::kv_write(wp);
  BatchAttentionParams ap{};
  ap.q = q_.data();
  ap.out = att_.data();
  ap.k_cache = k_pool;
  ap.v_cache = v_pool;
  ap.block_tables = block_tables_.data();
  ap.query_start = query_start_.data();
  ap.start_pos = seq_start_pos_.data();
  ap.block_table_stride = block_table_stride_;
  ap.num_seqs = static_cast<int64_t>(seq_start_pos_.size());
  ap.num_tokens = n;
  ap.max_query_len = max_query_len_;
  ap.max_context_len = max_context_len_;
  ap.block_size = kv.block_size;
  ap.num_heads = c.num_heads;
  ap.num_kv_heads = c.num_kv_heads;
  ap.head_dim = hd;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  ap.cache_dtype = kv.dtype;
  cpu::batch_attention(ap, pool_);
  if (rotated) cpu::hadamard({att_.data(), n * c.num_heads, hd});
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
}

}  // namespace nb
