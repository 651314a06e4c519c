// Hugging Face checkpoints: a directory with config.json and model.safetensors (or shards listed in
// model.safetensors.index.json). transformers' Llama applies RoPE with rotate_half: kHalf.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "format/safetensors.h"
#include "model/loader_internal.h"

namespace nb {
namespace {

using Json = nlohmann::json;

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Result<Json> read_json(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::string text, read_file(path));
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return data_loss("'" + path + "' is not valid JSON; fix or re-download it");
  return j;
}

// Typed field access; nlohmann throws on type mismatches, so check first.
Result<int64_t> int_field(const Json& j, const char* key, const std::string& where, const int64_t* fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback != nullptr) return *fallback;
    return invalid_argument(where + " has no '" + key + "'");
  }
  if (!it->is_number_integer()) return invalid_argument(where + ": '" + key + "' must be an integer");
  return it->get<int64_t>();
}
Result<double> float_field(const Json& j, const char* key, const std::string& where, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) return invalid_argument(where + ": '" + key + "' must be a number");
  return it->get<double>();
}

Status parse_rope_scaling(const Json& rs, const std::string& where, RopeScaling* out) {
  if (rs.is_null()) return Status::Ok();
  if (!rs.is_object()) return invalid_argument(where + ": rope_scaling must be an object or null");
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto it = rs.find(key);
    if (it != rs.end() && it->is_string()) {
      type = it->get<std::string>();
      break;
    }
  }
  const std::string w = where + " rope_scaling";
  NB_ASSIGN_OR_RETURN(double factor, float_field(rs, "factor", w, 1.0));
  if (type == "default" || type.empty()) return Status::Ok();
  if (!(factor > 0)) return invalid_argument(w + ": factor must be positive");
  out->factor = static_cast<float>(factor);
  if (type == "linear") {
    out->type = RopeScaling::Type::kLinear;
    return Status::Ok();
  }
  if (type == "llama3") {
    out->type = RopeScaling::Type::kLlama3;
    NB_ASSIGN_OR_RETURN(double low, float_field(rs, "low_freq_factor", w, 1.0));
    NB_ASSIGN_OR_RETURN(double high, float_field(rs, "high_freq_factor", w, 4.0));
    const int64_t default_orig = 8192;
    NB_ASSIGN_OR_RETURN(out->original_max_position,
                        int_field(rs, "original_max_position_embeddings", w, &default_orig));
    if (!(low > 0) || !(high > low) || out->original_max_position <= 0) {
      return invalid_argument(w + ": llama3 needs 0 < low_freq_factor < high_freq_factor and a positive "
                                  "original_max_position_embeddings");
    }
    out->low_freq_factor = static_cast<float>(low);
    out->high_freq_factor = static_cast<float>(high);
    return Status::Ok();
  }
  return unimplemented(w + ": type '" + type + "' is not supported; supported: default, linear, llama3");
}

