// Jinja tokenizer (private to the interpreter): splits a template into text and tag tokens,
// applying whitespace control exactly as Jinja2's lexer does (see jinja2/lexer.py: "-" strips all
// whitespace on that side, "+" disables lstrip/trim, trim_blocks eats one newline after %} and #},
// lstrip_blocks removes spaces/tabs between a line start and {% or {#).
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja.h"

namespace nb::jinja {

struct Token {
  enum class Kind { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };
  Kind kind = Kind::kEof;
  std::string text;  // kText/kName/kOp: as written; kString: decoded value; numbers: digits as written
  size_t pos = 0;    // byte offset in the source
};

Result<std::vector<Token>> tokenize(const std::string& source, const Options& options);

}  // namespace nb::jinja
