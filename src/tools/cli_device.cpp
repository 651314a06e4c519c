#include "tools/cli_device.h"

#include <chrono>
#include <cstdio>
#include <string>

#include "engine/contiguous_kv.h"
#include "engine/kv/kv_budget.h"
#include "model/forward_backend.h"

namespace nb::tools {

void add_device_options(CliArgs& args) {
  args.option("--device", "where the model runs: cpu, cuda or cuda:N", "cpu");
  args.option("--dtype", "weights and activations on the GPU: f16, bf16 or f32", "f16");
  args.flag("--no-cuda-graphs", "run decode steps without CUDA graphs (debugging)");
}

Status attach_device(const CliArgs& args, LlamaModel& model, int64_t max_batch_tokens, int64_t max_seqs) {
  const std::string device = args.get("--device");
  if (device.empty() || device == "cpu") return Status::Ok();
  if (device.rfind("cuda", 0) != 0) {
    return invalid_argument("--device must be cpu, cuda or cuda:N; got '" + device + "'");
  }
  CudaForwardOptions o;
  if (device.size() > 4) {
    if (device[4] != ':' || device.size() == 5 || device.find_first_not_of("0123456789", 5) != std::string::npos) {
      return invalid_argument("--device must be cpu, cuda or cuda:N; got '" + device + "'");
    }
    o.ordinal = std::stoi(device.substr(5));
  }
  o.dtype = args.get("--dtype");
  o.max_batch_tokens = max_batch_tokens;
  o.max_seqs = max_seqs;
  o.cuda_graphs = !args.has("--no-cuda-graphs");
#ifdef NIBBLE_HAVE_CUDA
  const auto t0 = std::chrono::steady_clock::now();
  NB_ASSIGN_OR_RETURN(std::unique_ptr<ForwardBackend> backend, create_cuda_forward(model.weights(), o));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "device: %s (weights uploaded in %.2f s)\n", backend->describe().c_str(), s);
  model.set_backend(std::move(backend));
  return Status::Ok();
#else
  (void)model;
  return failed_precondition("this nibble was built without CUDA; rebuild on a machine with nvcc (cmake -DNIBBLE_CUDA=ON) "
                             "or use --device cpu");
#endif
}

void add_kv_memory_options(CliArgs& args, const std::string& cpu_default) {
  args.option("--kv-cache-memory",
              "KV cache size: bytes or e.g. 512MiB, 2GiB (on a GPU, when not given: --gpu-memory-utilization)",
              cpu_default);
  args.option("--gpu-memory-utilization",
              "fraction of the GPU's memory this process may use; the KV cache gets what the loaded model leaves",
              "0.9");
}

Result<int64_t> kv_cache_bytes_from(const CliArgs& args, const LlamaModel& model, int64_t block_size) {
  // Parsed even when unused, so a typo is reported. The range check is kv_budget's ((0, 1]).
  NB_ASSIGN_OR_RETURN(const double utilization, args.get_float("--gpu-memory-utilization", -1e9, 1e9));
  if (args.has("--kv-cache-memory")) return args.get_bytes("--kv-cache-memory");
  const ForwardBackend* device = model.backend();
  if (device == nullptr) return args.get_bytes("--kv-cache-memory");  // the CPU default
  const int64_t total = device->total_memory_bytes(), free = device->free_memory_bytes();
  const int64_t block_bytes = KvStorage::block_bytes(model, block_size);
  NB_ASSIGN_OR_RETURN(const int64_t kv, kv_cache_bytes_for_utilization(utilization, total, free, block_bytes));
  const int64_t num_blocks = kv / block_bytes;
  std::fprintf(stderr,
               "GPU KV cache size: %lld tokens (%lld blocks of %lld, %.2f GiB: --gpu-memory-utilization %.3g of "
               "%.2f GiB, %.2f GiB in use after loading)\n",
               static_cast<long long>(num_blocks * block_size), static_cast<long long>(num_blocks),
               static_cast<long long>(block_size), static_cast<double>(num_blocks * block_bytes) / (1 << 30),
               utilization, static_cast<double>(total) / (1 << 30), static_cast<double>(total - free) / (1 << 30));
  std::fprintf(stderr, "Maximum concurrency for %lld tokens per request: %.2fx\n",
               static_cast<long long>(model.config().max_seq_len),
               static_cast<double>(num_blocks * block_size) / static_cast<double>(model.config().max_seq_len));
  return kv;
}

}  // namespace nb::tools