Result<ModelConfig> hf_config(const Json& j, const std::string& where) {
  if (!j.is_object()) return invalid_argument(where + " is not a JSON object");
  ModelConfig c;
  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) model_type = it->get<std::string>();
  if (model_type == "qwen2") {
    return unimplemented(where + ": model_type 'qwen2' (q/k/v biases) is not supported yet; supported: llama, mistral");
  }
  if (model_type != "llama" && model_type != "mistral") {
    return unimplemented(where + ": model_type '" + model_type + "' is not supported; supported: llama, mistral");
  }
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty()) {
    bool known = false;
    for (const Json& a : *it) known |= a == "LlamaForCausalLM" || a == "MistralForCausalLM";
    if (!known) {
      return unimplemented(where + ": architectures " + it->dump() +
                           " are not supported; supported: LlamaForCausalLM, MistralForCausalLM");
    }
  }
  c.architecture = model_type;
  NB_ASSIGN_OR_RETURN(c.dim, int_field(j, "hidden_size", where, nullptr));
  NB_ASSIGN_OR_RETURN(c.hidden_dim, int_field(j, "intermediate_size", where, nullptr));
  NB_ASSIGN_OR_RETURN(c.num_layers, int_field(j, "num_hidden_layers", where, nullptr));
  NB_ASSIGN_OR_RETURN(c.num_heads, int_field(j, "num_attention_heads", where, nullptr));
  NB_ASSIGN_OR_RETURN(c.num_kv_heads, int_field(j, "num_key_value_heads", where, &c.num_heads));
  const int64_t default_head_dim = c.num_heads > 0 ? c.dim / c.num_heads : 0;
  NB_ASSIGN_OR_RETURN(c.head_dim, int_field(j, "head_dim", where, &default_head_dim));
  NB_ASSIGN_OR_RETURN(c.vocab_size, int_field(j, "vocab_size", where, nullptr));
  const int64_t default_ctx = 2048;
  NB_ASSIGN_OR_RETURN(c.max_seq_len, int_field(j, "max_position_embeddings", where, &default_ctx));
  NB_ASSIGN_OR_RETURN(double eps, float_field(j, "rms_norm_eps", where, 1e-6));
  NB_ASSIGN_OR_RETURN(double theta, float_field(j, "rope_theta", where, 10000.0));
  c.norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  c.rope_style = RopeStyle::kHalf;
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean()) c.tied_embeddings = it->get<bool>();
  if (auto it = j.find("attention_bias"); it != j.end() && it->is_boolean() && it->get<bool>()) {
    return unimplemented(where + ": attention_bias=true (q/k/v/o biases) is not supported");
  }
  if (auto it = j.find("rope_scaling"); it != j.end()) NB_RETURN_IF_ERROR(parse_rope_scaling(*it, where, &c.rope_scaling));
  // Mistral v0.1 attends within a sliding window. Capping the context at the window keeps full
  // attention exact, so we never compute a result the model would not.
  if (auto it = j.find("sliding_window"); it != j.end() && it->is_number_integer() && it->get<int64_t>() > 0) {
    c.max_seq_len = std::min(c.max_seq_len, it->get<int64_t>());
  }
  if (auto it = j.find("_name_or_path"); it != j.end() && it->is_string()) c.name = it->get<std::string>();
  NB_RETURN_IF_ERROR(c.validate());
  return c;
}

// The shard files of the checkpoint: the index's weight_map, else model.safetensors, else every
// *.safetensors in the directory.
Result<std::vector<std::string>> shard_files(const std::string& dir) {
  const std::string index = dir + "/model.safetensors.index.json";
  std::vector<std::string> files;
  if (is_file(index)) {
    NB_ASSIGN_OR_RETURN(Json j, read_json(index));
    auto wm = j.is_object() ? j.find("weight_map") : j.end();
    if (wm == j.end() || !wm->is_object()) return data_loss("'" + index + "' has no weight_map object");
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string()) return data_loss("'" + index + "' maps '" + it.key() + "' to a non-string");
      const std::string name = it->get<std::string>();
      // Shards live in the directory itself: refuse paths that would leave it.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        return data_loss("'" + index + "' names shard '" + name + "', which is not a file name in the directory");
      }
      if (std::find(files.begin(), files.end(), name) == files.end()) files.push_back(name);
    }
  } else if (is_file(dir + "/model.safetensors")) {
    files.push_back("model.safetensors");
  } else if (DIR* d = ::opendir(dir.c_str()); d != nullptr) {
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) files.push_back(n);
    }
    ::closedir(d);
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) {
    return not_found("'" + dir + "' holds no *.safetensors weights; expected model.safetensors or " +
                     "model.safetensors.index.json with its shards");
  }
  return files;
}

