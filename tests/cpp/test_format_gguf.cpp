// GgufFile on the real SmolLM2 GGUF. Expected values are what gguf-py's GGUFReader reports for the
// same file (checked independently in tests/py/test_loaders.py, which compares every tensor).
#include <gtest/gtest.h>

#include <filesystem>

#include "format/gguf.h"

namespace nb {
namespace {

const std::string kSmol = std::string(NIBBLE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

TEST(GgufFile, ReadsSmolLm2Metadata) {
  if (!std::filesystem::exists(kSmol)) GTEST_SKIP() << kSmol << " missing: run scripts/setup.sh";
  auto r = GgufFile::open(kSmol);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const GgufFile& g = **r;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.keys().size(), 33u);
  EXPECT_EQ(*g.get_string("general.architecture"), "llama");
  EXPECT_EQ(*g.get_int("llama.block_count"), 30);
  EXPECT_EQ(*g.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(*g.get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_EQ(static_cast<float>(*g.get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(*g.get_int("tokenizer.ggml.add_bos_token"), 0);
  const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->type, GgufType::kArray);
  EXPECT_EQ(tokens->array_type, GgufType::kString);
  EXPECT_EQ(tokens->strs.size(), 49152u);
  const GgufValue* types = g.find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  EXPECT_EQ(types->ints.size(), 49152u);
  EXPECT_EQ(g.find("tokenizer.ggml.merges")->strs.size(), 48900u);
  EXPECT_FALSE(g.get_string("llama.block_count").ok());  // wrong type is an error
  EXPECT_FALSE(g.get_int("no.such.key").ok());
  EXPECT_EQ(*g.get_int_or("no.such.key", 7), 7);

  ASSERT_EQ(g.tensors().size(), 272u);
  const GgufTensorInfo* emb = g.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(emb->dtype, DType::kQ8_0);
  EXPECT_EQ(emb->offset, 1785664u);
  EXPECT_EQ(emb->nbytes, 30081024u);
  const GgufTensorInfo* down = g.find_tensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(down->dtype, DType::kQ4_1);
  auto t = g.tensor(*down);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->nbytes(), 552960u);
  EXPECT_EQ(t->dim(0), 576);
}

TEST(GgufFile, RejectsNonGguf) {
  auto r = GgufFile::open(std::string(NIBBLE_SOURCE_DIR) + "/CMakeLists.txt");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a GGUF file"), std::string::npos);
}

}  // namespace
}  // namespace nb
