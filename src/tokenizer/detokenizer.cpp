// IncrementalDetokenizer: the one implementation of decoding (Tokenizer::decode runs it to the end).
//
// Byte-level BPE (HF tokenizers' ByteLevel decoder): the bytes of all kept tokens form one stream,
// decoded like String::from_utf8_lossy — one U+FFFD per maximal ill-formed subpart.
//
// SentencePiece (sentencepiece's Decode): consecutive byte tokens form a run decoded on its own,
// one U+FFFD per bad byte; any other token ends the run (control tokens too, even when skipped).
// The first piece's leading space — the dummy prefix — is dropped while no text has been produced.
#include "tokenizer/tokenizer.h"

#include "tokenizer/utf8.h"

namespace nb {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special, bool starts_text)
    : tok_(tokenizer), skip_special_(skip_special), starts_text_(starts_text), expect_bos_ws_(starts_text) {}

std::string IncrementalDetokenizer::drain(bool final) {
  const utf8::Repair repair =
      tok_.decode_rules_.sentencepiece ? utf8::Repair::kPerByte : utf8::Repair::kMaximalSubpart;
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const utf8::Step st = utf8::next_step(std::string_view(pending_).substr(pos), repair, final);
    if (st.kind == utf8::Step::kIncomplete) break;
    if (st.kind == utf8::Step::kChar) {
      out.append(pending_, pos, st.len);
    } else {
      out.append(utf8::kReplacement);
    }
    pos += st.len;
  }
  pending_.erase(0, pos);
  if (!out.empty()) emitted_any_ = true;
  return out;
}

std::string IncrementalDetokenizer::push(int32_t id) {
  if (!tok_.is_valid_id(id)) {
    std::string out = drain(/*final=*/true);
    out.append(utf8::kReplacement);
    emitted_any_ = true;
    return out;
  }
  const TokenType type = tok_.types_[id];
  const std::string& piece = tok_.pieces_[id];
  const Tokenizer::DecodeRules& rules = tok_.decode_rules_;

  if (!rules.sentencepiece) {
    if (skip_special_ && type == TokenType::kControl) return {};
    pending_ += piece;
    return drain(/*final=*/false);
  }

  if (type == TokenType::kByte) {
    pending_ += piece;
    return drain(/*final=*/false);
  }
  std::string out = drain(/*final=*/true);  // a non-byte token ends the byte run
  // sentencepiece: the dummy-prefix space may be stripped until text appears or one was stripped.
  if (bos_ws_seen_ || emitted_any_) expect_bos_ws_ = false;
  bool has_bos_ws = false;
  if (type == TokenType::kControl) {
    if (!skip_special_) pending_ = piece;
  } else if (type == TokenType::kUnknown) {
    pending_ = piece;  // the unknown surface (" \u2047 ") is never stripped
  } else {
    std::string_view p = piece;
    if (expect_bos_ws_ && rules.strip_first_space && !p.empty() && p[0] == ' ') {
      p.remove_prefix(1);
      // With remove_extra_whitespaces every leading space piece is dropped, not just the first.
      has_bos_ws = !rules.strip_all_first_spaces;
    }
    pending_ = p;
  }
  bos_ws_seen_ = has_bos_ws;
  out += drain(/*final=*/true);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out = drain(/*final=*/true);
  emitted_any_ = false;
  bos_ws_seen_ = false;
  expect_bos_ws_ = starts_text_;
  return out;
}

}  // namespace nb
