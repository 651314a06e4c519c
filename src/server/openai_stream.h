// GenerationStream: one /v1/completions or /v1/chat/completions request in flight, as the
// ResponseStream the HTTP loop polls.
//
// Data flow: the engine calls each choice's callback on ITS thread; the callback only appends the
// tokens to a mutex-protected inbox and wakes the loop (no blocking, no formatting there). On the
// loop thread, poll() drains the inbox, detokenizes incrementally (no chunk splits a UTF-8
// character), applies the stop strings (held-back text across token boundaries; on a match the
// text is cut before the stop string and the engine request is cancelled), and writes either SSE
// chunks (stream) or, once every choice is done, one JSON response, in OpenAI's exact shapes.
//
// Lifetime: the callbacks hold the inbox by shared_ptr, so outputs that arrive after the client
// has gone are harmless. The Engine, Tokenizer and ServerMetrics must outlive the stream.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace nb::server {

struct StreamSetup {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;      // "cmpl-..." / "chatcmpl-..."
  std::string model;   // the served model name
  int64_t created = 0; // Unix seconds
  int n = 1;
  bool stream = false;
  bool chunked = true;     // HTTP/1.1 chunked framing for the SSE body (HTTP/1.0: close-delimited)
  bool keep_alive = true;  // of the non-streamed response
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  std::vector<std::string> stop;
  int64_t num_prompt_tokens = 0;
  double arrival_s = 0;  // steady-clock seconds when the request was received
  bool detok_starts_text = true;  // false for completions: the output continues the prompt's text
};

double steady_now_s();

class GenerationStream : public ResponseStream {
 public:
  GenerationStream(StreamSetup setup, const Tokenizer& tokenizer, Engine& engine, ServerMetrics& metrics, Waker waker);
  ~GenerationStream() override;

  // The engine callback for choice `index` (0..n-1). Safe to call before set_engine_id().
  OutputCallback callback(int index) const;
  void set_engine_id(int index, RequestId id);
  // Cancels the choices submitted so far (a later choice failed to submit); no response follows.
  void abandon();

  bool poll(std::string* out) override;
  void on_disconnect() override;

 private:
  struct Inbox;
  struct Choice;
  struct Delta;

  void write_chunk(const Choice& c, const Delta& d, bool role_chunk, std::string* out);
  void write_event(std::string_view data, std::string* out) const;
  void finish_stream(std::string* out);
  void finish_json(std::string* out);
  void fail(const std::string& message, std::string* out);
  void record_metrics(RequestStatus status);
  void cancel_running();

  StreamSetup setup_;
  const Tokenizer& tok_;
  Engine& engine_;
  ServerMetrics& metrics_;
  std::shared_ptr<Inbox> inbox_;
  std::vector<std::unique_ptr<Choice>> choices_;
  bool started_ = false;
  bool complete_ = false;
  bool recorded_ = false;
};

}  // namespace nb::server
