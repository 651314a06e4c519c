// Helpers for the format/loader tests: temp dirs, small GGUF and safetensors writers (so tests can
// build inputs, including hostile ones), and a check that reads every byte a loaded model exposes.
#pragma once
#include <sys/resource.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "model/weights.h"

namespace nb::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "nibble_test_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
inline std::string read_bytes(const std::string& path, size_t max_bytes = SIZE_MAX) {
  std::ifstream in(path, std::ios::binary);
  std::string s;
  char buf[1 << 16];
  while (s.size() < max_bytes) {
    in.read(buf, sizeof(buf));
    if (in.gcount() <= 0) break;
    s.append(buf, static_cast<size_t>(in.gcount()));
  }
  if (s.size() > max_bytes) s.resize(max_bytes);
  return s;
}

template <typename T>
void put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Minimal GGUF v3 writer following the spec (not our reader): tests use it to build inputs.
class GgufBuilder {
 public:
  void kv_u32(const std::string& k, uint32_t v) { key(k, 4); put(&kv_, v); }
  void kv_i32(const std::string& k, int32_t v) { key(k, 5); put(&kv_, v); }
  void kv_f32(const std::string& k, float v) { key(k, 6); put(&kv_, v); }
  void kv_u8(const std::string& k, uint8_t v) { key(k, 0); put(&kv_, v); }
  void kv_i8(const std::string& k, int8_t v) { key(k, 1); put(&kv_, v); }
  void kv_u16(const std::string& k, uint16_t v) { key(k, 2); put(&kv_, v); }
  void kv_i16(const std::string& k, int16_t v) { key(k, 3); put(&kv_, v); }
  void kv_bool(const std::string& k, bool v) { key(k, 7); put(&kv_, static_cast<uint8_t>(v)); }
  void kv_u64(const std::string& k, uint64_t v) { key(k, 10); put(&kv_, v); }
  void kv_i64(const std::string& k, int64_t v) { key(k, 11); put(&kv_, v); }
  void kv_f64(const std::string& k, double v) { key(k, 12); put(&kv_, v); }
  void kv_str(const std::string& k, const std::string& v) { key(k, 8); str(&kv_, v); }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    put(&kv_, uint32_t{8});
    put(&kv_, static_cast<uint64_t>(v.size()));
    for (const auto& s : v) str(&kv_, s);
  }
  void kv_i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9);
    put(&kv_, uint32_t{5});
    put(&kv_, static_cast<uint64_t>(v.size()));
    for (int32_t x : v) put(&kv_, x);
  }
  void kv_f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9);
    put(&kv_, uint32_t{6});
    put(&kv_, static_cast<uint64_t>(v.size()));
    for (float x : v) put(&kv_, x);
  }
  // [[1, 2], [3]] as an array of u16 arrays.
  void kv_nested(const std::string& k) {
    key(k, 9);
    put(&kv_, uint32_t{9});
    put(&kv_, uint64_t{2});
    put(&kv_, uint32_t{2}); put(&kv_, uint64_t{2}); put(&kv_, uint16_t{1}); put(&kv_, uint16_t{2});
    put(&kv_, uint32_t{2}); put(&kv_, uint64_t{1}); put(&kv_, uint16_t{3});
  }
  // shape outermost-first; data is the raw stored bytes.
  void tensor(const std::string& name, std::vector<int64_t> shape, uint32_t ggml_type, const std::string& data) {
    str(&infos_, name);
    put(&infos_, static_cast<uint32_t>(shape.size()));
    for (auto it = shape.rbegin(); it != shape.rend(); ++it) put(&infos_, static_cast<uint64_t>(*it));
    put(&infos_, ggml_type);
    put(&infos_, static_cast<uint64_t>(data_.size()));
    data_ += data;
    data_.resize((data_.size() + 31) / 32 * 32, '\0');
    ++num_tensors_;
  }
  std::string build() const {
    std::string s = "GGUF";
    put(&s, uint32_t{3});
    put(&s, num_tensors_);
    put(&s, num_kv_);
    s += kv_;
    s += infos_;
    s.resize((s.size() + 31) / 32 * 32, '\0');
    return s + data_;
  }

 private:
  static void str(std::string* s, const std::string& v) {
    put(s, static_cast<uint64_t>(v.size()));
    s->append(v);
  }
  void key(const std::string& k, uint32_t type) {
    str(&kv_, k);
    put(&kv_, type);
    ++num_kv_;
  }
  std::string kv_, infos_, data_;
  uint64_t num_kv_ = 0, num_tensors_ = 0;
};

// safetensors writer: header padded with spaces to a multiple of 8 like the reference writer.
class SafetensorsBuilder {
 public:
  void tensor(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, const std::string& data) {
    header_[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {data_.size(), data_.size() + data.size()}}};
    data_ += data;
  }
  std::string build() const {
    nlohmann::json h = header_;
    h["__metadata__"] = {{"format", "pt"}};
    std::string text = h.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');
    std::string s;
    put(&s, static_cast<uint64_t>(text.size()));
    return s + text + data_;
  }

 private:
  nlohmann::json header_ = nlohmann::json::object();
  std::string data_;
};

// Reads every byte of every tensor (so ASan sees any view that reaches past its file) and returns
// a checksum the caller can ignore.
inline uint64_t touch_all(const ModelWeights& w) {
  uint64_t sum = 0;
  auto touch = [&](const Tensor& t) {
    if (!t.defined()) return;
    const auto* p = static_cast<const uint8_t*>(t.data());
    for (size_t i = 0; i < t.nbytes(); i += 61) sum += p[i];
    if (t.nbytes() > 0) sum += p[t.nbytes() - 1];
  };
  touch(w.tok_embeddings);
  touch(w.final_norm);
  touch(w.output);
  for (const LayerWeights& l : w.layers) {
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      touch(*t);
    }
  }
  return sum;
}

// Peak resident set size of this process so far, in MiB.
inline long peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

// Random bytes of `n`, deterministic per rng.
inline std::string random_bytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

}  // namespace nb::testing
