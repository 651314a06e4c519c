// nibble logits: runs token ids through the model and writes every position's logits as raw f32
// ([num_tokens, vocab], little-endian). Used to compare against independent implementations.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "engine/contiguous_kv.h"
#include "model/llama.h"
#include "tools/cli_args.h"
#include "tools/cli_device.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

int run_logits(int argc, char** argv) {
  CliArgs args("logits", "-m MODEL --ids 1,2,3 -o OUT.f32 [--exact]");
  args.option("-m,--model", "model file or directory");
  args.option("--ids", "comma-separated token ids");
  args.option("-o,--output", "output file (raw f32, [num_tokens, vocab])");
  args.option("-t,--threads", "threads", "2");
  args.flag("--exact", "f32 activations in every matmul (no 8-bit activation quantization)");
  add_device_options(args);
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("logits", s);
  if (args.help_requested()) { std::fputs(args.usage().c_str(), stdout); return 0; }
  if (!args.has("-m") || !args.has("--ids") || !args.has("-o")) {
    return fail("logits", invalid_argument("-m, --ids and -o are required; see 'nibble logits --help'"));
  }
  auto threads = args.get_int("-t", 1, 256);
  if (!threads.ok()) return fail("logits", threads.status());
  std::vector<int32_t> ids;
  std::stringstream ss(args.get("--ids"));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    try {
      ids.push_back(static_cast<int32_t>(std::stol(tok)));
    } catch (...) {
      return fail("logits", invalid_argument("--ids must be comma-separated integers; got '" + tok + "'"));
    }
  }
  auto loaded = load_model(args.get("-m"));
  if (!loaded.ok()) return fail("logits", loaded.status());
  auto model = LlamaModel::create(std::move(loaded->weights), static_cast<int>(*threads));
  if (!model.ok()) return fail("logits", model.status());
  LlamaModel& m = **model;
  m.set_exact_matmul(args.has("--exact"));
  if (Status s = attach_device(args, m, LlamaModel::kMaxChunkTokens); !s.ok()) return fail("logits", s);
  const int64_t vocab = m.config().vocab_size;
  auto kv_or = ContiguousKvCache::create(m, static_cast<int64_t>(ids.size()));
  if (!kv_or.ok()) return fail("logits", kv_or.status());
  ContiguousKvCache& kv = *kv_or;
  std::vector<float> logits(ids.size() * static_cast<size_t>(vocab));
  for (size_t pos = 0; pos < ids.size(); pos += LlamaModel::kMaxChunkTokens) {
    const size_t n = std::min(ids.size() - pos, static_cast<size_t>(LlamaModel::kMaxChunkTokens));
    const ForwardBatch b = ForwardBatch::single(std::span<const int32_t>(ids.data() + pos, n),
                                                static_cast<int64_t>(pos), kv.block_table(), /*all_logits=*/true);
    if (Status s = m.forward(b, kv.pools(), logits.data() + pos * static_cast<size_t>(vocab)); !s.ok()) {
      return fail("logits", s);
    }
  }
  std::ofstream out(args.get("-o"), std::ios::binary);
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * 4));
  if (!out) return fail("logits", internal_error("cannot write '" + args.get("-o") + "'"));
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("logits", run_logits, "-m MODEL --ids 1,2,3 -o OUT.f32: dump every position's logits");
}  // namespace nb::tools
