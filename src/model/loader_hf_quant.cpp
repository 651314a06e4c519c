// Pre-quantized HF checkpoints: config.json's quantization_config (or a GPTQ quantize_config.json)
// selects how each linear module is stored; the tensors are unpacked into kQGroup run-time tensors
// by format/quant_checkpoint.h. Modules stored unquantized (lm_head, ignored layers) load as usual.
#include <nlohmann/json.hpp>

#include "format/quant_checkpoint.h"
#include "model/loader_internal.h"

namespace nb {
namespace {

using Json = nlohmann::json;

enum class Scheme { kGptq, kAwq, kCompressedInt8 };

struct QuantScheme {
  Scheme scheme = Scheme::kGptq;
  qformat::GptqSpec gptq;   // bits, group size, v2 (GPTQ); bits + group size also for AWQ
  bool act_int8 = false;    // compressed-tensors: dynamic per-token int8 activations
};

int64_t int_or(const Json& j, std::initializer_list<const char*> keys, int64_t fallback) {
  for (const char* k : keys) {
    auto it = j.find(k);
    if (it != j.end() && it->is_number_integer()) return it->get<int64_t>();
  }
  return fallback;
}
std::string str_or(const Json& j, const char* key, const std::string& fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}
bool bool_or(const Json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

Result<QuantScheme> parse_scheme(const Json& qc, const std::string& where) {
  if (!qc.is_object()) return invalid_argument(where + ": quantization_config is not an object");
  const std::string method = str_or(qc, "quant_method", "gptq");
  QuantScheme s;
  if (method == "gptq") {
    s.scheme = Scheme::kGptq;
    s.gptq.bits = static_cast<int>(int_or(qc, {"bits"}, 4));
    s.gptq.group_size = int_or(qc, {"group_size"}, 128);
    s.gptq.symmetric = bool_or(qc, "sym", true);
    const std::string fmt = str_or(qc, "checkpoint_format", "gptq");
    if (fmt != "gptq" && fmt != "gptq_v2") {
      return unimplemented(where + ": GPTQ checkpoint_format '" + fmt + "' is not supported; supported: gptq, gptq_v2");
    }
    s.gptq.v2 = fmt == "gptq_v2";
  } else if (method == "awq") {
    s.scheme = Scheme::kAwq;
    std::string version = str_or(qc, "version", "gemm");
    for (char& c : version) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (version != "gemm") return unimplemented(where + ": AWQ version '" + version + "' is not supported; only GEMM packing is");
    s.gptq.bits = static_cast<int>(int_or(qc, {"w_bit", "bits"}, 4));
    s.gptq.group_size = int_or(qc, {"q_group_size", "group_size"}, 128);
    if (s.gptq.bits != 4) return unimplemented(where + ": AWQ GEMM with " + std::to_string(s.gptq.bits) + "-bit weights; only 4 bits exist");
  } else if (method == "compressed-tensors") {
    s.scheme = Scheme::kCompressedInt8;
    const std::string fmt = str_or(qc, "format", "");
    if (fmt != "int-quantized") {
      return unimplemented(where + ": compressed-tensors format '" + fmt + "' is not supported; supported: int-quantized (W8A8 / W8A16)");
    }
    auto groups = qc.find("config_groups");
    if (groups == qc.end() || !groups->is_object() || groups->empty()) {
      return invalid_argument(where + ": compressed-tensors quantization_config has no config_groups");
    }
    if (groups->size() > 1) return unimplemented(where + ": compressed-tensors with several config_groups");
    const Json& g = groups->begin().value();
    const Json w = g.value("weights", Json());
    if (!w.is_object() || int_or(w, {"num_bits"}, 0) != 8 || str_or(w, "type", "int") != "int") {
      return unimplemented(where + ": compressed-tensors weights must be 8-bit int (num_bits 8, type int)");
    }
    const Json a = g.value("input_activations", Json());
    if (a.is_object()) {
      if (int_or(a, {"num_bits"}, 0) != 8 || !bool_or(a, "dynamic", false) || str_or(a, "strategy", "token") != "token") {
        return unimplemented(where + ": compressed-tensors input_activations must be dynamic per-token 8-bit (static scales are not supported)");
      }
      s.act_int8 = true;
    }
  } else {
    return unimplemented(where + ": quant_method '" + method + "' is not supported; supported: gptq, awq, compressed-tensors");
  }
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Result<Tensor> optional(const TensorGetter& raw, const std::string& name) {
  Result<Tensor> t = raw(name);
  if (!t.ok() && t.status().code() == StatusCode::kNotFound) return Tensor();
  return t;
}

}  // namespace

Result<TensorGetter> quantized_tensor_getter(const std::string& quant_config_json, TensorGetter raw, const std::string& where) {
  Json qc = Json::parse(quant_config_json, nullptr, false);
  if (qc.is_discarded()) return invalid_argument(where + ": quantization_config is not valid JSON");
  NB_ASSIGN_OR_RETURN(QuantScheme s, parse_scheme(qc, where));
  return TensorGetter([s, raw](const std::string& name) -> Result<Tensor> {
    if (!ends_with(name, ".weight") || name.find(".layers.") == std::string::npos ||
        (name.find("_proj.") == std::string::npos)) {
      return raw(name);
    }
    const std::string module = name.substr(0, name.size() - 7);
    if (s.scheme == Scheme::kCompressedInt8) {
      NB_ASSIGN_OR_RETURN(Tensor w, raw(name));
      if (w.dtype() != DType::kI8) return w;  // a module left unquantized
      NB_ASSIGN_OR_RETURN(Tensor scale, raw(module + ".weight_scale"));
      NB_ASSIGN_OR_RETURN(Tensor zp, optional(raw, module + ".weight_zero_point"));
      if (w.ndim() != 2) return invalid_argument(name + " is " + w.describe() + "; expected a 2-D int8 weight");
      return qformat::ct_int8_to_runtime(w, scale, zp, s.act_int8, w.dim(0), w.dim(1), module);
    }
    NB_ASSIGN_OR_RETURN(Tensor qweight, optional(raw, module + ".qweight"));
    if (!qweight.defined()) return raw(name);
    if (qweight.ndim() != 2) return invalid_argument(module + ".qweight is " + qweight.describe() + "; expected 2-D int32");
    NB_ASSIGN_OR_RETURN(Tensor qzeros, raw(module + ".qzeros"));
    NB_ASSIGN_OR_RETURN(Tensor scales, raw(module + ".scales"));
    if (s.scheme == Scheme::kAwq) {
      return qformat::awq_to_runtime(qweight, qzeros, scales, s.gptq.group_size, qweight.dim(1) * 8, qweight.dim(0), module);
    }
    NB_ASSIGN_OR_RETURN(Tensor g_idx, optional(raw, module + ".g_idx"));
    return qformat::gptq_to_runtime(qweight, qzeros, scales, g_idx, s.gptq, qweight.dim(1), qweight.dim(0) * 32 / s.gptq.bits, module);
  });
}

}  // namespace nb
