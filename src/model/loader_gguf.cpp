// GGUF "llama" models (llama.cpp's convert_hf_to_gguf.py output). Its Q/K weights are permuted on
// export so that RoPE rotates interleaved pairs: rope_style = kInterleaved.
#include <cmath>

#include "format/gguf.h"
#include "model/loader_internal.h"

namespace nb {
namespace {

// Llama 3.x GGUFs carry the llama3 RoPE scaling as a tensor of per-frequency divisors
// (rope_freqs.weight) instead of metadata. We recover the llama3 parameters from it and check that
// they reproduce every divisor; anything else is an unsupported scaling.
Status fit_llama3_scaling(const GgufFile& g, const GgufTensorInfo& info, ModelConfig* c) {
  Result<Tensor> t = g.tensor(info);
  if (!t.ok()) return t.status();
  const int64_t half = c->head_dim / 2;
  if (t->numel() != half || t->dtype() != DType::kF32) {
    return unimplemented("rope_freqs.weight has an unexpected shape or type; this RoPE scaling is not supported");
  }
  const float* div = t->ptr<float>();
  float factor = 1.f;
  for (int64_t i = 0; i < half; ++i) factor = std::max(factor, div[i]);
  if (factor == 1.f) return Status::Ok();  // all ones: no scaling
  ModelConfig probe = *c;
  probe.rope_scaling.type = RopeScaling::Type::kLlama3;
  probe.rope_scaling.factor = factor;
  NB_ASSIGN_OR_RETURN(probe.rope_scaling.original_max_position,
                      g.get_int_or("llama.rope.scaling.original_context_length", 8192));
  std::vector<float> plain(static_cast<size_t>(half)), scaled(static_cast<size_t>(half));
  ModelConfig unscaled = *c;
  unscaled.rope_scaling = RopeScaling{};
  rope_inv_freq(unscaled, plain.data());
  rope_inv_freq(probe, scaled.data());
  for (int64_t i = 0; i < half; ++i) {
    const double expect = plain[static_cast<size_t>(i)] / div[i];
    if (std::abs(scaled[static_cast<size_t>(i)] - expect) > 1e-4 * std::abs(expect)) {
      return unimplemented("rope_freqs.weight does not match llama3 RoPE scaling (factor " + std::to_string(factor) +
                           ", low 1, high 4); this RoPE scaling is not supported");
    }
  }
  c->rope_scaling = probe.rope_scaling;
  return Status::Ok();
}

Result<ModelConfig> gguf_config(const GgufFile& g) {
  ModelConfig c;
  NB_ASSIGN_OR_RETURN(c.architecture, g.get_string("general.architecture"));
  if (c.architecture != "llama") {
    return unimplemented("GGUF architecture '" + c.architecture + "' is not supported; nibble runs 'llama' models");
  }
  if (const GgufValue* v = g.find("general.name"); v != nullptr && v->type == GgufType::kString) c.name = v->str;
  NB_ASSIGN_OR_RETURN(c.dim, g.get_int("llama.embedding_length"));
  NB_ASSIGN_OR_RETURN(c.hidden_dim, g.get_int("llama.feed_forward_length"));
  NB_ASSIGN_OR_RETURN(c.num_layers, g.get_int("llama.block_count"));
  NB_ASSIGN_OR_RETURN(c.num_heads, g.get_int("llama.attention.head_count"));
  NB_ASSIGN_OR_RETURN(c.num_kv_heads, g.get_int_or("llama.attention.head_count_kv", c.num_heads));
  NB_ASSIGN_OR_RETURN(c.max_seq_len, g.get_int("llama.context_length"));
  NB_ASSIGN_OR_RETURN(double eps, g.get_float_or("llama.attention.layer_norm_rms_epsilon", 1e-5));
  NB_ASSIGN_OR_RETURN(double theta, g.get_float_or("llama.rope.freq_base", 10000.0));
  c.norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  const int64_t default_head_dim = c.num_heads > 0 ? c.dim / c.num_heads : 0;
  NB_ASSIGN_OR_RETURN(c.head_dim, g.get_int_or("llama.attention.key_length", default_head_dim));
  NB_ASSIGN_OR_RETURN(int64_t value_dim, g.get_int_or("llama.attention.value_length", c.head_dim));
  if (value_dim != c.head_dim) {
    return unimplemented("attention value_length " + std::to_string(value_dim) + " != key_length " +
                         std::to_string(c.head_dim) + " is not supported");
  }
  NB_ASSIGN_OR_RETURN(int64_t rot, g.get_int_or("llama.rope.dimension_count", c.head_dim));
  if (rot != c.head_dim) {
    return unimplemented("partial rotary embeddings (rope.dimension_count " + std::to_string(rot) + " != head_dim " +
                         std::to_string(c.head_dim) + ") are not supported");
  }
  if (const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
      tokens != nullptr && tokens->type == GgufType::kArray && !tokens->strs.empty()) {
    c.vocab_size = static_cast<int64_t>(tokens->strs.size());
  }
  NB_ASSIGN_OR_RETURN(c.vocab_size, g.get_int_or("llama.vocab_size", c.vocab_size));
  if (c.vocab_size == 0) {
    if (const GgufTensorInfo* emb = g.find_tensor("token_embd.weight"); emb != nullptr) c.vocab_size = emb->shape[0];
  }
  c.rope_style = RopeStyle::kInterleaved;

  if (const GgufValue* st = g.find("llama.rope.scaling.type"); st != nullptr) {
    NB_ASSIGN_OR_RETURN(std::string type, g.get_string("llama.rope.scaling.type"));
    NB_ASSIGN_OR_RETURN(double factor, g.get_float_or("llama.rope.scaling.factor", 1.0));
    if (type == "linear") {
      if (!(factor > 0)) return invalid_argument("llama.rope.scaling.factor must be positive");
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      c.rope_scaling.factor = static_cast<float>(factor);
    } else if (type != "none") {
      return unimplemented("RoPE scaling type '" + type + "' is not supported; supported: none, linear, llama3");
    }
  } else if (const GgufValue* f = g.find("llama.rope.scale_linear"); f != nullptr) {
    NB_ASSIGN_OR_RETURN(double factor, g.get_float("llama.rope.scale_linear"));
    if (!(factor > 0)) return invalid_argument("llama.rope.scale_linear must be positive");
    if (factor != 1.0) {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      c.rope_scaling.factor = static_cast<float>(factor);
    }
  }
  NB_RETURN_IF_ERROR(c.validate());
  if (const GgufTensorInfo* rf = g.find_tensor("rope_freqs.weight"); rf != nullptr) {
    if (c.rope_scaling.type != RopeScaling::Type::kNone) {
      return unimplemented("both rope_freqs.weight and llama.rope.scaling metadata are present; not supported");
    }
    NB_RETURN_IF_ERROR(fit_llama3_scaling(g, *rf, &c));
  }
  return c;
}

}  // namespace

Result<LoadedModel> load_gguf_model(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<GgufFile> g, GgufFile::open(path));
  Result<ModelConfig> config = gguf_config(*g);
  if (!config.ok()) return config.status().with_context("'" + path + "'");
  auto get = [&](const std::string& name) -> Result<Tensor> {
    const GgufTensorInfo* info = g->find_tensor(name);
    if (info == nullptr) {
      return not_found("tensor '" + name + "' is missing from '" + path + "'; the file is not a complete llama model");
    }
    return g->tensor(*info);
  };
  Result<ModelWeights> weights = assemble_weights(*config, kGgufNames, get, /*allow_tied=*/true);
  if (!weights.ok()) return weights.status().with_context("'" + path + "'");

  LoadedModel m;
  m.weights = std::move(weights).value();
  m.tokenizer = TokenizerSource{TokenizerSource::Kind::kGguf, path};
  if (const GgufValue* t = g->find("tokenizer.chat_template"); t != nullptr && t->type == GgufType::kString) {
    m.chat_template = t->str;
  }
  m.format = "gguf";
  return m;
}

}  // namespace nb
