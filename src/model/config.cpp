#include "model/config.h"

#include <cmath>

namespace nb {

Status ModelConfig::validate() const {
  auto bad = [](const std::string& what) {
    return invalid_argument("invalid model configuration: " + what + "; the file may be corrupt");
  };
  if (dim <= 0 || hidden_dim <= 0 || num_layers <= 0 || num_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 ||
      vocab_size <= 0 || max_seq_len <= 0) {
    return bad("a dimension is zero or negative");
  }
  if (dim > (1 << 17) || hidden_dim > (1 << 19) || num_layers > 4096 || num_heads > 1024 || head_dim > 1024 ||
      vocab_size > (1 << 23) || max_seq_len > (1 << 24)) {
    return bad("a dimension is implausibly large");
  }
  if (num_heads % num_kv_heads != 0) return bad("num_heads is not a multiple of num_kv_heads");
  if (head_dim % 2 != 0) return bad("head_dim must be even for RoPE");
  if (!(norm_eps > 0.f) || !(rope_theta > 0.f)) return bad("norm_eps and rope_theta must be positive");
  return Status::Ok();
}

void rope_inv_freq(const ModelConfig& c, float* inv_freq) {
  const int64_t half = c.head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(c.rope_theta), static_cast<double>(2 * i) / c.head_dim);
    const RopeScaling& s = c.rope_scaling;
    if (s.type == RopeScaling::Type::kLinear) {
      f /= s.factor;
    } else if (s.type == RopeScaling::Type::kLlama3) {
      // Llama 3.1: long wavelengths are divided by factor, short ones kept, a smooth blend between.
      const double low_wavelen = s.original_max_position / s.low_freq_factor;
      const double high_wavelen = s.original_max_position / s.high_freq_factor;
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv_freq[i] = static_cast<float>(f);
  }
}

}  // namespace nb
