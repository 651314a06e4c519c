#include "tokenizer/jinja_lexer.h"

#include <cstring>

namespace nb::jinja {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  Lexer(const std::string& src, const Options& opt) : src_(src), opt_(opt) {}

  Result<std::vector<Token>> run() {
    size_t p = 0;
    bool line_starting = true;  // the previous token ended a line (Jinja2's line_starting)
    while (p < src_.size()) {
      const size_t tag = find_tag(p);
      std::string text = src_.substr(p, (tag == std::string::npos ? src_.size() : tag) - p);
      if (tag == std::string::npos) {
        emit_text(std::move(text), p);
        break;
      }
      const char type = src_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+') ? src_[tag + 2] : 0;
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_space(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && opt_.lstrip_blocks && type != '{') {
        const size_t line = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if (line > 0 || line_starting) {
          bool blank = line < text.size();
          for (size_t i = line; i < text.size(); ++i) blank &= is_space(text[i]);
          if (blank) text.resize(line);
        }
      }
      emit_text(std::move(text), p);
      p = tag + 2 + (sign ? 1 : 0);
      size_t raw_end = 0;
      if (type == '#') {
        NB_ASSIGN_OR_RETURN(p, skip_comment(tag, p));
      } else if (type == '%' && (raw_end = match_word_tag(p, "raw")) != 0) {
        NB_ASSIGN_OR_RETURN(p, lex_raw(tag, raw_end));
      } else {
        tokens_.push_back({type == '{' ? Token::Kind::kVarBegin : Token::Kind::kBlockBegin, "", tag});
        NB_ASSIGN_OR_RETURN(p, lex_tag(tag, p, type == '%'));
      }
      line_starting = p > 0 && src_[p - 1] == '\n';
    }
    tokens_.push_back({Token::Kind::kEof, "", src_.size()});
    return std::move(tokens_);
  }

 private:
  Status error(size_t pos, const std::string& msg) const {
    return invalid_argument(position_prefix(src_, pos) + msg);
  }

