// SentencePiece BPE, as sentencepiece's normalizer.cc (identity rules) + bpe_model.cc +
// SentencePieceProcessor::Encode do it:
//   1. normalize: optionally drop leading/trailing spaces and squeeze runs of spaces
//      (remove_extra_whitespaces), prepend the dummy-prefix space, turn ' ' into U+2581;
//   2. split into characters and repeatedly merge the adjacent pair whose concatenation is the
//      highest-scoring piece (ties: the leftmost pair);
//   3. pieces of type UNUSED are split back into the pair they were merged from;
//   4. a piece not in the vocabulary becomes byte tokens <0xNN> (byte_fallback) or one unknown
//      token per run of unknown pieces.
#include <algorithm>
#include <queue>

#include "tokenizer/tokenizer_models.h"
#include "tokenizer/utf8.h"

namespace nb {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0x41>" -> 0x41; -1 when `t` is not of that form.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return -1;
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class SpmTokenizer final : public Tokenizer {
 public:
  SpmTokenizer() : Tokenizer(Model::kSentencePiece) {}

  Status build(TokenVocab vocab, SpmOptions options) {
    options_ = std::move(options);
    scores_ = vocab.scores;
    if (scores_.empty()) scores_.assign(vocab.texts.size(), 0.0f);
    std::vector<std::string> pieces(vocab.texts.size());
    for (size_t i = 0; i < vocab.texts.size(); ++i) {
      const std::string& t = vocab.texts[i];
      switch (vocab.types[i]) {
        case TokenType::kByte: {
          const int v = parse_byte_token(t);
          if (v < 0) {
            return data_loss("byte token " + std::to_string(i) + " is '" + t + "', expected the form <0xNN>");
          }
          pieces[i] = std::string(1, static_cast<char>(v));
          if (byte_to_id_[v] < 0) byte_to_id_[v] = static_cast<int32_t>(i);
          break;
        }
        case TokenType::kUnknown:
          pieces[i] = options_.unk_surface;
          break;
        case TokenType::kControl:
          pieces[i] = t;
          break;
        default:
          pieces[i] = unescape(t);
      }
    }
    if (vocab.unk_id < 0) {
      for (size_t i = 0; i < vocab.types.size(); ++i) {
        if (vocab.types[i] == TokenType::kUnknown) {
          vocab.unk_id = static_cast<int32_t>(i);
          break;
        }
      }
    }
    if (vocab.unk_id < 0) {
      return data_loss("the SentencePiece vocabulary has no unknown token; the tokenizer file is incomplete");
    }
    NB_RETURN_IF_ERROR(init(std::move(vocab), std::move(pieces)));
    decode_rules_.sentencepiece = true;
    decode_rules_.strip_first_space = options_.add_dummy_prefix || options_.remove_extra_whitespaces;
    decode_rules_.strip_all_first_spaces = options_.remove_extra_whitespaces;
    // sentencepiece merges only into NORMAL, USER_DEFINED and UNUSED pieces.
    for (size_t i = 0; i < texts_.size(); ++i) {
      const TokenType t = types_[i];
      if (t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUnused) {
        mergeable_.emplace(texts_[i], static_cast<int32_t>(i));
        has_unused_ = has_unused_ || t == TokenType::kUnused;
      }
    }
    return Status::Ok();
  }

 protected:
  void encode_fragment(std::string_view text, bool after_special, std::vector<int32_t>* out) const override;

 private:
  struct Symbol {
    int32_t prev, next;
    uint32_t start, len;  // bytes of the normalized text
  };
  struct Pair {
    float score;
    int32_t left, right;
    uint32_t len;
  };
  struct PairOrder {  // priority_queue puts the "largest" on top: highest score, then leftmost
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  std::string unescape(const std::string& t) const {
    std::string out;
    out.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
        out.push_back(' ');
        i += kSpaceSymbol.size();
      } else {
        out.push_back(t[i++]);
      }
    }
    return out;
  }

  std::string normalize(std::string_view text, bool add_prefix) const;
  void emit_piece(std::string_view piece, std::vector<int32_t>* out, bool* prev_unk) const;

  SpmOptions options_;
  std::vector<float> scores_;
  std::array<int32_t, 256> byte_to_id_ = [] {
    std::array<int32_t, 256> a{};
    a.fill(-1);
    return a;
  }();
  std::unordered_map<std::string_view, int32_t> mergeable_;
  bool has_unused_ = false;
};

