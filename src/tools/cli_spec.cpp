#include "tools/cli_spec.h"

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace nb::tools {

void add_speculative_options(CliArgs& args) {
  args.option("--speculative", "speculative decoding: ngram (prompt lookup), draft (--draft-model), self (first --draft-layers layers)");
  args.option("--draft-model", "draft model for --speculative draft (same tokenizer as the target)");
  args.option("--draft-layers", "layers of the target used as the self-draft (--speculative self)", "4");
  args.option("--num-speculative-tokens", "draft tokens verified per step (K)", "4");
  args.flag("--spec-adaptive", "adapt K per sequence up to --num-speculative-tokens (+2 after a fully accepted step, -1 after a rejection)");
  args.option("--spec-max-running", "speculate only while at most this many sequences run", "4");
  args.option("--draft-kv-memory", "KV cache memory of the draft model (e.g. 64M)", "64M");
  args.option("--ngram-max", "longest suffix the n-gram drafter matches", "4");
}

Result<CliSpeculative> load_speculative(const CliArgs& args, LlamaModel& target, const std::string& method_arg) {
  CliSpeculative out;
  const std::string method = method_arg.empty() ? args.get("--speculative") : method_arg;
  NB_ASSIGN_OR_RETURN(out.num_tokens, args.get_int("--num-speculative-tokens", 1, 64));
  NB_ASSIGN_OR_RETURN(out.max_running, args.get_int("--spec-max-running", 0, 1 << 20));
  out.adaptive = args.has("--spec-adaptive");
  if (method.empty() || method == "off") return out;
  if (method == "ngram") {
    spec::NgramOptions o;
    NB_ASSIGN_OR_RETURN(o.max_n, args.get_int("--ngram-max", 1, 64));
    NB_ASSIGN_OR_RETURN(out.drafter, spec::make_ngram_drafter(o));
    return out;
  }
  const int threads = static_cast<int>(target.pool().num_threads());
  if (method == "draft") {
    if (!args.has("--draft-model")) return invalid_argument("--speculative draft needs --draft-model MODEL");
    NB_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(args.get("--draft-model")));
    NB_ASSIGN_OR_RETURN(out.draft_model, LlamaModel::create(std::move(loaded.weights), threads));
  } else if (method == "self") {
    NB_ASSIGN_OR_RETURN(int64_t layers, args.get_int("--draft-layers", 1, 1 << 16));
    NB_ASSIGN_OR_RETURN(ModelWeights w, spec::truncate_layers(target.weights(), layers));
    NB_ASSIGN_OR_RETURN(out.draft_model, LlamaModel::create(std::move(w), threads));
  } else {
    return invalid_argument("unknown --speculative method '" + method + "'; expected one of: ngram, draft, self");
  }
  // The draft runs on the CPU backend (its own KV pool in host memory) whatever the target uses.
  spec::ModelDrafterOptions o;
  NB_ASSIGN_OR_RETURN(o.kv_cache_bytes, args.get_bytes("--draft-kv-memory"));
  NB_ASSIGN_OR_RETURN(out.drafter, spec::make_model_drafter(*out.draft_model, target.config().vocab_size, o));
  return out;
}

Result<EngineRun> generate_with_engine(LlamaModel& model, const EngineConfig& config, GenerationRequest request,
                                       const std::function<void(int32_t)>& on_token) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(model, config));
  std::mutex mu;
  std::condition_variable cv;
  EngineRun run;
  bool done = false;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  Clock::time_point first{};
  // Outputs arrive on the engine thread; tokens are handed to on_token there, in order.
  NB_ASSIGN_OR_RETURN(RequestId id, engine->submit(std::move(request), [&](const RequestOutput& o) {
    const auto now = Clock::now();
    for (int32_t t : o.tokens) {
      if (on_token) on_token(t);
    }
    std::lock_guard<std::mutex> lock(mu);
    // Outputs carry running totals: a step's draft count is the increase.
    if (o.num_spec_steps > run.num_spec_steps) run.step_drafts.push_back(o.num_draft_tokens - run.num_draft_tokens);
    run.num_spec_steps = o.num_spec_steps;
    run.num_draft_tokens = o.num_draft_tokens;
    if (!o.tokens.empty()) {
      if (run.tokens.empty()) {
        first = now;
      } else {
        ++run.num_decode_steps;
      }
      run.tokens.insert(run.tokens.end(), o.tokens.begin(), o.tokens.end());
    }
    if (o.finished) {
      run.finish_reason = o.finish_reason;
      run.error = o.error;
      run.num_draft_tokens = o.num_draft_tokens;
      run.num_accepted_tokens = o.num_accepted_tokens;
      run.num_spec_steps = o.num_spec_steps;
      run.num_spec_rejections = o.num_spec_rejections;
      run.prefill_seconds = std::chrono::duration<double>((run.tokens.empty() ? now : first) - start).count();
      run.decode_seconds = run.tokens.empty() ? 0.0 : std::chrono::duration<double>(now - first).count();
      done = true;
      cv.notify_all();
    }
  }));
  (void)id;
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (run.finish_reason == FinishReason::kError) return internal_error("generation failed: " + run.error);
  return run;
}

}  // namespace nb::tools
