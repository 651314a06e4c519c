// `nibble bench serve`: the load generator for an OpenAI-compatible server (see runner.h).
// Defined in src/tools/cmd_bench_serve.cpp; `nibble bench` dispatches its "serve" subcommand here.
#pragma once

namespace nb::tools {

// argv[0] is "serve"; returns the exit status (0: every request succeeded, 1: some failed or the
// run could not start, 2: bad options).
int run_bench_serve(int argc, char** argv);

}  // namespace nb::tools
