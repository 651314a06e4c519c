// Stop strings over streamed text: finds the first occurrence of any stop string in the
// concatenation of the pieces pushed so far, including occurrences that span pieces (a stop string
// split across tokens), and releases only text that can no longer become part of a match.
//
// Contract: the text released by all push() calls and finish() is exactly the full text truncated
// before the earliest stop-string occurrence (the whole text when none occurs). Where two stop
// strings occur, the one starting first wins, even when it completes later (stops "abcd" and "c"
// on "abcd" give ""): a complete match waits while a longer one starting earlier may still
// complete. At the same start the longer one is reported (the output, ending before both, is the
// same). Text is released as soon as no stop string can start in it (minimal hold-back).
//
// UTF-8: when the pushed pieces are valid UTF-8 and the stop strings are too, every released piece
// is valid UTF-8: text is held back only from a position where a stop string could start, which is
// a character boundary.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace nb::server {

class StopMatcher {
 public:
  // Empty stop strings are ignored (they would match everywhere).
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends text; returns the text that is now final. After a stop string is found, stopped() is
  // true, the returned text ends just before it, and later pushes return nothing.
  std::string push(std::string_view text);
  // The end of the stream: releases what was held back, up to a stop string that had matched but
  // was waiting for a longer, earlier-starting one (then stopped() becomes true).
  std::string finish();

  bool stopped() const { return stopped_; }
  bool has_stops() const { return !stops_.empty(); }
  // The stop string that matched (empty before one did).
  const std::string& matched() const { return matched_; }

 private:
  // Start of the earliest complete occurrence in held_ (npos if none); *which = that stop string.
  size_t earliest_match(const std::string** which) const;
  // Earliest j such that held_[j:] is a proper prefix of a stop string (held_.size() if none).
  size_t earliest_partial() const;

  std::vector<std::string> stops_;
  std::string held_;  // text not yet released: a suffix that could still start a stop string
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace nb::server
