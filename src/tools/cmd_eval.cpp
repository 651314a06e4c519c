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
  args.flag("--json", "print the result as one JSON object on stdout");
}

struct EvalSetup {
  CliModel m;
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
  NB_ASSIGN_OR_RETURN(std::string text, read_file(args.get("--data")));
  if (text.empty()) return invalid_argument("--data '" + args.get("--data") + "' is empty");
  NB_ASSIGN_OR_RETURN(s.m, load_cli_model(args));
  if (s.ctx > s.m.model->config().max_seq_len) {
    return invalid_argument("--ctx " + std::to_string(s.ctx) + " exceeds the model's context of " +
                            std::to_string(s.m.model->config().max_seq_len) + " tokens");
  }
  s.tokens = s.m.tokenizer->encode(text, s.m.tokenizer->add_bos_by_default(), /*parse_special=*/false);
  if (s.tokens.size() < 2) return invalid_argument("--data holds fewer than 2 tokens");
  s.windows = eval_windows(static_cast<int64_t>(s.tokens.size()), s.ctx, s.stride, max_windows);
  return s;
}

int run_ppl(int argc, char** argv) {
  CliArgs args("eval ppl", std::string("-m MODEL --data FILE [--ctx 2048] [--stride S] [--max-windows N] [-t T] [--json]\n") + kWindowHelp);
  add_eval_options(args);
  if (Status st = args.parse(argc, argv); !st.ok()) return fail("eval ppl", st);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  auto s = setup(args);
  if (!s.ok()) return fail("eval ppl", s.status());
  LlamaModel& model = *s->m.model;
  const int64_t vocab = model.config().vocab_size;
  ThreadPool pool(2);
  double nll = 0.0;
  int64_t count = 0;
  Progress progress;
  for (size_t i = 0; i < s->windows.size(); ++i) {
    const EvalWindow& w = s->windows[i];
    std::vector<double> part;
    Status st = run_window(model, s->tokens, w, [&](int64_t pos0, int64_t n, const float* logits) {
      part.assign(static_cast<size_t>(n), 0.0);
      pool.parallel_for(n, [&](int64_t a, int64_t b) {
        std::vector<float> row(static_cast<size_t>(vocab));
        for (int64_t r = a; r < b; ++r) {
          std::copy(logits + r * vocab, logits + (r + 1) * vocab, row.begin());
          log_softmax(row.data(), vocab);
          part[static_cast<size_t>(r)] = -row[static_cast<size_t>(s->tokens[static_cast<size_t>(w.begin + pos0 + r + 1)])];
        }
      });
      for (double v : part) nll += v;  // in position order: deterministic
      count += n;
    });
    if (!st.ok()) return fail("eval ppl", st);
    progress.show(i + 1, s->windows.size(), "ppl " + std::to_string(std::exp(nll / static_cast<double>(count))));
  }
  std::fputc('\n', stderr);
  const double ppl = std::exp(nll / static_cast<double>(count));
  const double secs = progress.elapsed();
  if (args.has("--json")) {
    nlohmann::json j = {{"ppl", ppl}, {"mean_nll", nll / static_cast<double>(count)}, {"scored_tokens", count},
                        {"total_tokens", s->tokens.size()}, {"windows", s->windows.size()}, {"ctx", s->ctx},
                        {"stride", s->stride}, {"seconds", secs}, {"tokens_per_second", static_cast<double>(count) / secs}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ppl %.4f  (%lld tokens scored in %zu windows of %lld, %.1f s, %.0f tok/s)\n", ppl,
                static_cast<long long>(count), s->windows.size(), static_cast<long long>(s->ctx), secs,
                static_cast<double>(count) / secs);
  }
  return 0;
}

