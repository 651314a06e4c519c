// Jinja values with Python semantics for truthiness, equality, str(), repr() and json.dumps().
#include <charconv>
#include <cmath>
#include <cstdio>

#include "tokenizer/jinja.h"

namespace nb::jinja {
namespace {

// Python's repr(float): the shortest digits that round-trip, fixed notation when the decimal
// exponent is in [-4, 16), scientific otherwise ("1e+20", "1.5e-05"), always a '.0' when integral.
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // like "-1.2345e+02"
  std::string sign;
  if (sci[0] == '-') sign = "-", sci.erase(0, 1);
  const size_t e = sci.find('e');
  const int exp10 = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (exp10 >= -4 && exp10 < 16) {
    std::string out;
    if (exp10 < 0) {
      out = "0.";
      out.append(static_cast<size_t>(-exp10 - 1), '0');
      out += digits;
    } else if (static_cast<size_t>(exp10) + 1 >= digits.size()) {
      out = digits;
      out.append(static_cast<size_t>(exp10) + 1 - digits.size(), '0');
      out += ".0";
    } else {
      out.assign(digits, 0, static_cast<size_t>(exp10) + 1);
      out += '.';
      out.append(digits, static_cast<size_t>(exp10) + 1);
    }
    return sign + out;
  }
  std::string mant = digits.substr(0, 1);
  if (digits.size() > 1) {
    mant += '.';
    mant.append(digits, 1);
  }
  char ebuf[16];
  std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
  return sign + mant + ebuf;
}

std::string string_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == q) out += std::string("\\") + static_cast<char>(q);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + q;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          out += b;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

Status json_into(const Value& v, int indent, int level, std::string& out) {
  using K = Value::Kind;
  auto newline = [&](int lvl) {
    if (indent >= 0) {
      out += '\n';
      out.append(static_cast<size_t>(indent * lvl), ' ');
    }
  };
  switch (v.kind) {
    case K::kUndefined: return invalid_argument("tojson got an undefined value" + (v.s.empty() ? "" : " ('" + v.s + "')"));
    case K::kNone: out += "null"; return Status::Ok();
    case K::kBool: out += v.b ? "true" : "false"; return Status::Ok();
    case K::kInt: out += std::to_string(v.i); return Status::Ok();
    case K::kFloat:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity") : float_repr(v.f);
      return Status::Ok();
    case K::kString: out += json_string(v.s); return Status::Ok();
    case K::kList: {
      if (v.list->empty()) return out += "[]", Status::Ok();
      out += "[";
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i > 0) out += indent >= 0 ? "," : ", ";
        newline(level + 1);
        NB_RETURN_IF_ERROR(json_into((*v.list)[i], indent, level + 1, out));
      }
      newline(level);
      out += "]";
      return Status::Ok();
    }
    case K::kDict:
    case K::kNamespace: {
      if (v.dict->empty()) return out += "{}", Status::Ok();
      out += "{";
      for (size_t i = 0; i < v.dict->size(); ++i) {
        if (i > 0) out += indent >= 0 ? "," : ", ";
        newline(level + 1);
        out += json_string((*v.dict)[i].first) + ": ";
        NB_RETURN_IF_ERROR(json_into((*v.dict)[i].second, indent, level + 1, out));
      }
      newline(level);
      out += "}";
      return Status::Ok();
    }
  }
  return Status::Ok();
}

}  // namespace

bool Value::truthy() const {
  switch (kind) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool: return b;
    case Kind::kInt: return i != 0;
    case Kind::kFloat: return f != 0.0;
    case Kind::kString: return !s.empty();
    case Kind::kList: return !list->empty();
    case Kind::kDict: return !dict->empty();
    case Kind::kNamespace: return true;
  }
  return false;
}

const Value* Value::find(std::string_view key) const {
  if (!is_mapping()) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(std::string key, Value v) {
  for (auto& [k, old] : *dict) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  dict->emplace_back(std::move(key), std::move(v));
}

std::string to_repr(const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::kString: return string_repr(v.s);
    case K::kUndefined: return "Undefined";
    case K::kList: {
      std::string out = v.tuple ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + to_repr((*v.list)[i]);
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case K::kDict:
    case K::kNamespace: {
      std::string out = v.kind == K::kNamespace ? "<Namespace {" : "{";
      for (size_t i = 0; i < v.dict->size(); ++i)
        out += (i ? ", " : "") + string_repr((*v.dict)[i].first) + ": " + to_repr((*v.dict)[i].second);
      return out + (v.kind == K::kNamespace ? "}>" : "}");
    }
    default: return to_str(v);
  }
}

std::string to_str(const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::kUndefined: return "";
    case K::kNone: return "None";
    case K::kBool: return v.b ? "True" : "False";
    case K::kInt: return std::to_string(v.i);
    case K::kFloat: return float_repr(v.f);
    case K::kString: return v.s;
    default: return to_repr(v);
  }
}

Result<std::string> to_json(const Value& v, int indent) {
  std::string out;
  NB_RETURN_IF_ERROR(json_into(v, indent, 0, out));
  return out;
}

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind == K::kFloat || b.kind == K::kFloat) {
      const double x = a.kind == K::kFloat ? a.f : a.kind == K::kBool ? a.b : static_cast<double>(a.i);
      const double y = b.kind == K::kFloat ? b.f : b.kind == K::kBool ? b.b : static_cast<double>(b.i);
      return x == y;
    }
    const int64_t x = a.kind == K::kBool ? a.b : a.i, y = b.kind == K::kBool ? b.b : b.i;
    return x == y;
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case K::kUndefined:
    case K::kNone: return true;
    case K::kString: return a.s == b.s;
    case K::kList: {
      if (a.tuple != b.tuple || a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equals((*a.list)[i], (*b.list)[i])) return false;
      return true;
    }
    case K::kDict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.find(k);
        if (o == nullptr || !equals(v, *o)) return false;
      }
      return true;
    }
    case K::kNamespace: return a.dict == b.dict;
    default: return false;
  }
}

}  // namespace nb::jinja
