// The tokenizer inside a GGUF file (keys as llama.cpp's convert_hf_to_gguf.py writes them):
//   tokenizer.ggml.model       "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE)
//   tokenizer.ggml.tokens      string[n]           tokenizer.ggml.token_type  int[n] (TokenType numbers)
//   tokenizer.ggml.scores      float[n] (llama)    tokenizer.ggml.merges      string[] "a b" (gpt2)
//   tokenizer.ggml.pre         pre-tokenizer name (gpt2)
//   tokenizer.ggml.bos_token_id / eos_token_id / unknown_token_id, add_bos_token, add_space_prefix,
//   remove_extra_whitespaces
#include <cmath>
#include <cstdint>

#include "format/gguf.h"
#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

Status bad(const GgufFile& f, const std::string& what) {
  return data_loss("GGUF tokenizer in " + f.path() + ": " + what + "; the file is corrupt or was converted wrongly");
}

Result<int32_t> optional_id(const GgufFile& f, std::string_view key, int64_t fallback) {
  NB_ASSIGN_OR_RETURN(const int64_t id, f.get_int_or(key, fallback));
  if (id < -1 || id > INT32_MAX) return bad(f, std::string(key) + " is " + std::to_string(id));
  return static_cast<int32_t>(id);
}

// Looks up an array key; null when absent, error when present with another element type.
Result<const GgufValue*> optional_array(const GgufFile& f, std::string_view key, bool want_strings, bool want_floats) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return static_cast<const GgufValue*>(nullptr);
  const bool is_str = v->array_type == GgufType::kString;
  const bool is_float = v->array_type == GgufType::kFloat32 || v->array_type == GgufType::kFloat64;
  if (v->type != GgufType::kArray || is_str != want_strings || (!want_strings && is_float != want_floats)) {
    return bad(f, std::string(key) + " has the wrong type (expected an array of " +
                      (want_strings ? "strings" : want_floats ? "floats" : "integers") + ")");
  }
  return v;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> tokenizer_from_gguf(const GgufFile& f) {
  NB_ASSIGN_OR_RETURN(const std::string model, f.get_string("tokenizer.ggml.model"));
  const bool spm = model == "llama";
  if (!spm && model != "gpt2") {
    return unimplemented("GGUF tokenizer model '" + model + "' in " + f.path() +
                         " is not supported; supported: llama (SentencePiece BPE), gpt2 (byte-level BPE)");
  }
  NB_ASSIGN_OR_RETURN(const GgufValue* tokens, optional_array(f, "tokenizer.ggml.tokens", true, false));
  if (tokens == nullptr) return bad(f, "tokenizer.ggml.tokens is missing");
  NB_ASSIGN_OR_RETURN(const GgufValue* types, optional_array(f, "tokenizer.ggml.token_type", false, false));
  NB_ASSIGN_OR_RETURN(const GgufValue* scores, optional_array(f, "tokenizer.ggml.scores", false, true));
  const size_t n = tokens->strs.size();
  if (types != nullptr && types->ints.size() != n) {
    return bad(f, std::to_string(n) + " tokens but " + std::to_string(types->ints.size()) + " token types");
  }
  if (scores != nullptr && scores->floats.size() != n) {
    return bad(f, std::to_string(n) + " tokens but " + std::to_string(scores->floats.size()) + " scores");
  }

  TokenVocab vocab;
  vocab.texts = tokens->strs;
  vocab.types.assign(n, TokenType::kNormal);
  for (size_t i = 0; types != nullptr && i < n; ++i) {
    const int64_t t = types->ints[i];
    if (t < 0 || t > 6) return bad(f, "token " + std::to_string(i) + " has type " + std::to_string(t) + " (expected 0..6)");
    vocab.types[i] = t == 0 ? TokenType::kNormal : static_cast<TokenType>(t);
  }
  if (spm) {
    vocab.scores.resize(n, 0.0f);
    for (size_t i = 0; scores != nullptr && i < n; ++i) {
      if (std::isnan(scores->floats[i])) return bad(f, "token " + std::to_string(i) + " has a NaN score");
      vocab.scores[i] = static_cast<float>(scores->floats[i]);
    }
  }
  // Defaults are llama.cpp's: Llama's 1/2/0 for SentencePiece, none for byte-level BPE.
  NB_ASSIGN_OR_RETURN(vocab.bos_id, optional_id(f, "tokenizer.ggml.bos_token_id", spm ? 1 : -1));
  NB_ASSIGN_OR_RETURN(vocab.eos_id, optional_id(f, "tokenizer.ggml.eos_token_id", spm ? 2 : -1));
  NB_ASSIGN_OR_RETURN(vocab.unk_id, optional_id(f, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1));
  NB_ASSIGN_OR_RETURN(const int64_t add_bos, f.get_int_or("tokenizer.ggml.add_bos_token", spm ? 1 : 0));
  vocab.add_bos = add_bos != 0;
  for (const int32_t id : {vocab.bos_id, vocab.eos_id, vocab.unk_id}) {
    if (id >= static_cast<int64_t>(n)) return bad(f, "a special token id (" + std::to_string(id) + ") is outside the vocabulary");
  }

  if (spm) {
    SpmOptions options;
    NB_ASSIGN_OR_RETURN(const int64_t prefix, f.get_int_or("tokenizer.ggml.add_space_prefix", 1));
    NB_ASSIGN_OR_RETURN(const int64_t squeeze, f.get_int_or("tokenizer.ggml.remove_extra_whitespaces", 0));
    options.add_dummy_prefix = prefix != 0;
    options.remove_extra_whitespaces = squeeze != 0;
    options.byte_fallback = false;
    for (TokenType t : vocab.types) options.byte_fallback = options.byte_fallback || t == TokenType::kByte;
    if (vocab.unk_id >= 0 && vocab.types[vocab.unk_id] != TokenType::kUnknown) vocab.types[vocab.unk_id] = TokenType::kUnknown;
    return make_spm_tokenizer(std::move(vocab), std::move(options));
  }

  BpeOptions options;
  NB_ASSIGN_OR_RETURN(const GgufValue* merges, optional_array(f, "tokenizer.ggml.merges", true, false));
  if (merges == nullptr) return bad(f, "tokenizer.ggml.merges is missing (a gpt2 tokenizer needs its merges)");
  options.merges.reserve(merges->strs.size());
  for (size_t i = 0; i < merges->strs.size(); ++i) {
    const std::string& m = merges->strs[i];
    // llama.cpp splits at the first space after the first character.
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos) return bad(f, "merge " + std::to_string(i) + " ('" + m + "') is not two tokens separated by a space");
    options.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  std::string pre = "gpt2";  // absent: the plain GPT-2 ByteLevel pre-tokenizer
  if (f.find("tokenizer.ggml.pre") != nullptr) {
    NB_ASSIGN_OR_RETURN(pre, f.get_string("tokenizer.ggml.pre"));
  }
  NB_ASSIGN_OR_RETURN(options.pre_tokenizer, pre_tokenizer_for(pre));
  return make_bpe_tokenizer(std::move(vocab), std::move(options));
}

}  // namespace nb
