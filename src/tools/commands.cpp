#include "tools/commands.h"

namespace nb::tools {

std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}

}  // namespace nb::tools
