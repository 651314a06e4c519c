#include "tools/bench_serve/prom_metrics.h"

#include <cmath>
#include <cstdlib>
#include <limits>

namespace nb::bench_serve {

namespace {

bool is_name_char(char c, bool first) {
  const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
  return alpha || (!first && c >= '0' && c <= '9');
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string_view name_of_key(std::string_view key) { return key.substr(0, key.find('{')); }

}  // namespace

double pick_series(const std::map<std::string, double>& m, std::string_view preferred, std::string_view needle) {
  double best = std::numeric_limits<double>::quiet_NaN();
  for (const auto& [key, v] : m) {  // exact name first (max over its label sets)
    if (name_of_key(key) == preferred && !(v <= best)) best = v;
  }
  if (!std::isnan(best)) return best;
  for (const auto& [key, v] : m) {
    if (name_of_key(key).find(needle) != std::string_view::npos) return v;
  }
  return best;
}

std::vector<PromSample> parse_prometheus_text(std::string_view text) {
  std::vector<PromSample> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty() || line[0] == '#') continue;
    size_t i = 0;
    while (i < line.size() && is_name_char(line[i], i == 0)) ++i;
    if (i == 0) continue;
    PromSample s;
    s.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      const size_t start = ++i;
      bool in_quotes = false, closed = false;
      for (; i < line.size(); ++i) {
        const char c = line[i];
        if (in_quotes && c == '\\') {
          ++i;  // skip the escaped character (\" \\ \n)
        } else if (c == '"') {
          in_quotes = !in_quotes;
        } else if (c == '}' && !in_quotes) {
          closed = true;
          break;
        }
      }
      if (!closed) continue;
      s.labels = std::string(line.substr(start, i - start));
      ++i;
    }
    if (i >= line.size() || (line[i] != ' ' && line[i] != '\t')) continue;
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t vend = i;
    while (vend < line.size() && line[vend] != ' ' && line[vend] != '\t' && line[vend] != '\r') ++vend;
    const std::string value(line.substr(i, vend - i));
    if (value.empty()) continue;
    char* parsed_end = nullptr;
    s.value = std::strtod(value.c_str(), &parsed_end);  // also reads NaN, +Inf, -Inf
    if (parsed_end != value.c_str() + value.size()) continue;
    out.push_back(std::move(s));
  }
  return out;
}

std::string series_key(const PromSample& s) { return s.labels.empty() ? s.name : s.name + "{" + s.labels + "}"; }

bool is_tracked_gauge(std::string_view name) {
  if (name.substr(0, 7) != "nibble_") return false;
  for (std::string_view suffix : {"_bucket", "_sum", "_count", "_total", "_created"}) {
    if (ends_with(name, suffix)) return false;
  }
  return name.find("running") != std::string_view::npos || name.find("kv_blocks_used") != std::string_view::npos;
}

void MetricPeaks::observe(const std::vector<PromSample>& samples) {
  ++num_scrapes_;
  for (const PromSample& s : samples) {
    if (!is_tracked_gauge(s.name) || std::isnan(s.value)) continue;
    const std::string key = series_key(s);
    auto [it, inserted] = peaks_.emplace(key, s.value);
    if (!inserted && s.value > it->second) it->second = s.value;
    last_[key] = s.value;
    sums_[key] += s.value;
    ++counts_[key];
  }
}

std::map<std::string, double> MetricPeaks::means() const {
  std::map<std::string, double> out;
  for (const auto& [key, sum] : sums_) out[key] = sum / static_cast<double>(counts_.at(key));
  return out;
}

double MetricPeaks::peak_of(std::string_view preferred, std::string_view needle) const {
  return pick_series(peaks_, preferred, needle);
}

double MetricPeaks::last_of(std::string_view preferred, std::string_view needle) const {
  return pick_series(last_, preferred, needle);
}

}  // namespace nb::bench_serve
