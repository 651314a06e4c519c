#include "server/openai_server.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "server/http.h"
#include "server/openai_stream.h"

namespace nb::server {

using ojson = nlohmann::ordered_json;

namespace {

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

ApiError make_error(int status, std::string message, std::string code = "", std::string param = "") {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.code = std::move(code);
  e.param = std::move(param);
  if (status >= 500) e.type = "server_error";
  return e;
}

// Compares without an early exit, so response timing does not reveal how much of a key matched.
// `key` is not empty.
bool same_secret(std::string_view given, std::string_view key) {
  unsigned char diff = given.size() == key.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ key[i % key.size()]);
  return diff == 0;
}

}  // namespace

Result<std::unique_ptr<OpenAiServer>> OpenAiServer::create(Engine& engine, const Tokenizer& tokenizer,
                                                           const std::string& chat_template_source,
                                                           OpenAiServerOptions options) {
  const std::string bos = tokenizer.is_valid_id(tokenizer.bos_id()) ? tokenizer.token_text(tokenizer.bos_id()) : "";
  const std::string eos = tokenizer.is_valid_id(tokenizer.eos_id()) ? tokenizer.token_text(tokenizer.eos_id()) : "";
  NB_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::for_model(chat_template_source, bos, eos));
  if (options.max_context <= 0) options.max_context = engine.model().config().max_seq_len;
  if (options.served_model_name.empty()) return invalid_argument("the served model name must not be empty");
  return std::unique_ptr<OpenAiServer>(new OpenAiServer(engine, tokenizer, std::move(tmpl), std::move(options)));
}