std::string SpmTokenizer::normalize(std::string_view text, bool add_prefix) const {
  const std::string_view space = options_.escape_whitespaces ? kSpaceSymbol : std::string_view(" ");
  size_t i = 0;
  if (options_.remove_extra_whitespaces) {
    while (i < text.size() && text[i] == ' ') ++i;
  }
  std::string out;
  if (i == text.size()) return out;  // nothing but spaces: no dummy prefix either
  out.reserve((text.size() - i) * 3 / 2 + 3);
  if (add_prefix && options_.add_dummy_prefix) out.append(space);
  bool prev_space = options_.remove_extra_whitespaces;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ') {
      if (prev_space) continue;
      out.append(space);
      prev_space = options_.remove_extra_whitespaces;
    } else {
      out.push_back(c);
      prev_space = false;
    }
  }
  if (options_.remove_extra_whitespaces) {
    while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0) {
      out.resize(out.size() - space.size());
    }
  }
  return out;
}

void SpmTokenizer::emit_piece(std::string_view piece, std::vector<int32_t>* out, bool* prev_unk) const {
  const int32_t id = find_token(piece);
  const bool is_unk = id < 0 || id == unk_id();
  if (!is_unk) {
    out->push_back(id);
  } else if (options_.byte_fallback) {
    for (char c : piece) {
      const int32_t b = byte_to_id_[static_cast<uint8_t>(c)];
      out->push_back(b >= 0 ? b : unk_id());
    }
  } else if (!*prev_unk) {
    out->push_back(unk_id());  // a run of unknown pieces is one unknown token
  }
  *prev_unk = is_unk;
}

void SpmTokenizer::encode_fragment(std::string_view text, bool after_special, std::vector<int32_t>* out) const {
  const std::string norm = normalize(text, after_special);
  if (norm.empty()) return;

  std::vector<Symbol> symbols;
  symbols.reserve(norm.size());
  for (size_t pos = 0; pos < norm.size();) {
    // The text is valid UTF-8 (encode repaired it); fall back to one byte defensively.
    const size_t len = std::max<size_t>(1, utf8::valid_char_len(std::string_view(norm).substr(pos)));
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({index - 1, pos + len < norm.size() ? index + 1 : -1, static_cast<uint32_t>(pos),
                       static_cast<uint32_t>(len)});
    pos += len;
  }

  std::priority_queue<Pair, std::vector<Pair>, PairOrder> agenda;
  // sentencepiece's rev_merge: how an UNUSED piece was formed, to split it back afterwards.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  const std::string_view nv(norm);
  const auto add_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    const std::string_view merged = nv.substr(l.start, l.len + r.len);
    const auto it = mergeable_.find(merged);
    if (it == mergeable_.end()) return;
    agenda.push({scores_[it->second], left, right, l.len + r.len});
    if (has_unused_ && types_[it->second] == TokenType::kUnused) {
      rev_merge[merged] = {nv.substr(l.start, l.len), nv.substr(r.start, r.len)};
    }
  };
  for (size_t i = 1; i < symbols.size(); ++i) add_pair(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[top.left];
    Symbol& r = symbols[top.right];
    // Stale: one side was merged away or has grown since this pair was queued.
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = top.left;
    add_pair(l.prev, top.left);
    add_pair(top.left, l.next);
  }

  bool prev_unk = false;
  // Resegments UNUSED pieces into the pair they came from (recursively), then emits.
  const auto resegment = [&](auto&& self, std::string_view piece) -> void {
    if (has_unused_) {
      const int32_t id = find_token(piece);
      if (id >= 0 && types_[id] == TokenType::kUnused) {
        const auto it = rev_merge.find(piece);
        if (it != rev_merge.end()) {
          self(self, it->second.first);
          self(self, it->second.second);
          return;
        }
      }
    }
    emit_piece(piece, out, &prev_unk);
  };
  for (int32_t i = 0; i >= 0; i = symbols[i].next) resegment(resegment, nv.substr(symbols[i].start, symbols[i].len));
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(TokenVocab vocab, SpmOptions options) {
  auto tok = std::make_unique<SpmTokenizer>();
  NB_RETURN_IF_ERROR(tok->build(std::move(vocab), std::move(options)));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace nb
