// Subcommand registry. Each src/tools/cmd_*.cpp registers its command with NB_REGISTER_COMMAND;
// tools/ is linked into the executable directly, so the static registrations are kept.
#pragma once
#include <vector>

namespace nb::tools {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);  // argv[0] is the command name; returns the exit status
  const char* summary;                // one line for `nibble --help`
};

std::vector<Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(const char* name, int (*run)(int, char**), const char* summary) {
    command_registry().push_back({name, run, summary});
  }
};

}  // namespace nb::tools

#define NB_REGISTER_COMMAND(name, fn, summary) \
  static ::nb::tools::CommandRegistrar nb_command_registrar_##fn(name, fn, summary)
