// nibble bench spec: speculative decoding at batch 1, for K = 1..8 (or --k-list). For each K, runs
// with and without speculation are interleaved (the machine may be shared: the speedup is a ratio
// measured within one command) and it prints, medians over --runs:
//   p        per-draft acceptance rate: accepted / (accepted + rejections) (Leviathan's alpha)
//   acc/drf  accepted / drafted
//   tok/step tokens per target step after the first token (steps without drafts included)
//   tok/vstep tokens per verification step, 1 + accepted / steps; predicted: the mean over those
//            steps of (1 - p^(k+1)) / (1 - p) with each step's draft count k — that is
//            (1 - p^(K+1)) / (1 - p) when every step has K drafts (model drafters); the n-gram
//            drafter proposes fewer when its match runs out (mean k)
//   tok/s    decode tokens/s with and without speculation, and their ratio
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tools/bench_commands.h"
#include "tools/chat_format.h"
#include "tools/cli_model.h"
#include "tools/cli_spec.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

Result<std::vector<int64_t>> parse_k_list(const std::string& text) {
  std::vector<int64_t> ks;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto dash = item.find('-');
    try {
      if (dash != std::string::npos) {
        const int64_t a = std::stoll(item.substr(0, dash)), b = std::stoll(item.substr(dash + 1));
        for (int64_t k = a; k <= b; ++k) ks.push_back(k);
      } else {
        ks.push_back(std::stoll(item));
      }
    } catch (const std::exception&) {
      return invalid_argument("--k-list takes numbers and ranges like 1-8 or 1,2,4; got '" + text + "'");
    }
  }
  for (int64_t k : ks) {
    if (k < 1 || k > 64) return invalid_argument("--k-list values must be in [1, 64]");
  }
  if (ks.empty()) return invalid_argument("--k-list is empty");
  return ks;
}

}  // namespace

