// llama2.c legacy .bin loading on the real stories260K checkpoint. References: the data README's
// documented config, and floats read from the file with plain ifstream at offsets computed here from
// llama2.c run.c's memory_map_weights order.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "loader_test_util.h"
#include "model/weights.h"

namespace nb {
namespace {

const std::string kStoriesDir = std::string(NIBBLE_SOURCE_DIR) + "/../shared/data/stories260K";
const std::string kStories = kStoriesDir + "/stories260K.bin";

std::vector<float> raw_floats(const std::string& path, int64_t float_index, int64_t n) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(28 + float_index * 4);
  std::vector<float> v(static_cast<size_t>(n));
  in.read(reinterpret_cast<char*>(v.data()), n * 4);
  EXPECT_EQ(in.gcount(), n * 4);
  return v;
}

void expect_equal_floats(const Tensor& t, int64_t row, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(t.dtype(), DType::kF32) << what;
  const float* got = t.row<float>(row);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << what << " element " << i;
}

TEST(Llama2cLoader, LoadsStories260KWithDocumentedConfig) {
  auto r = load_model(kStories);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const ModelConfig& c = r->weights.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(c.rope_theta, 10000.f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(r->format, "llama2c");
  EXPECT_EQ(r->tokenizer.kind, TokenizerSource::Kind::kSentencePieceModel);
  EXPECT_EQ(r->tokenizer.path, kStoriesDir + "/tok512.model");
  EXPECT_TRUE(r->chat_template.empty());

  const ModelWeights& w = r->weights;
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_EQ(w.output.data(), w.tok_embeddings.data());
  // Parameter count from the header arithmetic: embeddings + per-layer + final norm.
  const int64_t per_layer = 2 * 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 172;
  EXPECT_EQ(w.num_params(), 512 * 64 + 5 * per_layer + 64);
  EXPECT_EQ(w.num_bytes(), 4 * w.num_params());

  // Offsets (in floats) of each array in the file, in memory_map_weights order.
  const int64_t L = 5, d = 64, h = 172, kv = 32, V = 512;
  const int64_t o_emb = 0, o_rms_att = V * d, o_wq = o_rms_att + L * d, o_wk = o_wq + L * d * d,
                o_wv = o_wk + L * kv * d, o_wo = o_wv + L * kv * d, o_rms_ffn = o_wo + L * d * d,
                o_w1 = o_rms_ffn + L * d, o_w2 = o_w1 + L * h * d, o_w3 = o_w2 + L * d * h, o_final = o_w3 + L * h * d;
  expect_equal_floats(w.tok_embeddings, 0, raw_floats(kStories, o_emb, 64), "tok_embeddings row 0");
  expect_equal_floats(w.tok_embeddings, 511, raw_floats(kStories, o_emb + 511 * d, 64), "tok_embeddings row 511");
  expect_equal_floats(w.layers[0].attn_norm, 0, raw_floats(kStories, o_rms_att, 64), "attn_norm 0");
  expect_equal_floats(w.layers[4].attn_norm, 0, raw_floats(kStories, o_rms_att + 4 * d, 64), "attn_norm 4");
  expect_equal_floats(w.layers[0].wq, 0, raw_floats(kStories, o_wq, 64), "wq 0 row 0");
  expect_equal_floats(w.layers[2].wq, 63, raw_floats(kStories, o_wq + 2 * d * d + 63 * d, 64), "wq 2 row 63");
  expect_equal_floats(w.layers[1].wk, 31, raw_floats(kStories, o_wk + kv * d + 31 * d, 64), "wk 1 row 31");
  expect_equal_floats(w.layers[3].wv, 5, raw_floats(kStories, o_wv + 3 * kv * d + 5 * d, 64), "wv 3 row 5");
  expect_equal_floats(w.layers[4].wo, 63, raw_floats(kStories, o_wo + 4 * d * d + 63 * d, 64), "wo 4 row 63");
  expect_equal_floats(w.layers[1].ffn_norm, 0, raw_floats(kStories, o_rms_ffn + d, 64), "ffn_norm 1");
  expect_equal_floats(w.layers[2].w_gate, 171, raw_floats(kStories, o_w1 + 2 * h * d + 171 * d, 64), "w1 2");
  expect_equal_floats(w.layers[2].w_down, 63, raw_floats(kStories, o_w2 + 2 * d * h + 63 * h, 172), "w2 2");
  expect_equal_floats(w.layers[4].w_up, 171, raw_floats(kStories, o_w3 + 4 * h * d + 171 * d, 64), "w3 4");
  expect_equal_floats(w.final_norm, 0, raw_floats(kStories, o_final, 64), "final norm");
  // Norms are owned f32 copies; linear weights are views into the file.
  EXPECT_NE(w.final_norm.owner(), w.tok_embeddings.owner());
  EXPECT_EQ(w.layers[0].wq.owner(), w.tok_embeddings.owner());
  // The file ends right after the two rope tables (seq_len * head_dim / 2 floats each): shared classifier.
  EXPECT_EQ(std::filesystem::file_size(kStories), static_cast<uintmax_t>(28 + 4 * (o_final + d + 512 * 8)));
}

TEST(Llama2cLoader, RejectsUnknownFormatAndSizeMismatch) {
  testing::TempDir dir;
  testing::write_bytes(dir.file("text.bin"), "hello, this is not a model at all, just text");
  auto r = load_model(dir.file("text.bin"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("GGUF"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("llama2.c"), std::string::npos);

  std::string bytes = testing::read_bytes(kStories);
  bytes += "xxxx";
  testing::write_bytes(dir.file("long.bin"), bytes);
  auto r2 = load_model(dir.file("long.bin"));
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(load_model(dir.file("missing.bin")).status().code(), StatusCode::kNotFound);
}

// Truncations and header/byte corruptions of the real checkpoint: each variant either fails with a
// Status or loads (benign corruption of weight bytes), never crashes or allocates wildly.
TEST(Llama2cLoader, RobustToTruncationAndCorruption) {
  const std::string orig = testing::read_bytes(kStories);
  ASSERT_GT(orig.size(), 1000u);
  testing::TempDir dir;
  const std::string path = dir.file("v.bin");
  std::mt19937_64 rng(260);
  int num_ok = 0, num_err = 0;
  for (int v = 0; v < 240; ++v) {
    std::string b = orig;
    const int kind = v % 4;
    if (kind == 0) {  // truncate anywhere, biased toward the header
      b.resize(v % 8 == 0 ? rng() % 40 : rng() % orig.size());
    } else if (kind == 1) {  // a header field set to a random, extreme or off-by-small value
      const size_t field = rng() % 7;
      int32_t x;
      std::memcpy(&x, b.data() + field * 4, 4);
      const int32_t choices[] = {0, -1, 1, INT32_MAX, INT32_MIN, x + 1, x - 1, x * 2, -x, static_cast<int32_t>(rng())};
      x = choices[rng() % 10];
      std::memcpy(b.data() + field * 4, &x, 4);
    } else if (kind == 2) {  // random bytes anywhere in the first 64 bytes
      for (int k = 0; k < 3; ++k) b[rng() % 64] = static_cast<char>(rng());
    } else {  // random bytes anywhere (weights: benign)
      for (int k = 0; k < 8; ++k) b[rng() % b.size()] = static_cast<char>(rng());
    }
    testing::write_bytes(path, b);
    auto r = load_model(path);
    if (r.ok()) {
      ++num_ok;
      testing::touch_all(r->weights);
      EXPECT_TRUE(r->weights.config.validate().ok());
    } else {
      ++num_err;
      EXPECT_FALSE(r.status().message().empty());
    }
  }
  EXPECT_GT(num_err, 100);
  EXPECT_GT(num_ok, 30);
  EXPECT_LT(testing::peak_rss_mib(), 2048);
}

}  // namespace
}  // namespace nb
