// Synthetic prompts of chosen token lengths. With a tokenizer, prompts are runs of whole-word
// vocabulary entries (" table", " river": lower-case ASCII words that encode to themselves as one
// token), checked by re-encoding the finished text so the server sees exactly the requested
// number of tokens. Without one, common English words stand in at about one token each.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tools/bench_serve/stats.h"

namespace nb {
class Tokenizer;
}

namespace nb::bench_serve {

class PromptBuilder {
 public:
  // `tokenizer` may be null (approximate lengths); it must outlive the builder.
  static Result<PromptBuilder> create(const Tokenizer* tokenizer);

  bool exact() const { return tokenizer_ != nullptr; }
  // Text of `num_tokens` tokens following `prefix` (which must encode to `prefix_tokens` tokens
  // on its own; pass "" and 0 for none): prefix + the new text encodes to prefix_tokens +
  // num_tokens tokens, without BOS. Words are drawn from `rng`.
  Result<std::string> build(int64_t num_tokens, Rng& rng, const std::string& prefix = "", int64_t prefix_tokens = 0) const;
  // The number of tokens `text` encodes to (no BOS); -1 without a tokenizer.
  int64_t count_tokens(const std::string& text) const;
  size_t num_words() const { return words_.size(); }

 private:
  const Tokenizer* tokenizer_ = nullptr;
  std::vector<std::string> words_;  // each with its leading space: " word"
};

}  // namespace nb::bench_serve
