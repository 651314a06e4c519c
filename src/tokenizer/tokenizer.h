// Tokenizer interface. Implementations: SentencePiece-style BPE (scores + byte fallback) and
// byte-level BPE (GPT-2 style, regex pre-tokenization with PCRE2).
//
// A Tokenizer is immutable after loading and safe to use from several threads at once.
// Ids are int32_t; a valid id is in [0, vocab_size()).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace nb {

// Where a model's tokenizer lives, as found by the model loader (or given on the command line).
struct TokenizerSource {
  enum class Kind { kNone, kGguf, kSentencePieceModel, kLlama2cBin, kHfTokenizerJson };
  Kind kind = Kind::kNone;
  std::string path;  // the .gguf, tokenizer.model, tok*.bin or tokenizer.json
};

// Token kinds, numbered like SentencePiece's ModelProto.SentencePiece.Type and GGUF's
// tokenizer.ggml.token_type, so loaders can copy the numbers.
enum class TokenType : uint8_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // <s>, </s>, <|im_start|>: matched in text only with parse_special; "special"
  kUserDefined = 4,  // always matched in text as a whole (HF added tokens with special=false)
  kUnused = 5,
  kByte = 6,         // SentencePiece byte-fallback tokens <0x00>..<0xFF>
};

// The vocabulary every loader produces.
struct TokenVocab {
  // Token strings as the file stores them: SentencePiece pieces (U+2581 for space, "<0x0A>" for
  // byte tokens); byte-level BPE tokens in GPT-2's byte-to-unicode alphabet ("Ġthe"); added and
  // special tokens as plain text ("<|im_end|>").
  std::vector<std::string> texts;
  std::vector<float> scores;  // SentencePiece merge priorities (higher merges first); empty for BPE
  std::vector<TokenType> types;
  int32_t bos_id = -1;  // -1: the model has none
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  bool add_bos = false;  // whether the model expects BOS at the start of a prompt
};

class Tokenizer {
 public:
  enum class Model { kSentencePiece, kByteLevelBpe };

  virtual ~Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text to ids. Bytes of `text` that are not valid UTF-8 are first replaced one U+FFFD per byte
  // (what sentencepiece and llama.cpp do). parse_special: the text of control tokens
  // ("<|im_start|>", "<s>") becomes their id; user-defined tokens are matched either way. Where two
  // such tokens could match, the leftmost wins, then the longest.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;

  // Ids to text; always valid UTF-8. skip_special drops control tokens. Byte sequences that are
  // not valid UTF-8 become U+FFFD the way the reference decodes them: SentencePiece one per byte
  // (sentencepiece's Decode), byte-level BPE one per maximal ill-formed subpart (HF tokenizers).
  // SentencePiece drops the dummy-prefix space of the first piece, as sentencepiece does.
  // Ids outside [0, vocab_size()) decode to U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special) const;

  // The raw bytes a token stands for (not necessarily valid UTF-8 on its own): SentencePiece
  // pieces with U+2581 turned into ' ', byte tokens as their one byte, the unknown token as the
  // model's unk surface (sentencepiece's default " \u2047 "); byte-level BPE tokens mapped back to
  // bytes; control tokens as their text.
  // Empty for an invalid id.
  const std::string& token_piece(int32_t id) const;
  // The token string as stored in the vocabulary (see TokenVocab::texts). Empty for an invalid id.
  const std::string& token_text(int32_t id) const;
  TokenType token_type(int32_t id) const;  // kUndefined for an invalid id

