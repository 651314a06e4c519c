// Incremental parsers for the two byte-stream framings a streamed completion travels in:
// Server-Sent Events (the WHATWG "event stream" format) and HTTP/1.1 chunked transfer coding.
// Both accept input split at any byte boundary and produce exactly what one feed of the whole
// buffer would; neither allocates more than the configured limit for one line or event, so
// a garbage or hostile stream becomes an error Status, never unbounded memory or a crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace nb::bench_serve {

struct SseEvent {
  std::string type;  // the "event:" field; empty means the default type "message"
  std::string data;  // the "data:" lines joined with '\n'
  std::string id;    // the last "id:" seen so far in the stream (it persists across events)
};

// Follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation:
// lines end in "\r\n", "\n" or "\r" (a "\r\n" split across two feeds is still one line end);
// a leading UTF-8 BOM is dropped; ":" starts a comment; "field: value" loses one space after the
// colon; a blank line dispatches the event if any data line was seen; unknown fields are ignored.
class SseParser {
 public:
  explicit SseParser(size_t max_event_bytes = 16u << 20) : max_event_bytes_(max_event_bytes) {}

  // Parses `bytes`, appending each completed event to *events. Once a line or an event outgrows
  // max_event_bytes, returns a data-loss error and keeps returning it.
  Status feed(std::string_view bytes, std::vector<SseEvent>* events);
  // True when bytes of an event that was never dispatched are pending (a stream that ended
  // mid-event: by the spec that event is discarded).
  bool has_partial_event() const { return !line_.empty() || saw_data_ || !type_.empty(); }

 private:
  void process_line(std::vector<SseEvent>* events);

  size_t max_event_bytes_;
  std::string line_;         // the current, not yet terminated line
  std::string type_, data_;  // fields of the event being built
  std::string last_id_;
  bool saw_data_ = false;    // a data line was seen (data_ may still be empty: "data:" alone)
  bool cr_pending_ = false;  // the last byte was '\r': a following '\n' belongs to the same line end
  int bom_checked_ = 0;      // bytes of the stream start compared with the BOM so far (3 = done)
  Status error_;
};

// Decodes "Transfer-Encoding: chunked" bodies (RFC 9112 section 7.1): hex size, optional
// extensions, CRLF, data, CRLF, ..., a zero size, trailer lines, CRLF. A bare LF is accepted where
// CRLF is expected (as most clients do). Bytes after the final chunk are ignored.
class ChunkedDecoder {
 public:
  // Appends the payload bytes in `in` to *out. Malformed framing returns a data-loss error that
  // sticks.
  Status feed(std::string_view in, std::string* out);
  bool done() const { return state_ == State::kDone; }

 private:
  enum class State { kSize, kSizeExt, kData, kDataCr, kDataLf, kTrailerStart, kTrailerLine, kDone };
  static constexpr size_t kMaxLineBytes = 8192;           // size lines, extensions, trailer lines
  static constexpr uint64_t kMaxChunkBytes = 1ull << 40;  // guards the hex accumulation

  State state_ = State::kSize;
  uint64_t size_ = 0;      // the chunk size being read, then the bytes left in the chunk
  int num_digits_ = 0;
  size_t line_bytes_ = 0;  // bytes of the current size/extension/trailer line
  Status error_;
};

}  // namespace nb::bench_serve
