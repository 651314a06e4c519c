// `--device cpu|cuda[:N]`, `--dtype f16|bf16|f32`, `--no-cuda-graphs`: where a loaded model runs;
// `--kv-cache-memory` / `--gpu-memory-utilization`: how much memory its KV cache gets.
#pragma once
#include <cstdint>
#include <string>

#include "core/status.h"
#include "model/llama.h"
#include "tools/cli_args.h"

namespace nb::tools {

void add_device_options(CliArgs& args);
// Moves the model's forward onto the device the options name (nothing for cpu). max_batch_tokens
// and max_seqs bound one forward (the device's scratch is sized for them).
Status attach_device(const CliArgs& args, LlamaModel& model, int64_t max_batch_tokens, int64_t max_seqs = 256);

// Declares --kv-cache-memory (default `cpu_default`, used on the CPU) and --gpu-memory-utilization F
// (default 0.9, used on a GPU when --kv-cache-memory is not given).
void add_kv_memory_options(CliArgs& args, const std::string& cpu_default);
// The engine's kv_cache_bytes: --kv-cache-memory when given; else, for a model on a device, the
// fraction --gpu-memory-utilization of the device's memory less what is in use now (engine/kv/
// kv_budget.h; call after attach_device, before creating the engine), printed as vLLM does
// ("GPU KV cache size: N tokens"); else the CPU default.
Result<int64_t> kv_cache_bytes_from(const CliArgs& args, const LlamaModel& model, int64_t block_size);

}  // namespace nb::tools
