// load_model: picks the format from what the path is, then the format's loader.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/group_quant.h"
#include "model/loader_internal.h"

namespace nb {

const TensorNames kGgufNames = {
    "token_embd.weight", "output_norm.weight", "output.weight", "blk.",
    "attn_norm.weight",  "attn_q.weight",      "attn_k.weight", "attn_v.weight", "attn_output.weight",
    "ffn_norm.weight",   "ffn_gate.weight",    "ffn_up.weight", "ffn_down.weight",
};
const TensorNames kHfNames = {
    "model.embed_tokens.weight",        "model.norm.weight",           "lm_head.weight",
    "model.layers.",                    "input_layernorm.weight",      "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",          "self_attn.v_proj.weight",     "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",  "mlp.gate_proj.weight",        "mlp.up_proj.weight",
    "mlp.down_proj.weight",
};

namespace {
std::string shape_string(const int64_t* shape, size_t n) {
  std::string s = "[";
  for (size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
bool is_weight_dtype(DType t) {
  switch (t) {
    case DType::kF32: case DType::kF16: case DType::kBF16: case DType::kQ8_0: case DType::kQ4_0:
    case DType::kQ4_1: case DType::kQGroup:
      return true;
    default:
      return false;
  }
}
}  // namespace

Status check_tensor(const std::string& name, const Tensor& t, std::initializer_list<int64_t> expected) {
  bool same = static_cast<size_t>(t.ndim()) == expected.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = t.dim(static_cast<int>(i)) == expected.begin()[i];
  if (!same) {
    return invalid_argument("tensor '" + name + "' has shape " +
                            shape_string(t.shape().data(), static_cast<size_t>(t.ndim())) +
                            " but the model configuration needs " + shape_string(expected.begin(), expected.size()) +
                            "; the checkpoint and its configuration do not match");
  }
  if (!is_weight_dtype(t.dtype())) {
    return unimplemented("tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                         "; model weights must be f32, f16, bf16, q8_0, q4_0 or q4_1");
  }
  return Status::Ok();
}

Tensor to_f32(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape().data(), t.ndim(), DType::kF32);
  for (int64_t r = 0; r < t.rows(); ++r) dequantize_tensor_row(t, r, out.row<float>(r));
  return out;
}

Result<ModelWeights> assemble_weights(ModelConfig config, const TensorNames& names, const TensorGetter& get,
                                      bool allow_tied) {
  NB_RETURN_IF_ERROR(config.validate());
  const int64_t dim = config.dim, hidden = config.hidden_dim, vocab = config.vocab_size;
  const int64_t q_dim = config.num_heads * config.head_dim, kv_dim = config.num_kv_heads * config.head_dim;
  auto fetch = [&](const std::string& name, std::initializer_list<int64_t> shape) -> Result<Tensor> {
    NB_ASSIGN_OR_RETURN(Tensor t, get(name));
    NB_RETURN_IF_ERROR(check_tensor(name, t, shape));
    return t;
  };
  auto fetch_norm = [&](const std::string& name) -> Result<Tensor> {
    NB_ASSIGN_OR_RETURN(Tensor t, fetch(name, {dim}));
    return to_f32(t);
  };

  ModelWeights w;
  NB_ASSIGN_OR_RETURN(w.tok_embeddings, fetch(names.embed, {vocab, dim}));
  NB_ASSIGN_OR_RETURN(w.final_norm, fetch_norm(names.final_norm));
  if (config.tied_embeddings) {
    w.output = w.tok_embeddings;
  } else {
    Result<Tensor> out = get(names.output);
    if (!out.ok() && out.status().code() == StatusCode::kNotFound && allow_tied) {
      config.tied_embeddings = true;
      w.output = w.tok_embeddings;
    } else {
      if (!out.ok()) return out.status();
      NB_RETURN_IF_ERROR(check_tensor(names.output, *out, {vocab, dim}));
      w.output = *out;
    }
  }
  w.layers.resize(static_cast<size_t>(config.num_layers));
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    const std::string p = names.layer_prefix + std::to_string(l) + ".";
    NB_ASSIGN_OR_RETURN(lw.attn_norm, fetch_norm(p + names.attn_norm));
    NB_ASSIGN_OR_RETURN(lw.wq, fetch(p + names.wq, {q_dim, dim}));
    NB_ASSIGN_OR_RETURN(lw.wk, fetch(p + names.wk, {kv_dim, dim}));
    NB_ASSIGN_OR_RETURN(lw.wv, fetch(p + names.wv, {kv_dim, dim}));
    NB_ASSIGN_OR_RETURN(lw.wo, fetch(p + names.wo, {dim, q_dim}));
    NB_ASSIGN_OR_RETURN(lw.ffn_norm, fetch_norm(p + names.ffn_norm));
    NB_ASSIGN_OR_RETURN(lw.w_gate, fetch(p + names.gate, {hidden, dim}));
    NB_ASSIGN_OR_RETURN(lw.w_up, fetch(p + names.up, {hidden, dim}));
    NB_ASSIGN_OR_RETURN(lw.w_down, fetch(p + names.down, {dim, hidden}));
  }
  w.config = std::move(config);
  return w;
}

Result<LoadedModel> load_model(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return not_found("model path '" + path + "' does not exist: " + std::strerror(errno) + "; check the path");
  }
  if (S_ISDIR(st.st_mode)) return load_hf_model(path);
  if (!S_ISREG(st.st_mode)) return invalid_argument("model path '" + path + "' is neither a file nor a directory");

  char magic[8] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(magic, sizeof(magic));
  if (in.gcount() >= 4 && std::memcmp(magic, "GGUF", 4) == 0) return load_gguf_model(path);
  if (path.size() >= 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0) {
    return invalid_argument("'" + path +
                            "' is a bare .safetensors file; pass the directory that holds it with its config.json");
  }
  return load_llama2c_model(path);
}

}  // namespace nb
