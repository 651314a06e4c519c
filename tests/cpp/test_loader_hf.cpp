// HF directory loading (config.json + safetensors) and the safetensors container: small checkpoints
// written here by the spec, values compared with the bytes written, error cases, and fuzzing.
#include <gtest/gtest.h>

#include <cmath>

#include "format/safetensors.h"
#include "loader_test_util.h"
#include "model/weights.h"

namespace nb {
namespace {

using testing::SafetensorsBuilder;
using Json = nlohmann::json;

std::string random_data(std::mt19937_64& rng, int64_t n, const std::string& dtype) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    const float x = nd(rng);
    if (dtype == "F32") {
      testing::put(&out, x);
    } else if (dtype == "F16") {
      testing::put(&out, fp32_to_fp16(x));
    } else {
      testing::put(&out, fp32_to_bf16(x));
    }
  }
  return out;
}

Json tiny_config() {
  return Json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", 64},
              {"intermediate_size", 96},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 500000.0},
              {"max_position_embeddings", 256},
              {"vocab_size", 40},
              {"tie_word_embeddings", false},
              {"rope_scaling",
               {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                {"original_max_position_embeddings", 128}}}};
}

struct TinyHf {
  std::map<std::string, std::string> raw;           // tensor name -> bytes written
  std::vector<SafetensorsBuilder> shards{1};
};

// Writes a 2-layer llama HF checkpoint into dir. Tensors alternate F32/F16/BF16.
TinyHf write_tiny_hf(const std::string& dir, const Json& config, int num_shards = 1, bool with_lm_head = true) {
  std::mt19937_64 rng(11);
  TinyHf t;
  t.shards.resize(static_cast<size_t>(num_shards));
  Json weight_map = Json::object();
  int k = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    static const char* kTypes[] = {"BF16", "F16", "F32"};
    const std::string dtype = kTypes[k % 3];
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.raw[name] = random_data(rng, n, dtype);
    const int shard = k % num_shards;
    t.shards[static_cast<size_t>(shard)].tensor(name, dtype, shape, t.raw[name]);
    weight_map[name] = "model-0000" + std::to_string(shard + 1) + "-of-0000" + std::to_string(num_shards) + ".safetensors";
    ++k;
  };
  add("model.embed_tokens.weight", {40, 64});
  add("model.norm.weight", {64});
  if (with_lm_head) add("lm_head.weight", {40, 64});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {64});
    add(p + "self_attn.q_proj.weight", {64, 64});
    add(p + "self_attn.k_proj.weight", {32, 64});
    add(p + "self_attn.v_proj.weight", {32, 64});
    add(p + "self_attn.o_proj.weight", {64, 64});
    add(p + "post_attention_layernorm.weight", {64});
    add(p + "mlp.gate_proj.weight", {96, 64});
    add(p + "mlp.up_proj.weight", {96, 64});
    add(p + "mlp.down_proj.weight", {64, 96});
  }
  if (num_shards == 1) {
    testing::write_bytes(dir + "/model.safetensors", t.shards[0].build());
  } else {
    for (int s = 0; s < num_shards; ++s) {
      testing::write_bytes(dir + "/model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(num_shards) +
                               ".safetensors",
                           t.shards[static_cast<size_t>(s)].build());
    }
    testing::write_bytes(dir + "/model.safetensors.index.json", Json{{"weight_map", weight_map}}.dump());
  }
  testing::write_bytes(dir + "/config.json", config.dump(2));
  testing::write_bytes(dir + "/tokenizer.json", "{}");
  testing::write_bytes(dir + "/tokenizer_config.json",
                       Json{{"chat_template", {{{"name", "tool_use"}, {"template", "T"}},
                                               {{"name", "default"}, {"template", "{{ bos_token }}"}}}}}
                           .dump());
  return t;
}

