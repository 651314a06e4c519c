#include "tools/synth_tokenizer.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

namespace nb::tools {
namespace {

using Json = nlohmann::ordered_json;

// Written for this file (no third-party text): ordinary English with the common words, suffixes,
// digits and punctuation a merge table should learn first.
constexpr std::string_view kBuiltinText = R"(The morning train left the station at seven, and the people on the platform watched it go.
Some of them were going to work in the city; others were going home after a long night. A woman with a
small dog stood near the edge, reading the timetable again and again, as if the numbers might change.
The next train would come in twelve minutes. She had time to buy a coffee, but she did not want to lose
her place in the line, so she waited, and the dog waited with her.

In the city, the streets were already full. Cars moved slowly between the buildings, and the sound of
the traffic filled the air. A man on a bicycle rang his bell at a taxi that had stopped in the middle of
the road. The driver did not look up. He was talking on the phone, and he was laughing about something
that had happened the day before. The man on the bicycle shook his head and rode around the taxi.

Most people think that a computer is a machine that does exactly what it is told. That is true, but it
is not the whole story. A program is a list of instructions, and each instruction is simple: add two
numbers, compare them, move a value from one place in memory to another. What makes the machine
interesting is that it can follow billions of these instructions every second, without getting tired
and without making mistakes. When a program is slow, it is usually because it is waiting: for the disk,
for the network, or for memory that is far away from the processor.

A language model reads text as a sequence of tokens. Each token is a small piece of a word, a whole
word, or a mark of punctuation. The model looks at the tokens it has seen so far and predicts the next
one. Then it adds that token to the sequence and predicts again. It is a simple idea, and it works
because the model has learned, from a very large amount of text, which tokens tend to follow which.

There were 365 days in the year, 52 weeks, and 12 months. The children counted them on their fingers:
one, two, three, four, five, six, seven, eight, nine, ten. Their teacher wrote the numbers on the board
(1, 2, 3, 4, 5, 6, 7, 8, 9, 10) and asked them which one was the largest. "Ten!" they shouted together.
"And which is the smallest?" she asked. "One!" they answered, though one boy said "zero" and was right.

The garden behind the house was quiet in the evening. The light turned yellow, then orange, then grey,
and the birds stopped singing one by one. An old cat walked along the top of the wall, slowly and
carefully, stopping now and then to look at something that nobody else could see. The wind moved the
leaves of the trees, and somewhere in the distance a dog was barking at the moon.

When we measure how fast something runs, we should say what we measured, how many times, and on which
machine. A number without its conditions is not very useful. It is better to report the time for each
run, the median, and the spread between the fastest and the slowest, than to report a single best result
that nobody else will ever be able to reproduce. Good measurements are boring; that is what makes them
worth reading.
)";

// GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest are shifted to
// code points from 256 up, so every byte string has a visible, space-free spelling.
std::vector<std::string> byte_alphabet() {
  std::vector<std::string> out(256);
  auto utf8 = [](uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {  // all code points here are below 0x800
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return s;
  };
  uint32_t shifted = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    out[b] = utf8(printable ? b : 256 + shifted++);
  }
  return out;
}

std::string spell(const std::vector<std::string>& alphabet, std::string_view bytes) {
  std::string s;
  for (unsigned char c : bytes) s += alphabet[c];
  return s;
}

// Byte classes approximating the GPT-2 split regex on ASCII (bytes >= 0x80 count as letters).
enum class Cls { kLetter, kDigit, kSpace, kOther };
Cls classify(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return Cls::kLetter;
  if (c >= '0' && c <= '9') return Cls::kDigit;
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') return Cls::kSpace;
  return Cls::kOther;
}

// Words with counts: " ?letters+", " ?digits+", " ?other+", and whitespace runs (a run keeps its
// last space for the next word, as `\s+(?!\S)` does).
std::map<std::string, int64_t> pretokenize(std::string_view text) {
  std::map<std::string, int64_t> words;
  size_t i = 0;
  const size_t n = text.size();
  auto cls = [&](size_t k) { return classify(static_cast<unsigned char>(text[k])); };
  while (i < n) {
    size_t start = i;
    if (cls(i) == Cls::kSpace) {
      size_t j = i;
      while (j < n && cls(j) == Cls::kSpace) ++j;
      if (j < n && text[j - 1] == ' ' && j - 1 > i) {
        words[std::string(text.substr(i, j - 1 - i))]++;
        i = j - 1;
        continue;
      }
      if (!(j < n && j - 1 == i && text[i] == ' ')) {
        words[std::string(text.substr(i, j - i))]++;
        i = j;
        continue;
      }
      ++i;  // a single space joins the word that follows
    }
    const Cls c = cls(i);
    while (i < n && cls(i) == c) ++i;
    words[std::string(text.substr(start, i - start))]++;
  }
  return words;
}

// Stands in for the vocabulary object in the dump. Token texts are spelled in the byte-level
// alphabet (no raw control characters) and specials are ours, so the mark occurs once.
constexpr const char* kVocabMark = "\x01nibble-synth-vocab\x01";

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

}  // namespace

