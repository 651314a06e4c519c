#include "tools/bench_serve/sse_parser.h"

#include <algorithm>

namespace nb::bench_serve {

namespace {
constexpr char kBom[] = "\xEF\xBB\xBF";
}  // namespace

Status SseParser::feed(std::string_view bytes, std::vector<SseEvent>* events) {
  if (!error_.ok()) return error_;
  // A BOM may arrive split across feeds; a partial match that fails was ordinary line content.
  while (bom_checked_ < 3 && !bytes.empty()) {
    if (bytes[0] == kBom[bom_checked_]) {
      ++bom_checked_;
      bytes.remove_prefix(1);
      continue;
    }
    line_.append(kBom, static_cast<size_t>(bom_checked_));
    bom_checked_ = 3;
  }
  while (!bytes.empty()) {
    if (cr_pending_) {
      cr_pending_ = false;
      if (bytes[0] == '\n') {
        bytes.remove_prefix(1);
        continue;
      }
    }
    const size_t end = bytes.find_first_of("\r\n");
    const size_t take = end == std::string_view::npos ? bytes.size() : end;
    if (line_.size() + data_.size() + take > max_event_bytes_) {
      error_ = data_loss("SSE line or event longer than " + std::to_string(max_event_bytes_) +
                         " bytes; the stream is not an event stream or the limit is too low");
      return error_;
    }
    line_.append(bytes.data(), take);
    if (end == std::string_view::npos) break;
    cr_pending_ = bytes[end] == '\r';
    bytes.remove_prefix(end + 1);
    process_line(events);
  }
  return Status::Ok();
}

void SseParser::process_line(std::vector<SseEvent>* events) {
  if (line_.empty()) {  // blank line: dispatch
    if (saw_data_) events->push_back({type_, data_, last_id_});
    type_.clear();
    data_.clear();
    saw_data_ = false;
    return;
  }
  if (line_[0] == ':') {  // comment (servers send these as keep-alives)
    line_.clear();
    return;
  }
  const size_t colon = line_.find(':');
  std::string_view field(line_), value;
  if (colon != std::string::npos) {
    field = std::string_view(line_).substr(0, colon);
    value = std::string_view(line_).substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (saw_data_) data_.push_back('\n');
    data_.append(value);
    saw_data_ = true;
  } else if (field == "event") {
    type_.assign(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_id_.assign(value);
  }  // "retry" and unknown fields: ignored, as the spec says
  line_.clear();
}

Status ChunkedDecoder::feed(std::string_view in, std::string* out) {
  if (!error_.ok()) return error_;
  auto fail = [this](const std::string& what) {
    error_ = data_loss("malformed chunked HTTP body: " + what + "; the server's framing is broken");
    return error_;
  };
  size_t i = 0;
  while (i < in.size() && state_ != State::kDone) {
    const char c = in[i];
    switch (state_) {
      case State::kSize: {
        int digit = -1;
        if (c >= '0' && c <= '9') digit = c - '0';
        else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
        if (digit >= 0) {
          if (size_ > (kMaxChunkBytes >> 4)) return fail("chunk size too large");
          size_ = size_ * 16 + static_cast<uint64_t>(digit);
          ++num_digits_;
          ++i;
          break;
        }
        if (num_digits_ == 0) return fail("expected a hex chunk size");
        state_ = State::kSizeExt;  // extensions, whitespace and the line end
        line_bytes_ = 0;
        break;
      }
      case State::kSizeExt:
        ++i;
        if (c == '\n') {
          num_digits_ = 0;
          state_ = size_ == 0 ? State::kTrailerStart : State::kData;
        } else if (++line_bytes_ > kMaxLineBytes) {
          return fail("chunk-size line too long");
        }
        break;
      case State::kData: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(size_, in.size() - i));
        out->append(in.data() + i, n);
        i += n;
        size_ -= n;
        if (size_ == 0) state_ = State::kDataCr;
        break;
      }
      case State::kDataCr:
        if (c == '\r') {
          state_ = State::kDataLf;
          ++i;
          break;
        }
        [[fallthrough]];
      case State::kDataLf:
        if (c != '\n') return fail("chunk data not followed by CRLF");
        ++i;
        state_ = State::kSize;
        break;
      case State::kTrailerStart:
        ++i;
        line_bytes_ = 0;
        if (c == '\n') state_ = State::kDone;
        else if (c != '\r') state_ = State::kTrailerLine;
        break;
      case State::kTrailerLine:
        ++i;
        if (c == '\n') state_ = State::kTrailerStart;
        else if (++line_bytes_ > kMaxLineBytes) return fail("trailer line too long");
        break;
      case State::kDone:
        break;
    }
  }
  return Status::Ok();
}

}  // namespace nb::bench_serve
