#include "tools/bench_serve/prompts.h"

#include "tokenizer/tokenizer.h"

namespace nb::bench_serve {

namespace {

// Used without a tokenizer: frequent English words, one token each in the GPT-2, Llama and
// SmolLM vocabularies when preceded by a space.
constexpr const char* kCommonWords[] = {
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from", "that",
    "this", "which", "or", "an", "be", "are", "were", "have", "has", "had", "not", "but", "all", "one",
    "two", "three", "new", "time", "year", "day", "people", "world", "life", "work", "part", "place",
    "case", "week", "company", "system", "program", "question", "government", "number", "night",
    "point", "home", "water", "room", "mother", "area", "money", "story", "fact", "month", "lot",
    "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head",
    "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law",
    "car", "city", "name", "president", "team", "minute", "idea", "kid", "body", "information",
    "back", "parent", "face", "others", "level", "office", "door", "health", "person", "art", "war",
    "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy", "moment",
    "air", "teacher", "force", "education"};

constexpr int kMaxAttempts = 16;
constexpr int kMaxAdjustments = 64;

bool is_plain_word(const std::string& piece) {
  if (piece.size() < 4 || piece.size() > 11 || piece[0] != ' ') return false;
  for (size_t i = 1; i < piece.size(); ++i)
    if (piece[i] < 'a' || piece[i] > 'z') return false;
  return true;
}

}  // namespace

Result<PromptBuilder> PromptBuilder::create(const Tokenizer* tokenizer) {
  PromptBuilder b;
  b.tokenizer_ = tokenizer;
  if (tokenizer == nullptr) {
    for (const char* w : kCommonWords) b.words_.push_back(std::string(" ") + w);
    return b;
  }
  for (int32_t id = 0; id < tokenizer->vocab_size(); ++id) {
    if (tokenizer->token_type(id) != TokenType::kNormal) continue;
    const std::string& piece = tokenizer->token_piece(id);
    if (!is_plain_word(piece)) continue;
    // Byte-level BPE encodes " word" to the token itself; SentencePiece adds the space back as its
    // dummy prefix, so it is asked about "word". Either way the word must survive a round trip.
    const std::vector<int32_t> with_space = tokenizer->encode(piece, false, false);
    const std::vector<int32_t> without = tokenizer->encode(std::string_view(piece).substr(1), false, false);
    if ((with_space.size() == 1 && with_space[0] == id) || (without.size() == 1 && without[0] == id)) {
      b.words_.push_back(piece);
    }
  }
  if (b.words_.size() < 64) {
    return failed_precondition("the tokenizer has only " + std::to_string(b.words_.size()) +
                               " plain lower-case word tokens; synthetic prompts need at least 64 — "
                               "run without --tokenizer/-m for approximate lengths");
  }
  return b;
}

int64_t PromptBuilder::count_tokens(const std::string& text) const {
  if (tokenizer_ == nullptr) return -1;
  return static_cast<int64_t>(tokenizer_->encode(text, false, false).size());
}

Result<std::string> PromptBuilder::build(int64_t num_tokens, Rng& rng, const std::string& prefix,
                                         int64_t prefix_tokens) const {
  if (num_tokens < 0) return invalid_argument("prompt length must be >= 0");
  auto word = [&] { return words_[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(words_.size()) - 1))]; };
  if (tokenizer_ == nullptr) {
    std::string text = prefix;
    for (int64_t i = 0; i < num_tokens; ++i) text += word();
    return text;
  }
  const int64_t target = prefix_tokens + num_tokens;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    // Most vocabularies give exactly one token per word here; merges across word boundaries (or a
    // dummy-prefix space) are fixed up by adding or dropping words and counting again.
    std::vector<size_t> ends;  // text size after each word, to drop words cheaply
    std::string text = prefix;
    for (int64_t i = 0; i < num_tokens; ++i) {
      text += word();
      ends.push_back(text.size());
    }
    int64_t n = count_tokens(text);
    for (int adj = 0; adj < kMaxAdjustments && n != target; ++adj) {
      if (n < target) {
        text += word();
        ends.push_back(text.size());
      } else {
        if (ends.empty()) break;
        ends.pop_back();
        text.resize(ends.empty() ? prefix.size() : ends.back());
      }
      n = count_tokens(text);
    }
    if (n == target) return text.substr(prefix.size());
  }
  return internal_error("could not build a prompt of exactly " + std::to_string(target) +
                        " tokens with this tokenizer; try other lengths or run without --tokenizer/-m");
}

}  // namespace nb::bench_serve