int run_kld(int argc, char** argv) {
  CliArgs args("eval kld", std::string("-m MODEL --ref REF --data FILE [--ctx 2048] [--stride S] [--max-windows N] [--json]\n") +
                               "mean KL(ref || model) of the next-token distributions at every scored position, and how often\n"
                               "both models' most likely token agree. " + kWindowHelp);
  add_eval_options(args);
  args.option("--ref", "reference model (tokenized with MODEL's tokenizer; vocabularies must match)");
  if (Status st = args.parse(argc, argv); !st.ok()) return fail("eval kld", st);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("--ref")) return fail("eval kld", invalid_argument("--ref REF is required"));
  auto s = setup(args);
  if (!s.ok()) return fail("eval kld", s.status());
  auto loaded = load_model(args.get("--ref"));
  if (!loaded.ok()) return fail("eval kld", loaded.status());
  auto threads = args.get_int("-t", 1, 256);
  auto ref = LlamaModel::create(std::move(loaded->weights), static_cast<int>(threads.ok() ? *threads : 2));
  if (!ref.ok()) return fail("eval kld", ref.status());
  (*ref)->set_exact_matmul(args.has("--exact"));
  LlamaModel& model = *s->m.model;
  const int64_t vocab = model.config().vocab_size;
  if ((*ref)->config().vocab_size != vocab) {
    return fail("eval kld", invalid_argument("--ref has a vocabulary of " + std::to_string((*ref)->config().vocab_size) +
                                             " tokens, the model " + std::to_string(vocab) + "; they must match"));
  }
  ThreadPool pool(2);
  double kl_sum = 0.0, nll_m = 0.0, nll_r = 0.0;
  int64_t count = 0, agree = 0;
  Progress progress;
  for (size_t i = 0; i < s->windows.size(); ++i) {
    const EvalWindow& w = s->windows[i];
    // Reference logits of the whole window first (kept as log-probabilities), then the model's.
    std::vector<float> ref_lp;
    Status st = run_window(**ref, s->tokens, w, [&](int64_t, int64_t n, const float* logits) {
      const size_t off = ref_lp.size();
      ref_lp.insert(ref_lp.end(), logits, logits + n * vocab);
      pool.parallel_for(n, [&](int64_t a, int64_t b) {
        for (int64_t r = a; r < b; ++r) log_softmax(ref_lp.data() + off + r * vocab, vocab);
      });
    });
    if (!st.ok()) return fail("eval kld", st);
    int64_t done = 0;
    st = run_window(model, s->tokens, w, [&](int64_t pos0, int64_t n, const float* logits) {
      std::vector<double> kl(static_cast<size_t>(n)), lm(static_cast<size_t>(n)), lr(static_cast<size_t>(n));
      std::vector<int> same(static_cast<size_t>(n));
      pool.parallel_for(n, [&](int64_t a, int64_t b) {
        std::vector<float> row(static_cast<size_t>(vocab));
        for (int64_t r = a; r < b; ++r) {
          std::copy(logits + r * vocab, logits + (r + 1) * vocab, row.begin());
          log_softmax(row.data(), vocab);
          const float* q = ref_lp.data() + (done + r) * vocab;
          double acc = 0.0;
          int64_t am = 0, ar = 0;
          for (int64_t v = 0; v < vocab; ++v) {
            acc += std::exp(static_cast<double>(q[v])) * (static_cast<double>(q[v]) - row[static_cast<size_t>(v)]);
            if (row[static_cast<size_t>(v)] > row[static_cast<size_t>(am)]) am = v;
            if (q[v] > q[ar]) ar = v;
          }
          const auto next = static_cast<size_t>(s->tokens[static_cast<size_t>(w.begin + pos0 + r + 1)]);
          kl[static_cast<size_t>(r)] = acc;
          same[static_cast<size_t>(r)] = am == ar;
          lm[static_cast<size_t>(r)] = -row[next];
          lr[static_cast<size_t>(r)] = -q[next];
        }
      });
      for (int64_t r = 0; r < n; ++r) {
        kl_sum += kl[static_cast<size_t>(r)];
        nll_m += lm[static_cast<size_t>(r)];
        nll_r += lr[static_cast<size_t>(r)];
        agree += same[static_cast<size_t>(r)];
      }
      count += n;
      done += n;
    });
    if (!st.ok()) return fail("eval kld", st);
    progress.show(i + 1, s->windows.size(), "kld " + std::to_string(kl_sum / static_cast<double>(count)));
  }
  std::fputc('\n', stderr);
  const double kld = kl_sum / static_cast<double>(count), top1 = static_cast<double>(agree) / static_cast<double>(count);
  const double ppl = std::exp(nll_m / static_cast<double>(count)), ref_ppl = std::exp(nll_r / static_cast<double>(count));
  if (args.has("--json")) {
    nlohmann::json j = {{"kld", kld}, {"top1_agreement", top1}, {"ppl", ppl}, {"ref_ppl", ref_ppl}, {"scored_tokens", count},
                        {"windows", s->windows.size()}, {"ctx", s->ctx}, {"stride", s->stride}, {"seconds", progress.elapsed()}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("kld %.6f  top-1 agreement %.4f  ppl %.4f  ref ppl %.4f  (%lld positions)\n", kld, top1, ppl, ref_ppl,
                static_cast<long long>(count));
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
