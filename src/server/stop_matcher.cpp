#include "server/stop_matcher.h"

#include <algorithm>

namespace nb::server {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  if (stops_.empty()) return std::string(text);
  held_.append(text);
  // held_ is short (a partial match plus the new text), so searching it whole is cheap; an
  // occurrence lying entirely in the old part would have been found by an earlier push.
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const std::string& s : stops_) {
    const size_t p = held_.find(s);
    if (p == std::string::npos) continue;
    if (p < best || (p == best && s.size() > best_stop->size())) {
      best = p;
      best_stop = &s;
    }
  }
  if (best_stop != nullptr) {
    stopped_ = true;
    matched_ = *best_stop;
    std::string out = held_.substr(0, best);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string: a match that is not
  // complete yet can only start there (an earlier start would need a longer such suffix).
  size_t max_len = 0;
  for (const std::string& s : stops_) max_len = std::max(max_len, s.size());
  size_t keep_from = held_.size();
  for (size_t k = held_.size() > max_len - 1 ? held_.size() - (max_len - 1) : 0; k < held_.size(); ++k) {
    const std::string_view tail = std::string_view(held_).substr(k);
    const bool prefix_of_some = std::any_of(stops_.begin(), stops_.end(), [&](const std::string& s) {
      return s.size() > tail.size() && std::string_view(s).substr(0, tail.size()) == tail;
    });
    if (prefix_of_some) {
      keep_from = k;
      break;
    }
  }
  std::string out = held_.substr(0, keep_from);
  held_.erase(0, keep_from);
  return out;
}

std::string StopMatcher::finish() {
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace nb::server
