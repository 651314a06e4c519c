#include "tools/cli_args.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace nb::tools {

namespace {
std::vector<std::string> split_names(const std::string& names) {
  std::vector<std::string> out;
  std::stringstream ss(names);
  std::string n;
  while (std::getline(ss, n, ',')) out.push_back(n);
  return out;
}
}  // namespace

void CliArgs::option(const std::string& names, const std::string& help, std::string default_value) {
  opts_.push_back({split_names(names), help, std::move(default_value), false, false});
}

void CliArgs::flag(const std::string& names, const std::string& help) {
  opts_.push_back({split_names(names), help, "", true, false});
}

CliArgs::Opt* CliArgs::find(const std::string& name) {
  for (auto& o : opts_)
    for (auto& n : o.names)
      if (n == name) return &o;
  return nullptr;
}

const CliArgs::Opt* CliArgs::find(const std::string& name) const {
  return const_cast<CliArgs*>(this)->find(name);
}

Status CliArgs::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && (std::isdigit(static_cast<unsigned char>(a[1])) != 0))) {
      std::string value;
      bool has_inline = false;
      if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_inline = true;
      }
      Opt* o = find(a);
      if (o == nullptr) {
        return invalid_argument("unknown option '" + a + "'; run 'nibble " + command_ + " --help' for the options");
      }
      o->given = true;
      if (o->is_flag) {
        if (has_inline) return invalid_argument("option '" + a + "' takes no value");
        continue;
      }
      if (!has_inline) {
        if (i + 1 >= argc) return invalid_argument("option '" + a + "' needs a value");
        value = argv[++i];
      }
      o->value = value;
      continue;
    }
    positional_.push_back(a);
  }
  return Status::Ok();
}

std::string CliArgs::usage() const {
  std::string s = "usage: nibble " + command_ + " " + synopsis_ + "\noptions:\n";
  for (const auto& o : opts_) {
    std::string names;
    for (const auto& n : o.names) names += (names.empty() ? "" : ", ") + n;
    if (!o.is_flag) names += " V";
    char line[512];
    std::snprintf(line, sizeof line, "  %-22s %s", names.c_str(), o.help.c_str());
    s += line;
    if (!o.is_flag && !o.value.empty()) s += " (default " + o.value + ")";
    s += "\n";
  }
  return s;
}

bool CliArgs::has(const std::string& name) const {
  const Opt* o = find(name);
  return o != nullptr && o->given;
}

std::string CliArgs::get(const std::string& name) const {
  const Opt* o = find(name);
  return o == nullptr ? "" : o->value;
}

Result<int64_t> CliArgs::get_int(const std::string& name, int64_t min, int64_t max) const {
  const std::string v = get(name);
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || end == nullptr || *end != '\0' || errno != 0 || x < min || x > max) {
    return invalid_argument("option " + name + " must be an integer in [" + std::to_string(min) + ", " +
                            std::to_string(max) + "]; got '" + v + "'");
  }
  return static_cast<int64_t>(x);
}

Result<double> CliArgs::get_float(const std::string& name, double min, double max) const {
  const std::string v = get(name);
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != '\0' || errno != 0 || !(x >= min && x <= max)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "option %s must be a number in [%g, %g]; got '%s'", name.c_str(), min, max,
                  v.c_str());
    return invalid_argument(buf);
  }
  return x;
}

Result<int64_t> CliArgs::get_bytes(const std::string& name) const {
  const std::string text = get(name);
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || !(value > 0)) {
    return invalid_argument(name + " '" + text + "' is not a size; use bytes or e.g. 512MiB, 2GiB");
  }
  std::string unit = text.substr(pos);
  for (char& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  if (unit == "k" || unit == "kib" || unit == "kb") scale = 1024.0;
  if (unit == "m" || unit == "mib" || unit == "mb") scale = 1024.0 * 1024.0;
  if (unit == "g" || unit == "gib" || unit == "gb") scale = 1024.0 * 1024.0 * 1024.0;
  if (scale == 0) return invalid_argument(name + ": unknown unit '" + text.substr(pos) + "'; use KiB, MiB or GiB");
  const double bytes = value * scale;
  if (bytes > 1e15) return invalid_argument(name + " '" + text + "' is too large");
  return static_cast<int64_t>(bytes);
}

int fail(const std::string& command, const Status& status) {
  std::fprintf(stderr, "nibble %s: %s\n", command.c_str(), status.message().c_str());
  return status.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace nb::tools