int run_bench_spec(int argc, char** argv) {
  CliArgs args("bench spec", "-m MODEL --speculative ngram|draft|self (-p PROMPT | --prompt-file F) [--chat] [-n N]");
  add_model_options(args);
  add_sampling_options(args);
  add_speculative_options(args);
  args.option("-p,--prompt", "the prompt");
  args.option("--prompt-file", "read the prompt from this file");
  args.option("--prompt-bytes", "use only the first N bytes of --prompt-file", "0");
  args.flag("--chat", "wrap the prompt as a user message in the model's chat template");
  args.option("--system", "system message (with --chat)");
  args.option("-n,--n-predict", "tokens to generate per run", "128");
  args.option("--runs", "runs per K and mode (medians are reported)", "3");
  args.option("--k-list", "values of K, e.g. 1-8 or 2,4", "1-8");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("bench spec", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("--speculative")) return fail("bench spec", invalid_argument("--speculative ngram|draft|self is required"));
  auto n_predict = args.get_int("-n", 2, 1 << 20);
  auto runs = args.get_int("--runs", 1, 1000);
  auto ks = parse_k_list(args.get("--k-list"));
  auto prompt_bytes = args.get_int("--prompt-bytes", 0, 1 << 30);
  auto sampling = sampling_params_from(args);
  for (const Status& s : {n_predict.status(), runs.status(), ks.status(), prompt_bytes.status(), sampling.status()}) {
    if (!s.ok()) return fail("bench spec", s);
  }
  std::string text = args.get("-p");
  if (args.has("--prompt-file")) {
    std::ifstream f(args.get("--prompt-file"), std::ios::binary);
    if (!f) return fail("bench spec", not_found("cannot read --prompt-file " + args.get("--prompt-file")));
    std::stringstream ss;
    ss << f.rdbuf();
    text = ss.str();
    if (*prompt_bytes > 0 && text.size() > static_cast<size_t>(*prompt_bytes)) text.resize(static_cast<size_t>(*prompt_bytes));
  }
  if (text.empty()) return fail("bench spec", invalid_argument("give a prompt with -p or --prompt-file"));
  auto loaded = load_cli_model(args);
  if (!loaded.ok()) return fail("bench spec", loaded.status());
  CliModel& cm = *loaded;
  bool add_bos = cm.tokenizer->add_bos_by_default();
  if (args.has("--chat")) {
    std::vector<ChatMessage> messages;
    if (args.has("--system")) messages.push_back({"system", args.get("--system")});
    messages.push_back({"user", text});
    auto rendered = render_chat(cm, messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return fail("bench spec", rendered.status());
    text = rendered->text;
    add_bos = add_bos && !rendered->has_bos;
  }
  const std::vector<int32_t> prompt = cm.tokenizer->encode(text, add_bos, true);
  auto spec = load_speculative(args, *cm.model);
  if (!spec.ok()) return fail("bench spec", spec.status());

  GenerationRequest req;
  req.prompt = prompt;
  req.sampling = *sampling;
  req.max_tokens = *n_predict;  // no stop ids: every run generates exactly n tokens
  EngineConfig base;
  base.max_batched_tokens = cm.model->max_batch_tokens();
  std::printf("bench spec: %s, prompt %zu tokens, %lld new tokens, temp %g, %lld runs per K (medians)\n",
              args.get("--speculative").c_str(), prompt.size(), static_cast<long long>(*n_predict),
              static_cast<double>(sampling->temperature), static_cast<long long>(*runs));
  std::printf("%3s %6s %7s %8s %9s %9s %9s %7s %10s %10s %8s\n", "K", "mean k", "p", "acc/drf", "tok/step",
              "tok/vstep", "predicted", "ratio", "base tok/s", "spec tok/s", "speedup");
  for (int64_t k : *ks) {
    EngineConfig cfg = base;
    spec->apply(cfg);
    cfg.num_speculative_tokens = k;
    std::vector<double> p, acc, tps, vtps, mean_k, pred, base_tps, spec_tps, speedup;
    for (int64_t r = 0; r < *runs; ++r) {
      auto b = generate_with_engine(*cm.model, base, req);
      auto s = generate_with_engine(*cm.model, cfg, req);
      if (!b.ok()) return fail("bench spec", b.status());
      if (!s.ok()) return fail("bench spec", s.status());
      const double n_after_first = static_cast<double>(s->tokens.size()) - 1.0;
      const double a = static_cast<double>(s->num_accepted_tokens);
      const double trials = a + static_cast<double>(s->num_spec_rejections);
      const double alpha = trials > 0 ? a / trials : 0.0;
      p.push_back(alpha);
      acc.push_back(s->num_draft_tokens > 0 ? a / static_cast<double>(s->num_draft_tokens) : 0.0);
      tps.push_back(n_after_first / std::max<double>(1.0, static_cast<double>(s->num_decode_steps)));
      const double steps = std::max<double>(1.0, static_cast<double>(s->num_spec_steps));
      vtps.push_back(1.0 + a / steps);
      mean_k.push_back(static_cast<double>(s->num_draft_tokens) / steps);
      double expected = 0.0;
      for (int64_t kd : s->step_drafts) {
        expected += alpha < 1.0 ? (1.0 - std::pow(alpha, static_cast<double>(kd + 1))) / (1.0 - alpha)
                                : static_cast<double>(kd + 1);
      }
      pred.push_back(expected / std::max<double>(1.0, static_cast<double>(s->step_drafts.size())));
      const double bt = (static_cast<double>(b->tokens.size()) - 1.0) / std::max(1e-9, b->decode_seconds);
      const double st = n_after_first / std::max(1e-9, s->decode_seconds);
      base_tps.push_back(bt);
      spec_tps.push_back(st);
      speedup.push_back(st / bt);
    }
    std::printf("%3lld %6.2f %7.3f %8.3f %9.3f %9.3f %9.3f %7.3f %10.1f %10.1f %7.2fx\n", static_cast<long long>(k),
                median(mean_k), median(p), median(acc), median(tps), median(vtps), median(pred),
                median(vtps) / median(pred), median(base_tps), median(spec_tps), median(speedup));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace nb::tools