void expect_bytes(const Tensor& t, const std::string& want, const std::string& name) {
  ASSERT_EQ(t.nbytes(), want.size()) << name;
  EXPECT_EQ(std::memcmp(t.data(), want.data(), want.size()), 0) << name;
}

// Norms become f32: compare with the written 16/32-bit values widened independently.
void expect_norm(const Tensor& t, const std::string& want, const std::string& name) {
  ASSERT_EQ(t.dtype(), DType::kF32) << name;
  const size_t n = static_cast<size_t>(t.numel());
  for (size_t i = 0; i < n; ++i) {
    float w;
    if (want.size() == 4 * n) {
      std::memcpy(&w, want.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, want.data() + 2 * i, 2);
      // bf16 and f16 both 2 bytes: the name tells which (write order: BF16, F16, F32 cycling).
      w = name.find("#bf16") != std::string::npos ? bf16_to_fp32(h) : fp16_to_fp32(h);
    }
    ASSERT_EQ(t.ptr<float>()[i], w) << name << " element " << i;
  }
}

TEST(HfLoader, LoadsTinyCheckpoint) {
  for (int shards : {1, 3}) {
    testing::TempDir dir;
    TinyHf t = write_tiny_hf(dir.path(), tiny_config(), shards);
    auto r = load_model(dir.path());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const ModelConfig& c = r->weights.config;
    EXPECT_EQ(c.dim, 64);
    EXPECT_EQ(c.hidden_dim, 96);
    EXPECT_EQ(c.num_layers, 2);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.vocab_size, 40);
    EXPECT_EQ(c.max_seq_len, 256);
    EXPECT_EQ(c.rope_theta, 500000.f);
    EXPECT_EQ(c.norm_eps, 1e-5f);
    EXPECT_EQ(c.rope_style, RopeStyle::kHalf);
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
    EXPECT_EQ(c.rope_scaling.factor, 8.f);
    EXPECT_EQ(c.rope_scaling.original_max_position, 128);
    EXPECT_FALSE(c.tied_embeddings);
    EXPECT_EQ(r->format, "safetensors");
    EXPECT_EQ(r->tokenizer.kind, TokenizerSource::Kind::kHfTokenizerJson);
    EXPECT_EQ(r->chat_template, "{{ bos_token }}");
    const ModelWeights& w = r->weights;
    expect_bytes(w.tok_embeddings, t.raw["model.embed_tokens.weight"], "embed");
    expect_bytes(w.output, t.raw["lm_head.weight"], "lm_head");
    EXPECT_EQ(w.output.dtype(), DType::kF32);  // third tensor written: F32
    EXPECT_EQ(w.tok_embeddings.dtype(), DType::kBF16);
    const std::string p = "model.layers.1.";
    expect_bytes(w.layers[1].wq, t.raw[p + "self_attn.q_proj.weight"], "q");
    expect_bytes(w.layers[1].wk, t.raw[p + "self_attn.k_proj.weight"], "k");
    expect_bytes(w.layers[1].wv, t.raw[p + "self_attn.v_proj.weight"], "v");
    expect_bytes(w.layers[1].wo, t.raw[p + "self_attn.o_proj.weight"], "o");
    expect_bytes(w.layers[1].w_gate, t.raw[p + "mlp.gate_proj.weight"], "gate");
    expect_bytes(w.layers[1].w_up, t.raw[p + "mlp.up_proj.weight"], "up");
    expect_bytes(w.layers[1].w_down, t.raw[p + "mlp.down_proj.weight"], "down");
    // Written order: embed BF16, norm F16, lm_head F32, layer0 input_layernorm BF16, ...
    expect_norm(w.final_norm, t.raw["model.norm.weight"], "final_norm#f16");
    expect_norm(w.layers[0].attn_norm, t.raw["model.layers.0.input_layernorm.weight"], "attn_norm0#bf16");
    EXPECT_EQ(w.num_params(), 40 * 64 * 2 + 64 + 2 * (2 * 64 + 64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 96));
  }
}

