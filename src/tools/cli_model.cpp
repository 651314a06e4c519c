#include "tools/cli_model.h"

#include <chrono>

#include "tools/cli_device.h"

namespace nb::tools {

void add_model_options(CliArgs& args) {
  args.option("-m,--model", "model: .gguf file, llama2.c .bin, or Hugging Face directory");
  args.option("-t,--threads", "CPU threads", "2");
  args.option("--tokenizer", "tokenizer file to use instead of the one found with the model");
  args.flag("--exact", "f32 activations in every matmul (slower reference path; default quantizes them to 8 bits)");
  add_device_options(args);
  add_kv_cache_options(args);
}

void add_kv_cache_options(CliArgs& args) {
  args.option("--kv-cache-dtype",
              "KV cache element format: f32 (the device dtype on a GPU), f16 (CPU only), int8 (per token-head scale) or int4 (scale + zero)",
              "f32");
}

Status apply_kv_cache_options(const CliArgs& args, LlamaModel& model) {
  NB_ASSIGN_OR_RETURN(KvCacheDType t, parse_kv_cache_dtype(args.get("--kv-cache-dtype")));
  return model.set_kv_cache_dtype(t);
}

namespace {

// The model of `weights` as the flags say to run it: `threads` (-t), --exact, the device options.
Result<std::unique_ptr<LlamaModel>> create_cli_model(const CliArgs& args, ModelWeights weights, int64_t threads,
                                                     int64_t max_batch_tokens) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                      LlamaModel::create(std::move(weights), static_cast<int>(threads), max_batch_tokens));
  model->set_exact_matmul(args.has("--exact"));
  NB_RETURN_IF_ERROR(attach_device(args, *model, max_batch_tokens));
  return model;
}

}  // namespace

Result<std::unique_ptr<LlamaModel>> load_cli_reference_model(const CliArgs& args, const std::string& path,
                                                             int64_t max_batch_tokens) {
  NB_ASSIGN_OR_RETURN(int64_t threads, args.get_int("-t", 1, 256));
  NB_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(path));
  return create_cli_model(args, std::move(loaded.weights), threads, max_batch_tokens);
}

Result<CliModel> load_cli_model(const CliArgs& args, int64_t max_batch_tokens) {
  if (!args.has("-m")) return invalid_argument("-m MODEL is required (a .gguf, llama2.c .bin or HF directory)");
  NB_ASSIGN_OR_RETURN(int64_t threads, args.get_int("-t", 1, 256));
  NB_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(args.get("-m")));
  TokenizerSource source = loaded.tokenizer;
  if (args.has("--tokenizer")) {
    NB_ASSIGN_OR_RETURN(source, detect_tokenizer_source(args.get("--tokenizer")));
  }
  if (source.kind == TokenizerSource::Kind::kNone) {
    return not_found("no tokenizer found beside '" + args.get("-m") + "'; pass one with --tokenizer FILE");
  }
  CliModel out;
  NB_ASSIGN_OR_RETURN(out.tokenizer, load_tokenizer(source));
  const int64_t vocab = loaded.weights.config.vocab_size;
  if (out.tokenizer->vocab_size() > vocab) {
    return invalid_argument("the tokenizer has " + std::to_string(out.tokenizer->vocab_size()) +
                            " tokens but the model only " + std::to_string(vocab) + "; is it the right tokenizer?");
  }
  out.chat_template = std::move(loaded.chat_template);
  NB_ASSIGN_OR_RETURN(out.model, create_cli_model(args, std::move(loaded.weights), threads, max_batch_tokens));
  NB_RETURN_IF_ERROR(apply_kv_cache_options(args, *out.model));
  return out;
}

void add_sampling_options(CliArgs& args) {
  args.option("--temp", "temperature; 0 = greedy", "0.8");
  args.option("--top-k", "keep the k most likely tokens; 0 = off", "40");
  args.option("--top-p", "nucleus sampling: keep the smallest set with this much probability", "0.95");
  args.option("--min-p", "drop tokens below min-p x the top probability", "0.05");
  args.option("--repeat-penalty", "CTRL-style penalty on recent tokens; 1 = off", "1.0");
  args.option("--repeat-last-n", "window of the repeat penalty", "64");
  args.option("--presence-penalty", "OpenAI presence penalty", "0");
  args.option("--frequency-penalty", "OpenAI frequency penalty", "0");
  args.option("--seed", "random seed (default: from the clock)");
}

Result<SamplingParams> sampling_params_from(const CliArgs& args) {
  SamplingParams p;
  NB_ASSIGN_OR_RETURN(double temp, args.get_float("--temp", 0, 100));
  NB_ASSIGN_OR_RETURN(int64_t top_k, args.get_int("--top-k", 0, 1 << 24));
  NB_ASSIGN_OR_RETURN(double top_p, args.get_float("--top-p", 0, 1));
  NB_ASSIGN_OR_RETURN(double min_p, args.get_float("--min-p", 0, 1));
  NB_ASSIGN_OR_RETURN(double rep, args.get_float("--repeat-penalty", 0, 100));
  NB_ASSIGN_OR_RETURN(int64_t rep_n, args.get_int("--repeat-last-n", -1, 1 << 24));
  NB_ASSIGN_OR_RETURN(double pres, args.get_float("--presence-penalty", -2, 2));
  NB_ASSIGN_OR_RETURN(double freq, args.get_float("--frequency-penalty", -2, 2));
  p.temperature = static_cast<float>(temp);
  p.top_k = static_cast<int>(top_k);
  p.top_p = static_cast<float>(top_p);
  p.min_p = static_cast<float>(min_p);
  p.repetition_penalty = static_cast<float>(rep);
  p.penalty_last_n = static_cast<int>(rep_n);
  p.presence_penalty = static_cast<float>(pres);
  p.frequency_penalty = static_cast<float>(freq);
  if (args.has("--seed")) {
    NB_ASSIGN_OR_RETURN(int64_t seed, args.get_int("--seed", 0, INT64_MAX));
    p.seed = static_cast<uint64_t>(seed);
  } else {
    p.seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  NB_RETURN_IF_ERROR(p.validate());
  return p;
}

}  // namespace nb::tools
