#include "quant/checkpoint_writer.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/group_quant.h"
#include "format/quant_checkpoint.h"
#include "format/safetensors_writer.h"

namespace nb::quant {
namespace {

using Json = nlohmann::json;

struct Entry {
  SafetensorsTensorSpec spec;
  std::vector<uint8_t> bytes;
};

// HF row of an interleaved-RoPE q/k weight: hf row h*hd + s*hd/2 + i holds interleaved row h*hd + 2i + s.
std::vector<int64_t> hf_row_order(int64_t rows, int64_t head_dim) {
  std::vector<int64_t> src(static_cast<size_t>(rows));
  for (int64_t h = 0; h < rows / head_dim; ++h)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t i = 0; i < head_dim / 2; ++i) src[static_cast<size_t>(h * head_dim + s * head_dim / 2 + i)] = h * head_dim + 2 * i + s;
  return src;
}

Entry f16_entry(const std::string& name, const Tensor& t, const std::vector<int64_t>* order, bool f32) {
  Entry e;
  e.spec.name = name;
  e.spec.dtype_name = f32 ? "F32" : "F16";
  for (int i = 0; i < t.ndim(); ++i) e.spec.shape.push_back(t.dim(i));
  const int64_t rows = t.rows(), cols = t.cols();
  e.bytes.resize(static_cast<size_t>(rows * cols) * (f32 ? 4 : 2));
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_tensor_row(t, order ? (*order)[static_cast<size_t>(r)] : r, row.data());
    if (f32) {
      std::memcpy(e.bytes.data() + r * cols * 4, row.data(), static_cast<size_t>(cols) * 4);
    } else {
      auto* dst = reinterpret_cast<uint16_t*>(e.bytes.data()) + r * cols;
      for (int64_t c = 0; c < cols; ++c) dst[c] = fp32_to_fp16(row[static_cast<size_t>(c)]);
    }
  }
  return e;
}

// A kQGroup tensor with its rows taken in `order` (codes and per-row group parameters move together).
Result<Tensor> permute_rows(const Tensor& t, const std::vector<int64_t>& order) {
  const GroupQuant& q = *t.group_quant();
  const int64_t n = t.dim(0), k = t.dim(1);
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  GroupQuant p = q;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t s = order[static_cast<size_t>(r)];
    std::memcpy(codes.data() + r * k, t.row<const uint8_t>(s), static_cast<size_t>(k));
    for (int64_t g = 0; g < q.num_groups; ++g) {
      p.scales[static_cast<size_t>(r * q.num_groups + g)] = q.scale(s, g);
      if (!q.symmetric) p.zeros[static_cast<size_t>(r * q.num_groups + g)] = q.zeros[static_cast<size_t>(s * q.num_groups + g)];
    }
  }
  return make_group_quant_tensor(std::move(codes), n, k, std::move(p), "permuted weight");
}

Json hf_config_json(const ModelConfig& c) {
  Json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.hidden_dim;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["torch_dtype"] = "float16";
  if (c.rope_scaling.type == RopeScaling::Type::kLinear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
  } else if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  }
  if (!c.name.empty()) j["_name_or_path"] = c.name;
  return j;
}


Status make_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return invalid_argument("cannot create output directory '" + dir + "': " + std::strerror(errno));
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return invalid_argument("'" + dir + "' is not a directory");
  return Status::Ok();
}

// Writes model.safetensors + config.json (+ tokenizer) for `w`, whose linears may be kQGroup.
Status write_checkpoint(const ModelWeights& w, const LoadedModel& source, const std::string& dir, QuantLayout layout,
                        const Json* quant_config, bool f32) {
  NB_RETURN_IF_ERROR(make_dir(dir));
  const ModelConfig& c = w.config;
  const bool permute = c.rope_style == RopeStyle::kInterleaved;
  const std::vector<int64_t> q_order = hf_row_order(c.num_heads * c.head_dim, c.head_dim);
  const std::vector<int64_t> k_order = hf_row_order(c.num_kv_heads * c.head_dim, c.head_dim);
  std::vector<Entry> entries;
  entries.push_back(f16_entry("model.embed_tokens.weight", w.tok_embeddings, nullptr, f32));
  entries.push_back(f16_entry("model.norm.weight", w.final_norm, nullptr, f32));
  if (!c.tied_embeddings) entries.push_back(f16_entry("lm_head.weight", w.output, nullptr, f32));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    entries.push_back(f16_entry(p + "input_layernorm.weight", lw.attn_norm, nullptr, f32));
    entries.push_back(f16_entry(p + "post_attention_layernorm.weight", lw.ffn_norm, nullptr, f32));
    for (int k = 0; k < kNumLinearKinds; ++k) {
      const auto kind = static_cast<LinearKind>(k);
      const std::string module = p + hf_linear_name(kind);
      const std::vector<int64_t>* order = !permute ? nullptr : kind == LinearKind::kQ ? &q_order : kind == LinearKind::kK ? &k_order : nullptr;
      Tensor t = linear_of(lw, kind);
      if (t.dtype() != DType::kQGroup || quant_config == nullptr) {  // no quant_config: write everything dequantized
        entries.push_back(f16_entry(module + ".weight", t, order, f32));
        continue;
      }
      if (order != nullptr) {
        NB_ASSIGN_OR_RETURN(t, permute_rows(t, *order));
      }
      Result<qformat::PackedLinear> packed = layout == QuantLayout::kAwqGemm ? qformat::pack_awq(t)
                                             : layout == QuantLayout::kCompressedTensors ? qformat::pack_ct_int8(t)
                                                                                         : qformat::pack_gptq(t, (*quant_config)["checkpoint_format"] == "gptq_v2");
      if (!packed.ok()) return Status(packed.status().code(), module + ": " + packed.status().message());
      for (auto& a : packed->arrays) {
        Entry e;
        e.spec = {module + "." + a.suffix, a.dtype, a.shape};
        e.bytes = std::move(a.bytes);
        entries.push_back(std::move(e));
      }
    }
  }
  std::vector<SafetensorsTensorSpec> specs;
  for (const Entry& e : entries) specs.push_back(e.spec);
  std::map<std::string, std::string> meta = {{"format", "pt"}};
  NB_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::create(dir + "/model.safetensors", specs, meta));
  for (const Entry& e : entries) NB_RETURN_IF_ERROR(writer->write(e.bytes.data(), e.bytes.size()));
  NB_RETURN_IF_ERROR(writer->finish(/*sync=*/false));

  Json cj = hf_config_json(c);
  if (quant_config != nullptr) cj["quantization_config"] = *quant_config;
  NB_ASSIGN_OR_RETURN(bool have_tok, export_tokenizer(source, dir));
  if (!have_tok) {
    std::fprintf(stderr, "note: %s has no tokenizer.json form; load the directory with --tokenizer <source model>\n",
                 source.tokenizer.path.empty() ? "the source" : source.tokenizer.path.c_str());
  }
  return write_text_file(dir + "/config.json", cj.dump(2) + "\n");
}

}  // namespace

