#pragma once
#include <vector>

namespace nb::tools {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);  // argv[0] is the command name
};

extern const char* const kUsage;
const std::vector<Command>& commands();

}  // namespace nb::tools