TEST(HfLoader, TiedAndDefaults) {
  testing::TempDir dir;
  Json cfg = tiny_config();
  cfg["tie_word_embeddings"] = true;
  cfg.erase("num_key_value_heads");  // default: = num_attention_heads
  cfg.erase("rope_scaling");
  cfg["rope_scaling"] = nullptr;
  write_tiny_hf(dir.path(), cfg, 1, /*with_lm_head=*/false);
  auto r = load_model(dir.path());
  // k/v are [32, 64] in the file but 4 kv heads need [64, 64]: a shape error naming the tensor.
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("model.layers.0.self_attn.k_proj.weight"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("[64, 64]"), std::string::npos);

  cfg["num_key_value_heads"] = 2;
  testing::write_bytes(dir.file("config.json"), cfg.dump());
  r = load_model(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->weights.config.tied_embeddings);
  EXPECT_EQ(r->weights.output.data(), r->weights.tok_embeddings.data());
  EXPECT_EQ(r->weights.config.rope_scaling.type, RopeScaling::Type::kNone);

  cfg["tie_word_embeddings"] = false;  // untied but no lm_head: an error, not silent tying
  testing::write_bytes(dir.file("config.json"), cfg.dump());
  r = load_model(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("lm_head.weight"), std::string::npos);
}

