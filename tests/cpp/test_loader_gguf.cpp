// GGUF model loading: the real SmolLM2 file (config from its metadata, as gguf-py reads it), small
// GGUF files built here from the spec with every supported dtype, error cases, and fuzzing.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "format/gguf.h"
#include "loader_test_util.h"
#include "model/weights.h"

namespace nb {
namespace {

using testing::GgufBuilder;
const std::string kSmol = std::string(NIBBLE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8, kGgmlBF16 = 30;

DType dtype_of(uint32_t ggml) {
  switch (ggml) {
    case kGgmlF16: return DType::kF16;
    case kGgmlQ4_0: return DType::kQ4_0;
    case kGgmlQ4_1: return DType::kQ4_1;
    case kGgmlQ8_0: return DType::kQ8_0;
    case kGgmlBF16: return DType::kBF16;
    default: return DType::kF32;
  }
}

// Random values stored as `ggml` type, rows of `cols`.
std::string random_tensor(std::mt19937_64& rng, int64_t rows, int64_t cols, uint32_t ggml) {
  std::normal_distribution<float> nd(0.f, 1.f);
  const DType t = dtype_of(ggml);
  std::string out(static_cast<size_t>(rows) * row_bytes(t, cols), '\0');
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& x : row) x = nd(rng);
    quantize_row(t, row.data(), out.data() + r * row_bytes(t, cols), cols);
  }
  return out;
}

struct TinySpec {
  bool with_output = true;
  std::string arch = "llama";
  int64_t q_rows = 64;  // shape of attn_q rows: 64 is correct
  std::vector<float> rope_freqs = {};  // written as rope_freqs.weight when not empty
};

// A 2-layer llama (dim 64, ffn 96, 4 heads / 2 kv heads, vocab 40) using every supported ggml type.
std::string tiny_gguf(const TinySpec& spec, std::map<std::string, std::string>* raw = nullptr) {
  std::mt19937_64 rng(7);
  GgufBuilder b;
  b.kv_str("general.architecture", spec.arch);
  b.kv_str("general.name", "tiny");
  b.kv_u32("llama.embedding_length", 64);
  b.kv_u32("llama.feed_forward_length", 96);
  b.kv_u32("llama.block_count", 2);
  b.kv_u32("llama.attention.head_count", 4);
  b.kv_u32("llama.attention.head_count_kv", 2);
  b.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  b.kv_f32("llama.rope.freq_base", 500000.f);
  b.kv_u32("llama.context_length", 128);
  b.kv_u32("llama.rope.dimension_count", 16);
  std::vector<std::string> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back(std::string(1, 't').append(std::to_string(i)));
  b.kv_strs("tokenizer.ggml.tokens", tokens);
  b.kv_f32s("tokenizer.ggml.scores", std::vector<float>(40, -1.5f));
  b.kv_i32s("tokenizer.ggml.token_type", std::vector<int32_t>(40, 1));
  b.kv_str("tokenizer.chat_template", "{{ messages }}");
  b.kv_nested("test.nested");
  b.kv_u8("test.u8", 200);
  b.kv_i8("test.i8", -100);
  b.kv_u16("test.u16", 60000);
  b.kv_i16("test.i16", -30000);
  b.kv_i32("test.i32", -2000000000);
  b.kv_u64("test.u64", 18000000000000000000ull);
  b.kv_i64("test.i64", -9000000000000000000ll);
  b.kv_f64("test.f64", 0.1);
  b.kv_bool("test.bool", true);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, uint32_t ggml) {
    const std::string data = random_tensor(rng, shape.size() == 1 ? 1 : shape[0], shape.back(), ggml);
    if (raw != nullptr) (*raw)[name] = data;
    b.tensor(name, shape, ggml, data);
  };
  if (!spec.rope_freqs.empty()) {
    std::string bytes(spec.rope_freqs.size() * 4, '\0');
    std::memcpy(bytes.data(), spec.rope_freqs.data(), bytes.size());
    b.tensor("rope_freqs.weight", {static_cast<int64_t>(spec.rope_freqs.size())}, kGgmlF32, bytes);
  }
  add("token_embd.weight", {40, 64}, kGgmlQ8_0);
  add("output_norm.weight", {64}, kGgmlF32);
  if (spec.with_output) add("output.weight", {40, 64}, kGgmlQ4_0);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {64}, kGgmlF32);
    add(p + "attn_q.weight", {spec.q_rows, 64}, kGgmlQ4_0);
    add(p + "attn_k.weight", {32, 64}, kGgmlQ4_1);
    add(p + "attn_v.weight", {32, 64}, kGgmlF16);
    add(p + "attn_output.weight", {64, 64}, kGgmlBF16);
    add(p + "ffn_norm.weight", {64}, kGgmlF16);
    add(p + "ffn_gate.weight", {96, 64}, kGgmlQ8_0);
    add(p + "ffn_up.weight", {96, 64}, kGgmlF32);
    add(p + "ffn_down.weight", {64, 96}, kGgmlQ4_1);
  }
  return b.build();
}

