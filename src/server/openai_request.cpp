#include "server/openai_request.h"

#include <nlohmann/json.hpp>

namespace nb::server {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

std::string error_body(const ApiError& e) {
  ojson err;
  err["message"] = e.message;
  err["type"] = e.type;
  err["param"] = e.param.empty() ? ojson(nullptr) : ojson(e.param);
  err["code"] = e.code.empty() ? ojson(nullptr) : ojson(e.code);
  ojson root;
  root["error"] = std::move(err);
  return root.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

namespace {

ApiError bad(std::string param, std::string message) {
  ApiError e;
  e.status = 400;
  e.param = std::move(param);
  e.message = std::move(message);
  return e;
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

ApiError wrong_type(const std::string& param, const char* expected, const json& v) {
  return bad(param, "'" + param + "' must be " + expected + ", not " + type_name(v));
}

// The present, non-null field `name`, or nullptr.
const json* field(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<ApiError> get_number(const json& obj, const char* name, double lo, double hi, float* out) {
  const json* v = field(obj, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return wrong_type(name, "a number", *v);
  const double d = v->get<double>();
  if (!(d >= lo && d <= hi)) {
    return bad(name, "'" + std::string(name) + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                         "]; got " + v->dump());
  }
  *out = static_cast<float>(d);
  return std::nullopt;
}

std::optional<ApiError> get_int(const json& obj, const char* name, int64_t lo, int64_t hi, std::optional<int64_t>* out) {
  const json* v = field(obj, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return wrong_type(name, "an integer", *v);
  // Unsigned values above INT64_MAX are out of every range we accept.
  const bool too_big = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX);
  const int64_t i = too_big ? INT64_MAX : v->get<int64_t>();
  if (too_big || i < lo || i > hi) {
    return bad(name, "'" + std::string(name) + "' must be an integer in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]; got " + v->dump());
  }
  *out = i;
  return std::nullopt;
}

std::optional<ApiError> get_bool(const json& obj, const char* name, bool* out) {
  const json* v = field(obj, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return wrong_type(name, "a boolean", *v);
  *out = v->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> parse_prompt(const json& root, GenerationParams* out) {
  auto it = root.find("prompt");
  if (it == root.end() || it->is_null()) return bad("prompt", "'prompt' is required");
  const json& p = *it;
  if (p.is_string()) {
    out->prompt_text = p.get<std::string>();
    return std::nullopt;
  }
  if (!p.is_array()) return wrong_type("prompt", "a string or an array of token ids", p);
  if (p.empty()) return bad("prompt", "'prompt' must not be empty");
  // A list of one prompt (string or token ids) is the same as that prompt; several prompts in one
  // request are not supported: send one request per prompt.
  const json* one = &p;
  if (p[0].is_string() || p[0].is_array()) {
    if (p.size() != 1) {
      return bad("prompt", "a list of " + std::to_string(p.size()) +
                               " prompts is not supported; send one prompt per request (use 'n' for several completions)");
    }
    if (p[0].is_string()) {
      out->prompt_text = p[0].get<std::string>();
      return std::nullopt;
    }
    one = &p[0];
    if (one->empty()) return bad("prompt", "'prompt' must not be empty");
  }
  out->prompt_is_tokens = true;
  for (const json& t : *one) {
    if (!t.is_number_integer()) return bad("prompt", "a token-id prompt must contain only integers");
    const bool neg = t.is_number_integer() && !t.is_number_unsigned() && t.get<int64_t>() < 0;
    if (neg || (t.is_number_unsigned() && t.get<uint64_t>() > INT32_MAX) || t.get<int64_t>() > INT32_MAX) {
      return bad("prompt", "token id " + t.dump() + " is not a valid token id");
    }
    out->prompt_tokens.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return std::nullopt;
}

std::optional<ApiError> parse_messages(const json& root, GenerationParams* out) {
  auto it = root.find("messages");
  if (it == root.end() || it->is_null()) return bad("messages", "'messages' is required");
  if (!it->is_array()) return wrong_type("messages", "an array of messages", *it);
  if (it->empty()) return bad("messages", "'messages' must contain at least one message");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return wrong_type(where, "an object", m);
    const json* role = field(m, "role");
    if (role == nullptr || !role->is_string()) return bad(where + ".role", "'" + where + ".role' must be a string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r != "system" && r != "user" && r != "assistant" && r != "tool") {
      return bad(where + ".role", "unknown role '" + role->get<std::string>() +
                                      "'; expected one of: system, developer, user, assistant, tool");
    }
    ChatMessage msg;
    msg.role = r;
    const json* content = field(m, "content");
    if (content == nullptr) {
      // Only an assistant turn may omit content (it carried tool calls).
      if (r != "assistant") return bad(where + ".content", "'" + where + ".content' is required");
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (const json& part : *content) {
        const json* type = part.is_object() ? field(part, "type") : nullptr;
        const json* text = part.is_object() ? field(part, "text") : nullptr;
        if (type == nullptr || !type->is_string()) {
          return bad(where + ".content", "each content part must be an object with a 'type'");
        }
        if (type->get<std::string>() != "text") {
          return bad(where + ".content", "content parts of type '" + type->get<std::string>() +
                                             "' are not supported; this server accepts text parts only");
        }
        if (text == nullptr || !text->is_string()) return bad(where + ".content", "a text part needs a string 'text'");
        msg.content += text->get<std::string>();
      }
    } else {
      return wrong_type(where + ".content", "a string or an array of content parts", *content);
    }
    out->messages.push_back(std::move(msg));
  }
  return std::nullopt;
}

std::optional<ApiError> parse_stop(const json& root, GenerationParams* out) {
  const json* v = field(root, "stop");
  if (v == nullptr) return std::nullopt;
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > static_cast<size_t>(kMaxStops)) {
      return bad("stop", "at most " + std::to_string(kMaxStops) + " stop sequences; got " + std::to_string(v->size()));
    }
    for (const json& s : *v) {
      if (!s.is_string()) return bad("stop", "'stop' must be a string or an array of strings");
      stops.push_back(s.get<std::string>());
    }
  } else {
    return wrong_type("stop", "a string or an array of strings", *v);
  }
  for (const std::string& s : stops) {
    if (s.size() > kMaxStopBytes) {
      return bad("stop", "stop sequences are limited to " + std::to_string(kMaxStopBytes) + " bytes");
    }
  }
  out->stop = std::move(stops);
  return std::nullopt;
}

std::optional<ApiError> parse_unsupported(const json& root, Endpoint endpoint, int n) {
  if (const json* v = field(root, "echo"); v != nullptr) {
    if (!v->is_boolean()) return wrong_type("echo", "a boolean", *v);
    if (v->get<bool>()) return bad("echo", "echo=true is not supported; the response holds only the completion");
  }
  if (const json* v = field(root, "suffix"); v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
    return bad("suffix", "'suffix' (insertion) is not supported");
  }
  if (const json* v = field(root, "best_of"); v != nullptr) {
    if (!v->is_number_integer()) return wrong_type("best_of", "an integer", *v);
    if (v->get<int64_t>() != n && v->get<int64_t>() != 1) {
      return bad("best_of", "best_of other than n is not supported");
    }
  }
  if (const json* v = field(root, "logit_bias"); v != nullptr) {
    if (!v->is_object()) return wrong_type("logit_bias", "an object", *v);
    if (!v->empty()) return bad("logit_bias", "'logit_bias' is not supported");
  }
  if (endpoint == Endpoint::kChat) {
    for (const char* name : {"tools", "functions"}) {
      if (const json* v = field(root, name); v != nullptr && !(v->is_array() && v->empty())) {
        return bad(name, std::string("'") + name + "' (tool calling) is not supported by this server");
      }
    }
    if (const json* v = field(root, "response_format"); v != nullptr) {
      const json* type = v->is_object() ? field(*v, "type") : nullptr;
      if (type == nullptr || !type->is_string()) return bad("response_format", "'response_format' needs a string 'type'");
      if (type->get<std::string>() != "text") {
        return bad("response_format", "response_format '" + type->get<std::string>() + "' is not supported; use 'text'");
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<ApiError> parse_generation_params(std::string_view body, Endpoint endpoint, GenerationParams* out) {
  const json root = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return bad("", "the request body is not valid JSON; send a JSON object (Content-Type: application/json)");
  }
  if (!root.is_object()) return bad("", std::string("the request body must be a JSON object, not ") + type_name(root));
  *out = GenerationParams{};
  out->endpoint = endpoint;
  const bool chat = endpoint == Endpoint::kChat;

  if (const json* m = field(root, "model"); m != nullptr) {
    if (!m->is_string()) return wrong_type("model", "a string", *m);
    out->model = m->get<std::string>();
  }
  if (auto e = chat ? parse_messages(root, out) : parse_prompt(root, out)) return e;

  std::optional<int64_t> n, max_tokens, top_k, seed, top_logprobs;
  constexpr int64_t kHuge = int64_t{1} << 40;  // any larger max_tokens is a mistake, not a big context
  if (auto e = get_int(root, "n", 1, kMaxChoices, &n)) return e;
  out->n = static_cast<int>(n.value_or(1));
  if (auto e = get_int(root, "max_tokens", 1, kHuge, &max_tokens)) return e;
  if (chat) {
    std::optional<int64_t> mct;
    if (auto e = get_int(root, "max_completion_tokens", 1, kHuge, &mct)) return e;
    if (mct) max_tokens = mct;  // the newer name wins, as in OpenAI's API
  }
  out->max_tokens = max_tokens;

  SamplingParams& s = out->sampling;
  s.temperature = 1.0f;  // OpenAI's defaults
  s.top_p = 1.0f;
  if (auto e = get_number(root, "temperature", 0.0, 2.0, &s.temperature)) return e;
  if (auto e = get_number(root, "top_p", 0.0, 1.0, &s.top_p)) return e;
  if (s.top_p <= 0.0f) return bad("top_p", "'top_p' must be in (0, 1]; got 0");
  if (auto e = get_int(root, "top_k", -1, 1 << 24, &top_k)) return e;
  s.top_k = top_k && *top_k > 0 ? static_cast<int>(*top_k) : 0;  // -1 and 0 both mean off (vLLM uses -1)
  if (auto e = get_number(root, "min_p", 0.0, 1.0, &s.min_p)) return e;
  if (auto e = get_number(root, "presence_penalty", -2.0, 2.0, &s.presence_penalty)) return e;
  if (auto e = get_number(root, "frequency_penalty", -2.0, 2.0, &s.frequency_penalty)) return e;
  if (auto e = get_number(root, "repetition_penalty", 0.01, 10.0, &s.repetition_penalty)) return e;
  if (auto e = get_int(root, "seed", INT64_MIN, INT64_MAX, &seed)) return e;
  if (seed) out->seed = static_cast<uint64_t>(*seed);
  if (auto e = parse_stop(root, out)) return e;

  if (auto e = get_bool(root, "stream", &out->stream)) return e;
  if (auto e = get_bool(root, "ignore_eos", &out->ignore_eos)) return e;  // vLLM extension
  if (auto e = get_bool(root, "speculative", &out->speculative)) return e;  // nibble extension
  if (const json* so = field(root, "stream_options"); so != nullptr) {
    if (!so->is_object()) return wrong_type("stream_options", "an object", *so);
    if (!out->stream) return bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (auto e = get_bool(*so, "include_usage", &out->include_usage)) return e;
  }

  if (chat) {
    if (auto e = get_bool(root, "logprobs", &out->logprobs)) return e;
    if (auto e = get_int(root, "top_logprobs", 0, SamplingParams::kMaxTopLogprobs, &top_logprobs)) return e;
    if (top_logprobs && !out->logprobs) {
      return bad("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    }
  } else {
    if (auto e = get_int(root, "logprobs", 0, SamplingParams::kMaxTopLogprobs, &top_logprobs)) return e;
    out->logprobs = top_logprobs.has_value();
  }
  out->top_logprobs = static_cast<int>(top_logprobs.value_or(0));
  s.top_logprobs = out->top_logprobs;

  if (const json* u = field(root, "user"); u != nullptr && !u->is_string()) return wrong_type("user", "a string", *u);
  if (auto e = parse_unsupported(root, endpoint, out->n)) return e;
  if (Status st = s.validate(); !st.ok()) return bad("", st.message());
  return std::nullopt;
}

}  // namespace nb::server
