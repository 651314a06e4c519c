// The OpenAI request bodies of /v1/completions and /v1/chat/completions: JSON to a checked
// GenerationParams, and the OpenAI error object.
//
// Field names, types and ranges follow OpenAI's API reference (and the openai-python types);
// extensions as in vLLM: top_k, min_p, repetition_penalty. Unknown fields are ignored (clients
// send vendor fields); fields we cannot honour (echo=true, suffix, logit_bias, tools, a JSON
// response_format, best_of other than n) are rejected with 400 rather than silently ignored.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "tokenizer/chat_template.h"

namespace nb::server {

// An OpenAI-style error: serialised as {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty -> null
  std::string code;   // empty -> null
};

std::string error_body(const ApiError& e);

enum class Endpoint { kCompletions, kChat };

struct GenerationParams {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;                      // empty when the client sent none
  // Completions: the prompt as text, or as token ids (prompt_is_tokens).
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  // Chat: the conversation, content parts joined.
  std::vector<ChatMessage> messages;

  std::optional<int64_t> max_tokens;      // absent: the endpoint's default
  SamplingParams sampling;                // seed filled in later (choice i gets seed + i)
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool ignore_eos = false;                // extension (as vLLM): end-of-turn tokens do not stop generation
  bool speculative = true;                // extension (nibble): false turns speculative decoding off for it
  bool include_usage = false;             // stream_options.include_usage
  bool logprobs = false;                  // completions: logprobs is not null; chat: logprobs == true
  int top_logprobs = 0;                   // completions: the logprobs integer; chat: top_logprobs
};

inline constexpr int kMaxChoices = 128;          // n, as OpenAI
inline constexpr int kMaxStops = 4;              // stop strings, as OpenAI
inline constexpr size_t kMaxStopBytes = 1024;    // each; bounds the per-token matching work

// Parses and checks a request body. Returns the error to answer with when something is wrong.
std::optional<ApiError> parse_generation_params(std::string_view body, Endpoint endpoint, GenerationParams* out);

}  // namespace nb::server