std::string_view builtin_training_text() { return kBuiltinText; }

std::vector<std::pair<std::string, std::string>> learn_bpe_merges(std::string_view text, int64_t max_new_tokens) {
  struct Word {
    std::vector<int32_t> syms;
    int64_t count;
  };
  std::vector<std::string> tokens(256);
  std::unordered_map<std::string, int32_t> token_id;
  for (int b = 0; b < 256; ++b) {
    tokens[b] = std::string(1, static_cast<char>(b));
    token_id[tokens[b]] = b;
  }
  std::vector<Word> words;
  for (const auto& [w, count] : pretokenize(text)) {
    Word word{{}, count};
    for (unsigned char c : w) word.syms.push_back(c);
    words.push_back(std::move(word));
  }
  // Exact pair counts, ordered by (-count, key) so the best pair is first and ties break the same way.
  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // word indices (may repeat or be stale)
  std::set<std::pair<int64_t, uint64_t>> ranked;
  auto add = [&](uint64_t key, int64_t delta, int32_t word) {
    int64_t& c = counts[key];
    if (c > 0) ranked.erase({-c, key});
    c += delta;
    if (c > 0) ranked.insert({-c, key});
    if (delta > 0) where[key].push_back(word);
  };
  for (int32_t w = 0; w < static_cast<int32_t>(words.size()); ++w) {
    for (size_t k = 0; k + 1 < words[w].syms.size(); ++k) add(pair_key(words[w].syms[k], words[w].syms[k + 1]), words[w].count, w);
  }

  std::vector<std::pair<std::string, std::string>> merges;
  int64_t num_new = 0;
  while (num_new < max_new_tokens && !ranked.empty() && -ranked.begin()->first >= 2) {
    const uint64_t key = ranked.begin()->second;
    const auto a = static_cast<int32_t>(key >> 32);
    const auto b = static_cast<int32_t>(key & 0xffffffffu);
    const std::string merged = tokens[a] + tokens[b];
    int32_t id;
    if (auto it = token_id.find(merged); it != token_id.end()) {
      id = it->second;  // another merge already made this string: reuse it, as HF's trainer does
    } else {
      id = static_cast<int32_t>(tokens.size());
      tokens.push_back(merged);
      token_id[merged] = id;
      ++num_new;
    }
    merges.emplace_back(tokens[a], tokens[b]);
    std::vector<int32_t> affected = std::move(where[key]);
    where.erase(key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    for (int32_t w : affected) {
      Word& word = words[w];
      std::vector<int32_t> out;
      out.reserve(word.syms.size());
      bool changed = false;
      for (size_t k = 0; k < word.syms.size(); ++k) {
        if (k + 1 < word.syms.size() && word.syms[k] == a && word.syms[k + 1] == b) {
          out.push_back(id);
          ++k;
          changed = true;
        } else {
          out.push_back(word.syms[k]);
        }
      }
      if (!changed) continue;  // a stale entry
      for (size_t k = 0; k + 1 < word.syms.size(); ++k) add(pair_key(word.syms[k], word.syms[k + 1]), -word.count, w);
      word.syms = std::move(out);
      for (size_t k = 0; k + 1 < word.syms.size(); ++k) add(pair_key(word.syms[k], word.syms[k + 1]), word.count, w);
    }
  }
  return merges;
}

Result<SynthTokenizerFiles> make_synth_tokenizer(const SynthTokenizerSpec& spec, std::string_view text) {
  const int64_t v = spec.vocab_size;
  const auto num_specials = static_cast<int64_t>(spec.specials.size());
  if (v < 256 + num_specials) {
    return invalid_argument("a byte-level tokenizer needs at least " + std::to_string(256 + num_specials) +
                            " tokens; vocab_size is " + std::to_string(v));
  }
  std::vector<std::string> texts(static_cast<size_t>(v));
  std::vector<char> is_special(static_cast<size_t>(v), 0);
  for (const auto& [id, t] : spec.specials) {
    if (id < 0 || id >= v || is_special[id]) return invalid_argument("special token '" + t + "' has a bad or repeated id");
    texts[id] = t;
    is_special[id] = 1;
  }
  const std::vector<std::string> alphabet = byte_alphabet();
  const auto merges = learn_bpe_merges(text, v - 256 - num_specials);

  // Normal tokens fill the free ids in order: bytes, then each merge's new string.
  std::vector<std::string> normal;
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) normal.push_back(alphabet[b]), seen.insert(alphabet[b]);
  Json merges_json = Json::array();
  for (const auto& [l, r] : merges) {
    const std::string ls = spell(alphabet, l), rs = spell(alphabet, r);
    merges_json.push_back(ls + " " + rs);
    if (seen.insert(ls + rs).second) normal.push_back(ls + rs);
  }
  SynthTokenizerFiles files;
  files.num_learned = static_cast<int64_t>(normal.size()) - 256;
  files.num_merges = static_cast<int64_t>(merges.size());
  size_t next = 0;
  for (int64_t id = 0; id < v; ++id) {
    if (is_special[id]) continue;
    if (next < normal.size()) {
      texts[id] = normal[next++];
    } else {
      texts[id] = "<|reserved_special_token_" + std::to_string(files.num_reserved++) + "|>";
      is_special[id] = 1;
    }
  }

  // The vocabulary in id order, written by hand: ordered_json's object insert is a linear search.
  std::string vocab = "{";
  std::set<std::string_view> distinct;
  Json added = Json::array();
  for (int64_t id = 0; id < v; ++id) {
    distinct.insert(texts[id]);
    vocab += (id ? ",\n  " : "\n  ") + Json(texts[id]).dump() + ": " + std::to_string(id);
    if (is_special[id]) {
      added.push_back({{"id", id}, {"content", texts[id]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", true}});
    }
  }
  vocab += "\n}";
  if (static_cast<int64_t>(distinct.size()) != v) return internal_error("synth tokenizer: duplicate token texts");
  auto id_of = [&](const std::string& t) -> int64_t {
    for (const auto& [id, s] : spec.specials) {
      if (s == t) return id;
    }
    return -1;
  };
  if (id_of(spec.bos) < 0 || id_of(spec.eos) < 0) return invalid_argument("BOS and EOS must be special tokens");

  Json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  Json post = byte_level;
  if (spec.add_bos) {
    const Json bos = {{"SpecialToken", {{"id", spec.bos}, {"type_id", 0}}}};
    post = {{"type", "TemplateProcessing"},
            {"single", {bos, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", {bos, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                      {{"SpecialToken", {{"id", spec.bos}, {"type_id", 1}}}},
                      {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{spec.bos, {{"id", spec.bos}, {"ids", {id_of(spec.bos)}}, {"tokens", {spec.bos}}}}}}};
  }
  Json root = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", std::move(added)},
               {"normalizer", nullptr}, {"pre_tokenizer", byte_level}, {"post_processor", std::move(post)},
               {"decoder", byte_level}};
  root["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                   {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                   {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", kVocabMark},
                   {"merges", std::move(merges_json)}};
  files.tokenizer_json = root.dump(1) + "\n";
  const std::string mark = Json(kVocabMark).dump();
  files.tokenizer_json.replace(files.tokenizer_json.find(mark), mark.size(), vocab);

  Json config = {{"add_bos_token", spec.add_bos}, {"add_eos_token", false}, {"bos_token", spec.bos},
                 {"eos_token", spec.eos}, {"clean_up_tokenization_spaces", false},
                 {"model_max_length", spec.model_max_length}, {"tokenizer_class", "PreTrainedTokenizerFast"}};
  files.tokenizer_config_json = config.dump(2) + "\n";
  return files;
}

}  // namespace nb::tools
