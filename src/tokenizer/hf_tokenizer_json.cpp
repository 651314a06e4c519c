// HF tokenizers' tokenizer.json, byte-level BPE flavour (GPT-2, SmolLM, Llama 3, Qwen 2 layouts):
//   model: {type: "BPE", vocab: {token: id}, merges: ["a b", ...] or [["a", "b"], ...],
//           unk_token, ignore_merges, byte_fallback (must be false), dropout (must be null)}
//   added_tokens: [{id, content, special}]  (special -> control, else user-defined)
//   pre_tokenizer: ByteLevel | Split(Regex|String, "Isolated") | Digits | Sequence of these
//   normalizer: null;  decoder: ByteLevel
// Anything else is refused with a message naming what is not supported, never guessed at.
// BOS/EOS names and add_bos_token come from tokenizer_config.json when it is given; a
// TemplateProcessing post-processor that starts with a special token also means "add BOS".
#include <nlohmann/json.hpp>

#include <algorithm>

#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxId = int64_t{1} << 24;

Status bad(const std::string& what) {
  return data_loss("tokenizer.json: " + what + "; the file is corrupt or not a tokenizer.json");
}

Status unsupported(const std::string& what) {
  return unimplemented("tokenizer.json: " + what + " is not supported (only byte-level BPE tokenizers are)");
}

