// Speculative-decoding flags shared by generate, serve and bench spec, and the drafter they build.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/engine.h"
#include "engine/spec/drafter.h"
#include "model/llama.h"
#include "tools/cli_args.h"

namespace nb::tools {

// Declares --speculative ngram|draft|self, --draft-model, --draft-layers, --num-speculative-tokens,
// --spec-adaptive, --spec-max-running, --draft-kv-memory, --ngram-max.
void add_speculative_options(CliArgs& args);

struct CliSpeculative {
  std::unique_ptr<LlamaModel> draft_model;  // draft / self (owned here; the drafter refers to it)
  std::shared_ptr<spec::Drafter> drafter;   // null when --speculative is not given
  int64_t num_tokens = 4;
  int64_t max_running = 4;
  bool adaptive = false;

  // Sets the engine config's speculative fields.
  void apply(EngineConfig& config) const {
    config.drafter = drafter;
    config.num_speculative_tokens = num_tokens;
    config.speculative_max_running = max_running;
    config.adaptive_speculative_tokens = adaptive;
  }
};

// Builds the drafter the flags describe for `target` (method "" = the --speculative flag's value).
Result<CliSpeculative> load_speculative(const CliArgs& args, LlamaModel& target, const std::string& method = "");

// One request through an Engine (for generate --speculative and bench spec), waiting for the end.
struct EngineRun {
  std::vector<int32_t> tokens;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;
  int64_t num_decode_steps = 0;  // target steps after the one that produced the first token
  int64_t num_draft_tokens = 0, num_accepted_tokens = 0, num_spec_steps = 0, num_spec_rejections = 0;
  std::vector<int64_t> step_drafts;  // drafts verified in each verification step, in order
  double prefill_seconds = 0;    // submit to the first token
  double decode_seconds = 0;     // first token to the last
};
// on_token is called on the engine thread for each token, in order.
Result<EngineRun> generate_with_engine(LlamaModel& model, const EngineConfig& config, GenerationRequest request,
                                       const std::function<void(int32_t)>& on_token = {});

}  // namespace nb::tools
