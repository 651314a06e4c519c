// Subcommands of `nibble bench` that live in their own files; cmd_bench.cpp dispatches to them.
#pragma once

namespace nb::tools {
int run_bench_batching(int argc, char** argv);  // cmd_bench_batching.cpp
int run_bench_spec(int argc, char** argv);      // cmd_bench_spec.cpp
int bench_gpu_main(int argc, char** argv);      // cmd_bench_gpu.cpp
}  // namespace nb::tools