std::string type_of(const json& j) {
  const auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

bool flag(const json& j, const char* key, bool fallback) {
  const auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// PCRE2 literal for a Split with a String pattern.
std::string quote_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Appends the steps of one pre-tokenizer node; *byte_level is set when a ByteLevel step is seen.
Status add_pre_tokenizer(const json& node, int depth, std::vector<PreTokenizeStep>* steps, bool* byte_level) {
  if (node.is_null()) return Status::Ok();
  if (!node.is_object()) return bad("pre_tokenizer is not an object");
  if (depth > 8) return bad("pre_tokenizer Sequences nested deeper than 8");
  const std::string type = type_of(node);
  if (type == "Sequence") {
    const auto it = node.find("pretokenizers");
    if (it == node.end() || !it->is_array()) return bad("a Sequence pre_tokenizer without a pretokenizers array");
    for (const json& child : *it) NB_RETURN_IF_ERROR(add_pre_tokenizer(child, depth + 1, steps, byte_level));
  } else if (type == "ByteLevel") {
    *byte_level = true;
    steps->push_back({flag(node, "use_regex", true) ? kGpt2SplitPattern : "", flag(node, "add_prefix_space", true)});
  } else if (type == "Digits") {
    steps->push_back({flag(node, "individual_digits", false) ? "\\p{N}" : "\\p{N}+", false});
  } else if (type == "Split") {
    const auto pat = node.find("pattern");
    const auto behavior = node.find("behavior");
    if (pat == node.end() || !pat->is_object()) return bad("a Split pre_tokenizer without a pattern");
    if (behavior == node.end() || !behavior->is_string() || behavior->get<std::string>() != "Isolated") {
      return unsupported("a Split pre_tokenizer whose behavior is not \"Isolated\"");
    }
    if (flag(node, "invert", false)) return unsupported("an inverted Split pre_tokenizer");
    if (const auto re = pat->find("Regex"); re != pat->end() && re->is_string()) {
      steps->push_back({re->get<std::string>(), false});
    } else if (const auto lit = pat->find("String"); lit != pat->end() && lit->is_string()) {
      steps->push_back({quote_literal(lit->get<std::string>()), false});
    } else {
      return bad("a Split pattern that is neither {\"Regex\": ...} nor {\"String\": ...}");
    }
  } else {
    return unsupported("pre_tokenizer type '" + type + "'");
  }
  return Status::Ok();
}

// tokenizer_config.json's "bos_token": "<s>" or {"content": "<s>", ...}.
std::string config_token(const json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return "";
}

// The id of the special token a TemplateProcessing post-processor (alone or inside a Sequence)
// puts before a single sequence, or -1.
template <typename FindId>
int32_t template_first_special(const json& root, const FindId& find_id) {
  const auto pp = root.find("post_processor");
  if (pp == root.end() || !pp->is_object()) return -1;
  std::vector<const json*> candidates = {&*pp};
  if (type_of(*pp) == "Sequence") {
    if (const auto list = pp->find("processors"); list != pp->end() && list->is_array()) {
      for (const json& p : *list) candidates.push_back(&p);
    }
  }
  for (const json* p : candidates) {
    if (!p->is_object() || type_of(*p) != "TemplateProcessing") continue;
    const auto single = p->find("single");
    if (single == p->end() || !single->is_array() || single->empty() || !(*single)[0].is_object()) continue;
    const auto special = (*single)[0].find("SpecialToken");
    if (special == (*single)[0].end() || !special->is_object()) continue;
    const auto id = special->find("id");
    if (id != special->end() && id->is_string()) return find_id(id->get<std::string>());
  }
  return -1;
}

Result<std::unique_ptr<Tokenizer>> parse(std::string_view text, std::string_view config_text) {
  const json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) return bad("not valid JSON (or not an object)");
  const auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) return bad("no \"model\" object");
  const json& model = *model_it;
  const std::string model_type = type_of(model);
  if (!model_type.empty() && model_type != "BPE") return unsupported("model type '" + model_type + "'");
  if (flag(model, "byte_fallback", false)) return unsupported("a BPE model with byte_fallback (SentencePiece-style)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
      return unsupported(std::string("a BPE model with ") + key);
    }
  }
  if (const auto d = model.find("dropout"); d != model.end() && !d->is_null() && !(d->is_number() && d->get<double>() == 0.0)) {
    return unsupported("BPE dropout (a training-time option)");
  }
  if (const auto n = root.find("normalizer"); n != root.end() && !n->is_null()) {
    return unsupported("normalizer '" + type_of(*n) + "'");
  }

  // Vocabulary: model.vocab plus added_tokens (which may reuse or extend its ids).
  const auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) return bad("model.vocab is not an object");
  std::vector<std::pair<int64_t, std::string>> entries;
  entries.reserve(vocab_it->size());
  for (const auto& [tok, id] : vocab_it->items()) {
    if (!id.is_number_integer()) return bad("the id of vocab entry '" + tok + "' is not an integer");
    entries.emplace_back(id.get<int64_t>(), tok);
  }
  struct Added {
    int64_t id;
    std::string content;
    bool special;
  };
  std::vector<Added> added;
  if (const auto at = root.find("added_tokens"); at != root.end() && !at->is_null()) {
    if (!at->is_array()) return bad("added_tokens is not an array");
    for (const json& a : *at) {
      if (!a.is_object()) return bad("an added_tokens entry is not an object");
      const auto id = a.find("id");
      const auto content = a.find("content");
      if (id == a.end() || !id->is_number_integer() || content == a.end() || !content->is_string()) {
        return bad("an added_tokens entry without an integer id and a string content");
      }
      added.push_back({id->get<int64_t>(), content->get<std::string>(), flag(a, "special", false)});
    }
  }
  int64_t max_id = -1;
  for (const auto& e : entries) max_id = std::max(max_id, e.first);
  for (const auto& a : added) max_id = std::max(max_id, a.id);
  for (const auto& e : entries) {
    if (e.first < 0) return bad("vocab entry '" + e.second + "' has a negative id");
  }
  for (const auto& a : added) {
    if (a.id < 0) return bad("added token '" + a.content + "' has a negative id");
  }
  if (max_id < 0) return bad("the vocabulary is empty");
  if (max_id >= kMaxId) return bad("token id " + std::to_string(max_id) + " is larger than any real vocabulary");

  TokenVocab vocab;
  const auto n = static_cast<size_t>(max_id + 1);
  vocab.texts.assign(n, "");
  vocab.types.assign(n, TokenType::kUnused);  // ids nothing names stay unused
  for (auto& e : entries) {
    vocab.texts[e.first] = std::move(e.second);
    vocab.types[e.first] = TokenType::kNormal;
  }
  for (auto& a : added) {
    vocab.texts[a.id] = a.content;
    vocab.types[a.id] = a.special ? TokenType::kControl : TokenType::kUserDefined;
  }

  BpeOptions options;
  options.ignore_merges = flag(model, "ignore_merges", false);
  const auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) return bad("model.merges is not an array");
  options.merges.reserve(merges_it->size());
  for (const json& m : *merges_it) {
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
      if (sp == std::string::npos) return bad("merge '" + s + "' is not two tokens separated by a space");
      options.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      options.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return bad("a merge that is neither \"a b\" nor [\"a\", \"b\"]");
    }
  }

  bool byte_level = false;
  if (const auto pt = root.find("pre_tokenizer"); pt != root.end()) {
    NB_RETURN_IF_ERROR(add_pre_tokenizer(*pt, 0, &options.pre_tokenizer, &byte_level));
  }
  const auto dec = root.find("decoder");
  const bool byte_level_decoder = dec != root.end() && dec->is_object() && type_of(*dec) == "ByteLevel";
  if (!byte_level || !byte_level_decoder) {
    return unsupported("a tokenizer without a ByteLevel pre_tokenizer and a ByteLevel decoder");
  }

  // Special ids: tokenizer_config.json names them; without it, the usual names.
  json config = json::object();
  if (!config_text.empty()) {
    config = json::parse(config_text.begin(), config_text.end(), nullptr, false);
    if (config.is_discarded() || !config.is_object()) return data_loss("tokenizer_config.json is not a valid JSON object");
  }
  const auto find_id = [&](const std::string& t) -> int32_t {
    if (t.empty()) return -1;
    for (size_t i = 0; i < n; ++i) {
      if (vocab.texts[i] == t && vocab.types[i] != TokenType::kUnused) return static_cast<int32_t>(i);
    }
    return -1;
  };
  const auto first_of = [&](std::initializer_list<const char*> names) {
    for (const char* name : names) {
      if (const int32_t id = find_id(name); id >= 0) return id;
    }
    return -1;
  };
  vocab.bos_id = config.contains("bos_token") ? find_id(config_token(config, "bos_token"))
                                              : first_of({"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>"});
  vocab.eos_id = config.contains("eos_token") ? find_id(config_token(config, "eos_token"))
                                              : first_of({"<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"});
  if (const auto unk = model.find("unk_token"); unk != model.end() && unk->is_string()) {
    vocab.unk_id = find_id(unk->get<std::string>());
    options.missing_byte_to_unk = vocab.unk_id >= 0;
  }
  // A TemplateProcessing post-processor whose single-sequence template starts with a special
  // token adds BOS (Llama 3 does it this way, with no add_bos_token in its config).
  if (const int32_t template_bos = template_first_special(root, find_id); template_bos >= 0) {
    if (!config.contains("bos_token")) vocab.bos_id = template_bos;
    vocab.add_bos = template_bos == vocab.bos_id;
  }
  if (const auto it = config.find("add_bos_token"); it != config.end() && it->is_boolean()) vocab.add_bos = it->get<bool>();
  return make_bpe_tokenizer(std::move(vocab), std::move(options));
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> parse_hf_tokenizer_json(std::string_view json_text, std::string_view config_json) {
  // nlohmann::json throws only on misuse (we check types before every get); the catch is a
  // backstop so a malformed file can never take the process down.
  try {
    return parse(json_text, config_json);
  } catch (const std::exception& e) {
    return data_loss(std::string("tokenizer.json: ") + e.what() + "; the file is corrupt");
  }
}

}  // namespace nb
