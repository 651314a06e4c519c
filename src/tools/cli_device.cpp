#include "tools/cli_device.h"

#include <chrono>
#include <cstdio>
#include <string>

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

}  // namespace nb::tools
