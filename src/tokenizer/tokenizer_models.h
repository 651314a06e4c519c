// The two tokenizer models and the file loaders that feed them. Most code wants load_tokenizer()
// from tokenizer.h; this header is for loaders and tests that build a tokenizer from parts.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace nb {

class GgufFile;

// SentencePiece BPE (sentencepiece's bpe_model.cc; llama.cpp's "llama"/SPM vocab). Only the
// identity normalizer: models with a precompiled charsmap (NFKC) are refused by the loader.
struct SpmOptions {
  bool add_dummy_prefix = true;           // prepend U+2581 to the text
  bool remove_extra_whitespaces = false;  // strip leading/trailing ' ', squeeze runs of ' '
  bool escape_whitespaces = true;         // ' ' -> U+2581
  bool byte_fallback = true;              // unknown characters -> <0xNN> tokens (else one unk per run)
  std::string unk_surface = " \xE2\x81\x87 ";  // what decode prints for the unknown token
};
Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(TokenVocab vocab, SpmOptions options);

// One pre-tokenizer step, applied to every piece the previous steps produced.
struct PreTokenizeStep {
  // PCRE2 pattern (UTF + UCP): the piece is split into its matches and the text between them
  // (HF's Split with behaviour "Isolated"). Empty: no split.
  std::string pattern;
  // HF ByteLevel add_prefix_space: ' ' is prepended to a piece that does not start with one.
  bool add_prefix_space = false;
};

// Byte-level BPE (GPT-2; HF tokenizers' BPE model behind a ByteLevel pre-tokenizer).
struct BpeOptions {
  // Merge rules in rank order (first = applied first), as pairs of stored token strings.
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<PreTokenizeStep> pre_tokenizer;
  bool ignore_merges = false;  // HF BPE ignore_merges: a piece that is a token is not merged further
  // A byte whose character is not in the vocabulary becomes the unknown token (HF BPE with an
  // unk_token); otherwise it is dropped, as HF without unk_token and llama.cpp do.
  bool missing_byte_to_unk = false;
};
Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(TokenVocab vocab, BpeOptions options);

// GPT-2's reversible byte <-> printable-unicode map (byte b -> one code point, as UTF-8).
const std::array<std::string, 256>& gpt2_byte_to_unicode();

// The GPT-2 pre-tokenizer regex as HF's ByteLevel(use_regex=true) has it.
extern const char* const kGpt2SplitPattern;
// llama.cpp's tokenizer.ggml.pre names -> the pre-tokenizer HF's tokenizer.json for that family
// has. Error (naming the supported ones) for an unknown name.
Result<std::vector<PreTokenizeStep>> pre_tokenizer_for(std::string_view gguf_pre);

// Loaders. The parse_* forms take the file contents (tests feed them corrupted bytes).
Result<std::unique_ptr<Tokenizer>> parse_sentencepiece_model(std::string_view bytes);
Result<std::unique_ptr<Tokenizer>> parse_llama2c_tokenizer(std::string_view bytes);
// config_json: the contents of a tokenizer_config.json beside it (bos/eos names, add_bos_token), or "".
Result<std::unique_ptr<Tokenizer>> parse_hf_tokenizer_json(std::string_view json, std::string_view config_json);
Result<std::unique_ptr<Tokenizer>> tokenizer_from_gguf(const GgufFile& gguf);

}  // namespace nb
