// nibble serve: the OpenAI-compatible HTTP server (completions, chat, models, health, metrics)
// over the continuous-batching engine. One event-loop thread serves every connection; the engine
// runs its step loop on its own thread.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "engine/engine.h"
#include "server/http_server.h"
#include "server/openai_server.h"
#include "tools/cli_device.h"
#include "tools/cli_model.h"
#include "tools/cli_spec.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

std::string default_model_name(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
  if (std::filesystem::is_directory(p)) return p.filename().string();
  return p.stem().string();
}

int run_serve(int argc, char** argv) {
  CliArgs args("serve", "-m MODEL [--host 127.0.0.1] [--port 8080] [--api-key KEY] [engine options]");
  add_model_options(args);
  args.option("--host", "address to listen on (0.0.0.0 exposes the server to the network)", "127.0.0.1");
  args.option("--port", "TCP port; 0 picks a free one (printed when ready)", "8080");
  args.option("--api-key", "require 'Authorization: Bearer KEY' on /v1/ routes");
  args.option("--served-model-name", "the model id clients send (default: the model file's stem)");
  add_kv_memory_options(args, "256MiB");
  args.option("--block-size", "tokens per KV block", "16");
  args.option("--max-num-seqs", "sequences running at once at most", "256");
  args.option("--max-batched-tokens", "tokens per engine step (chunked-prefill budget)", "512");
  args.flag("--no-prefix-cache", "do not share KV blocks of common prompt prefixes");
  args.option("--batching", "continuous or static", "continuous");
  args.option("--kv-layout", "paged or contiguous (each request reserves its max length)", "paged");
  add_speculative_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("serve", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  EngineConfig cfg;
  auto port = args.get_int("--port", 0, 65535);
  auto block = args.get_int("--block-size", 1, 1024);
  auto seqs = args.get_int("--max-num-seqs", 1, 1 << 20);
  auto budget = args.get_int("--max-batched-tokens", 1, 1 << 16);
  for (const Status* s : {&port.status(), &block.status(), &seqs.status(), &budget.status()}) {
    if (!s->ok()) return fail("serve", *s);
  }
  cfg.block_size = *block;
  cfg.max_num_seqs = *seqs;
  cfg.max_batched_tokens = *budget;
  cfg.enable_prefix_cache = !args.has("--no-prefix-cache");
  const std::string batching = args.get("--batching"), layout = args.get("--kv-layout");
  if (batching != "continuous" && batching != "static") {
    return fail("serve", invalid_argument("--batching must be continuous or static; got '" + batching + "'"));
  }
  if (layout != "paged" && layout != "contiguous") {
    return fail("serve", invalid_argument("--kv-layout must be paged or contiguous; got '" + layout + "'"));
  }
  cfg.batching = batching == "static" ? BatchingPolicy::kStatic : BatchingPolicy::kContinuous;
  cfg.kv_layout = layout == "contiguous" ? KvLayout::kContiguous : KvLayout::kPaged;

  // SIGINT/SIGTERM are taken by a sigwait thread; block them before any thread starts so every
  // thread inherits the mask. Writes to a vanished client must not kill the process.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto loaded = load_cli_model(args, cfg.max_batched_tokens);
  if (!loaded.ok()) return fail("serve", loaded.status());
  CliModel& cm = *loaded;
  auto kv = kv_cache_bytes_from(args, *cm.model, cfg.block_size);  // after the weights are on the device
  if (!kv.ok()) return fail("serve", kv.status());
  cfg.kv_cache_bytes = *kv;
  auto spec = load_speculative(args, *cm.model);  // outlives the engine (declared first)
  if (!spec.ok()) return fail("serve", spec.status());
  spec->apply(cfg);
  auto engine = Engine::create(*cm.model, cfg);
  if (!engine.ok()) return fail("serve", engine.status());

  server::OpenAiServerOptions api_opts;
  api_opts.served_model_name = args.has("--served-model-name") ? args.get("--served-model-name")
                                                                : default_model_name(args.get("-m"));
  api_opts.api_key = args.get("--api-key");
  auto api = server::OpenAiServer::create(**engine, *cm.tokenizer, cm.chat_template, api_opts);
  if (!api.ok()) return fail("serve", api.status());
  server::OpenAiServer& handler = **api;

  server::HttpServerOptions http_opts;
  http_opts.host = args.get("--host");
  http_opts.port = static_cast<int>(*port);
  http_opts.error_responder = [&handler](int status, const std::string& message) {
    return handler.error_response(status, message);
  };
  auto http = server::HttpServer::create(
      http_opts, [&handler](const server::HttpRequest& req, const server::Waker& w) { return handler.handle(req, w); });
  if (!http.ok()) return fail("serve", http.status());
  server::HttpServer& srv = **http;

  std::atomic<bool> signalled{false};
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    signalled.store(true);
    srv.stop();
  });
  const EngineStats st = (*engine)->stats();
  const std::string host = http_opts.host.find(':') != std::string::npos ? "[" + http_opts.host + "]" : http_opts.host;
  std::printf("nibble serve: listening on http://%s:%d (model %s, context %lld, KV %lld blocks of %lld tokens)\n",
              host.c_str(), srv.port(), api_opts.served_model_name.c_str(),
              static_cast<long long>(cm.model->config().max_seq_len), static_cast<long long>(st.num_blocks_total),
              static_cast<long long>(cfg.block_size));
  std::fflush(stdout);

  const Status run = srv.run();
  if (!signalled.load()) pthread_kill(signal_thread.native_handle(), SIGTERM);  // release sigwait
  signal_thread.join();
  // Connections first (their streams cancel engine requests), then the engine (joins its thread).
  http->reset();
  engine->reset();
  if (!run.ok()) return fail("serve", run);
  std::printf("nibble serve: stopped\n");
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("serve", run_serve, "-m MODEL [--port 8080]: OpenAI-compatible HTTP server");
}  // namespace nb::tools
