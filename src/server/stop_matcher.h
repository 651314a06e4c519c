// Stop strings over streamed text: finds the first occurrence of any stop string in the
// concatenation of the pieces pushed so far, including occurrences that span pieces (a stop string
// split across tokens), and releases only text that can no longer become part of a match.
//
// Contract: the text released by all push() calls and finish() is exactly the full text truncated
// before the earliest stop-string occurrence (the whole text when none occurs). Where two stop
// strings occur, the one starting first wins; at the same start, the longer one (it does not matter
// for the output, which ends before either).
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
  // The end of the stream: releases what was held back (it was only a partial match).
  std::string finish();

  bool stopped() const { return stopped_; }
  bool has_stops() const { return !stops_.empty(); }
  // The stop string that matched (empty before one did).
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // text not yet released: a suffix that could still start a stop string
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace nb::server
