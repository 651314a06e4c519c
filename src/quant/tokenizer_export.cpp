// export_tokenizer (checkpoint_writer.h): the tokenizer of a written HF directory.
//   HF source: tokenizer.json / tokenizer_config.json / tokenizer.model copied as they are.
//   GGUF "gpt2" source: tokenizer.json built from tokenizer.ggml.tokens / token_type / merges and
//   the pre-tokenizer llama.cpp's tokenizer.ggml.pre names (the same regex steps nibble's GGUF
//   loader uses), ByteLevel decoding, added_tokens for control / user-defined tokens and a
//   TemplateProcessing post-processor when the model adds BOS; tokenizer_config.json with the bos /
//   eos names and the chat template.
#include <nlohmann/json.hpp>

#include "core/mmap_file.h"
#include "format/gguf.h"
#include "quant/checkpoint_writer.h"
#include "tokenizer/tokenizer_models.h"

namespace nb::quant {
namespace {

using Json = nlohmann::json;

std::string dir_of(const std::string& path) {
  const size_t s = path.rfind('/');
  return s == std::string::npos ? "." : path.substr(0, s);
}

Result<bool> copy_hf(const LoadedModel& source, const std::string& dir) {
  const std::string src = dir_of(source.tokenizer.path);
  bool any = false;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"}) {
    Result<std::string> text = read_file(src + "/" + name);
    if (!text.ok()) continue;
    NB_RETURN_IF_ERROR(write_text_file(dir + "/" + name, *text));
    any = true;
  }
  return any;
}

Result<bool> from_gguf(const LoadedModel& source, const std::string& dir) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<GgufFile> f, GgufFile::open(source.tokenizer.path));
  NB_ASSIGN_OR_RETURN(std::string model, f->get_string("tokenizer.ggml.model"));
  if (model != "gpt2") return false;  // SentencePiece: no tokenizer.json form nibble reads
  const GgufValue* tokens = f->find("tokenizer.ggml.tokens");
  const GgufValue* types = f->find("tokenizer.ggml.token_type");
  const GgufValue* merges = f->find("tokenizer.ggml.merges");
  if (tokens == nullptr || merges == nullptr) return data_loss(source.tokenizer.path + ": GGUF tokenizer without tokens or merges");
  std::string pre = "gpt2";
  if (f->find("tokenizer.ggml.pre") != nullptr) {
    NB_ASSIGN_OR_RETURN(pre, f->get_string("tokenizer.ggml.pre"));
  }
  NB_ASSIGN_OR_RETURN(std::vector<PreTokenizeStep> steps, pre_tokenizer_for(pre));
  NB_ASSIGN_OR_RETURN(int64_t bos, f->get_int_or("tokenizer.ggml.bos_token_id", -1));
  NB_ASSIGN_OR_RETURN(int64_t eos, f->get_int_or("tokenizer.ggml.eos_token_id", -1));
  NB_ASSIGN_OR_RETURN(int64_t add_bos, f->get_int_or("tokenizer.ggml.add_bos_token", 0));
  const auto n = static_cast<int64_t>(tokens->strs.size());

  Json vocab = Json::object();
  Json added = Json::array();
  for (int64_t i = 0; i < n; ++i) {
    const std::string& t = tokens->strs[static_cast<size_t>(i)];
    const int64_t type = types != nullptr && static_cast<int64_t>(types->ints.size()) == n ? types->ints[static_cast<size_t>(i)] : 1;
    if (type == 3 || type == 4) {
      added.push_back({{"id", i}, {"content", t}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", type == 4}, {"special", type == 3}});
    }
    vocab[t] = i;
  }
  Json pretok = Json::array();
  for (const PreTokenizeStep& s : steps) {
    if (!s.pattern.empty()) {
      pretok.push_back({{"type", "Split"}, {"pattern", {{"Regex", s.pattern}}}, {"behavior", "Isolated"}, {"invert", false}});
    }
    if (s.add_prefix_space) pretok.push_back({{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", false}});
  }
  pretok.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
  Json tj;
  tj["version"] = "1.0";
  tj["truncation"] = nullptr;
  tj["padding"] = nullptr;
  tj["added_tokens"] = added;
  tj["normalizer"] = nullptr;
  tj["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", pretok}};
  if (add_bos != 0 && bos >= 0 && bos < n) {
    const std::string b = tokens->strs[static_cast<size_t>(bos)];
    tj["post_processor"] = {{"type", "TemplateProcessing"},
                            {"single", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                            {"pair", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                      {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
                            {"special_tokens", {{b, {{"id", b}, {"ids", {bos}}, {"tokens", {b}}}}}}};
  } else {
    tj["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  }
  tj["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  tj["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", merges->strs}};
  NB_RETURN_IF_ERROR(write_text_file(dir + "/tokenizer.json", tj.dump() + "\n"));

  Json cfg;
  cfg["tokenizer_class"] = "GPT2Tokenizer";
  cfg["add_bos_token"] = add_bos != 0;
  cfg["add_eos_token"] = false;
  cfg["model_max_length"] = source.weights.config.max_seq_len;
  if (bos >= 0 && bos < n) cfg["bos_token"] = tokens->strs[static_cast<size_t>(bos)];
  if (eos >= 0 && eos < n) cfg["eos_token"] = tokens->strs[static_cast<size_t>(eos)];
  if (!source.chat_template.empty()) cfg["chat_template"] = source.chat_template;
  NB_RETURN_IF_ERROR(write_text_file(dir + "/tokenizer_config.json", cfg.dump(2) + "\n"));
  return true;
}

}  // namespace

Result<bool> export_tokenizer(const LoadedModel& source, const std::string& dir) {
  try {
    switch (source.tokenizer.kind) {
      case TokenizerSource::Kind::kHfTokenizerJson:
      case TokenizerSource::Kind::kSentencePieceModel:
        return copy_hf(source, dir);
      case TokenizerSource::Kind::kGguf:
        return from_gguf(source, dir);
      default:
        return false;
    }
  } catch (const std::exception& e) {
    return internal_error(std::string("writing the tokenizer: ") + e.what());
  }
}

}  // namespace nb::quant
