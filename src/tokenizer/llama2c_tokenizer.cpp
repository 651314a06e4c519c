// llama2.c tokenizer.bin / tok*.bin (written by llama2.c's tokenizer.py export):
//   int32 max_token_length, then until the end of the file, per token:
//   float32 score, int32 length, `length` bytes.
// The export rewrote sentencepiece's pieces: U+2581 became ' ', <s> and </s> became "\n<s>\n" and
// "\n</s>\n". We undo that, so the vocabulary equals the tokenizer.model it came from. Ids 0, 1, 2
// are <unk>, <s>, </s>; "<0xNN>" pieces are byte-fallback tokens.
//
// The file does not record the normalizer options; we use llama2.c's run.c behaviour (a dummy
// prefix; no removal of extra spaces), which is also Llama 2's.
#include <cmath>
#include <cstring>

#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

constexpr int32_t kMaxTokenLength = 1 << 16;

Status truncated(size_t num_tokens, const std::string& what) {
  return data_loss("llama2.c tokenizer: " + what + " after " + std::to_string(num_tokens) +
                   " tokens; the file is truncated or corrupt — re-export it with llama2.c's tokenizer.py");
}

std::string escape_spaces(std::string_view t) {
  std::string out;
  out.reserve(t.size() + 8);
  for (char c : t) {
    if (c == ' ') {
      out += "\xE2\x96\x81";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool is_byte_piece(std::string_view t) {
  const auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return t.size() == 6 && t.starts_with("<0x") && t[5] == '>' && hex(t[3]) && hex(t[4]);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> parse_llama2c_tokenizer(std::string_view bytes) {
  if (bytes.size() < 4) return truncated(0, "no header");
  int32_t max_len = 0;
  std::memcpy(&max_len, bytes.data(), 4);
  if (max_len <= 0 || max_len > kMaxTokenLength) {
    return data_loss("llama2.c tokenizer: max_token_length " + std::to_string(max_len) +
                     " is not in 1.." + std::to_string(kMaxTokenLength) + "; this is not a llama2.c tokenizer file");
  }
  TokenVocab vocab;
  size_t pos = 4;
  while (pos < bytes.size()) {
    const size_t i = vocab.texts.size();
    if (bytes.size() - pos < 8) return truncated(i, "a token header cut off");
    float score = 0;
    int32_t len = 0;
    std::memcpy(&score, bytes.data() + pos, 4);
    std::memcpy(&len, bytes.data() + pos + 4, 4);
    pos += 8;
    if (len <= 0 || len > max_len) {
      return data_loss("llama2.c tokenizer: token " + std::to_string(i) + " has length " + std::to_string(len) +
                       ", outside 1..max_token_length (" + std::to_string(max_len) + "); the file is corrupt");
    }
    if (static_cast<size_t>(len) > bytes.size() - pos) return truncated(i, "token bytes cut off");
    if (std::isnan(score)) return data_loss("llama2.c tokenizer: token " + std::to_string(i) + " has a NaN score");
    const std::string_view raw = bytes.substr(pos, len);
    pos += len;

    TokenType type = TokenType::kNormal;
    std::string text;
    if (i == 0) {
      text = "<unk>";
      type = TokenType::kUnknown;
    } else if (i == 1 || i == 2) {
      text = i == 1 ? "<s>" : "</s>";
      type = TokenType::kControl;
    } else if (is_byte_piece(raw)) {
      text = std::string(raw);
      type = TokenType::kByte;
    } else {
      text = escape_spaces(raw);
    }
    vocab.texts.push_back(std::move(text));
    vocab.scores.push_back(score);
    vocab.types.push_back(type);
  }
  if (vocab.texts.size() < 3) return truncated(vocab.texts.size(), "fewer than the 3 reserved tokens (<unk>, <s>, </s>)");
  vocab.unk_id = 0;
  vocab.bos_id = 1;
  vocab.eos_id = 2;
  vocab.add_bos = true;
  SpmOptions options;
  options.byte_fallback = false;
  for (TokenType t : vocab.types) options.byte_fallback = options.byte_fallback || t == TokenType::kByte;
  return make_spm_tokenizer(std::move(vocab), std::move(options));
}

}  // namespace nb
