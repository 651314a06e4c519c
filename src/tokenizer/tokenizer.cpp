// Tokenizer: the parts both models share — vocabulary checks, special-token matching, BOS, and
// decode (which is the incremental detokenizer run to the end, so the two can never disagree).
#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "tokenizer/utf8.h"

namespace nb {
namespace {

constexpr size_t kMaxVocab = size_t{1} << 24;  // far above any real vocabulary; bounds allocations

// Token texts that end a turn or the text, as chat models name them (the list llama.cpp keeps).
constexpr std::string_view kEndOfTurnTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "<|end_of_text|>", "<end_of_utterance>",
};

const std::string kEmpty;

}  // namespace

Status Tokenizer::init(TokenVocab vocab, std::vector<std::string> pieces) {
  const size_t n = vocab.texts.size();
  if (n == 0) return data_loss("the vocabulary is empty; the tokenizer file is incomplete");
  if (n > kMaxVocab) return data_loss("vocabulary of " + std::to_string(n) + " tokens is larger than any real one");
  if (vocab.types.size() != n) {
    return data_loss("vocabulary has " + std::to_string(n) + " tokens but " + std::to_string(vocab.types.size()) +
                     " token types; the tokenizer file is inconsistent");
  }
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    return data_loss("vocabulary has " + std::to_string(n) + " tokens but " + std::to_string(vocab.scores.size()) +
                     " scores; the tokenizer file is inconsistent");
  }
  if (pieces.size() != n) return internal_error("tokenizer pieces and vocabulary differ in size");
  const auto check_id = [&](int32_t id, const char* what) -> Status {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return data_loss(std::string(what) + " id " + std::to_string(id) + " is outside the vocabulary of " +
                       std::to_string(n) + " tokens");
    }
    return Status::Ok();
  };
  NB_RETURN_IF_ERROR(check_id(vocab.bos_id, "BOS"));
  NB_RETURN_IF_ERROR(check_id(vocab.eos_id, "EOS"));
  NB_RETURN_IF_ERROR(check_id(vocab.unk_id, "unknown-token"));

  texts_ = std::move(vocab.texts);
  types_ = std::move(vocab.types);
  pieces_ = std::move(pieces);
  bos_id_ = vocab.bos_id;
  eos_id_ = vocab.eos_id;
  unk_id_ = vocab.unk_id;
  add_bos_ = vocab.add_bos && bos_id_ >= 0;

  text_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) text_to_id_.emplace(texts_[i], static_cast<int32_t>(i));

  // Special tokens: control and unknown only with parse_special, user-defined always.
  specials_.clear();
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = types_[i];
    if (texts_[i].empty()) continue;
    if (t == TokenType::kControl || t == TokenType::kUnknown || t == TokenType::kUserDefined) {
      specials_.push_back({texts_[i], static_cast<int32_t>(i), t == TokenType::kUserDefined});
    }
  }
  std::sort(specials_.begin(), specials_.end(), [](const SpecialToken& a, const SpecialToken& b) {
    const auto fa = static_cast<uint8_t>(a.text[0]), fb = static_cast<uint8_t>(b.text[0]);
    if (fa != fb) return fa < fb;
    if (a.text.size() != b.text.size()) return a.text.size() > b.text.size();
    return a.id < b.id;
  });
  special_bucket_.fill(0);
  for (const SpecialToken& s : specials_) ++special_bucket_[static_cast<uint8_t>(s.text[0]) + 1];
  for (size_t b = 1; b < special_bucket_.size(); ++b) special_bucket_[b] += special_bucket_[b - 1];

  eot_ids_.clear();
  if (eos_id_ >= 0) eot_ids_.push_back(eos_id_);
  for (std::string_view name : kEndOfTurnTexts) {
    const int32_t id = find_token(name);
    if (id >= 0 && types_[id] == TokenType::kControl && !is_eot(id)) eot_ids_.push_back(id);
  }
  return Status::Ok();
}

const Tokenizer::SpecialToken* Tokenizer::match_special(std::string_view text, size_t pos, bool parse_special) const {
  const auto b = static_cast<uint8_t>(text[pos]);
  const std::string_view rest = text.substr(pos);
  for (uint32_t i = special_bucket_[b]; i < special_bucket_[b + 1]; ++i) {
    const SpecialToken& s = specials_[i];
    if (!parse_special && !s.always) continue;
    if (rest.starts_with(s.text)) return &s;  // longest first within the bucket
  }
  return nullptr;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::repaired(text, utf8::Repair::kPerByte);
    text = repaired;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);

  bool after_special = true;  // the start of the text counts as following a special token
  size_t fragment_start = 0;
  if (!specials_.empty()) {
    for (size_t pos = 0; pos < text.size();) {
      const SpecialToken* s = match_special(text, pos, parse_special);
      if (s == nullptr) {
        ++pos;
        continue;
      }
      if (pos > fragment_start) {
        encode_fragment(text.substr(fragment_start, pos - fragment_start), after_special, &out);
      }
      out.push_back(s->id);
      after_special = true;
      pos += s->text.size();
      fragment_start = pos;
    }
  }
  if (fragment_start < text.size()) encode_fragment(text.substr(fragment_start), after_special, &out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  IncrementalDetokenizer detok(*this, skip_special);
  std::string out;
  for (int32_t id : ids) out += detok.push(id);
  out += detok.flush();
  return out;
}

const std::string& Tokenizer::token_piece(int32_t id) const { return is_valid_id(id) ? pieces_[id] : kEmpty; }

const std::string& Tokenizer::token_text(int32_t id) const { return is_valid_id(id) ? texts_[id] : kEmpty; }

TokenType Tokenizer::token_type(int32_t id) const { return is_valid_id(id) ? types_[id] : TokenType::kUndefined; }

bool Tokenizer::is_eot(int32_t id) const {
  return std::find(eot_ids_.begin(), eot_ids_.end(), id) != eot_ids_.end();
}

int32_t Tokenizer::find_token(std::string_view text) const {
  const auto it = text_to_id_.find(text);
  return it == text_to_id_.end() ? -1 : it->second;
}

}  // namespace nb
