// A small command-line parser shared by the subcommands: declared options with help text, values
// checked for type and range, and one-line errors that say what to do.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb::tools {

class CliArgs {
 public:
  CliArgs(std::string command, std::string synopsis) : command_(std::move(command)), synopsis_(std::move(synopsis)) {}

  // Declares an option. `names` like "-m,--model". Flags take no value.
  void option(const std::string& names, const std::string& help, std::string default_value = "");
  void flag(const std::string& names, const std::string& help);

  // Parses argv (argv[0] is the command name). Positional arguments are collected in order.
  Status parse(int argc, char** argv);
  bool help_requested() const { return help_; }
  std::string usage() const;

  bool has(const std::string& name) const;  // given on the command line (or a flag set)
  std::string get(const std::string& name) const;
  Result<int64_t> get_int(const std::string& name, int64_t min, int64_t max) const;
  Result<double> get_float(const std::string& name, double min, double max) const;
  // A size: "536870912", "512MiB", "512M", "1.5GiB", "2G", "64KiB" -> bytes (> 0).
  Result<int64_t> get_bytes(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  struct Opt {
    std::vector<std::string> names;
    std::string help, value;
    bool is_flag = false, given = false;
  };
  Opt* find(const std::string& name);
  const Opt* find(const std::string& name) const;

  std::string command_, synopsis_;
  std::vector<Opt> opts_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

// Prints "nibble <command>: <message>" to stderr and returns the exit status 1 (2 for usage errors).
int fail(const std::string& command, const Status& status);

}  // namespace nb::tools