Status write_text_file(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return internal_error("cannot create '" + path + "': " + std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok) return internal_error("cannot write '" + path + "'; check free disk space");
  return Status::Ok();
}

QuantLayout layout_for(const QuantizedModel& qm) {
  if (qm.act_int8 || qm.method == "smoothquant") return QuantLayout::kCompressedTensors;
  if (qm.method == "awq" && !qm.layers.empty()) {
    bool ok = true;
    for (const auto& layer : qm.layers)
      for (const QuantizedLinear& l : layer) ok &= l.bits == 4 && l.group_size > 0 && l.g_idx.empty() && l.out_features % 8 == 0;
    if (ok) return QuantLayout::kAwqGemm;
  }
  return QuantLayout::kGptq;
}

Status save_quantized_model(const QuantizedModel& qm, const LoadedModel& source, const std::string& dir) {
  if (qm.layers.empty()) return invalid_argument("the quantized model has no quantized layers");
  NB_ASSIGN_OR_RETURN(ModelWeights w, runtime_weights(qm));
  const QuantLayout layout = layout_for(qm);
  const QuantizedLinear& first = qm.layers[0][0];
  for (const auto& layer : qm.layers) {
    for (const QuantizedLinear& l : layer) {
      if (l.bits != first.bits || l.group_size != first.group_size || l.symmetric != first.symmetric) {
        return unimplemented("every quantized linear must share bits, group size and symmetry to be written as one checkpoint");
      }
    }
  }
  Json qc;
  if (layout == QuantLayout::kCompressedTensors) {
    if (first.bits != 8) return invalid_argument("W8A8 (compressed-tensors) needs 8-bit weights, not " + std::to_string(first.bits));
    Json weights = {{"num_bits", 8}, {"type", "int"}, {"symmetric", first.symmetric}, {"dynamic", false},
                    {"strategy", first.group_size < 0 ? "channel" : "group"}, {"observer", "minmax"}};
    weights["group_size"] = first.group_size < 0 ? Json() : Json(first.group_size);
    Json group = {{"targets", {"Linear"}}, {"weights", weights}, {"output_activations", Json()}};
    group["input_activations"] = qm.act_int8 ? Json{{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"dynamic", true},
                                                   {"strategy", "token"}, {"observer", Json()}}
                                             : Json();
    qc = {{"quant_method", "compressed-tensors"}, {"format", "int-quantized"}, {"quantization_status", "compressed"},
          {"ignore", {"lm_head"}}, {"config_groups", {{"group_0", group}}}};
  } else if (layout == QuantLayout::kAwqGemm) {
    qc = {{"quant_method", "awq"}, {"version", "gemm"}, {"w_bit", first.bits}, {"bits", first.bits},
          {"q_group_size", first.group_size}, {"group_size", first.group_size}, {"zero_point", true}};
  } else {
    bool v2 = false;
    for (size_t l = 0; l < w.layers.size() && !v2; ++l)
      for (int k = 0; k < kNumLinearKinds && !v2; ++k) v2 = qformat::gptq_needs_v2(linear_of(w.layers[l], static_cast<LinearKind>(k)));
    bool desc_act = false;
    for (const auto& layer : qm.layers)
      for (const QuantizedLinear& l : layer) desc_act |= !l.g_idx.empty();
    qc = {{"quant_method", "gptq"}, {"bits", first.bits}, {"group_size", first.group_size}, {"desc_act", desc_act},
          {"sym", first.symmetric}, {"checkpoint_format", v2 ? "gptq_v2" : "gptq"}, {"true_sequential", true}};
  }
  qc["nibble_method"] = qm.method;
  return write_checkpoint(w, source, dir, layout, &qc, false);
}

Status save_float_model(const LoadedModel& source, const std::string& dir, bool f32) {
  return write_checkpoint(source.weights, source, dir, QuantLayout::kGptq, nullptr, f32);
}

}  // namespace nb::quant
