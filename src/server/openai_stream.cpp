#include "server/openai_stream.h"

#include <chrono>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>

#include "server/http.h"
#include "server/stop_matcher.h"
#include "tokenizer/utf8.h"

namespace nb::server {

using ojson = nlohmann::ordered_json;

double steady_now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

namespace {

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

// OpenAI reports -9999.0 for tokens with no probability; JSON has no -Infinity.
double finite_logprob(float lp) { return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0; }

// A token's text for logprobs: its bytes when they are valid UTF-8, else OpenAI's "bytes:\xNN" form.
std::string token_string(const Tokenizer& tok, int32_t id) {
  const std::string& piece = tok.token_piece(id);
  if (utf8::is_valid(piece)) return piece;
  std::string out = "bytes:";
  char buf[8];
  for (unsigned char b : piece) {
    std::snprintf(buf, sizeof(buf), "\\x%02x", b);
    out += buf;
  }
  return out;
}

ojson token_bytes(const Tokenizer& tok, int32_t id) {
  ojson a = ojson::array();
  for (unsigned char b : tok.token_piece(id)) a.push_back(static_cast<int>(b));
  return a;
}

}  // namespace

struct GenerationStream::Inbox {
  struct Pending {
    std::vector<int32_t> tokens;
    std::vector<SampleOutput> logprobs;
    bool finished = false;
    FinishReason reason = FinishReason::kNone;
    std::string error;
    double first_token_s = -1, last_token_s = -1;
    int64_t num_tokens = 0;  // all tokens received so far (for TPOT)
    int64_t num_cached_prompt = 0;
    int64_t num_draft_tokens = 0, num_accepted_tokens = 0;  // speculative decoding, so far
  };
  std::mutex mu;
  std::vector<Pending> choices;
  Waker waker;
};

struct GenerationStream::Choice {
  Choice(int i, const Tokenizer& tok, bool starts_text, std::vector<std::string> stops)
      : index(i), detok(tok, /*skip_special=*/true, starts_text), stop(std::move(stops)) {}
  int index;
  IncrementalDetokenizer detok;
  StopMatcher stop;
  RequestId engine_id = 0;
  bool has_id = false;
  bool done = false;
  std::string finish_reason;  // "stop" | "length"
  std::string text;           // non-streamed: the whole completion
  int64_t num_tokens = 0;     // completion tokens counted in usage
  int64_t decoded_bytes = 0;  // bytes of detokenized text so far (completions text_offset)
  double first_token_s = -1, last_token_s = -1;
  int64_t num_received = 0;
  int64_t num_cached_prompt = 0;
  int64_t num_draft_tokens = 0, num_accepted_tokens = 0;
  bool sent_role = false;
  // Non-streamed logprobs, accumulated.
  ojson chat_lp = ojson::array();
  ojson tokens = ojson::array(), token_lps = ojson::array(), top_lps = ojson::array(), offsets = ojson::array();
};

// What one poll adds to a choice.
struct GenerationStream::Delta {
  std::string text;
  bool finished_now = false;
  ojson chat_lp = ojson::array();
  ojson tokens = ojson::array(), token_lps = ojson::array(), top_lps = ojson::array(), offsets = ojson::array();
  bool any() const { return !text.empty() || finished_now || !tokens.empty() || !chat_lp.empty(); }
};

GenerationStream::GenerationStream(StreamSetup setup, const Tokenizer& tokenizer, Engine& engine, ServerMetrics& metrics,
                                   Waker waker)
    : setup_(std::move(setup)), tok_(tokenizer), engine_(engine), metrics_(metrics), inbox_(std::make_shared<Inbox>()) {
  inbox_->choices.resize(static_cast<size_t>(setup_.n));
  inbox_->waker = std::move(waker);
  for (int i = 0; i < setup_.n; ++i) {
    choices_.push_back(std::make_unique<Choice>(i, tok_, setup_.detok_starts_text, setup_.stop));
  }
}

GenerationStream::~GenerationStream() = default;

OutputCallback GenerationStream::callback(int index) const {
  std::shared_ptr<Inbox> inbox = inbox_;
  const auto i = static_cast<size_t>(index);
  return [inbox, i](const RequestOutput& o) {
    const double t = steady_now_s();
    {
      std::lock_guard<std::mutex> lock(inbox->mu);
      Inbox::Pending& p = inbox->choices[i];
      if (!o.tokens.empty()) {
        if (p.first_token_s < 0) p.first_token_s = t;
        p.last_token_s = t;
        p.num_tokens += static_cast<int64_t>(o.tokens.size());
        p.tokens.insert(p.tokens.end(), o.tokens.begin(), o.tokens.end());
        p.logprobs.insert(p.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      }
      p.num_cached_prompt = o.num_cached_prompt_tokens;
      p.num_draft_tokens = o.num_draft_tokens;
      p.num_accepted_tokens = o.num_accepted_tokens;
      if (o.finished) {
        p.finished = true;
        p.reason = o.finish_reason;
        p.error = o.error;
      }
    }
    inbox->waker.wake();
  };
}

void GenerationStream::set_engine_id(int index, RequestId id) {
  Choice& c = *choices_[static_cast<size_t>(index)];
  c.engine_id = id;
  c.has_id = true;
}

void GenerationStream::cancel_running() {
  for (auto& c : choices_) {
    if (c->has_id && !c->done) engine_.cancel(c->engine_id);
    c->done = true;
  }
}

void GenerationStream::abandon() {
  cancel_running();
  complete_ = true;
  recorded_ = true;  // the handler answers with an error and counts it
}

void GenerationStream::on_disconnect() {
  cancel_running();
  if (!complete_) record_metrics(RequestStatus::kCancelled);
  complete_ = true;
}

void GenerationStream::record_metrics(RequestStatus status) {
  if (recorded_) return;
  recorded_ = true;
  metrics_.count_request(status);
  int64_t generated = 0;
  for (const auto& c : choices_) {
    generated += c->num_tokens;
    if (c->first_token_s >= 0) metrics_.observe_ttft(c->first_token_s - setup_.arrival_s);
    if (c->num_received >= 2) {
      metrics_.observe_tpot((c->last_token_s - c->first_token_s) / static_cast<double>(c->num_received - 1));
    }
  }
  metrics_.add_generation_tokens(generated);
  if (status == RequestStatus::kSuccess) metrics_.observe_e2e(steady_now_s() - setup_.arrival_s);
}

bool GenerationStream::poll(std::string* out) {
  if (complete_) return true;
  if (setup_.stream && !started_) {
    *out += http_stream_head(200, "text/event-stream; charset=utf-8", setup_.chunked, setup_.keep_alive);
  }
  // Take everything the engine delivered since the last poll.
  std::vector<Inbox::Pending> got(choices_.size());
  {
    std::lock_guard<std::mutex> lock(inbox_->mu);
    for (size_t i = 0; i < choices_.size(); ++i) {
      Inbox::Pending& p = inbox_->choices[i];
      got[i].tokens.swap(p.tokens);
      got[i].logprobs.swap(p.logprobs);
      got[i].finished = p.finished;
      got[i].reason = p.reason;
      got[i].error = p.error;
      got[i].first_token_s = p.first_token_s;
      got[i].last_token_s = p.last_token_s;
      got[i].num_tokens = p.num_tokens;
      got[i].num_cached_prompt = p.num_cached_prompt;
      got[i].num_draft_tokens = p.num_draft_tokens;
      got[i].num_accepted_tokens = p.num_accepted_tokens;
    }
  }
  const bool chat = setup_.endpoint == Endpoint::kChat;
  std::string error;
  std::vector<Delta> deltas(choices_.size());
  for (size_t i = 0; i < choices_.size(); ++i) {
    Choice& c = *choices_[i];
    Inbox::Pending& p = got[i];
    Delta& d = deltas[i];
    if (c.done) continue;
    c.first_token_s = p.first_token_s;
    c.last_token_s = p.last_token_s;
    c.num_received = p.num_tokens;
    c.num_cached_prompt = p.num_cached_prompt;
    c.num_draft_tokens = p.num_draft_tokens;
    c.num_accepted_tokens = p.num_accepted_tokens;
    for (size_t k = 0; k < p.tokens.size() && !c.done; ++k) {
      const int32_t id = p.tokens[k];
      const std::string piece = c.detok.push(id);
      const int64_t offset = c.decoded_bytes;
      c.decoded_bytes += static_cast<int64_t>(piece.size());
      d.text += c.stop.push(piece);
      ++c.num_tokens;
      if (setup_.logprobs && k < p.logprobs.size()) {
        const SampleOutput& lp = p.logprobs[k];
        if (chat) {
          ojson e;
          e["token"] = token_string(tok_, id);
          e["logprob"] = finite_logprob(lp.logprob);
          e["bytes"] = token_bytes(tok_, id);
          ojson top = ojson::array();
          for (const TokenLogprob& t : lp.top) {
            ojson a;
            a["token"] = token_string(tok_, t.token);
            a["logprob"] = finite_logprob(t.logprob);
            a["bytes"] = token_bytes(tok_, t.token);
            top.push_back(std::move(a));
          }
          e["top_logprobs"] = std::move(top);
          d.chat_lp.push_back(std::move(e));
        } else {
          // Completions: the top-N alternatives plus the sampled token ("up to logprobs+1 elements"),
          // most likely first (an ordered object keeps that order on the wire).
          std::vector<std::pair<std::string, double>> entries;
          bool has_sampled = false;
          for (const TokenLogprob& t : lp.top) {
            entries.emplace_back(token_string(tok_, t.token), finite_logprob(t.logprob));
            has_sampled = has_sampled || t.token == id;
          }
          if (!has_sampled) {
            const double v = finite_logprob(lp.logprob);
            auto pos = entries.begin();
            while (pos != entries.end() && pos->second >= v) ++pos;
            entries.insert(pos, {token_string(tok_, id), v});
          }
          ojson top = ojson::object();
          for (auto& [k2, v] : entries) {
            if (!top.contains(k2)) top[k2] = v;  // two ids with the same text: keep the likelier
          }
          d.tokens.push_back(token_string(tok_, id));
          d.token_lps.push_back(finite_logprob(lp.logprob));
          d.top_lps.push_back(std::move(top));
          d.offsets.push_back(offset);
        }
      }
      if (c.stop.stopped()) {
        c.done = true;
        c.finish_reason = "stop";
        d.finished_now = true;
        if (c.has_id) engine_.cancel(c.engine_id);  // the client has what it asked for
      }
    }
    if (!c.done && p.finished) {
      if (p.reason == FinishReason::kStop || p.reason == FinishReason::kLength) {
        d.text += c.stop.push(c.detok.flush());
        if (!c.stop.stopped()) d.text += c.stop.finish();
        c.finish_reason = (c.stop.stopped() || p.reason == FinishReason::kStop) ? "stop" : "length";
        c.done = true;
        d.finished_now = true;
      } else {
        error = p.reason == FinishReason::kError ? "generation failed: " + p.error
                                                 : std::string("generation was cancelled by the engine (shutting down?)");
        c.done = true;
      }
    }
    if (!setup_.stream) {
      c.text += d.text;
      for (auto& e : d.chat_lp) c.chat_lp.push_back(std::move(e));
      for (auto& e : d.tokens) c.tokens.push_back(std::move(e));
      for (auto& e : d.token_lps) c.token_lps.push_back(std::move(e));
      for (auto& e : d.top_lps) c.top_lps.push_back(std::move(e));
      for (auto& e : d.offsets) c.offsets.push_back(std::move(e));
    }
  }
  if (!error.empty()) {
    fail(error, out);
    return true;
  }
  if (setup_.stream) {
    for (size_t i = 0; i < choices_.size(); ++i) {
      Choice& c = *choices_[i];
      if (chat && !c.sent_role) {
        // OpenAI's first chunk of each choice carries the role and empty content.
        c.sent_role = true;
        write_chunk(c, Delta{}, /*role_chunk=*/true, out);
      }
      if (deltas[i].any()) write_chunk(c, deltas[i], /*role_chunk=*/false, out);
    }
  }
  started_ = true;
  for (const auto& c : choices_) {
    if (!c->done) return false;
  }
  if (setup_.stream) {
    finish_stream(out);
  } else {
    finish_json(out);
  }
  record_metrics(RequestStatus::kSuccess);
  complete_ = true;
  return true;
}

void GenerationStream::write_event(std::string_view data, std::string* out) const {
  const std::string ev = sse_event(data);
  *out += setup_.chunked ? http_chunk(ev) : ev;
}

void GenerationStream::write_chunk(const Choice& c, const Delta& d, bool role_chunk, std::string* out) {
  const bool chat = setup_.endpoint == Endpoint::kChat;
  ojson choice;
  choice["index"] = c.index;
  if (chat) {
    ojson delta = ojson::object();
    if (role_chunk) {
      delta["role"] = "assistant";
      delta["content"] = "";
    } else if (!d.text.empty() || !d.chat_lp.empty()) {
      delta["content"] = d.text;
    }
    choice["delta"] = std::move(delta);
    if (setup_.logprobs && !d.chat_lp.empty()) {
      choice["logprobs"] = ojson{{"content", d.chat_lp}, {"refusal", nullptr}};
    } else {
      choice["logprobs"] = nullptr;
    }
  } else {
    choice["text"] = d.text;
    if (setup_.logprobs && !d.tokens.empty()) {
      choice["logprobs"] = ojson{{"tokens", d.tokens}, {"token_logprobs", d.token_lps}, {"top_logprobs", d.top_lps},
                                 {"text_offset", d.offsets}};
    } else {
      choice["logprobs"] = nullptr;
    }
  }
  choice["finish_reason"] = d.finished_now ? ojson(c.finish_reason) : ojson(nullptr);
  ojson chunk;
  chunk["id"] = setup_.id;
  chunk["object"] = chat ? "chat.completion.chunk" : "text_completion";
  chunk["created"] = setup_.created;
  chunk["model"] = setup_.model;
  chunk["choices"] = ojson::array({std::move(choice)});
  if (setup_.include_usage) chunk["usage"] = nullptr;
  write_event(dump(chunk), out);
}

namespace {
// Extension (nibble): usage.speculative = {draft_tokens, accepted_tokens} over all choices, present
// when drafts were verified for this request.
template <class Choices>
void add_speculative_usage(const Choices& choices, ojson* usage) {
  int64_t drafted = 0, accepted = 0;
  for (const auto& c : choices) {
    drafted += c->num_draft_tokens;
    accepted += c->num_accepted_tokens;
  }
  if (drafted > 0) (*usage)["speculative"] = ojson{{"draft_tokens", drafted}, {"accepted_tokens", accepted}};
}
}  // namespace

void GenerationStream::finish_stream(std::string* out) {
  if (setup_.include_usage) {
    int64_t completion = 0;
    for (const auto& c : choices_) completion += c->num_tokens;
    ojson chunk;
    chunk["id"] = setup_.id;
    chunk["object"] = setup_.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion";
    chunk["created"] = setup_.created;
    chunk["model"] = setup_.model;
    chunk["choices"] = ojson::array();
    chunk["usage"] = ojson{{"prompt_tokens", setup_.num_prompt_tokens},
                           {"completion_tokens", completion},
                           {"total_tokens", setup_.num_prompt_tokens + completion}};
    add_speculative_usage(choices_, &chunk["usage"]);
    write_event(dump(chunk), out);
  }
  write_event("[DONE]", out);
  if (setup_.chunked) *out += http_last_chunk();
}

void GenerationStream::finish_json(std::string* out) {
  const bool chat = setup_.endpoint == Endpoint::kChat;
  ojson choices = ojson::array();
  int64_t completion = 0;
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = *choices_[i];
    completion += c.num_tokens;
    ojson choice;
    choice["index"] = static_cast<int>(i);
    if (chat) {
      choice["message"] = ojson{{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
      choice["logprobs"] = setup_.logprobs ? ojson{{"content", c.chat_lp}, {"refusal", nullptr}} : ojson(nullptr);
    } else {
      choice["text"] = c.text;
      choice["logprobs"] = setup_.logprobs ? ojson{{"tokens", c.tokens},
                                                   {"token_logprobs", c.token_lps},
                                                   {"top_logprobs", c.top_lps},
                                                   {"text_offset", c.offsets}}
                                           : ojson(nullptr);
    }
    choice["finish_reason"] = c.finish_reason;
    choices.push_back(std::move(choice));
  }
  ojson root;
  root["id"] = setup_.id;
  root["object"] = chat ? "chat.completion" : "text_completion";
  root["created"] = setup_.created;
  root["model"] = setup_.model;
  root["choices"] = std::move(choices);
  root["usage"] = ojson{{"prompt_tokens", setup_.num_prompt_tokens},
                        {"completion_tokens", completion},
                        {"total_tokens", setup_.num_prompt_tokens + completion},
                        {"prompt_tokens_details", {{"cached_tokens", choices_.front()->num_cached_prompt}}}};
  add_speculative_usage(choices_, &root["usage"]);
  *out += http_response(200, "application/json", dump(root), setup_.keep_alive);
}

void GenerationStream::fail(const std::string& message, std::string* out) {
  cancel_running();
  ApiError e;
  e.status = 500;
  e.type = "server_error";
  e.message = message;
  if (setup_.stream) {
    // Mid-stream errors travel as an SSE event with an "error" object (the openai client raises it).
    write_event(error_body(e), out);
    write_event("[DONE]", out);
    if (setup_.chunked) *out += http_last_chunk();
  } else {
    *out += http_response(500, "application/json", error_body(e), setup_.keep_alive);
  }
  record_metrics(RequestStatus::kServerError);
  complete_ = true;
}

}  // namespace nb::server
