// Subcommands of `nibble bench` that live in their own files; cmd_bench.cpp dispatches to them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb::tools {
int run_bench_batching(int argc, char** argv);  // cmd_bench_batching.cpp
int run_bench_spec(int argc, char** argv);      // cmd_bench_spec.cpp
int bench_gpu_main(int argc, char** argv);      // cmd_bench_gpu.cpp
int run_bench_gemm(int argc, char** argv);      // cmd_bench_gemm.cpp
int run_bench_kv(int argc, char** argv);        // cmd_bench_kv.cpp
int run_bench_w8a8(int argc, char** argv);      // cmd_bench_w8a8.cpp
// The median of timings (mean of the two middle values for an even count; 0 for none). cmd_bench.cpp
double median(std::vector<double> v);
// A comma-separated list of sizes ("1,2,4") for option `opt`: every item digits only, in
// [1, max_value], none empty, the list not empty; otherwise an error that names the option. cmd_bench.cpp
Result<std::vector<int64_t>> parse_sizes(const std::string& list, const std::string& opt, int64_t max_value);
}  // namespace nb::tools
