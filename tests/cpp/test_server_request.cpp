// OpenAI request validation (server/openai_request.h) and the error object's shape.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "server/openai_request.h"

namespace nb::server {
namespace {

std::optional<ApiError> parse(const std::string& body, Endpoint ep, GenerationParams* out) {
  return parse_generation_params(body, ep, out);
}

TEST(OpenAiRequest, CompletionFieldsAreRead) {
  GenerationParams p;
  const auto err = parse(R"({"model":"m","prompt":"Hi","max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":40,
    "min_p":0.05,"presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,"seed":-3,
    "stop":["a","bb"],"n":3,"stream":true,"stream_options":{"include_usage":true},"logprobs":2,"user":"u",
    "echo":false,"vendor_field":{"x":1}})",
                         Endpoint::kCompletions, &p);
  ASSERT_FALSE(err) << err->message;
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(p.prompt_text, "Hi");
  EXPECT_FALSE(p.prompt_is_tokens);
  EXPECT_EQ(p.max_tokens, 7);
  EXPECT_FLOAT_EQ(p.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.9f);
  EXPECT_EQ(p.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(p.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(p.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(p.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(p.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(p.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "bb"}));
  EXPECT_EQ(p.n, 3);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 2);
  EXPECT_EQ(p.sampling.top_logprobs, 2);
}

TEST(OpenAiRequest, DefaultsAreOpenAis) {
  GenerationParams p;
  ASSERT_FALSE(parse(R"({"prompt":"x"})", Endpoint::kCompletions, &p));
  EXPECT_FALSE(p.max_tokens.has_value());
  EXPECT_FLOAT_EQ(p.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 1.0f);
  EXPECT_EQ(p.n, 1);
  EXPECT_FALSE(p.logprobs);
  EXPECT_FALSE(p.seed.has_value());
  ASSERT_FALSE(parse(R"({"prompt":"x","logprobs":null,"stop":null,"max_tokens":null})", Endpoint::kCompletions, &p));
  EXPECT_FALSE(p.logprobs);
  EXPECT_TRUE(p.stop.empty());
}

TEST(OpenAiRequest, PromptForms) {
  GenerationParams p;
  ASSERT_FALSE(parse(R"({"prompt":[1,2,3]})", Endpoint::kCompletions, &p));
  EXPECT_TRUE(p.prompt_is_tokens);
  EXPECT_EQ(p.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  ASSERT_FALSE(parse(R"({"prompt":[[4,5]]})", Endpoint::kCompletions, &p));
  EXPECT_EQ(p.prompt_tokens, (std::vector<int32_t>{4, 5}));
  ASSERT_FALSE(parse(R"({"prompt":["only one"]})", Endpoint::kCompletions, &p));
  EXPECT_EQ(p.prompt_text, "only one");
  EXPECT_FALSE(p.prompt_is_tokens);
}

TEST(OpenAiRequest, ChatMessagesWithContentParts) {
  GenerationParams p;
  const auto err = parse(R"({"messages":[{"role":"developer","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"Hello, "},{"type":"text","text":"world"}]},
      {"role":"assistant","content":null},{"role":"user","content":"again"}],
      "max_completion_tokens":9,"max_tokens":3,"logprobs":true,"top_logprobs":4})",
                         Endpoint::kChat, &p);
  ASSERT_FALSE(err) << err->message;
  ASSERT_EQ(p.messages.size(), 4u);
  EXPECT_EQ(p.messages[0].role, "system");
  EXPECT_EQ(p.messages[1].content, "Hello, world");
  EXPECT_EQ(p.messages[2].content, "");
  EXPECT_EQ(p.max_tokens, 9);  // max_completion_tokens wins
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 4);
}

struct Bad {
  const char* body;
  Endpoint ep;
  const char* param;  // expected "param" of the error ("" = null)
};