Result<std::string> chat_template(const std::string& dir) {
  const std::string tc = dir + "/tokenizer_config.json";
  if (is_file(tc)) {
    NB_ASSIGN_OR_RETURN(Json j, read_json(tc));
    auto it = j.is_object() ? j.find("chat_template") : j.end();
    if (it != j.end() && it->is_string()) return it->get<std::string>();
    if (it != j.end() && it->is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const Json& e : *it) {
        if (e.is_object() && e.value("name", Json()) == "default" && e.contains("template") && e["template"].is_string()) {
          return e["template"].get<std::string>();
        }
      }
    }
  }
  if (is_file(dir + "/chat_template.jinja")) return read_file(dir + "/chat_template.jinja");
  return std::string();
}

Result<LoadedModel> load_hf_model_impl(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  if (!is_file(config_path)) {
    return not_found("'" + dir + "' has no config.json; a model directory needs config.json and *.safetensors");
  }
  NB_ASSIGN_OR_RETURN(Json cj, read_json(config_path));
  NB_ASSIGN_OR_RETURN(ModelConfig config, hf_config(cj, "'" + config_path + "'"));
  NB_ASSIGN_OR_RETURN(std::vector<std::string> files, shard_files(dir));

  std::vector<std::shared_ptr<SafetensorsFile>> shards;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsTensorInfo*>> where;
  for (const std::string& f : files) {
    NB_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> st, SafetensorsFile::open(dir + "/" + f));
    for (const SafetensorsTensorInfo& ti : st->tensors()) {
      if (!where.emplace(ti.name, std::make_pair(st.get(), &ti)).second) {
        return data_loss("tensor '" + ti.name + "' appears in more than one shard of '" + dir + "'");
      }
      if (ti.name.size() > 5 && ti.name.compare(ti.name.size() - 5, 5, ".bias") == 0) {
        return unimplemented("'" + dir + "' has bias tensor '" + ti.name + "'; biases are not supported");
      }
    }
    shards.push_back(std::move(st));
  }
  TensorGetter get = [&](const std::string& name) -> Result<Tensor> {
    auto it = where.find(name);
    if (it == where.end()) return not_found("tensor '" + name + "' is missing from the checkpoint in '" + dir + "'");
    return it->second.first->tensor(*it->second.second);
  };
  // Pre-quantized checkpoints: config.json's quantization_config, or AutoGPTQ's quantize_config.json.
  std::string quant_config;
  if (auto it = cj.find("quantization_config"); it != cj.end() && it->is_object()) {
    quant_config = it->dump();
  } else if (is_file(dir + "/quantize_config.json")) {
    NB_ASSIGN_OR_RETURN(Json qj, read_json(dir + "/quantize_config.json"));
    quant_config = qj.dump();
  }
  if (!quant_config.empty()) {
    NB_ASSIGN_OR_RETURN(get, quantized_tensor_getter(quant_config, get, "'" + config_path + "'"));
  }
  NB_ASSIGN_OR_RETURN(ModelWeights weights, assemble_weights(config, kHfNames, get, /*allow_tied=*/false));

  LoadedModel m;
  m.weights = std::move(weights);
  if (is_file(dir + "/tokenizer.json")) {
    m.tokenizer = {TokenizerSource::Kind::kHfTokenizerJson, dir + "/tokenizer.json"};
  } else if (is_file(dir + "/tokenizer.model")) {
    m.tokenizer = {TokenizerSource::Kind::kSentencePieceModel, dir + "/tokenizer.model"};
  }
  NB_ASSIGN_OR_RETURN(m.chat_template, chat_template(dir));
  m.format = "safetensors";
  return m;
}

}  // namespace

Result<LoadedModel> load_hf_model(const std::string& dir) {
  // nlohmann::json can throw on shapes of JSON we did not anticipate: this is the boundary.
  try {
    return load_hf_model_impl(dir);
  } catch (const std::exception& e) {
    return data_loss("cannot read the model in '" + dir + "': " + e.what());
  }
}

}  // namespace nb
