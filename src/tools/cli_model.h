// What generate / chat share: loading a model with its tokenizer and chat template, and turning
// the sampling flags into SamplingParams.
#pragma once
#include <memory>
#include <string>

#include "engine/sampler.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli_args.h"

namespace nb::tools {

struct CliModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string chat_template;  // Jinja source shipped with the model; empty if none
};

// Declares -m, -t, --tokenizer, the device options and --kv-cache-dtype.
void add_model_options(CliArgs& args);
// --kv-cache-dtype alone, for commands that load the model themselves (the benches); apply after
// the device is attached.
void add_kv_cache_options(CliArgs& args);
Status apply_kv_cache_options(const CliArgs& args, LlamaModel& model);
// Loads what add_model_options describes. --tokenizer overrides the tokenizer found beside the model.
// max_batch_tokens: the most tokens one forward() takes (serve's engine batches up to its budget).
Result<CliModel> load_cli_model(const CliArgs& args, int64_t max_batch_tokens = LlamaModel::kMaxChunkTokens);
// A second model (e.g. eval kld's reference) at `path`, run as the flags say (-t, --exact, the
// device options) with the default KV cache; no tokenizer.
Result<std::unique_ptr<LlamaModel>> load_cli_reference_model(const CliArgs& args, const std::string& path,
                                                             int64_t max_batch_tokens);

// Declares --temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --presence-penalty,
// --frequency-penalty, --seed.
void add_sampling_options(CliArgs& args);
Result<SamplingParams> sampling_params_from(const CliArgs& args);

}  // namespace nb::tools
