// nibble generate: one prompt in, text out, streamed as it is generated.
#include <chrono>
#include <cstdio>
#include <string>

#include "engine/generate.h"
#include "tools/chat_format.h"
#include "tools/cli_model.h"
#include "tools/cli_spec.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

// --speculative: the one request runs through the engine, which drafts and verifies.
int generate_speculative(const CliArgs& args, CliModel& cm, const std::vector<int32_t>& prompt,
                         const SamplingParams& sampling, const GenerateOptions& opts, IncrementalDetokenizer& detok) {
  auto spec = load_speculative(args, *cm.model);
  if (!spec.ok()) return fail("generate", spec.status());
  EngineConfig cfg;
  cfg.max_batched_tokens = cm.model->max_batch_tokens();
  spec->apply(cfg);
  GenerationRequest req;
  req.prompt = prompt;
  req.sampling = sampling;
  req.max_tokens = opts.max_new_tokens;
  req.stop_ids = opts.stop_ids;
  auto run = generate_with_engine(*cm.model, cfg, std::move(req), [&](int32_t id) {
    const std::string piece = detok.push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  const std::string rest = detok.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  if (!run.ok()) return fail("generate", run.status());
  if (!args.has("--quiet")) {
    const auto n = static_cast<double>(run->tokens.size());
    std::fprintf(stderr,
                 "\n[prompt %zu tokens, %.2f s | generated %zu tokens, %.1f tokens/s | %s: %lld of %lld drafts accepted, "
                 "%.2f tokens per target step | stop: %s]\n",
                 prompt.size(), run->prefill_seconds, run->tokens.size(),
                 (n - 1) / std::max(1e-9, run->decode_seconds), args.get("--speculative").c_str(),
                 static_cast<long long>(run->num_accepted_tokens), static_cast<long long>(run->num_draft_tokens),
                 (n - 1) / std::max<double>(1, static_cast<double>(run->num_decode_steps)),
                 finish_reason_name(run->finish_reason));
  }
  return 0;
}

int run_generate(int argc, char** argv) {
  CliArgs args("generate", "-m MODEL -p PROMPT [-n N] [--temp T] [--top-p P] [--seed S] [--chat]");
  add_model_options(args);
  args.option("-p,--prompt", "the prompt");
  args.option("-n,--n-predict", "most tokens to generate", "128");
  args.option("-c,--ctx-size", "context size in tokens (default: the model's)");
  args.flag("--chat", "wrap the prompt as a user message in the model's chat template; print only the reply");
  args.option("--system", "system message (with --chat)");
  args.flag("--no-bos", "do not add the BOS token");
  args.flag("--no-special", "treat special-token text in the prompt as plain text");
  args.flag("--quiet", "no timing summary on stderr");
  add_sampling_options(args);
  add_speculative_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("generate", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("-p")) return fail("generate", invalid_argument("-p PROMPT is required; see 'nibble generate --help'"));
  auto n_predict = args.get_int("-n", 0, 1 << 24);
  if (!n_predict.ok()) return fail("generate", n_predict.status());
  auto sampling = sampling_params_from(args);
  if (!sampling.ok()) return fail("generate", sampling.status());
  const auto t_start = std::chrono::steady_clock::now();
  auto loaded = load_cli_model(args);
  if (!loaded.ok()) return fail("generate", loaded.status());
  CliModel& cm = *loaded;
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  double first_token_s = 0;
  int64_t ctx = cm.model->config().max_seq_len;
  if (args.has("-c")) {
    auto c = args.get_int("-c", 1, ctx);
    if (!c.ok()) return fail("generate", c.status());
    ctx = *c;
  }

  std::string text = args.get("-p");
  bool add_bos = cm.tokenizer->add_bos_by_default() && !args.has("--no-bos");
  if (args.has("--chat")) {
    std::vector<ChatMessage> messages;
    if (args.has("--system")) messages.push_back({"system", args.get("--system")});
    messages.push_back({"user", text});
    auto rendered = render_chat(cm, messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return fail("generate", rendered.status());
    text = rendered->text;
    add_bos = add_bos && !rendered->has_bos;
  }
  const std::vector<int32_t> prompt = cm.tokenizer->encode(text, add_bos, !args.has("--no-special"));
  if (prompt.empty()) return fail("generate", invalid_argument("the prompt encodes to no tokens"));
  if (static_cast<int64_t>(prompt.size()) >= ctx) {
    return fail("generate", out_of_range("the prompt is " + std::to_string(prompt.size()) +
                                         " tokens but the context is " + std::to_string(ctx) +
                                         "; shorten the prompt or raise --ctx-size"));
  }
  auto sampler = Sampler::create(*sampling);
  if (!sampler.ok()) return fail("generate", sampler.status());

  if (!args.has("--chat")) {  // plain completion: echo the prompt, as llama.cpp does
    std::fputs(args.get("-p").c_str(), stdout);
    std::fflush(stdout);
  }
  SequenceRunner runner(*cm.model, ctx);
  // A plain completion continues the echoed prompt: a SentencePiece leading space is real text.
  IncrementalDetokenizer detok(*cm.tokenizer, /*skip_special=*/true, /*starts_text=*/args.has("--chat"));
  GenerateOptions opts;
  opts.max_new_tokens = *n_predict;
  opts.stop_ids = cm.tokenizer->eot_ids();
  if (opts.max_new_tokens == 0) {
    std::fputc('\n', stdout);
    return 0;
  }
  if (args.has("--speculative")) return generate_speculative(args, cm, prompt, *sampling, opts, detok);
  auto stats = runner.generate(prompt, *sampler, opts, [&](int32_t id) {
    if (first_token_s == 0) {
      first_token_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    }
    const std::string piece = detok.push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  const std::string rest = detok.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  if (!stats.ok()) return fail("generate", stats.status());
  if (!args.has("--quiet")) {
    std::fprintf(stderr, "\n[prompt %lld tokens, %.1f tokens/s | generated %lld tokens, %.1f tokens/s | stop: %s]\n",
                 static_cast<long long>(stats->num_prompt_tokens),
                 stats->num_prompt_tokens / std::max(1e-9, stats->prefill_seconds),
                 static_cast<long long>(stats->num_generated),
                 stats->num_generated / std::max(1e-9, stats->decode_seconds), stop_reason_name(stats->stop));
    std::fprintf(stderr, "[model loaded in %.2f s; first token %.2f s after start]\n", load_s, first_token_s);
  }
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("generate", run_generate, "-m MODEL -p PROMPT [-n N] [--temp T] [--chat]: generate text");
}  // namespace nb::tools
