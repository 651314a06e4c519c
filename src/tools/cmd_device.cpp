// nibble device: the CUDA devices this build sees (name, compute capability, SMs, memory) and a
// one-kernel self test. Without the CUDA backend it says so and exits 1.
#include <cstdio>
#include <cstring>

#include "tools/commands.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backend/cuda/device.h"
#include "backend/cuda/device_check.h"
#endif

namespace nb::tools {
namespace {

int run_device(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::puts("usage: nibble device\n  lists the CUDA devices and runs a one-kernel self test");
    return 0;
  }
#ifdef NIBBLE_HAVE_CUDA
  const int count = cuda::device_count();
  std::printf("CUDA devices   %d\n", count);
  for (int i = 0; i < count; ++i) {
    auto info = cuda::device_info(i);
    if (!info.ok()) {
      std::fprintf(stderr, "device: %s\n", info.status().to_string().c_str());
      return 1;
    }
    std::printf("%d: %s  sm_%d%d  %d SMs  %.1f GiB (%.1f free)  L2 %.0f MiB  smem/block %zu KiB\n", i,
                info->name.c_str(), info->major, info->minor, info->num_sms, info->total_bytes / 1073741824.0,
                info->free_bytes / 1073741824.0, info->l2_bytes / 1048576.0, info->shared_per_block_optin / 1024);
  }
  if (count == 0) return 1;
  const bool ok = cuda::run_axpy_selftest();
  std::printf("self test      %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
#else
  std::fputs("device: this build has no CUDA backend; rebuild with -DNIBBLE_CUDA=ON\n", stderr);
  return 1;
#endif
}

}  // namespace

NB_REGISTER_COMMAND("device", run_device, "list CUDA devices and run a self test (CUDA builds)");

}  // namespace nb::tools
