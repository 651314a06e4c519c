#include "quant/calib.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "core/mmap_file.h"
#include "quant/rtn.h"

namespace nb::quant {

Result<std::vector<std::vector<int32_t>>> make_calibration_samples(const Tokenizer& tokenizer, const std::string& path,
                                                                   int64_t num_samples, int64_t seq_len) {
  if (num_samples < 1 || seq_len < 1) return invalid_argument("--calib-samples and --calib-seqlen must be positive");
  auto text = read_file(path);
  if (!text.ok()) {
    return not_found("cannot read the calibration text '" + path + "' (" + text.status().message() +
                     "); pass an existing UTF-8 text file with --calib");
  }
  const std::vector<int32_t> ids = tokenizer.encode(*text, /*add_bos=*/false, /*parse_special=*/false);
  const auto total = static_cast<int64_t>(ids.size());
  if (total < num_samples * seq_len) {
    return invalid_argument("the calibration text '" + path + "' has " + std::to_string(total) + " tokens but " +
                            std::to_string(num_samples) + " samples x " + std::to_string(seq_len) + " tokens need " +
                            std::to_string(num_samples * seq_len) +
                            "; use a longer --calib file or lower --calib-samples / --calib-seqlen");
  }
  // Evenly spaced, non-overlapping windows.
  const int64_t stride = num_samples == 1 ? 0 : (total - seq_len) / (num_samples - 1);
  std::vector<std::vector<int32_t>> samples;
  for (int64_t i = 0; i < num_samples; ++i) {
    const auto begin = ids.begin() + i * stride;
    samples.emplace_back(begin, begin + seq_len);
  }
  return samples;
}

InputSite input_site(LinearKind kind) {
  switch (kind) {
    case LinearKind::kQ: case LinearKind::kK: case LinearKind::kV: return InputSite::kAttnIn;
    case LinearKind::kO: return InputSite::kAttnOut;
    case LinearKind::kGate: case LinearKind::kUp: return InputSite::kFfnIn;
    case LinearKind::kDown: return InputSite::kFfnMid;
  }
  return InputSite::kAttnIn;
}

const char* linear_name(LinearKind kind) {
  static const char* kNames[kNumLinearKinds] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return kNames[static_cast<int>(kind)];
}

int64_t linear_out_features(const ModelConfig& c, LinearKind kind) {
  switch (kind) {
    case LinearKind::kQ: return c.num_heads * c.head_dim;
    case LinearKind::kK: case LinearKind::kV: return c.num_kv_heads * c.head_dim;
    case LinearKind::kO: case LinearKind::kDown: return c.dim;
    case LinearKind::kGate: case LinearKind::kUp: return c.hidden_dim;
  }
  return 0;
}

int64_t linear_in_features(const ModelConfig& c, LinearKind kind) {
  switch (kind) {
    case LinearKind::kO: return c.num_heads * c.head_dim;
    case LinearKind::kDown: return c.hidden_dim;
    default: return c.dim;
  }
}

namespace {
Result<std::vector<float>> dequantize_tensor(const Tensor& t, int64_t rows, int64_t cols, const std::string& what) {
  if (!t.defined() || t.rows() != rows || t.cols() != cols) {
    return invalid_argument(what + " has shape " + (t.defined() ? t.describe() : std::string("(missing)")) +
                            ", expected [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  }
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t.dtype(), t.row(r), out.data() + r * cols, cols);
  NB_RETURN_IF_ERROR(check_finite(out.data(), rows * cols, what));
  return out;
}
}  // namespace

Result<DenseLayer> dense_layer(const ModelWeights& weights, int64_t l) {
  const ModelConfig& c = weights.config;
  const LayerWeights& lw = weights.layers[static_cast<size_t>(l)];
  const std::string prefix = "layer " + std::to_string(l) + " ";
  DenseLayer d;
  NB_ASSIGN_OR_RETURN(d.attn_norm, dequantize_tensor(lw.attn_norm, 1, c.dim, prefix + "attn_norm"));
  NB_ASSIGN_OR_RETURN(d.ffn_norm, dequantize_tensor(lw.ffn_norm, 1, c.dim, prefix + "ffn_norm"));
  const Tensor* linears[kNumLinearKinds] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down};
  for (int k = 0; k < kNumLinearKinds; ++k) {
    const auto kind = static_cast<LinearKind>(k);
    NB_ASSIGN_OR_RETURN(d.w[static_cast<size_t>(k)],
                        dequantize_tensor(*linears[k], linear_out_features(c, kind), linear_in_features(c, kind),
                                          prefix + linear_name(kind)));
  }
  return d;
}

std::vector<float> SiteStats::gram_f32() const {
  std::vector<float> g(gram.size());
  for (size_t i = 0; i < gram.size(); ++i) g[i] = static_cast<float>(gram[i]);
  return g;
}

LayerRunner::LayerRunner(const ModelConfig& config, int64_t seq_len, ThreadPool& pool)
    : config_(config), seq_len_(seq_len), pool_(pool) {
  const ModelConfig& c = config_;
  const auto t = static_cast<size_t>(seq_len);
  inv_freq_.resize(static_cast<size_t>(c.head_dim / 2));
  rope_inv_freq(c, inv_freq_.data());
  const auto q_dim = static_cast<size_t>(c.num_heads * c.head_dim);
  const auto kv_dim = static_cast<size_t>(c.num_kv_heads * c.head_dim);
  xb_.resize(t * std::max(static_cast<size_t>(c.dim), q_dim));
  q_.resize(t * q_dim);
  k_.resize(t * kv_dim);
  v_.resize(t * kv_dim);
  att_.resize(t * q_dim);
  hb_.resize(t * static_cast<size_t>(c.hidden_dim));
  hb2_.resize(t * static_cast<size_t>(c.hidden_dim));
  positions_.resize(t);
  for (size_t i = 0; i < t; ++i) positions_[i] = static_cast<int32_t>(i);
}

void LayerRunner::matmul(const std::vector<float>& w, int64_t out, int64_t in, const float* x, float* y) {
  const Tensor wt = Tensor::view(const_cast<float*>(w.data()), {out, in}, DType::kF32);
  cpu::matmul({wt, x, y, seq_len_}, pool_);
}

void LayerRunner::forward(const DenseLayer& layer, float* x, const Observer& observe) {
  const ModelConfig& c = config_;
  const int64_t n = seq_len_, dim = c.dim;
  auto w = [&](LinearKind k) -> const std::vector<float>& { return layer.w[static_cast<size_t>(k)]; };

  cpu::rms_norm({x, layer.attn_norm.data(), xb_.data(), n, dim, c.norm_eps});
  if (observe) observe(InputSite::kAttnIn, xb_.data(), n);
  attention_block(w(LinearKind::kQ), w(LinearKind::kK), w(LinearKind::kV), w(LinearKind::kO), xb_.data(), xb_.data(), observe);
  for (int64_t i = 0; i < n * dim; ++i) x[i] += xb_[static_cast<size_t>(i)];

  cpu::rms_norm({x, layer.ffn_norm.data(), xb_.data(), n, dim, c.norm_eps});
  if (observe) observe(InputSite::kFfnIn, xb_.data(), n);
  mlp_block(w(LinearKind::kGate), w(LinearKind::kUp), w(LinearKind::kDown), xb_.data(), xb_.data(), observe);
  for (int64_t i = 0; i < n * dim; ++i) x[i] += xb_[static_cast<size_t>(i)];
}

void LayerRunner::attention_block(const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv,
                                  const std::vector<float>& wo, const float* xn, float* out, const Observer& observe) {
  const ModelConfig& c = config_;
  const int64_t n = seq_len_, dim = c.dim, hd = c.head_dim;
  const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
  matmul(wq, q_dim, dim, xn, q_.data());
  matmul(wk, kv_dim, dim, xn, k_.data());
  matmul(wv, kv_dim, dim, xn, v_.data());
  cpu::rope({q_.data(), k_.data(), positions_.data(), inv_freq_.data(), n, c.num_heads, c.num_kv_heads, hd, c.rope_style});
  // k_/v_ [n, kv_heads, head_dim] are already a contiguous cache: one block of n slots.
  const int32_t block = 0;
  AttentionParams ap{};
  ap.q = q_.data();
  ap.out = att_.data();
  ap.k_cache = k_.data();
  ap.v_cache = v_.data();
  ap.block_table = &block;
  ap.block_size = n;
  ap.num_tokens = n;
  ap.start_pos = 0;
  ap.num_heads = c.num_heads;
  ap.num_kv_heads = c.num_kv_heads;
  ap.head_dim = hd;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cpu::attention(ap, pool_);
  if (observe) observe(InputSite::kAttnOut, att_.data(), n);
  matmul(wo, dim, q_dim, att_.data(), out);
}

void LayerRunner::mlp_block(const std::vector<float>& w_gate, const std::vector<float>& w_up, const std::vector<float>& w_down,
                            const float* xn, float* out, const Observer& observe) {
  const ModelConfig& c = config_;
  const int64_t n = seq_len_;
  matmul(w_gate, c.hidden_dim, c.dim, xn, hb_.data());
  matmul(w_up, c.hidden_dim, c.dim, xn, hb2_.data());
  cpu::swiglu({hb_.data(), hb2_.data(), hb_.data(), n * c.hidden_dim});
  if (observe) observe(InputSite::kFfnMid, hb_.data(), n);
  matmul(w_down, c.dim, c.hidden_dim, hb_.data(), out);
}

void LayerRunner::accumulate(SiteStats& s, const float* x, int64_t tokens, bool with_gram) {
  const int64_t d = s.dim;
  const auto ud = static_cast<size_t>(d);
  if (s.abs_sum.empty()) {
    s.abs_sum.assign(ud, 0.0);
    s.abs_max.assign(ud, 0.f);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < d; ++j) {
      const float a = std::fabs(x[t * d + j]);
      s.abs_sum[static_cast<size_t>(j)] += a;
      s.abs_max[static_cast<size_t>(j)] = std::max(s.abs_max[static_cast<size_t>(j)], a);
    }
  }
  s.count += tokens;
  if (!with_gram) return;
  if (s.gram.empty()) s.gram.assign(ud * ud, 0.0);
  // X^T X as a matmul of X^T [d, tokens] with itself: y[i, j] = sum_t xt[i, t] * xt[j, t].
  xt_.resize(ud * static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < d; ++j) xt_[static_cast<size_t>(j * tokens + t)] = x[t * d + j];
  }
  gram_.resize(ud * ud);
  const Tensor xt = Tensor::view(xt_.data(), {d, tokens}, DType::kF32);
  cpu::matmul({xt, xt_.data(), gram_.data(), d}, pool_);
  for (size_t i = 0; i < ud * ud; ++i) s.gram[i] += gram_[i];
}

}  // namespace nb::quant
