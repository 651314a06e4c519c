// `--device cpu|cuda[:N]`, `--dtype f16|bf16|f32`, `--no-cuda-graphs`: where a loaded model runs.
#pragma once
#include <cstdint>

#include "core/status.h"
#include "model/llama.h"
#include "tools/cli_args.h"

namespace nb::tools {

void add_device_options(CliArgs& args);
// Moves the model's forward onto the device the options name (nothing for cpu). max_batch_tokens
// and max_seqs bound one forward (the device's scratch is sized for them).
Status attach_device(const CliArgs& args, LlamaModel& model, int64_t max_batch_tokens, int64_t max_seqs = 256);

}  // namespace nb::tools
