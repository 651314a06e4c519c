// nibble chat: an interactive conversation on stdin/stdout with the model's chat template,
// streaming each reply. The KV cache keeps the conversation, so each turn computes only its new tokens.
#include <cstdio>
#include <iostream>
#include <string>

#include "engine/generate.h"
#include "tools/chat_format.h"
#include "tools/cli_model.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

int run_chat(int argc, char** argv) {
  CliArgs args("chat", "-m MODEL [--system S] [sampling options]");
  add_model_options(args);
  args.option("-n,--n-predict", "most tokens per reply", "512");
  args.option("-c,--ctx-size", "context size in tokens (default: the model's)");
  args.option("--system", "system message");
  add_sampling_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("chat", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  auto n_predict = args.get_int("-n", 1, 1 << 24);
  if (!n_predict.ok()) return fail("chat", n_predict.status());
  auto sampling = sampling_params_from(args);
  if (!sampling.ok()) return fail("chat", sampling.status());
  auto loaded = load_cli_model(args);
  if (!loaded.ok()) return fail("chat", loaded.status());
  CliModel& cm = *loaded;
  int64_t ctx = cm.model->config().max_seq_len;
  if (args.has("-c")) {
    auto c = args.get_int("-c", 1, ctx);
    if (!c.ok()) return fail("chat", c.status());
    ctx = *c;
  }
  auto sampler = Sampler::create(*sampling);
  if (!sampler.ok()) return fail("chat", sampler.status());

  std::vector<ChatMessage> messages;
  if (args.has("--system")) messages.push_back({"system", args.get("--system")});
  SequenceRunner runner(*cm.model, ctx);
  GenerateOptions opts;
  opts.max_new_tokens = *n_predict;
  opts.stop_ids = cm.tokenizer->eot_ids();
  std::fprintf(stderr, "nibble chat: type a message and press Enter; /reset starts over; /exit, /quit or Ctrl-D quits\n");
  std::string line;
  for (;;) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      messages.resize(args.has("--system") ? 1 : 0);
      runner.reset();
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({"user", line});
    auto rendered = render_chat(cm, messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return fail("chat", rendered.status());
    const bool add_bos = cm.tokenizer->add_bos_by_default() && !rendered->has_bos;
    const std::vector<int32_t> context = cm.tokenizer->encode(rendered->text, add_bos, /*parse_special=*/true);
    if (static_cast<int64_t>(context.size()) >= ctx) {
      std::fprintf(stderr, "nibble chat: the conversation (%zu tokens) fills the context (%lld); /reset to start over\n",
                   context.size(), static_cast<long long>(ctx));
      messages.pop_back();
      continue;
    }
    IncrementalDetokenizer detok(*cm.tokenizer, /*skip_special=*/true);
    std::string reply;
    auto stats = runner.generate(context, *sampler, opts, [&](int32_t id) {
      const std::string piece = detok.push(id);
      reply += piece;
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    const std::string rest = detok.flush();
    reply += rest;
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
    if (!stats.ok()) return fail("chat", stats.status());
    messages.push_back({"assistant", reply});
  }
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("chat", run_chat, "-m MODEL: interactive chat with the model's template, streamed");
}  // namespace nb::tools
