// The OpenAI-compatible API on top of an Engine: routing, Bearer auth, request validation,
// chat templates and tokenization, submission of the n choices, /v1/models, /health, /metrics.
//
// Routes:
//   POST /v1/completions, POST /v1/chat/completions  (JSON, or SSE with "stream": true)
//   GET  /v1/models, GET /v1/models/{id}
//   GET  /health   (200 while the engine runs; no auth)
//   GET  /metrics  (Prometheus text 0.0.4; no auth)
// Errors are OpenAI error objects with the matching status: 400 invalid request, 401 bad or missing
// key (when an API key is set), 404 unknown route or model (code "model_not_found"), 405 wrong
// method, 413 body too large, 500 engine failure, 503 shutting down.
//
// Runs entirely on the HTTP loop thread (handle() is the HttpHandler); only the engine callbacks
// run elsewhere, and they touch nothing here but the per-request inbox.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "engine/engine.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace nb::server {

struct OpenAiServerOptions {
  std::string served_model_name;  // the id clients must send as "model"
  std::string api_key;            // empty: no auth
  int64_t max_context = 0;        // prompt + completion tokens at most (the model's context)
};

class OpenAiServer {
 public:
  // `chat_template_source` is the model's Jinja template (empty: chatml). Engine and tokenizer
  // must outlive the server and every stream it creates.
  static Result<std::unique_ptr<OpenAiServer>> create(Engine& engine, const Tokenizer& tokenizer,
                                                      const std::string& chat_template_source,
                                                      OpenAiServerOptions options);

  HandlerResult handle(const HttpRequest& req, const Waker& waker);
  // A complete error response in OpenAI's shape (also used by the HTTP layer for its own errors).
  std::string error_response(int status, const std::string& message, bool keep_alive = false) const;

 private:
  OpenAiServer(Engine& engine, const Tokenizer& tokenizer, ChatTemplate tmpl, OpenAiServerOptions options);

  HandlerResult generate(Endpoint endpoint, const HttpRequest& req, const Waker& waker);
  HandlerResult reply_error(const ApiError& e, const HttpRequest& req);
  HandlerResult models(const HttpRequest& req, const std::string& id);
  std::optional<ApiError> check_auth(const HttpRequest& req) const;
  std::string random_id(const char* prefix);

  Engine& engine_;
  const Tokenizer& tok_;
  ChatTemplate template_;
  OpenAiServerOptions opts_;
  ServerMetrics metrics_;
  std::mt19937_64 rng_;  // ids and default seeds
  int64_t created_;      // the model's "created" timestamp: server start
};

}  // namespace nb::server
