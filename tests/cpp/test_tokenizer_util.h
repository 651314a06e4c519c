// Shared helpers for the tokenizer tests: data paths, loading, random multilingual text.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace nb::test {

inline std::string source_dir() { return NIBBLE_SOURCE_DIR; }
inline std::string shared_data(const std::string& rel) { return source_dir() + "/../shared/data/" + rel; }
inline std::string smollm2_path() { return source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }
inline bool exists(const std::string& p) { return std::filesystem::exists(p); }

inline std::unique_ptr<Tokenizer> load_or_die(const std::string& path) {
  auto src = detect_tokenizer_source(path);
  EXPECT_TRUE(src.ok()) << src.status().to_string();
  if (!src.ok()) return nullptr;
  auto tok = load_tokenizer(*src);
  EXPECT_TRUE(tok.ok()) << tok.status().to_string();
  return tok.ok() ? std::move(*tok) : nullptr;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The first n WikiText-2 test lines holding more than whitespace, without their newline.
inline std::vector<std::string> wikitext_lines(size_t n) {
  std::ifstream f(shared_data("text/wikitext-2-raw.test.txt"));
  std::vector<std::string> out;
  std::string line;
  while (out.size() < n && std::getline(f, line)) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) out.push_back(line);
  }
  return out;
}

// Random text over several scripts, emoji (with ZWJ and skin tones), combining marks, digits,
// spaces, tabs and newlines.
inline std::string random_multilingual(std::mt19937& rng, size_t max_chars) {
  static const std::vector<uint32_t> pool = {
      'a', 'b', 'z', 'Q', ' ', ' ', ' ', '\t', '\n', '0', '7', '.', '\'', 's', '!', 0xE9, 0xDF, 0x3A9, 0x416,
      0x5D0, 0x627, 0x645, 0x915, 0x93F, 0xE01, 0x3042, 0x30AB, 0x65E5, 0x672C, 0x8A9E, 0xD55C, 0x1F600,
      0x1F44D, 0x1F3FD, 0x200D, 0x1F468, 0x1F469, 0x2764, 0xFE0F, 0x301, 0x308, 0x2581, 0xA0, 0x3000, 0x10348};
  std::uniform_int_distribution<size_t> len(0, max_chars), pick(0, pool.size() - 1);
  std::string s;
  const size_t n = len(rng);
  for (size_t i = 0; i < n; ++i) utf8::append_codepoint(&s, pool[pick(rng)]);
  return s;
}

}  // namespace nb::test