OpenAiServer::OpenAiServer(Engine& engine, const Tokenizer& tokenizer, ChatTemplate tmpl, OpenAiServerOptions options)
    : engine_(engine), tok_(tokenizer), template_(std::move(tmpl)), opts_(std::move(options)), rng_(std::random_device{}()) {
  created_ = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string OpenAiServer::error_response(int status, const std::string& message, bool keep_alive) const {
  ApiError e = make_error(status, message);
  std::vector<std::string> headers;
  if (status == 401) headers.push_back("WWW-Authenticate: Bearer");
  return http_response(status, "application/json", error_body(e), keep_alive, headers);
}

HandlerResult OpenAiServer::reply_error(const ApiError& e, const HttpRequest& req) {
  std::vector<std::string> headers;
  if (e.status == 401) headers.push_back("WWW-Authenticate: Bearer");
  if (e.status == 405) {
    headers.push_back(req.path == "/v1/completions" || req.path == "/v1/chat/completions" ? "Allow: POST" : "Allow: GET");
  }
  return HandlerResult{http_response(e.status, "application/json", error_body(e), req.keep_alive, headers), nullptr, false};
}

std::string OpenAiServer::random_id(const char* prefix) {
  static constexpr char kAlphabet[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  std::string id = prefix;
  for (int i = 0; i < 24; ++i) id += kAlphabet[rng_() % (sizeof(kAlphabet) - 1)];
  return id;
}

std::optional<ApiError> OpenAiServer::check_auth(const HttpRequest& req) const {
  if (opts_.api_key.empty()) return std::nullopt;
  const std::string* auth = req.header("authorization");
  if (auth == nullptr) {
    return make_error(401, "missing API key: send the header 'Authorization: Bearer <key>'", "invalid_api_key");
  }
  constexpr std::string_view kBearer = "Bearer ";
  if (auth->size() < kBearer.size() || !std::equal(kBearer.begin(), kBearer.end(), auth->begin(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
      })) {
    return make_error(401, "the Authorization header must be 'Bearer <key>'", "invalid_api_key");
  }
  if (!same_secret(std::string_view(*auth).substr(kBearer.size()), opts_.api_key)) {
    return make_error(401, "incorrect API key provided", "invalid_api_key");
  }
  return std::nullopt;
}

HandlerResult OpenAiServer::handle(const HttpRequest& req, const Waker& waker) {
  const std::string& path = req.path;
  const bool get = req.method == "GET";
  const bool post = req.method == "POST";
  if (path == "/health") {
    if (!get) return reply_error(make_error(405, "use GET /health"), req);
    return HandlerResult{http_response(200, "application/json", "{\"status\":\"ok\"}", req.keep_alive), nullptr, false};
  }
  if (path == "/metrics") {
    if (!get) return reply_error(make_error(405, "use GET /metrics"), req);
    return HandlerResult{http_response(200, "text/plain; version=0.0.4; charset=utf-8", metrics_.render(engine_.stats()),
                                       req.keep_alive),
                         nullptr, false};
  }
  const bool completions = path == "/v1/completions";
  const bool chat = path == "/v1/chat/completions";
  const bool models_list = path == "/v1/models";
  const bool model_get = path.rfind("/v1/models/", 0) == 0 && path.size() > 11;
  if (!completions && !chat && !models_list && !model_get) {
    return reply_error(make_error(404, "unknown route " + req.method + " " + path +
                                           "; this server offers /v1/completions, /v1/chat/completions, /v1/models, "
                                           "/health, /metrics",
                                  "not_found"),
                       req);
  }
  if (auto e = check_auth(req)) return reply_error(*e, req);
  if (completions || chat) {
    if (!post) return reply_error(make_error(405, "use POST " + path), req);
    return generate(chat ? Endpoint::kChat : Endpoint::kCompletions, req, waker);
  }
  if (!get) return reply_error(make_error(405, "use GET " + path), req);
  return models(req, model_get ? path.substr(11) : "");
}

HandlerResult OpenAiServer::models(const HttpRequest& req, const std::string& id) {
  ojson model;
  model["id"] = opts_.served_model_name;
  model["object"] = "model";
  model["created"] = created_;
  model["owned_by"] = "nibble";
  model["max_model_len"] = opts_.max_context;
  if (!id.empty()) {
    if (id != opts_.served_model_name) {
      return reply_error(make_error(404, "the model '" + id + "' does not exist; this server serves '" +
                                             opts_.served_model_name + "'",
                                    "model_not_found", "model"),
                         req);
    }
    return HandlerResult{http_response(200, "application/json", dump(model), req.keep_alive), nullptr, false};
  }
  ojson list;
  list["object"] = "list";
  list["data"] = ojson::array({model});
  return HandlerResult{http_response(200, "application/json", dump(list), req.keep_alive), nullptr, false};
}

HandlerResult OpenAiServer::generate(Endpoint endpoint, const HttpRequest& req, const Waker& waker) {
  const double arrival = steady_now_s();
  const bool chat = endpoint == Endpoint::kChat;
  auto client_error = [&](const ApiError& e) {
    metrics_.count_request(e.status >= 500 ? RequestStatus::kServerError : RequestStatus::kClientError);
    return reply_error(e, req);
  };
  GenerationParams p;
  if (auto e = parse_generation_params(req.body, endpoint, &p)) return client_error(*e);
  if (!p.model.empty() && p.model != opts_.served_model_name) {
    return client_error(make_error(404, "the model '" + p.model + "' does not exist; this server serves '" +
                                            opts_.served_model_name + "'",
                                   "model_not_found", "model"));
  }

  // The prompt as token ids.
  std::vector<int32_t> prompt;
  const char* prompt_param = chat ? "messages" : "prompt";
  if (chat) {
    auto text = template_.render(p.messages, /*add_generation_prompt=*/true);
    if (!text.ok()) return client_error(make_error(400, "the chat template rejected the messages: " + text.status().message(), "", "messages"));
    const int32_t bos = tok_.bos_id();
    const bool has_bos = tok_.is_valid_id(bos) && text->rfind(tok_.token_text(bos), 0) == 0;
    prompt = tok_.encode(*text, tok_.add_bos_by_default() && !has_bos, /*parse_special=*/true);
  } else if (p.prompt_is_tokens) {
    for (int32_t id : p.prompt_tokens) {
      if (!tok_.is_valid_id(id)) {
        return client_error(make_error(400, "token id " + std::to_string(id) + " is outside the vocabulary (size " +
                                                std::to_string(tok_.vocab_size()) + ")", "", "prompt"));
      }
    }
    prompt = std::move(p.prompt_tokens);
  } else {
    prompt = tok_.encode(p.prompt_text, tok_.add_bos_by_default(), /*parse_special=*/true);
  }
  const auto num_prompt = static_cast<int64_t>(prompt.size());
  if (num_prompt == 0) return client_error(make_error(400, "the prompt is empty; send at least one token of text", "", prompt_param));

  // Length: prompt + completion within the context and within the KV cache.
  const int64_t ctx = opts_.max_context;
  const EngineStats st = engine_.stats();
  const int64_t kv_tokens = st.num_blocks_total * engine_.config().block_size;
  const int64_t limit = std::min(ctx, kv_tokens);
  if (num_prompt >= ctx || (p.max_tokens && num_prompt + *p.max_tokens > ctx)) {
    const int64_t want = p.max_tokens.value_or(1);
    return client_error(make_error(
        400,
        "This model's maximum context length is " + std::to_string(ctx) + " tokens. However, you requested " +
            std::to_string(num_prompt + want) + " tokens (" + std::to_string(num_prompt) + " in the " + prompt_param +
            ", " + std::to_string(want) + " for the completion). Please reduce the length of the " + prompt_param +
            " or completion.",
        "context_length_exceeded", prompt_param));
  }
  int64_t max_tokens = 0;
  if (p.max_tokens) {
    max_tokens = *p.max_tokens;
  } else {
    // OpenAI's defaults: 16 for completions, up to the context for chat; clamped to what fits.
    max_tokens = std::min<int64_t>(chat ? ctx : 16, limit - num_prompt);
    if (max_tokens < 1) {
      return client_error(make_error(400, "the prompt (" + std::to_string(num_prompt) +
                                              " tokens) fills the KV cache (" + std::to_string(kv_tokens) +
                                              " tokens); shorten it", "context_length_exceeded", prompt_param));
    }
  }

  StreamSetup setup;
  setup.endpoint = endpoint;
  setup.id = random_id(chat ? "chatcmpl-" : "cmpl-");
  setup.model = opts_.served_model_name;
  setup.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  setup.n = p.n;
  setup.stream = p.stream;
  setup.chunked = req.version_minor >= 1;
  setup.keep_alive = req.keep_alive && (!p.stream || setup.chunked);
  setup.include_usage = p.include_usage;
  setup.logprobs = p.logprobs;
  setup.top_logprobs = p.top_logprobs;
  setup.stop = p.stop;
  setup.num_prompt_tokens = num_prompt;
  setup.arrival_s = arrival;
  setup.detok_starts_text = chat;  // a completion continues the prompt's text (keeps a leading space)
  auto stream = std::make_unique<GenerationStream>(setup, tok_, engine_, metrics_, waker);

  const uint64_t seed = p.seed ? *p.seed : rng_();
  for (int i = 0; i < p.n; ++i) {
    GenerationRequest g;
    g.prompt = prompt;
    g.sampling = p.sampling;
    g.sampling.seed = seed + static_cast<uint64_t>(i);  // distinct choices, reproducible as a whole
    g.max_tokens = max_tokens;
    if (!p.ignore_eos) g.stop_ids = tok_.eot_ids();
    g.logprobs = p.logprobs;
    g.speculative = p.speculative;
    auto id = engine_.submit(std::move(g), stream->callback(i));
    if (!id.ok()) {
      stream->abandon();
      const StatusCode code = id.status().code();
      const bool client = code == StatusCode::kInvalidArgument || code == StatusCode::kOutOfRange ||
                          code == StatusCode::kResourceExhausted;
      const int status = client ? 400 : code == StatusCode::kFailedPrecondition ? 503 : 500;
      return client_error(make_error(status, id.status().message(), "", client ? prompt_param : ""));
    }
    stream->set_engine_id(i, *id);
  }
  metrics_.add_prompt_tokens(num_prompt);
  HandlerResult r;
  r.stream = std::move(stream);
  r.close = !setup.keep_alive;
  return r;
}

}  // namespace nb::server