  size_t find_tag(size_t p) const {
    for (size_t i = src_.find('{', p); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void emit_text(std::string text, size_t pos) {
    if (!text.empty()) tokens_.push_back({Token::Kind::kText, std::move(text), pos});
  }

  // After an end marker: "-" eats all following whitespace; "+" nothing; plain eats one newline
  // when trim_blocks (blocks and comments only).
  size_t after_end(size_t p, char sign, bool trimmable) const {
    if (sign == '-') {
      while (p < src_.size() && is_space(src_[p])) ++p;
    } else if (sign != '+' && trimmable && opt_.trim_blocks && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  // If src_[p..] is `\s*word\s*` then `-%}` or `%}` (or `+%}` when plus_ok), returns the offset
  // just past that end marker, else 0. sign_out receives the end's sign.
  size_t match_word_tag(size_t p, const char* word, bool plus_ok = false, char* sign_out = nullptr) const {
    while (p < src_.size() && is_space(src_[p])) ++p;
    const size_t len = std::strlen(word);
    if (src_.compare(p, len, word) != 0 || (p + len < src_.size() && is_name_char(src_[p + len]))) return 0;
    p += len;
    while (p < src_.size() && is_space(src_[p])) ++p;
    char sign = 0;
    if (p < src_.size() && (src_[p] == '-' || (plus_ok && src_[p] == '+'))) sign = src_[p++];
    if (src_.compare(p, 2, "%}") != 0) return 0;
    if (sign_out) *sign_out = sign;
    return p + 2;
  }

  // {% raw %}...{% endraw %}: the body is text. As in Jinja2, the raw tag's own end takes "-"
  // (strip following whitespace) but no trim_blocks newline; endraw behaves like any block tag.
  Result<size_t> lex_raw(size_t tag, size_t after_begin) {
    size_t p = after_begin;
    if (src_[p - 3] == '-') {
      while (p < src_.size() && is_space(src_[p])) ++p;
    }
    for (size_t q = src_.find("{%", p); q != std::string::npos; q = src_.find("{%", q + 1)) {
      const char sign = q + 2 < src_.size() && (src_[q + 2] == '-' || src_[q + 2] == '+') ? src_[q + 2] : 0;
      char end_sign = 0;
      const size_t end = match_word_tag(q + 2 + (sign ? 1 : 0), "endraw", true, &end_sign);
      if (end == 0) continue;
      std::string text = src_.substr(p, q - p);
      if (sign == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (sign != '+' && opt_.lstrip_blocks) {
        const size_t line = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        bool blank = line < text.size();
        for (size_t i = line; i < text.size(); ++i) blank &= is_space(text[i]);
        if (blank && (line > 0 || src_[p - 1] == '\n')) text.resize(line);
      }
      emit_text(std::move(text), p);
      return after_end(end, end_sign, true);
    }
    return error(tag, "{% raw %} is never closed with {% endraw %}");
  }

  Result<size_t> skip_comment(size_t tag, size_t p) const {
    const size_t end = src_.find("#}", p);
    if (end == std::string::npos) return error(tag, "comment {# is never closed with #}");
    const char sign = end > p && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
    return after_end(end + 2, sign, true);
  }

  Result<size_t> lex_tag(size_t tag, size_t p, bool block) {
    std::vector<char> brackets;
    const char* close = block ? "%}" : "}}";
    while (true) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      if (p >= src_.size())
        return error(tag, std::string(block ? "{%" : "{{") + " is never closed with " + close);
      if (brackets.empty()) {
        const char c = src_[p];
        const bool signed_end = (c == '-' || (c == '+' && block)) && src_.compare(p + 1, 2, close) == 0;
        if (signed_end || src_.compare(p, 2, close) == 0) {
          tokens_.push_back({block ? Token::Kind::kBlockEnd : Token::Kind::kVarEnd, "", p});
          return after_end(p + (signed_end ? 3 : 2), signed_end ? c : 0, block);
        }
      }
      NB_RETURN_IF_ERROR(lex_one(p, brackets));
    }
  }

  Status lex_one(size_t& p, std::vector<char>& brackets) {
    const size_t start = p;
    const char c = src_[p];
    if (c == '\'' || c == '"') return lex_string(p);
    if (is_digit(c)) return lex_number(p);
    if (is_name_start(c)) {
      while (p < src_.size() && is_name_char(src_[p])) ++p;
      tokens_.push_back({Token::Kind::kName, src_.substr(start, p - start), start});
      return Status::Ok();
    }
    static const char* kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : kTwo) {
      if (src_.compare(p, 2, op) == 0) {
        tokens_.push_back({Token::Kind::kOp, op, start});
        p += 2;
        return Status::Ok();
      }
    }
    if (std::strchr("+-/*%~[](){}><=.:|,;", c) == nullptr || c == '\0')
      return error(p, std::string("unexpected character '") + c + "' inside a tag");
    if (c == '(' || c == '[' || c == '{') brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty()) return error(p, std::string("unexpected '") + c + "'");
      if (brackets.back() != c)
        return error(p, std::string("unexpected '") + c + "', expected '" + brackets.back() + "'");
      brackets.pop_back();
    }
    tokens_.push_back({Token::Kind::kOp, std::string(1, c), start});
    ++p;
    return Status::Ok();
  }

  Status lex_number(size_t& p) {
    const size_t start = p;
    auto digits = [&] {
      while (p < src_.size() && (is_digit(src_[p]) || (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1])))) ++p;
    };
    digits();
    bool is_float = false;
    // "x.0" after a dot is attribute access by index (Jinja2's float rule has (?<!\.)).
    const bool after_dot = start > 0 && src_[start - 1] == '.';
    if (!after_dot && p + 1 < src_.size() && src_[p] == '.' && is_digit(src_[p + 1])) {
      ++p;
      digits();
      is_float = true;
    }
    if (!after_dot && p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
      size_t q = p + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && is_digit(src_[q])) {
        p = q;
        digits();
        is_float = true;
      }
    }
    std::string text;
    for (size_t i = start; i < p; ++i)
      if (src_[i] != '_') text += src_[i];
    tokens_.push_back({is_float ? Token::Kind::kFloat : Token::Kind::kInt, text, start});
    return Status::Ok();
  }

  // Python "unicode-escape" decoding, which Jinja2 applies to string literals.
  Status lex_string(size_t& p) {
    const size_t start = p;
    const char quote = src_[p++];
    std::string out;
    while (true) {
      if (p >= src_.size()) return error(start, "string literal is never closed");
      const char c = src_[p++];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p >= src_.size()) return error(start, "string literal is never closed");
      const char e = src_[p++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\n': break;  // line continuation
        case 'x': case 'u': case 'U': {
          const int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int k = 0; k < n; ++k) {
            const int h = p < src_.size() ? hex_value(src_[p]) : -1;
            if (h < 0) return error(p, std::string("truncated \\") + e + " escape in string literal");
            cp = cp * 16 + static_cast<uint32_t>(h);
            ++p;
          }
          if (cp > 0x10FFFF) return error(p, "\\U escape beyond U+10FFFF");
          append_utf8(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k) cp = cp * 8 + (src_[p++] - '0');
            append_utf8(out, cp);
          } else {
            out += '\\';  // Python keeps unknown escapes as written
            out += e;
          }
      }
    }
    tokens_.push_back({Token::Kind::kString, std::move(out), start});
    return Status::Ok();
  }

  const std::string& src_;
  const Options& opt_;
  std::vector<Token> tokens_;
};

}  // namespace

Result<std::vector<Token>> tokenize(const std::string& source, const Options& options) {
  return Lexer(source, options).run();
}

std::string position_prefix(std::string_view source, size_t offset) {
  offset = std::min(offset, source.size());
  size_t line = 1, col = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (source[i] == '\n') ++line, col = 1;
    else ++col;
  }
  return "template line " + std::to_string(line) + ", column " + std::to_string(col) + ": ";
}

}  // namespace nb::jinja
