// The streaming safetensors writer, read back by the (separately written) reader: names, shapes,
// dtypes and every byte survive any chunking of the data; the header keeps the data 8-aligned and
// the tensors packed; misuse is an error, never a bad file. Sharding follows huggingface_hub's rule
// (cases worked by hand from split_state_dict_into_shards_factory). The Python test
// tests/py/test_synth.py checks the files with the `safetensors` package itself.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "format/safetensors.h"
#include "format/safetensors_writer.h"
#include "loader_test_util.h"

namespace nb {
namespace {

using testing::TempDir;

struct Case {
  std::vector<SafetensorsTensorSpec> specs;
  std::vector<std::string> data;  // bytes of each tensor
};

Case random_case(std::mt19937_64& rng) {
  const char* dtypes[] = {"F32", "F16", "BF16", "I8", "I32", "U8", "F64"};
  Case c;
  const int n = 1 + static_cast<int>(rng() % 8);
  for (int i = 0; i < n; ++i) {
    SafetensorsTensorSpec s{"t." + std::to_string(i), dtypes[rng() % 7], {}};
    const int ndim = static_cast<int>(rng() % 4);  // 0 = a scalar
    for (int d = 0; d < ndim; ++d) s.shape.push_back(static_cast<int64_t>(rng() % 5));  // zeros allowed
    const uint64_t bytes = *safetensors_tensor_bytes(s);
    std::string data(bytes, '\0');
    for (char& ch : data) ch = static_cast<char>(rng());
    c.specs.push_back(s);
    c.data.push_back(std::move(data));
  }
  return c;
}

TEST(SafetensorsWriter, RoundTripsThroughTheReaderUnderAnyChunking) {
  TempDir dir;
  std::mt19937_64 rng(5);
  for (int iter = 0; iter < 50; ++iter) {
    const Case c = random_case(rng);
    std::string all;
    for (const std::string& d : c.data) all += d;
    const std::string path = dir.file(std::to_string(iter) + ".safetensors");
    auto w = SafetensorsWriter::create(path, c.specs, {{"format", "pt"}, {"k", "v"}});
    ASSERT_TRUE(w.ok()) << w.status().message();
    size_t pos = 0;
    while (pos < all.size()) {  // random chunk sizes straddle tensor boundaries
      const size_t n = std::min(all.size() - pos, static_cast<size_t>(rng() % 40));
      ASSERT_TRUE((*w)->write(all.data() + pos, n).ok());
      pos += n;
    }
    ASSERT_TRUE((*w)->finish(iter % 2 == 0).ok());
    EXPECT_EQ(std::filesystem::file_size(path), (*w)->file_bytes());

    const std::string raw = testing::read_bytes(path);
    uint64_t header_len = 0;
    std::memcpy(&header_len, raw.data(), 8);
    EXPECT_EQ((8 + header_len) % 8, 0u) << "data section must start 8-aligned";
    EXPECT_EQ(raw.substr(8 + header_len), all) << "data is the tensors back to back";

    auto f = SafetensorsFile::open(path);
    ASSERT_TRUE(f.ok()) << f.status().message();
    EXPECT_EQ((*f)->metadata().at("format"), "pt");
    EXPECT_EQ((*f)->metadata().at("k"), "v");
    ASSERT_EQ((*f)->tensors().size(), c.specs.size());
    for (size_t i = 0; i < c.specs.size(); ++i) {
      const SafetensorsTensorInfo* ti = (*f)->find_tensor(c.specs[i].name);
      ASSERT_NE(ti, nullptr);
      EXPECT_EQ(ti->dtype_name, c.specs[i].dtype_name);
      EXPECT_EQ(ti->shape, c.specs[i].shape);
      ASSERT_EQ(ti->nbytes, c.data[i].size());
      EXPECT_EQ(raw.substr(ti->offset, ti->nbytes), c.data[i]);
    }
  }
}

TEST(SafetensorsWriter, EmptyMetadataIsOmittedAndNoTensorsIsValid) {
  TempDir dir;
  auto w = SafetensorsWriter::create(dir.file("e.safetensors"), {}, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->finish(false).ok());
  const std::string raw = testing::read_bytes(dir.file("e.safetensors"));
  const auto j = nlohmann::json::parse(raw.substr(8));
  EXPECT_TRUE(j.is_object() && j.empty());
  auto f = SafetensorsFile::open(dir.file("e.safetensors"));
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE((*f)->tensors().empty());
}

TEST(SafetensorsWriterRobust, MisuseIsAnErrorNotABadFile) {
  TempDir dir;
  const std::vector<SafetensorsTensorSpec> one = {{"a", "F16", {2, 3}}};  // 12 bytes
  {
    auto w = SafetensorsWriter::create(dir.file("over.safetensors"), one, {});
    ASSERT_TRUE(w.ok());
    const char buf[16] = {};
    EXPECT_TRUE((*w)->write(buf, 10).ok());
    EXPECT_EQ((*w)->write(buf, 3).code(), StatusCode::kOutOfRange);  // 13 > 12
    EXPECT_EQ((*w)->written(), 10u);
    EXPECT_FALSE((*w)->finish(false).ok()) << "2 bytes are still missing";
    EXPECT_FALSE((*w)->write(buf, 1).ok()) << "closed";
  }
  EXPECT_FALSE(SafetensorsWriter::create(dir.file("x.safetensors"), {{"a", "F16", {1}}, {"a", "F32", {1}}}, {}).ok());
  EXPECT_FALSE(SafetensorsWriter::create(dir.file("x.safetensors"), {{"a", "Q4", {1}}}, {}).ok());
  EXPECT_FALSE(SafetensorsWriter::create(dir.file("x.safetensors"), {{"a", "F16", {-1}}}, {}).ok());
  EXPECT_FALSE(SafetensorsWriter::create(dir.file("x.safetensors"), {{"__metadata__", "F16", {1}}}, {}).ok());
  EXPECT_FALSE(
      SafetensorsWriter::create(dir.file("x.safetensors"), {{"a", "F64", {int64_t{1} << 40, int64_t{1} << 30}}}, {}).ok())
      << "byte count overflows";
  EXPECT_FALSE(SafetensorsWriter::create(dir.path() + "/no/such/dir/x.safetensors", one, {}).ok());
}

TEST(SafetensorsShards, FollowHuggingfaceHubSplitting) {
  using V = std::vector<std::vector<size_t>>;
  EXPECT_EQ(plan_safetensors_shards({}, 10), (V{{}}));
  EXPECT_EQ(plan_safetensors_shards({3, 3, 3}, 10), (V{{0, 1, 2}}));
  EXPECT_EQ(plan_safetensors_shards({5, 5, 1}, 10), (V{{0, 1}, {2}})) << "exactly full stays one shard";
  EXPECT_EQ(plan_safetensors_shards({6, 6, 2, 6, 2, 2}, 10), (V{{0}, {1, 2}, {3, 4, 5}}))
      << "the example in huggingface_hub's docstring";
  // An oversized tensor is emitted alone at once; the open shard keeps filling around it.
  EXPECT_EQ(plan_safetensors_shards({1, 20, 1, 9}, 10), (V{{1}, {0, 2}, {3}}));
  EXPECT_EQ(plan_safetensors_shards({20}, 10), (V{{0}}));
}

TEST(SafetensorsShards, NamesAndIndex) {
  EXPECT_EQ(safetensors_shard_name(0, 3), "model-00001-of-00003.safetensors");
  EXPECT_EQ(safetensors_shard_name(11, 12), "model-00012-of-00012.safetensors");
  const auto j = nlohmann::json::parse(
      safetensors_index_json(123, {{"b", "model-00002-of-00002.safetensors"}, {"a", "model-00001-of-00002.safetensors"}}));
  EXPECT_EQ(j["metadata"]["total_size"], 123);
  EXPECT_EQ(j["weight_map"]["a"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(j["weight_map"]["b"], "model-00002-of-00002.safetensors");
}

}  // namespace
}  // namespace nb
