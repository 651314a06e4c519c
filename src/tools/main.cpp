// nibble: one binary, subcommands. Each subcommand lives in its own cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"

namespace {
void print_usage(FILE* out) {
  auto cmds = nb::tools::command_registry();
  std::sort(cmds.begin(), cmds.end(), [](const auto& a, const auto& b) { return std::strcmp(a.name, b.name) < 0; });
  std::fprintf(out, "usage: nibble <command> [options]   (nibble <command> --help for its options)\ncommands:\n");
  for (const auto& c : cmds) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "MODEL is a .gguf file, a llama2.c .bin file, or a Hugging Face directory.\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  for (const nb::tools::Command& c : nb::tools::command_registry()) {
    if (cmd == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "nibble: unknown command '%s'; run 'nibble --help' for the list\n", cmd.c_str());
  return 2;
}
