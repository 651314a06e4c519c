// nibble info: what a model is — format, architecture and shape, parameter count, dtypes, bytes.
#include <cstdio>
#include <map>

#include "model/weights.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

void count_tensor(const Tensor& t, std::map<std::string, std::pair<int64_t, int64_t>>& by_dtype) {
  if (!t.defined()) return;
  auto& e = by_dtype[std::string(dtype_name(t.dtype()))];
  e.first += t.numel();
  e.second += static_cast<int64_t>(t.nbytes());
}

int run_info(int argc, char** argv) {
  CliArgs args("info", "-m MODEL");
  args.option("-m,--model", "model file or directory");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("info", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("-m")) return fail("info", invalid_argument("-m MODEL is required; see 'nibble info --help'"));
  auto loaded = load_model(args.get("-m"));
  if (!loaded.ok()) return fail("info", loaded.status());
  const ModelWeights& w = loaded->weights;
  const ModelConfig& c = w.config;
  std::printf("model          %s\n", args.get("-m").c_str());
  std::printf("format         %s\n", loaded->format.c_str());
  std::printf("architecture   %s%s%s\n", c.architecture.c_str(), c.name.empty() ? "" : "  name: ", c.name.c_str());
  std::printf("layers         %lld\n", static_cast<long long>(c.num_layers));
  std::printf("dim            %lld  (ffn %lld)\n", static_cast<long long>(c.dim), static_cast<long long>(c.hidden_dim));
  std::printf("heads          %lld query, %lld key/value (head dim %lld)\n", static_cast<long long>(c.num_heads),
              static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim));
  std::printf("vocab          %lld\n", static_cast<long long>(c.vocab_size));
  std::printf("context        %lld\n", static_cast<long long>(c.max_seq_len));
  std::printf("rope           theta %g, %s pairs%s\n", c.rope_theta,
              c.rope_style == RopeStyle::kInterleaved ? "interleaved" : "half-split",
              c.rope_scaling.type == RopeScaling::Type::kLlama3   ? ", llama3 scaling"
              : c.rope_scaling.type == RopeScaling::Type::kLinear ? ", linear scaling"
                                                                  : "");
  std::printf("embeddings     %s\n", c.tied_embeddings ? "tied (output = token embeddings)" : "separate output");
  std::printf("parameters     %lld (%.1f M)\n", static_cast<long long>(w.num_params()), w.num_params() / 1e6);
  std::printf("bytes          %lld (%.1f MiB)\n", static_cast<long long>(w.num_bytes()), w.num_bytes() / 1048576.0);
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;
  count_tensor(w.tok_embeddings, by_dtype);
  count_tensor(w.final_norm, by_dtype);
  if (!c.tied_embeddings) count_tensor(w.output, by_dtype);
  for (const auto& l : w.layers) {
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      count_tensor(*t, by_dtype);
    }
  }
  for (const auto& [name, e] : by_dtype) {
    std::printf("  %-12s %lld params, %.2f MiB\n", name.c_str(), static_cast<long long>(e.first), e.second / 1048576.0);
  }
  static const char* kTokKind[] = {"none", "gguf", "sentencepiece model", "llama2.c tokenizer", "tokenizer.json"};
  std::printf("tokenizer      %s %s\n", kTokKind[static_cast<int>(loaded->tokenizer.kind)], loaded->tokenizer.path.c_str());
  std::printf("chat template  %s\n", loaded->chat_template.empty() ? "none shipped" : "shipped (jinja)");
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("info", run_info, "-m MODEL: architecture, parameter count, dtypes, bytes");
}  // namespace nb::tools
