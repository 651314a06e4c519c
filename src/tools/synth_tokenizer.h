// A self-made byte-level BPE tokenizer for `nibble synth`: exactly vocab_size tokens, written as an
// HF tokenizer.json (+ tokenizer_config.json) that both nibble and the `tokenizers` package load.
// Layout: the special tokens sit at the ids the real model uses; every other id is filled in
// ascending order with the 256 byte tokens, then the tokens learned by BPE from a training text,
// then "<|reserved_special_token_N|>" padding (special added tokens, as Llama 3 pads its vocabulary).
// Deterministic: the same text and vocab size always give the same file.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace nb::tools {

struct SynthTokenizerSpec {
  int64_t vocab_size = 0;
  std::vector<std::pair<int64_t, std::string>> specials;  // (id, text), e.g. {1, "<s>"}
  std::string bos, eos;                                   // texts of specials
  bool add_bos = false;
  int64_t model_max_length = 0;
};

struct SynthTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  int64_t num_learned = 0;   // merged tokens learned from the text
  int64_t num_merges = 0;    // merge rules (several may produce the same token)
  int64_t num_reserved = 0;  // padding tokens
};

// A few kilobytes of English prose to learn merges from when no text is given.
std::string_view builtin_training_text();

// BPE merges learned from `text`: at most `max_new_tokens` new tokens, stopping early when no pair
// occurs twice. Each merge is a pair of byte strings; merges are in rank order.
std::vector<std::pair<std::string, std::string>> learn_bpe_merges(std::string_view text, int64_t max_new_tokens);

Result<SynthTokenizerFiles> make_synth_tokenizer(const SynthTokenizerSpec& spec, std::string_view text);

}  // namespace nb::tools