TEST(OpenAiRequest, BadRequestsAre400WithTheOffendingParam) {
  const Endpoint C = Endpoint::kCompletions, H = Endpoint::kChat;
  const std::vector<Bad> cases = {
      {"{not json", C, ""},
      {"[1,2]", C, ""},
      {"", C, ""},
      {R"({"prompt":"x","max_tokens":-1})", C, "max_tokens"},
      {R"({"prompt":"x","max_tokens":0})", C, "max_tokens"},
      {R"({"prompt":"x","max_tokens":1e30})", C, "max_tokens"},
      {R"({"prompt":"x","max_tokens":99999999999999999999})", C, "max_tokens"},
      {R"({"prompt":"x","max_tokens":"5"})", C, "max_tokens"},
      {R"({"prompt":"x","max_tokens":2.5})", C, "max_tokens"},
      {R"({"prompt":"x","temperature":"hot"})", C, "temperature"},
      {R"({"prompt":"x","temperature":3})", C, "temperature"},
      {R"({"prompt":"x","top_p":0})", C, "top_p"},
      {R"({"prompt":"x","top_p":1.5})", C, "top_p"},
      {R"({"prompt":"x","top_k":-2})", C, "top_k"},
      {R"({"prompt":"x","min_p":2})", C, "min_p"},
      {R"({"prompt":"x","presence_penalty":5})", C, "presence_penalty"},
      {R"({"prompt":"x","n":0})", C, "n"},
      {R"({"prompt":"x","n":1000})", C, "n"},
      {R"({"prompt":"x","seed":"1"})", C, "seed"},
      {R"({"prompt":"x","stop":5})", C, "stop"},
      {R"({"prompt":"x","stop":["a","b","c","d","e"]})", C, "stop"},
      {R"({"prompt":"x","stop":[1]})", C, "stop"},
      {R"({"prompt":"x","stream":"yes"})", C, "stream"},
      {R"({"prompt":"x","stream_options":{"include_usage":true}})", C, "stream_options"},
      {R"({"prompt":"x","logprobs":21})", C, "logprobs"},
      {R"({"prompt":"x","logprobs":true})", C, "logprobs"},
      {R"({"prompt":"x","echo":true})", C, "echo"},
      {R"({"prompt":"x","suffix":"s"})", C, "suffix"},
      {R"({"prompt":"x","logit_bias":{"5":1}})", C, "logit_bias"},
      {R"({"prompt":"x","best_of":3})", C, "best_of"},
      {R"({"prompt":"x","model":5})", C, "model"},
      {R"({"prompt":5})", C, "prompt"},
      {R"({"prompt":[]})", C, "prompt"},
      {R"({"prompt":["a","b"]})", C, "prompt"},
      {R"({"prompt":[1,"a"]})", C, "prompt"},
      {R"({"prompt":[-1]})", C, "prompt"},
      {R"({"max_tokens":5})", C, "prompt"},
      {R"({"messages":[]})", H, "messages"},
      {R"({"messages":"hi"})", H, "messages"},
      {R"({})", H, "messages"},
      {R"({"messages":[5]})", H, "messages[0]"},
      {R"({"messages":[{"content":"x"}]})", H, "messages[0].role"},
      {R"({"messages":[{"role":"wizard","content":"x"}]})", H, "messages[0].role"},
      {R"({"messages":[{"role":"user"}]})", H, "messages[0].content"},
      {R"({"messages":[{"role":"user","content":5}]})", H, "messages[0].content"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})", H, "messages[0].content"},
      {R"({"messages":[{"role":"user","content":"x"}],"logprobs":1})", H, "logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", H, "top_logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-5})", H, "max_completion_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})", H, "tools"},
      {R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})", H, "response_format"},
  };
  for (const Bad& c : cases) {
    GenerationParams p;
    const auto err = parse(c.body, c.ep, &p);
    ASSERT_TRUE(err.has_value()) << c.body;
    EXPECT_EQ(err->status, 400) << c.body;
    EXPECT_EQ(err->param, c.param) << c.body << ": " << err->message;
    EXPECT_FALSE(err->message.empty());
  }
}

TEST(OpenAiRequest, ErrorBodyHasOpenAisShape) {
  ApiError e;
  e.status = 404;
  e.message = "no such model \xff";  // invalid UTF-8 must not break serialisation
  e.code = "model_not_found";
  e.param = "model";
  const auto j = nlohmann::json::parse(error_body(e));
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["code"], "model_not_found");
  EXPECT_EQ(j["error"]["param"], "model");
  EXPECT_TRUE(j["error"]["message"].is_string());
  ApiError plain;
  plain.message = "m";
  const auto k = nlohmann::json::parse(error_body(plain));
  EXPECT_TRUE(k["error"]["param"].is_null());
  EXPECT_TRUE(k["error"]["code"].is_null());
}

// Random JSON-ish bodies: validation returns an error or parameters; it never throws or crashes.
TEST(OpenAiRequestFuzz, RandomBodiesNeverThrow) {
  std::mt19937 rng(13);
  const std::vector<std::string> pieces = {
      "{", "}", "[", "]", ",", ":", "\"prompt\"", "\"messages\"", "\"role\"", "\"content\"", "\"user\"", "\"stop\"",
      "\"n\"", "\"max_tokens\"", "\"logprobs\"", "\"top_logprobs\"", "\"seed\"", "\"stream\"", "\"stream_options\"",
      "\"include_usage\"", "\"type\"", "\"text\"", "true", "false", "null", "0", "-1", "1e999", "3.5",
      "18446744073709551616", "\"\\ud800\"", "\"x\"", "\"\xff\"", " "};
  const std::string valid_chat = R"({"messages":[{"role":"user","content":"hi"}],"n":2,"stop":["a"]})";
  for (int iter = 0; iter < 20000; ++iter) {
    std::string body;
    if (iter % 2 == 0) {
      for (size_t k = rng() % 30; k > 0; --k) body += pieces[rng() % pieces.size()];
    } else {
      body = valid_chat;
      for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) {
        body[rng() % body.size()] = pieces[rng() % pieces.size()][0];
      }
    }
    for (Endpoint ep : {Endpoint::kCompletions, Endpoint::kChat}) {
      GenerationParams p;
      std::optional<ApiError> err;
      EXPECT_NO_THROW(err = parse_generation_params(body, ep, &p)) << body;
      if (err) {
        EXPECT_EQ(err->status, 400);
      }
    }
  }
  // Deep nesting is parsed without recursion trouble.
  GenerationParams p;
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_TRUE(parse_generation_params(deep, Endpoint::kChat, &p).has_value());
}

}  // namespace
}  // namespace nb::server
