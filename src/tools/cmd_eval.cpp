// nibble eval ppl | kld: perplexity of a model on a raw text file, and the KL divergence of its
// next-token distributions from a reference model's (plus top-1 agreement), over the same windows
// (eval_windows.h: Hugging Face's convention).
//
// Tokenization: the whole file is read as one text and tokenized at once (special-token text is
// not parsed); BOS is prepended once, at the start of the stream, only when the tokenizer adds BOS
// by default (what an HF tokenizer(text) call does). Windows are cut from that one token stream.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/mmap_file.h"
#include "tools/cli_args.h"
#include "tools/cli_model.h"
#include "tools/commands.h"
#include "tools/eval_windows.h"

namespace nb::tools {
namespace {

constexpr const char* kWindowHelp =
    "windows: each of --ctx tokens, advancing by --stride (default: --ctx, non-overlapping); a window scores the\n"
    "tokens after the previous window's end, never its own first token (Hugging Face's perplexity recipe, not\n"
    "llama.cpp's second-half scoring). The file is tokenized whole; BOS is prepended once if the tokenizer adds BOS.\n";

struct Progress {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
  void show(size_t i, size_t n, const std::string& extra) const {
    const double e = elapsed();
    const double eta = i > 0 ? e / static_cast<double>(i) * static_cast<double>(n - i) : 0.0;
    std::fprintf(stderr, "\rwindow %zu/%zu  elapsed %.0fs  ETA %.0fs  %s   ", i, n, e, eta, extra.c_str());
    std::fflush(stderr);
  }
};

void add_eval_options(CliArgs& args) {
  add_model_options(args);
  args.option("--data", "raw text file to evaluate on");
  args.option("--ctx", "tokens per window", "2048");
  args.option("--stride", "window advance in tokens (default: --ctx)");
  args.option("--max-windows", "evaluate only the first N windows (0 = all)", "0");
  args.option("--every", "evaluate windows 0, K, 2K, ... only: a subset spread over the text (1 = all)", "1");
  args.option("--batch-tokens", "tokens a forward pass takes: a window runs in chunks of this many (the\n"
              "      result is the same for any value; larger chunks mean fewer, larger passes)", "256");
  args.flag("--json", "print the result as one JSON object on stdout");
}

struct EvalSetup {
  CliModel m;
  int64_t batch_tokens = 0;
  std::vector<int32_t> tokens;
  std::vector<EvalWindow> windows;
  int64_t ctx = 0, stride = 0;
};

Result<EvalSetup> setup(const CliArgs& args) {
  if (!args.has("--data")) return invalid_argument("--data FILE is required (raw text, e.g. ../shared/data/text/wikitext-2-raw.test.txt)");
  EvalSetup s;
  NB_ASSIGN_OR_RETURN(s.ctx, args.get_int("--ctx", 2, 1 << 20));
  s.stride = s.ctx;
  if (args.has("--stride")) {
    NB_ASSIGN_OR_RETURN(s.stride, args.get_int("--stride", 1, s.ctx));
  }
  NB_ASSIGN_OR_RETURN(int64_t max_windows, args.get_int("--max-windows", 0, INT64_MAX));
  NB_ASSIGN_OR_RETURN(int64_t every, args.get_int("--every", 1, INT64_MAX));
  NB_ASSIGN_OR_RETURN(s.batch_tokens, args.get_int("--batch-tokens", 1, 1 << 16));
  NB_ASSIGN_OR_RETURN(std::string text, read_file(args.get("--data")));
  if (text.empty()) return invalid_argument("--data '" + args.get("--data") + "' is empty");
  NB_ASSIGN_OR_RETURN(s.m, load_cli_model(args, s.batch_tokens));
  if (s.ctx > s.m.model->config().max_seq_len) {
    return invalid_argument("--ctx " + std::to_string(s.ctx) + " exceeds the model's context of " +
                            std::to_string(s.m.model->config().max_seq_len) + " tokens");
  }
  s.tokens = s.m.tokenizer->encode(text, s.m.tokenizer->add_bos_by_default(), /*parse_special=*/false);
  if (s.tokens.size() < 2) return invalid_argument("--data holds fewer than 2 tokens");
  s.windows = eval_windows(static_cast<int64_t>(s.tokens.size()), s.ctx, s.stride, max_windows, every);
  return s;
}

// Sums of the per-position statistics over every window, in position order (deterministic).
struct Totals {
  double nll = 0.0, ref_nll = 0.0, kl = 0.0;
  int64_t agree = 0, count = 0;
};

Result<Totals> evaluate(const CliArgs& args, EvalSetup& s, LlamaModel* ref, Progress& progress) {
  NB_ASSIGN_OR_RETURN(int64_t threads, args.get_int("-t", 1, 256));
  ThreadPool pool(static_cast<int>(threads));
  Totals t;
  for (size_t i = 0; i < s.windows.size(); ++i) {
    NB_RETURN_IF_ERROR(run_window(*s.m.model, ref, pool, s.tokens, s.windows[i], [&](int64_t n, const double* st) {
      for (int64_t r = 0; r < n; ++r) {
        t.nll += st[4 * r];
        t.ref_nll += st[4 * r + 1];
        t.kl += st[4 * r + 2];
        t.agree += st[4 * r + 3] != 0.0 ? 1 : 0;
      }
      t.count += n;
    }));
    const auto c = static_cast<double>(t.count);
    progress.show(i + 1, s.windows.size(),
                  ref == nullptr ? "ppl " + std::to_string(std::exp(t.nll / c)) : "kld " + std::to_string(t.kl / c));
  }
  std::fputc('\n', stderr);
  return t;
}

int run_ppl(int argc, char** argv) {
  CliArgs args("eval ppl", std::string("-m MODEL --data FILE [--ctx 2048] [--stride S] [--max-windows N] [--batch-tokens B] [-t T] [--json]\n") + kWindowHelp);
  add_eval_options(args);
  if (Status st = args.parse(argc, argv); !st.ok()) return fail("eval ppl", st);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  auto s = setup(args);
  if (!s.ok()) return fail("eval ppl", s.status());
  Progress progress;
  auto t = evaluate(args, *s, nullptr, progress);
  if (!t.ok()) return fail("eval ppl", t.status());
  const auto count = static_cast<double>(t->count);
  const double ppl = std::exp(t->nll / count);
  const double secs = progress.elapsed();
  if (args.has("--json")) {
    nlohmann::json j = {{"ppl", ppl}, {"mean_nll", t->nll / count}, {"scored_tokens", t->count},
                        {"total_tokens", s->tokens.size()}, {"windows", s->windows.size()}, {"ctx", s->ctx},
                        {"stride", s->stride}, {"seconds", secs}, {"tokens_per_second", count / secs}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ppl %.4f  (%lld tokens scored in %zu windows of %lld, %.1f s, %.0f tok/s)\n", ppl,
                static_cast<long long>(t->count), s->windows.size(), static_cast<long long>(s->ctx), secs, count / secs);
  }
  return 0;
}

int run_kld(int argc, char** argv) {
  CliArgs args("eval kld", std::string("-m MODEL --ref REF --data FILE [--ctx 2048] [--stride S] [--max-windows N] [--batch-tokens B] [--json]\n") +
                               "mean KL(ref || model) of the next-token distributions at every scored position, and how often\n"
                               "both models' most likely token agree. REF runs where MODEL runs (--device, --dtype) with the\n"
                               "default KV cache. " + kWindowHelp);
  add_eval_options(args);
  args.option("--ref", "reference model (tokenized with MODEL's tokenizer; vocabularies must match)");
  if (Status st = args.parse(argc, argv); !st.ok()) return fail("eval kld", st);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("--ref")) return fail("eval kld", invalid_argument("--ref REF is required"));
  auto s = setup(args);
  if (!s.ok()) return fail("eval kld", s.status());
  auto ref = load_cli_reference_model(args, args.get("--ref"), s->batch_tokens);
  if (!ref.ok()) return fail("eval kld", ref.status());
  const int64_t vocab = s->m.model->config().vocab_size;
  if ((*ref)->config().vocab_size != vocab) {
    return fail("eval kld", invalid_argument("--ref has a vocabulary of " + std::to_string((*ref)->config().vocab_size) +
                                             " tokens, the model " + std::to_string(vocab) + "; they must match"));
  }
  Progress progress;
  auto t = evaluate(args, *s, ref->get(), progress);
  if (!t.ok()) return fail("eval kld", t.status());
  const auto count = static_cast<double>(t->count);
  const double kld = t->kl / count, top1 = static_cast<double>(t->agree) / count;
  const double ppl = std::exp(t->nll / count), ref_ppl = std::exp(t->ref_nll / count);
  if (args.has("--json")) {
    nlohmann::json j = {{"kld", kld}, {"top1_agreement", top1}, {"ppl", ppl}, {"ref_ppl", ref_ppl}, {"scored_tokens", t->count},
                        {"windows", s->windows.size()}, {"ctx", s->ctx}, {"stride", s->stride}, {"seconds", progress.elapsed()}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("kld %.6f  top-1 agreement %.4f  ppl %.4f  ref ppl %.4f  (%lld positions)\n", kld, top1, ppl, ref_ppl,
                static_cast<long long>(t->count));
  }
  return 0;
}

int run_eval(int argc, char** argv) {
  const std::string sub = argc >= 2 ? argv[1] : "";
  if (sub == "ppl") return run_ppl(argc - 1, argv + 1);
  if (sub == "kld") return run_kld(argc - 1, argv + 1);
  std::fputs("usage: nibble eval ppl|kld ...   (nibble eval ppl --help)\n", sub == "--help" || sub == "-h" ? stdout : stderr);
  return sub == "--help" || sub == "-h" ? 0 : 2;
}

}  // namespace
NB_REGISTER_COMMAND("eval", run_eval, "ppl|kld -m MODEL --data FILE [--ctx N]: perplexity / KL divergence vs a reference");
}  // namespace nb::tools
