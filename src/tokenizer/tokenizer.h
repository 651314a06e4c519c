// Tokenizer interface. Implementations: SentencePiece-style BPE (scores + byte fallback) and
// byte-level BPE (GPT-2 style, regex pre-tokenization with PCRE2).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace nb {

// Where a model's tokenizer lives, as found by the model loader (or given on the command line).
struct TokenizerSource {
  enum class Kind { kNone, kGguf, kSentencePieceModel, kLlama2cBin, kHfTokenizerJson };
  Kind kind = Kind::kNone;
  std::string path;  // the .gguf, tokenizer.model, tok*.bin or tokenizer.json
};

}  // namespace nb