TEST(HfLoader, ClearErrors) {
  testing::TempDir dir;
  write_tiny_hf(dir.path(), tiny_config());
  auto with = [&](const std::function<void(Json&)>& edit) {
    Json cfg = tiny_config();
    edit(cfg);
    testing::write_bytes(dir.file("config.json"), cfg.dump());
    auto r = load_model(dir.path());
    return r.ok() ? Status::Ok() : r.status();
  };
  Status s = with([](Json& c) { c["model_type"] = "qwen2"; });
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("qwen2"), std::string::npos);
  s = with([](Json& c) { c["model_type"] = "gpt_neox"; });
  EXPECT_NE(s.message().find("gpt_neox"), std::string::npos);
  s = with([](Json& c) { c["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}}; });
  EXPECT_NE(s.message().find("yarn"), std::string::npos);
  s = with([](Json& c) { c["hidden_size"] = "64"; });
  EXPECT_NE(s.message().find("hidden_size"), std::string::npos);
  s = with([](Json& c) { c.erase("vocab_size"); });
  EXPECT_NE(s.message().find("vocab_size"), std::string::npos);
  s = with([](Json& c) { c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; });
  EXPECT_TRUE(s.ok()) << s.to_string();
  testing::write_bytes(dir.file("config.json"), "{not json");
  EXPECT_EQ(load_model(dir.path()).status().code(), StatusCode::kDataLoss);
  std::filesystem::remove(dir.file("config.json"));
  EXPECT_NE(load_model(dir.path()).status().message().find("config.json"), std::string::npos);
}

TEST(SafetensorsFile, ValidatesOffsetsDtypesAndAlignment) {
  testing::TempDir dir;
  auto open_header = [&](const std::string& header_json, const std::string& data) {
    std::string s;
    testing::put(&s, static_cast<uint64_t>(header_json.size()));
    testing::write_bytes(dir.file("x.safetensors"), s + header_json + data);
    return SafetensorsFile::open(dir.file("x.safetensors"));
  };
  const std::string data(64, '\x01');
  // A header of odd length puts the f32 data at an odd address: the tensor is copied, values kept.
  auto r = open_header(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}} )", data);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  auto t = (*r)->tensor(*(*r)->find_tensor("a"));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 4, 0u);
  EXPECT_EQ(t->ptr<float>()[5], [] { float f; uint32_t u = 0x01010101; std::memcpy(&f, &u, 4); return f; }());
  // Unknown and unsupported dtypes are listed, not loadable.
  r = open_header(R"({"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"b":{"dtype":"F99","shape":[2],"data_offsets":[16,18]}})", data);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_FALSE((*r)->find_tensor("a")->supported);
  EXPECT_FALSE((*r)->tensor(*(*r)->find_tensor("b")).ok());
  // Wrong byte count, out of range, overlap, bad JSON, header length past the end.
  EXPECT_FALSE(open_header(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", data).ok());
  EXPECT_FALSE(open_header(R"({"a":{"dtype":"F32","shape":[20],"data_offsets":[0,80]}})", data).ok());
  EXPECT_FALSE(open_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", data).ok());
  EXPECT_FALSE(open_header(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data).ok());
  EXPECT_FALSE(open_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", data).ok());
  EXPECT_FALSE(open_header(R"({"a":{"dtype":"F32","shape":[4]}})", data).ok());
  EXPECT_FALSE(open_header(R"([1,2])", data).ok());
  EXPECT_FALSE(open_header(R"({"a":)", data).ok());
  std::string s;
  testing::put(&s, uint64_t{1} << 40);
  testing::write_bytes(dir.file("y.safetensors"), s + "{}");
  EXPECT_FALSE(SafetensorsFile::open(dir.file("y.safetensors")).ok());
}

// Fuzz the HF directory: safetensors truncations, byte flips in the JSON header and in the length
// field, digit edits in the header's numbers (shapes, offsets), and config.json corruptions.
TEST(HfLoader, FuzzSafetensorsAndConfig) {
  testing::TempDir dir;
  write_tiny_hf(dir.path(), tiny_config());
  const std::string model = testing::read_bytes(dir.file("model.safetensors"));
  const std::string config = testing::read_bytes(dir.file("config.json"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, model.data(), 8);
  const size_t header_end = 8 + static_cast<size_t>(header_len);
  std::mt19937_64 rng(99);
  int num_ok = 0, num_err = 0;
  for (int v = 0; v < 320; ++v) {
    std::string m = model, c = config;
    switch (v % 8) {
      case 0: m.resize(rng() % m.size()); break;
      case 1: m.resize(rng() % header_end); break;
      case 2:
        for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k) m[8 + rng() % header_len] = static_cast<char>(rng());
        break;
      case 3: {  // the header length field
        const uint64_t x = rng() % 2 ? rng() : header_len + (rng() % 64) - 32;
        std::memcpy(m.data(), &x, rng() % 2 ? 8 : 1 + rng() % 8);
        break;
      }
      case 4:
      case 5: {  // change or lengthen a number in the JSON header
        for (int tries = 0; tries < 100; ++tries) {
          const size_t pos = 8 + rng() % header_len;
          if (m[pos] < '0' || m[pos] > '9') continue;
          if (v % 8 == 4) {
            m[pos] = static_cast<char>('0' + rng() % 10);
          } else {
            m.insert(pos, std::to_string(rng() % 100000));
            const uint64_t n = header_len + (m.size() - model.size());
            std::memcpy(m.data(), &n, 8);
          }
          break;
        }
        break;
      }
      case 6:  // weights bytes: benign
        for (int k = 0; k < 16; ++k) m[header_end + rng() % (m.size() - header_end)] = static_cast<char>(rng());
        break;
      case 7:
        if (rng() % 2) {
          c.resize(rng() % c.size());
        } else {
          for (int k = 0; k < 3; ++k) c[rng() % c.size()] = static_cast<char>("0123456789-.e\"{}[]:,x "[rng() % 22]);
        }
        break;
    }
    testing::write_bytes(dir.file("model.safetensors"), m);
    testing::write_bytes(dir.file("config.json"), c);
    auto r = load_model(dir.path());
    if (r.ok()) {
      ++num_ok;
      testing::touch_all(r->weights);
    } else {
      ++num_err;
      EXPECT_FALSE(r.status().message().empty());
    }
  }
  EXPECT_GT(num_err, 120);
  EXPECT_GT(num_ok, 30);
  EXPECT_LT(testing::peak_rss_mib(), 2048);
}

}  // namespace
}  // namespace nb
