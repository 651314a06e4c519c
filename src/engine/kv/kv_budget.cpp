#include "engine/kv/kv_budget.h"

#include <cmath>
#include <cstdio>
#include <string>

namespace nb {
namespace {

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / static_cast<double>(1ll << 30));
  return buf;
}

std::string fraction(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", f);
  return buf;
}

}  // namespace

Result<int64_t> kv_cache_bytes_for_utilization(double utilization, int64_t total_bytes, int64_t free_bytes,
                                               int64_t block_bytes) {
  // `!(u > 0)` rather than `u <= 0` so that NaN is rejected too.
  if (!(utilization > 0.0 && utilization <= 1.0)) {
    return invalid_argument("--gpu-memory-utilization must be in (0, 1] (the fraction of the device's memory this "
                            "process may use); got " + fraction(utilization));
  }
  if (total_bytes <= 0) {
    return failed_precondition("the device's memory size is unknown, so --gpu-memory-utilization cannot size the KV "
                               "cache; give --kv-cache-memory instead");
  }
  if (free_bytes < 0 || free_bytes > total_bytes) {
    return invalid_argument("device memory: " + std::to_string(free_bytes) + " bytes free of " +
                            std::to_string(total_bytes) + " is not a valid reading");
  }
  if (block_bytes < 1) return invalid_argument("KV block size in bytes must be positive");
  const int64_t used = total_bytes - free_bytes;
  const auto allowed = static_cast<int64_t>(std::floor(utilization * static_cast<double>(total_bytes)));
  const int64_t kv = allowed - used - block_bytes;
  if (kv < block_bytes) {
    // The smallest fraction that leaves room for two blocks (one pool block + the padding block).
    const double need = static_cast<double>(used + 2 * block_bytes) / static_cast<double>(total_bytes);
    std::string what = "--gpu-memory-utilization " + fraction(utilization) + " allows " + gib(allowed) + " of the device's " +
                       gib(total_bytes) + ", but " + gib(used) + " is already in use after loading the model (weights, "
                       "scratch, CUDA context), which leaves no room for a KV block of " + std::to_string(block_bytes) +
                       " bytes; ";
    if (need <= 1.0) {
      what += "raise --gpu-memory-utilization to at least " + fraction(std::ceil(need * 1000.0) / 1000.0) +
              ", give --kv-cache-memory, or lower --max-batched-tokens / --max-num-seqs";
    } else {
      what += "the device is too full: free memory (other processes?), use a smaller --dtype, or lower "
              "--max-batched-tokens / --max-num-seqs";
    }
    return resource_exhausted(what);
  }
  return kv;
}

}  // namespace nb