TEST(GgufLoader, LoadsSmolLm2WithConfigFromMetadata) {
  if (!std::filesystem::exists(kSmol)) GTEST_SKIP() << kSmol << " missing: run scripts/setup.sh";
  auto r = load_model(kSmol);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const ModelConfig& c = r->weights.config;
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.hidden_dim, 1536);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_seq_len, 8192);
  EXPECT_EQ(c.rope_theta, 100000.f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(r->format, "gguf");
  EXPECT_EQ(r->tokenizer.kind, TokenizerSource::Kind::kGguf);
  EXPECT_EQ(r->chat_template.rfind("{% for message in messages %}", 0), 0u);
  const ModelWeights& w = r->weights;
  EXPECT_EQ(w.output.data(), w.tok_embeddings.data());
  EXPECT_EQ(w.tok_embeddings.dtype(), DType::kQ8_0);
  EXPECT_EQ(w.layers[0].wq.dtype(), DType::kQ4_1);
  EXPECT_EQ(w.layers[29].w_down.dim(0), 576);
  EXPECT_EQ(w.layers[29].w_down.dim(1), 1536);
  EXPECT_EQ(w.final_norm.dtype(), DType::kF32);
  // SmolLM2-135M: 134,515,008 parameters (embeddings 49152*576, 30 layers of 3,540,096, final norm 576).
  EXPECT_EQ(w.num_params(), 134515008);
}

