// UTF-8 helpers for the tokenizers: strict decoding, repair of invalid input, and the two ways
// the reference tokenizers turn invalid bytes into U+FFFD.
//
// "Strict" means RFC 3629: no overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace nb::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// How invalid bytes become U+FFFD.
enum class Repair {
  // One U+FFFD per invalid byte: sentencepiece (encode and decode) and llama.cpp.
  kPerByte,
  // One U+FFFD per maximal subpart of an ill-formed sequence (Unicode 15, §3.9 "best practice"):
  // Rust's String::from_utf8_lossy (so HF tokenizers' decode) and Python's errors='replace'.
  kMaximalSubpart,
};

// Length of the valid UTF-8 character at the start of `s`, or 0 when it is not a complete valid
// character (invalid, or cut short by the end of `s`). Decoded code point in *cp when non-null.
size_t valid_char_len(std::string_view s, uint32_t* cp = nullptr);

bool is_valid(std::string_view s);

// Appends the UTF-8 encoding of `cp` (must be a valid scalar value).
void append_codepoint(std::string* out, uint32_t cp);

// The outcome of looking at the bytes at the start of a buffer.
struct Step {
  enum Kind { kChar, kInvalid, kIncomplete } kind;
  size_t len;  // kChar: bytes of the character; kInvalid: bytes that become ONE U+FFFD; kIncomplete: 0
};
// kIncomplete means the bytes so far are a valid prefix of a character and more input could
// complete it; with `final` set, such a prefix is reported as kInvalid instead.
Step next_step(std::string_view s, Repair repair, bool final);

// A copy of `s` with every invalid sequence replaced by U+FFFD under `repair`.
std::string repaired(std::string_view s, Repair repair);

}  // namespace nb::utf8
