// nibble: one binary, subcommands. Each subcommand lives in its own cmd_*.cpp.
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(nb::tools::kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  for (const nb::tools::Command& c : nb::tools::commands()) {
    if (cmd == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "nibble: unknown command '%s'; run 'nibble --help' for the list\n", cmd.c_str());
  return 2;
}