TEST(GgufLoader, LoadsEverySupportedDtypeZeroCopy) {
  testing::TempDir dir;
  std::map<std::string, std::string> raw;
  testing::write_bytes(dir.file("tiny.gguf"), tiny_gguf({}, &raw));
  auto r = load_model(dir.file("tiny.gguf"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const ModelWeights& w = r->weights;
  EXPECT_EQ(w.config.head_dim, 16);
  EXPECT_EQ(w.config.vocab_size, 40);
  EXPECT_EQ(w.config.norm_eps, 1e-6f);
  EXPECT_EQ(w.config.rope_theta, 500000.f);
  EXPECT_FALSE(w.config.tied_embeddings);
  EXPECT_EQ(r->chat_template, "{{ messages }}");
  auto same_bytes = [&](const Tensor& t, const std::string& name) {
    const std::string& want = raw.at(name);
    ASSERT_EQ(t.nbytes(), want.size()) << name;
    EXPECT_EQ(std::memcmp(t.data(), want.data(), want.size()), 0) << name;
  };
  same_bytes(w.tok_embeddings, "token_embd.weight");
  same_bytes(w.output, "output.weight");
  same_bytes(w.layers[1].wq, "blk.1.attn_q.weight");
  same_bytes(w.layers[1].wk, "blk.1.attn_k.weight");
  same_bytes(w.layers[1].wv, "blk.1.attn_v.weight");
  same_bytes(w.layers[1].wo, "blk.1.attn_output.weight");
  same_bytes(w.layers[0].w_gate, "blk.0.ffn_gate.weight");
  same_bytes(w.layers[0].w_up, "blk.0.ffn_up.weight");
  same_bytes(w.layers[0].w_down, "blk.0.ffn_down.weight");
  EXPECT_EQ(w.layers[1].wo.dtype(), DType::kBF16);
  EXPECT_EQ(w.layers[1].wk.dtype(), DType::kQ4_1);
  // The f16 norm becomes f32 with the same values (f16 -> f32 is exact).
  const auto* h = reinterpret_cast<const uint16_t*>(raw.at("blk.0.ffn_norm.weight").data());
  ASSERT_EQ(w.layers[0].ffn_norm.dtype(), DType::kF32);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(w.layers[0].ffn_norm.ptr<float>()[i], fp16_to_fp32(h[i]));

  // Untied variant: no output.weight -> output is the embedding.
  testing::write_bytes(dir.file("tied.gguf"), tiny_gguf({.with_output = false}));
  auto t = load_model(dir.file("tied.gguf"));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_TRUE(t->weights.config.tied_embeddings);
  EXPECT_EQ(t->weights.output.data(), t->weights.tok_embeddings.data());
}

TEST(GgufFile, ReadsEveryMetadataType) {
  testing::TempDir dir;
  testing::write_bytes(dir.file("tiny.gguf"), tiny_gguf({}));
  auto r = GgufFile::open(dir.file("tiny.gguf"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const GgufFile& g = **r;
  EXPECT_EQ(*g.get_int("test.u8"), 200);
  EXPECT_EQ(*g.get_int("test.i8"), -100);
  EXPECT_EQ(*g.get_int("test.u16"), 60000);
  EXPECT_EQ(*g.get_int("test.i16"), -30000);
  EXPECT_EQ(*g.get_int("test.i32"), -2000000000);
  EXPECT_EQ(g.find("test.u64")->u, 18000000000000000000ull);
  EXPECT_FALSE(g.get_int("test.u64").ok());  // does not fit int64: an error, not a wrapped value
  EXPECT_EQ(*g.get_int("test.i64"), -9000000000000000000ll);
  EXPECT_EQ(*g.get_float("test.f64"), 0.1);
  EXPECT_EQ(*g.get_int("test.bool"), 1);
  EXPECT_EQ(*g.get_float("llama.rope.freq_base"), 500000.0);
  const GgufValue* nested = g.find("test.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->array_type, GgufType::kArray);
  EXPECT_EQ(g.find("tokenizer.ggml.scores")->floats, std::vector<double>(40, -1.5));
  EXPECT_EQ(g.find("tokenizer.ggml.token_type")->ints, std::vector<int64_t>(40, 1));
  EXPECT_EQ(g.find("tokenizer.ggml.tokens")->strs[39], "t39");
  EXPECT_EQ(g.keys().front(), "general.architecture");  // file order is kept
}

// llama.cpp's convert_hf_to_gguf.py (LlamaModel, rope_type llama3) writes rope_freqs.weight as these
// per-frequency divisors; re-implemented here from that script, not from our rope_inv_freq.
std::vector<float> llama3_rope_factors(double theta, int head_dim, double factor, double low, double high,
                                       double old_ctx) {
  std::vector<float> out;
  for (int i = 0; i < head_dim; i += 2) {
    const float freq = static_cast<float>(1.0 / std::pow(theta, static_cast<float>(i) / head_dim));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < old_ctx / high) {
      out.push_back(1.f);
    } else if (wavelen > old_ctx / low) {
      out.push_back(static_cast<float>(factor));
    } else {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      out.push_back(static_cast<float>(1 / ((1 - smooth) / factor + smooth)));
    }
  }
  return out;
}

TEST(GgufLoader, RecoversLlama3RopeScalingFromRopeFreqs) {
  testing::TempDir dir;
  // theta 500000, head_dim 16: the 8 wavelengths span all three llama3 bands (keep, blend, divide).
  testing::write_bytes(dir.file("l3.gguf"),
                       tiny_gguf({.rope_freqs = llama3_rope_factors(500000.0, 16, 32.0, 1.0, 4.0, 8192.0)}));
  auto r = load_model(dir.file("l3.gguf"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const RopeScaling& s = r->weights.config.rope_scaling;
  EXPECT_EQ(s.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(s.factor, 32.f);
  EXPECT_EQ(s.low_freq_factor, 1.f);
  EXPECT_EQ(s.high_freq_factor, 4.f);
  EXPECT_EQ(s.original_max_position, 8192);

  std::vector<float> odd = llama3_rope_factors(500000.0, 16, 32.0, 1.0, 4.0, 8192.0);
  odd[3] *= 1.5f;  // not a llama3 curve: refuse rather than run with the wrong frequencies
  testing::write_bytes(dir.file("odd.gguf"), tiny_gguf({.rope_freqs = odd}));
  auto bad = load_model(dir.file("odd.gguf"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(bad.status().message().find("rope_freqs"), std::string::npos);
}

Status load_status(const std::string& bytes) {
  testing::TempDir dir;
  testing::write_bytes(dir.file("m.gguf"), bytes);
  auto r = load_model(dir.file("m.gguf"));
  return r.ok() ? Status::Ok() : r.status();
}

TEST(GgufLoader, ClearErrors) {
  Status s = load_status(tiny_gguf({.arch = "gpt2"}));
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("'gpt2'"), std::string::npos) << s.message();

  s = load_status(tiny_gguf({.q_rows = 32}));
  EXPECT_NE(s.message().find("blk.0.attn_q.weight"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[32, 64]"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[64, 64]"), std::string::npos) << s.message();

  std::string bytes = tiny_gguf({});
  bytes[4] = 1;  // version 1
  EXPECT_NE(load_status(bytes).message().find("v1"), std::string::npos);
  bytes[4] = 4;
  EXPECT_EQ(load_status(bytes).code(), StatusCode::kUnimplemented);

  GgufBuilder dup;
  dup.kv_u32("a", 1);
  dup.kv_u32("a", 2);
  EXPECT_NE(load_status(dup.build()).message().find("duplicate metadata key 'a'"), std::string::npos);

  GgufBuilder dupt;
  dupt.kv_str("general.architecture", "llama");
  dupt.tensor("x", {32}, kGgmlF32, std::string(128, '\0'));
  dupt.tensor("x", {32}, kGgmlF32, std::string(128, '\0'));
  EXPECT_NE(load_status(dupt.build()).message().find("duplicate tensor name 'x'"), std::string::npos);

  GgufBuilder block;
  block.tensor("q", {2, 48}, kGgmlQ8_0, std::string(2 * 34 * 2, '\0'));  // 48 is not a multiple of 32
  EXPECT_NE(load_status(block.build()).message().find("block size 32"), std::string::npos);

  GgufBuilder k_quant;  // Q4_K: listed, but loading it as a model is an error
  k_quant.kv_str("general.architecture", "llama");
  k_quant.tensor("token_embd.weight", {1, 256}, 12, std::string(144, '\0'));
  testing::TempDir dir;
  testing::write_bytes(dir.file("k.gguf"), k_quant.build());
  auto g = GgufFile::open(dir.file("k.gguf"));
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_FALSE((*g)->tensors()[0].supported);
  EXPECT_EQ((*g)->tensors()[0].nbytes, 144u);
  EXPECT_NE((*g)->tensor((*g)->tensors()[0]).status().message().find("Q4_K"), std::string::npos);

  // A tensor whose data lies past the end of the file.
  bytes = tiny_gguf({});
  bytes.resize(bytes.size() - 100);
  s = load_status(bytes);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("past the end"), std::string::npos) << s.message();
}

// Hostile counts and lengths fail before allocating: a 1 KB file claiming 2^60 keys or elements.
TEST(GgufFile, RobustHugeCountsFailFast) {
  auto header = [](uint64_t tensors, uint64_t kvs) {
    std::string s = "GGUF";
    testing::put(&s, uint32_t{3});
    testing::put(&s, tensors);
    testing::put(&s, kvs);
    return s;
  };
  for (uint64_t n : {uint64_t{1} << 60, ~uint64_t{0}, uint64_t{1000000}}) {
    EXPECT_FALSE(load_status(header(n, 0) + std::string(1000, '\0')).ok());
    EXPECT_FALSE(load_status(header(0, n) + std::string(1000, '\0')).ok());
    std::string arr = header(0, 1);
    testing::put(&arr, uint64_t{1});
    arr += "k";
    testing::put(&arr, uint32_t{9});   // array
    testing::put(&arr, uint32_t{8});   // of strings
    testing::put(&arr, n);             // count
    EXPECT_FALSE(load_status(arr + std::string(1000, '\0')).ok());
    std::string str = header(0, 1);
    testing::put(&str, n);  // key length
    EXPECT_FALSE(load_status(str + std::string(1000, 'a')).ok());
  }
  // Arrays nested past the depth limit.
  std::string deep = header(0, 1);
  testing::put(&deep, uint64_t{1});
  deep += "k";
  testing::put(&deep, uint32_t{9});
  for (int d = 0; d < 100; ++d) {
    testing::put(&deep, uint32_t{9});
    testing::put(&deep, uint64_t{1});
  }
  EXPECT_NE(load_status(deep + std::string(64, '\0')).message().find("nested"), std::string::npos);
  EXPECT_LT(testing::peak_rss_mib(), 2048);
}

// Fuzz: truncations and corruptions (random bytes, and 1/2/4/8-byte length/count/offset fields set
// to extreme values) of a small generated model, each loaded through load_model.
TEST(GgufLoader, FuzzGeneratedModel) {
  const std::string orig = tiny_gguf({});
  // The header (metadata + tensor infos) is where lengths, counts and offsets live.
  const size_t header_end = std::min<size_t>(orig.size(), 2600);
  testing::TempDir dir;
  const std::string path = dir.file("f.gguf");
  std::mt19937_64 rng(42);
  int num_ok = 0, num_err = 0;
  const uint64_t extremes[] = {0, 1, 31, 32, 33, 0xff, 0xffff, 0xffffffffull, 1ull << 31, 1ull << 32, 1ull << 40,
                               1ull << 62, ~0ull, ~0ull - 31};
  for (int v = 0; v < 400; ++v) {
    std::string b = orig;
    const int kind = v % 4;
    if (kind == 0) {
      b.resize(v % 3 == 0 ? rng() % header_end : rng() % orig.size());
    } else if (kind == 1) {
      for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) b[rng() % header_end] = static_cast<char>(rng());
    } else if (kind == 2) {
      const int width = 1 << (rng() % 4);
      const size_t pos = rng() % (header_end - 8);
      const uint64_t x = rng() % 3 == 0 ? rng() : extremes[rng() % (sizeof(extremes) / 8)];
      std::memcpy(b.data() + pos, &x, static_cast<size_t>(width));
    } else {
      for (int k = 0; k < 16; ++k) b[rng() % b.size()] = static_cast<char>(rng());
    }
    testing::write_bytes(path, b);
    auto r = load_model(path);
    if (r.ok()) {
      ++num_ok;
      testing::touch_all(r->weights);
    } else {
      ++num_err;
      EXPECT_FALSE(r.status().message().empty());
    }
    auto g = GgufFile::open(path);  // the container alone (some corruptions only break the model)
    if (g.ok()) {
      for (const GgufTensorInfo& ti : (*g)->tensors()) {
        auto t = (*g)->tensor(ti);
        if (t.ok() && t->nbytes() > 0) {
          volatile uint8_t last = static_cast<const uint8_t*>(t->data())[t->nbytes() - 1];  // ASan checks the view
          (void)last;
        }
      }
    }
  }
  EXPECT_GT(num_err, 150);
  EXPECT_GT(num_ok, 20);
  EXPECT_LT(testing::peak_rss_mib(), 2048);
}

// Truncations and header corruptions of the real SmolLM2 file's first 2 MB (its metadata and tensor
// infos take the first 1.7 MB; the tokenizer arrays make the count and length checks matter).
TEST(GgufLoader, RobustRealFilePrefix) {
  if (!std::filesystem::exists(kSmol)) GTEST_SKIP() << kSmol << " missing: run scripts/setup.sh";
  const std::string prefix = testing::read_bytes(kSmol, 2 << 20);
  testing::TempDir dir;
  const std::string path = dir.file("p.gguf");
  std::mt19937_64 rng(135);
  for (int v = 0; v < 100; ++v) {
    std::string b = prefix;
    if (v % 2 == 0) {
      b.resize(v < 10 ? rng() % 4096 : rng() % prefix.size());
    } else {
      const uint64_t x = v % 4 == 1 ? rng() : (rng() % 2 ? ~0ull : 1ull << (rng() % 64));
      const size_t pos = v < 20 ? rng() % 1024 : rng() % 1800000;
      std::memcpy(b.data() + pos, &x, 8);
    }
    testing::write_bytes(path, b);
    auto r = load_model(path);
    EXPECT_FALSE(r.ok());  // a 2 MB prefix never holds a whole model
    EXPECT_FALSE(r.status().message().empty());
  }
  EXPECT_LT(testing::peak_rss_mib(), 2048);
}

}  // namespace
}  // namespace nb
