#include "tokenizer/utf8.h"

namespace nb::utf8 {
namespace {

// For a lead byte: the sequence length and the allowed range of the SECOND byte (the table of
// well-formed sequences, Unicode §3.9 table 3-7). Length 0 marks a byte that cannot start one.
struct Lead {
  uint8_t len, lo, hi;
};

Lead lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};   // no overlong 3-byte forms
  if (b == 0xED) return {3, 0x80, 0x9F};   // no surrogates
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};   // no overlong 4-byte forms
  if (b == 0xF4) return {4, 0x80, 0x8F};   // nothing above U+10FFFF
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  return {0, 0, 0};
}

}  // namespace

Step next_step(std::string_view s, Repair repair, bool final) {
  if (s.empty()) return {Step::kIncomplete, 0};
  const auto b0 = static_cast<uint8_t>(s[0]);
  const Lead lead = lead_info(b0);
  if (lead.len == 1) return {Step::kChar, 1};
  if (lead.len == 0) return {Step::kInvalid, 1};
  for (size_t i = 1; i < lead.len; ++i) {
    if (i >= s.size()) {
      // A valid prefix cut short by the end of the buffer.
      if (!final) return {Step::kIncomplete, 0};
      return {Step::kInvalid, repair == Repair::kPerByte ? size_t{1} : i};
    }
    const auto b = static_cast<uint8_t>(s[i]);
    const uint8_t lo = i == 1 ? lead.lo : 0x80;
    const uint8_t hi = i == 1 ? lead.hi : 0xBF;
    if (b < lo || b > hi) return {Step::kInvalid, repair == Repair::kPerByte ? size_t{1} : i};
  }
  return {Step::kChar, lead.len};
}

size_t valid_char_len(std::string_view s, uint32_t* cp) {
  const Step st = next_step(s, Repair::kPerByte, /*final=*/true);
  if (st.kind != Step::kChar) return 0;
  if (cp != nullptr) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    switch (st.len) {
      case 1: *cp = p[0]; break;
      case 2: *cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu); break;
      case 3: *cp = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu); break;
      default: *cp = ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    }
  }
  return st.len;
}

bool is_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {  // ASCII fast path
      ++i;
      continue;
    }
    const size_t n = valid_char_len(s.substr(i));
    if (n == 0) return false;
    i += n;
  }
  return true;
}

void append_codepoint(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string repaired(std::string_view s, Repair repair) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    const Step st = next_step(s.substr(i), repair, /*final=*/true);
    if (st.kind == Step::kChar) {
      out.append(s.substr(i, st.len));
    } else {
      out.append(kReplacement);
    }
    i += st.len;
  }
  return out;
}

}  // namespace nb::utf8
