#include "tools/commands.h"

namespace nb::tools {

const char* const kUsage =
    "usage: nibble <command> [options]\n"
    "commands:\n"
    "  generate  -m MODEL -p PROMPT [-n N] [--temp T] [--top-p P] [--seed S]   generate text\n"
    "  chat      -m MODEL                     interactive chat with the model's chat template\n"
    "  info      -m MODEL                     architecture, parameters, dtypes, bytes\n"
    "  bench     decode -m MODEL              decode and prompt-processing speed\n"
    "MODEL is a .gguf file, a llama2.c .bin file, or a Hugging Face directory.\n";

const std::vector<Command>& commands() {
  static const std::vector<Command> kCommands = {};
  return kCommands;
}

}  // namespace nb::tools
