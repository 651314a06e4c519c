// Byte-level BPE, as HF tokenizers' BPE model behind a ByteLevel pre-tokenizer does it:
//   1. pre-tokenize: split the text with the model's regexes (PCRE2, UTF + UCP);
//   2. each piece: its bytes, as GPT-2's byte->unicode characters, are the initial symbols;
//   3. repeatedly apply the lowest-ranked merge among adjacent pairs (ties: leftmost), exactly
//      HF's Word::merge_all, including how it detects stale queue entries.
// PCRE2_CODE_UNIT_WIDTH=8 comes from the build (CMakeLists.txt).
#include <pcre2.h>

#include <deque>
#include <queue>

#include "tokenizer/tokenizer_models.h"
#include "tokenizer/utf8.h"

namespace nb {

const char* const kGpt2SplitPattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

namespace {

// HF tokenizer.json regexes of the families llama.cpp names in tokenizer.ggml.pre.
constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Owns a compiled pattern.
struct Regex {
  pcre2_code* code = nullptr;
  Regex() = default;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code); }
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer() : Tokenizer(Model::kByteLevelBpe) {}

  Status build(TokenVocab vocab, BpeOptions options);

 protected:
  void encode_fragment(std::string_view text, bool after_special, std::vector<int32_t>* out) const override;

 private:
  struct Step {
    std::unique_ptr<Regex> regex;  // null: no split
    bool add_prefix_space = false;
  };
  struct Merge {
    int32_t rank, new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void split(const Regex& re, std::string_view piece, pcre2_match_data* md, std::vector<std::string_view>* out) const;
  void encode_word(std::string_view word, std::vector<int32_t>* out) const;

  std::vector<Step> steps_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_token_{};
  bool ignore_merges_ = false;
  bool missing_byte_to_unk_ = false;
};

Status BpeTokenizer::build(TokenVocab vocab, BpeOptions options) {
  const auto& b2u = gpt2_byte_to_unicode();
  // Reverse map, code point -> byte; the GPT-2 alphabet lies below U+0144.
  std::array<int16_t, 0x144> u2b;
  u2b.fill(-1);
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = 0;
    utf8::valid_char_len(b2u[b], &cp);
    u2b[cp] = static_cast<int16_t>(b);
  }
  // A token's bytes: HF's ByteLevel decoder maps every character back to its byte, or keeps the
  // token's own UTF-8 when some character is outside the alphabet (added tokens like "<|x|>" are
  // inside it and come out the same either way).
  std::vector<std::string> pieces(vocab.texts.size());
  for (size_t i = 0; i < vocab.texts.size(); ++i) {
    const std::string& t = vocab.texts[i];
    std::string bytes;
    bool all_mapped = true;
    for (size_t pos = 0; pos < t.size();) {
      uint32_t cp = 0;
      const size_t n = utf8::valid_char_len(std::string_view(t).substr(pos), &cp);
      if (n == 0 || cp >= u2b.size() || u2b[cp] < 0) {
        all_mapped = false;
        break;
      }
      bytes.push_back(static_cast<char>(u2b[cp]));
      pos += n;
    }
    pieces[i] = all_mapped ? std::move(bytes) : t;
  }
  NB_RETURN_IF_ERROR(init(std::move(vocab), std::move(pieces)));

  for (int b = 0; b < 256; ++b) byte_token_[b] = find_token(b2u[b]);
  ignore_merges_ = options.ignore_merges;
  missing_byte_to_unk_ = options.missing_byte_to_unk;

  merges_.reserve(options.merges.size());
  std::string joined;
  for (size_t rank = 0; rank < options.merges.size(); ++rank) {
    const auto& [a, b] = options.merges[rank];
    joined.assign(a).append(b);
    const int32_t ia = find_token(a), ib = find_token(b), im = find_token(joined);
    // A merge naming a string outside the vocabulary can never apply; skip it like llama.cpp.
    if (ia < 0 || ib < 0 || im < 0) continue;
    merges_.emplace(pair_key(ia, ib), Merge{static_cast<int32_t>(rank), im});  // first rank wins
  }

  for (const PreTokenizeStep& s : options.pre_tokenizer) {
    Step step;
    step.add_prefix_space = s.add_prefix_space;
    if (!s.pattern.empty()) {
      int err = 0;
      PCRE2_SIZE err_offset = 0;
      step.regex = std::make_unique<Regex>();
      step.regex->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(s.pattern.data()), s.pattern.size(),
                                       PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
      if (step.regex->code == nullptr) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        return invalid_argument("pre-tokenizer pattern '" + s.pattern + "' does not compile at offset " +
                                std::to_string(err_offset) + ": " + reinterpret_cast<const char*>(msg));
      }
      // JIT makes the split several times faster; without it pcre2_match interprets.
      pcre2_jit_compile(step.regex->code, PCRE2_JIT_COMPLETE);
    }
    steps_.push_back(std::move(step));
  }
  return Status::Ok();
}

