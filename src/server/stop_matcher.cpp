#include "server/stop_matcher.h"

#include <algorithm>

namespace nb::server {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

size_t StopMatcher::earliest_match(const std::string** which) const {
  size_t best = std::string::npos;
  *which = nullptr;
  for (const std::string& s : stops_) {
    const size_t p = held_.find(s);
    if (p == std::string::npos) continue;
    if (p < best || (p == best && s.size() > (*which)->size())) {
      best = p;
      *which = &s;
    }
  }
  return best;
}

size_t StopMatcher::earliest_partial() const {
  // A proper prefix of a stop string is shorter than the longest stop string.
  size_t max_len = 0;
  for (const std::string& s : stops_) max_len = std::max(max_len, s.size());
  for (size_t j = held_.size() > max_len - 1 ? held_.size() - (max_len - 1) : 0; j < held_.size(); ++j) {
    const std::string_view tail = std::string_view(held_).substr(j);
    for (const std::string& s : stops_) {
      if (s.size() > tail.size() && std::string_view(s).substr(0, tail.size()) == tail) return j;
    }
  }
  return held_.size();
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  if (stops_.empty()) return std::string(text);
  held_.append(text);
  // held_ is short (partial matches plus the new text), so searching it whole is cheap.
  const std::string* which = nullptr;
  const size_t match = earliest_match(&which);
  const size_t partial = earliest_partial();
  if (which != nullptr && partial > match) {
    stopped_ = true;
    matched_ = *which;
    std::string out = held_.substr(0, match);
    held_.clear();
    return out;
  }
  // Release what precedes the earliest place a stop string could still start (a complete match
  // further on waits: a longer stop string starting earlier may yet complete and win).
  std::string out = held_.substr(0, partial);
  held_.erase(0, partial);
  return out;
}

std::string StopMatcher::finish() {
  if (stopped_) return {};
  const std::string* which = nullptr;
  const size_t match = earliest_match(&which);
  std::string out;
  if (which != nullptr) {
    stopped_ = true;
    matched_ = *which;
    out = held_.substr(0, match);
  } else {
    out.swap(held_);
  }
  held_.clear();
  return out;
}

}  // namespace nb::server