  int32_t vocab_size() const { return static_cast<int32_t>(texts_.size()); }
  bool is_valid_id(int32_t id) const { return id >= 0 && id < vocab_size(); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  bool add_bos_by_default() const { return add_bos_; }
  // Every id that ends a turn: eos plus control tokens named like an end of turn or text
  // (<|im_end|>, <|eot_id|>, <|end_of_text|>, <|endoftext|>, <end_of_turn>, <|end|>, <|eom_id|>).
  const std::vector<int32_t>& eot_ids() const { return eot_ids_; }
  bool is_eot(int32_t id) const;
  // Control tokens: the ones decode(skip_special=true) drops and encode matches only with
  // parse_special.
  bool is_special(int32_t id) const { return token_type(id) == TokenType::kControl; }
  // Looks a token up by its stored text (token_text); -1 when absent.
  int32_t find_token(std::string_view text) const;
  Model model() const { return model_; }

 protected:
  explicit Tokenizer(Model model) : model_(model) {}
  // Validates `vocab` and builds the shared tables; `pieces` are the token_piece() bytes.
  Status init(TokenVocab vocab, std::vector<std::string> pieces);

  // Encodes text that contains no special token. after_special: the fragment starts the text or
  // follows a matched special token (SentencePiece adds its dummy-prefix space only there).
  virtual void encode_fragment(std::string_view text, bool after_special, std::vector<int32_t>* out) const = 0;

  // What the detokenizer needs beyond pieces and types.
  struct DecodeRules {
    bool sentencepiece = false;          // byte runs end at non-byte tokens; dummy-prefix stripping
    bool strip_first_space = false;      // SentencePiece: add_dummy_prefix or remove_extra_whitespaces
    bool strip_all_first_spaces = false; // SentencePiece: remove_extra_whitespaces
  };
  DecodeRules decode_rules_;

  std::vector<std::string> texts_;
  std::vector<std::string> pieces_;
  std::vector<TokenType> types_;
  std::unordered_map<std::string_view, int32_t> text_to_id_;  // views into texts_; first id wins

 private:
  friend class IncrementalDetokenizer;

  // Special-token matching: candidates bucketed by first byte, longest first.
  struct SpecialToken {
    std::string_view text;
    int32_t id;
    bool always;  // user-defined: matched even without parse_special
  };
  // Finds the special token starting at text[pos], or returns nullptr.
  const SpecialToken* match_special(std::string_view text, size_t pos, bool parse_special) const;

  Model model_;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> eot_ids_;
  std::vector<SpecialToken> specials_;                 // sorted by first byte, then longest first
  std::array<uint32_t, 257> special_bucket_{};         // specials_ index range per first byte
};

// Streaming decode: push ids as they are generated; each push returns the text that is now final.
// The concatenation of all pushes and flush() equals Tokenizer::decode(all ids, skip_special).
// Every returned chunk is valid UTF-8: bytes of a character split across tokens are held back until
// it is complete, and invalid bytes become U+FFFD as decode does. The tokenizer must outlive this.
class IncrementalDetokenizer {
 public:
  // starts_text: the ids begin a text, as in decode(). Pass false for ids that continue text
  // decoded elsewhere (tokens generated after a prompt): a SentencePiece leading space is then a
  // real space, not the dummy prefix, and is kept.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special = true, bool starts_text = true);
  std::string push(int32_t id);
  // Emits what is held back (an incomplete sequence becomes U+FFFD) and starts a new stream.
  std::string flush();

 private:
  std::string drain(bool final);

  const Tokenizer& tok_;
  bool skip_special_;
  bool starts_text_;
  std::string pending_;       // bytes not yet emitted: the start of an incomplete sequence
  bool emitted_any_ = false;  // SentencePiece: text so far is non-empty
  bool bos_ws_seen_ = false;  // SentencePiece: the last piece had its dummy-prefix space stripped
  bool expect_bos_ws_ = true; // SentencePiece: a leading space may still be the dummy prefix
};

// Loads the tokenizer `source` points at. Errors say which file and what is wrong with it.
Result<std::unique_ptr<Tokenizer>> load_tokenizer(const TokenizerSource& source);

// Works out the source for a path given by a user: a .gguf file, a SentencePiece tokenizer.model,
// a llama2.c tok*.bin, a tokenizer.json, or a directory holding tokenizer.json / tokenizer.model.
Result<TokenizerSource> detect_tokenizer_source(const std::string& path);

}  // namespace nb