void BpeTokenizer::split(const Regex& re, std::string_view piece, pcre2_match_data* md,
                         std::vector<std::string_view>* out) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
  size_t prev_end = 0, offset = 0;
  while (offset <= piece.size()) {
    // The text is valid UTF-8 (encode repaired it), so the UTF check can be skipped.
    int rc = pcre2_match(re.code, subject, piece.size(), offset, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // JIT stack or match limits: retry in the interpreter, which has more room.
      rc = pcre2_match(re.code, subject, piece.size(), offset, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) break;  // no match (or a limit hit even so): the rest stays one piece
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (start > prev_end) out->push_back(piece.substr(prev_end, start - prev_end));
    if (end > start) {
      out->push_back(piece.substr(start, end - start));
      prev_end = end;
      offset = end;
    } else {  // an empty match: step over one character
      if (start >= piece.size()) break;
      offset = start + std::max<size_t>(1, utf8::valid_char_len(piece.substr(start)));
      prev_end = std::max(prev_end, start);
    }
  }
  if (prev_end < piece.size()) out->push_back(piece.substr(prev_end));
}

void BpeTokenizer::encode_fragment(std::string_view text, bool /*after_special*/, std::vector<int32_t>* out) const {
  std::vector<std::string_view> pieces{text}, next;
  std::deque<std::string> prefixed;  // owns pieces that got a prefix space (stable addresses)
  for (const Step& step : steps_) {
    if (step.add_prefix_space) {
      for (std::string_view& p : pieces) {
        if (p.starts_with(' ')) continue;
        std::string& s = prefixed.emplace_back(1, ' ');
        s.append(p);
        p = s;
      }
    }
    if (step.regex == nullptr) continue;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(step.regex->code, nullptr);
    if (md == nullptr) break;  // out of memory: keep the pieces unsplit
    next.clear();
    for (std::string_view p : pieces) split(*step.regex, p, md, &next);
    pcre2_match_data_free(md);
    pieces.swap(next);
  }
  for (std::string_view p : pieces) encode_word(p, out);
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  const auto& b2u = gpt2_byte_to_unicode();
  if (ignore_merges_) {
    std::string mapped;
    for (char c : word) mapped += b2u[static_cast<uint8_t>(c)];
    const int32_t id = find_token(mapped);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  struct Symbol {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  for (char c : word) {
    int32_t id = byte_token_[static_cast<uint8_t>(c)];
    if (id < 0 && missing_byte_to_unk_) id = unk_id();
    if (id < 0) continue;
    const auto i = static_cast<int32_t>(sym.size());
    sym.push_back({id, i - 1, i + 1, true});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    int32_t rank, pos, new_id;
  };
  struct Later {  // min-heap on (rank, pos)
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, Later> queue;
  const auto consider = [&](int32_t pos) {
    if (pos < 0 || sym[pos].next < 0) return;
    const auto it = merges_.find(pair_key(sym[pos].id, sym[sym[pos].next].id));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& s = sym[top.pos];
    if (!s.alive || s.next < 0) continue;
    // Stale when the pair at this position no longer makes the same token.
    const auto it = merges_.find(pair_key(s.id, sym[s.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    Symbol& right = sym[s.next];
    s.id = top.new_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) sym[s.next].prev = top.pos;
    consider(s.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out->push_back(sym[i].id);
}

}  // namespace

const std::array<std::string, 256>& gpt2_byte_to_unicode() {
  // Printable bytes map to themselves; the others to U+0100 upwards, in byte order.
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      utf8::append_codepoint(&t[b], printable ? b : next++);
    }
    return t;
  }();
  return table;
}

Result<std::vector<PreTokenizeStep>> pre_tokenizer_for(std::string_view pre) {
  const auto is_any = [&](std::initializer_list<std::string_view> names) {
    for (std::string_view n : names) {
      if (pre == n) return true;
    }
    return false;
  };
  if (is_any({"gpt2", "gpt-2", "mpt", "olmo", "jais"})) return std::vector<PreTokenizeStep>{{kGpt2SplitPattern, false}};
  // HF: Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]
  if (is_any({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})) {
    return std::vector<PreTokenizeStep>{{"\\p{N}", false}, {kGpt2SplitPattern, false}};
  }
  // HF: Sequence[Split(pattern, Isolated), ByteLevel(use_regex=false)]
  if (is_any({"llama3", "llama-v3", "llama-bpe", "dbrx", "smaug-bpe"})) {
    return std::vector<PreTokenizeStep>{{kLlama3Pattern, false}};
  }
  if (is_any({"qwen2", "stablelm2"})) return std::vector<PreTokenizeStep>{{kQwen2Pattern, false}};
  return unimplemented("pre-tokenizer '" + std::string(pre) +
                       "' is not supported; supported tokenizer.ggml.pre values: gpt2, mpt, olmo, jais, smollm, "
                       "starcoder, refact, command-r, codeshell, exaone, minerva-7b, llama3, llama-v3, llama-bpe, "
                       "dbrx, smaug-bpe, qwen2, stablelm2");
}

Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(TokenVocab vocab, BpeOptions options) {
  auto tok = std::make_unique<BpeTokenizer>();
  NB_RETURN_IF_ERROR(tok->build(std::move(vocab), std::move(options)));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace nb
