// JSON value, strict parser and Python-compatible serializers (json.h).
#include "json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <unordered_map>

namespace qwen35 {

Json Json::array(Array items) {
  Json j;
  j.type_ = Type::Array;
  j.arr_ = std::move(items);
  return j;
}

Json Json::object(Object members) {
  Json j;
  j.type_ = Type::Object;
  j.obj_ = std::move(members);
  return j;
}

Json Json::big_int(std::string digits) {
  Json j;
  j.type_ = Type::Int;
  j.big_ = true;
  j.s_ = std::move(digits);
  return j;
}

double Json::as_double() const {
  if (type_ == Type::Double) return d_;
  if (type_ == Type::Int) return big_ ? digits_to_double(s_) : double(i_);
  return 0.0;
}

const Json* Json::find(std::string_view key) const {
  if (type_ != Type::Object) return nullptr;
  for (const Member& m : obj_)
    if (m.first == key) return &m.second;
  return nullptr;
}

Json* Json::find(std::string_view key) {
  return const_cast<Json*>(static_cast<const Json*>(this)->find(key));
}

void Json::set(std::string key, Json value) {
  if (type_ != Type::Object) {
    *this = object();
  }
  if (Json* j = find(key)) {
    *j = std::move(value);
    return;
  }
  obj_.emplace_back(std::move(key), std::move(value));
}

size_t Json::size() const {
  if (type_ == Type::Array) return arr_.size();
  if (type_ == Type::Object) return obj_.size();
  return 0;
}

bool Json::operator==(const Json& o) const {
  if (is_number() && o.is_number()) {
    if (big_ || o.big_) return big_ && o.big_ && s_ == o.s_;
    if (type_ == Type::Int && o.type_ == Type::Int) return i_ == o.i_;
    return as_double() == o.as_double();
  }
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::Null: return true;
    case Type::Bool: return b_ == o.b_;
    case Type::String: return s_ == o.s_;
    case Type::Array: return arr_ == o.arr_;
    case Type::Object: {
      // Python dict equality ignores order.
      if (obj_.size() != o.obj_.size()) return false;
      for (const Member& m : obj_) {
        const Json* v = o.find(m.first);
        if (!v || !(*v == m.second)) return false;
      }
      return true;
    }
    default: return false;
  }
}

// ---------------------------------------------------------------------------
// Number formatting

std::string py_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form: "-d.ddde+XX".
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string out;
  size_t p = 0;
  if (sci[0] == '-') {
    out.push_back('-');
    p = 1;
  }
  size_t e = sci.find('e');
  std::string digits;
  for (size_t i = p; i < e; ++i)
    if (sci[i] != '.') digits.push_back(sci[i]);
  int exp10 = std::atoi(sci.c_str() + e + 1);
  int decpt = exp10 + 1;   // value = 0.DIGITS * 10^decpt
  int nd = int(digits.size());
  // CPython float_repr_style 'short' with mode 'r': fixed notation when
  // -4 < decpt <= 16, else exponent notation.
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0.";
      out.append(size_t(-decpt), '0');
      out += digits;
    } else if (decpt >= nd) {
      out += digits;
      out.append(size_t(decpt - nd), '0');
      out += ".0";
    } else {
      out.append(digits, 0, size_t(decpt));
      out.push_back('.');
      out.append(digits, size_t(decpt), std::string::npos);
    }
  } else {
    out.push_back(digits[0]);
    if (nd > 1) {
      out.push_back('.');
      out.append(digits, 1, std::string::npos);
    }
    int x = decpt - 1;
    out.push_back('e');
    out.push_back(x < 0 ? '-' : '+');
    if (x < 0) x = -x;
    if (x < 10) out.push_back('0');
    out += std::to_string(x);
  }
  return out;
}

double digits_to_double(const std::string& digits) {
  double d = 0.0;
  auto r = std::from_chars(digits.data(), digits.data() + digits.size(), d);
  if (r.ec == std::errc::result_out_of_range) return !digits.empty() && digits[0] == '-' ? -HUGE_VAL : HUGE_VAL;
  return d;
}

std::string json_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return py_float_repr(v);
}

// ---------------------------------------------------------------------------
// UTF-8

namespace {

// Strictly decode one UTF-8 sequence at s[i]. Returns its length (0 if invalid).
size_t utf8_decode(std::string_view s, size_t i, uint32_t* cp) {
  auto b = [&](size_t k) { return uint8_t(s[i + k]); };
  uint8_t c = b(0);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t n;
  uint32_t v;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    v = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    v = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3F);
  }
  static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

const char kHex[] = "0123456789abcdef";

void append_u_escape(uint32_t u, std::string* out) {
  out->append("\\u");
  for (int sh = 12; sh >= 0; sh -= 4) out->push_back(kHex[(u >> sh) & 0xF]);
}

}  // namespace

void json_escape(std::string_view s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    uint8_t c = uint8_t(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out->append("\\\""); break;
        case '\\': out->append("\\\\"); break;
        case '\n': out->append("\\n"); break;
        case '\r': out->append("\\r"); break;
        case '\t': out->append("\\t"); break;
        case '\b': out->append("\\b"); break;
        case '\f': out->append("\\f"); break;
        default:
          // json.dumps escapes controls; with ensure_ascii also DEL.
          if (c < 0x20 || (c == 0x7F && ensure_ascii)) append_u_escape(c, out);
          else out->push_back(char(c));
      }
      ++i;
      continue;
    }
    if (!ensure_ascii) {
      // Raw UTF-8 (json.dumps ensure_ascii=False). Invalid bytes pass through.
      out->push_back(char(c));
      ++i;
      continue;
    }
    uint32_t cp;
    size_t n = utf8_decode(s, i, &cp);
    if (n == 0) {
      cp = 0xFFFD;
      n = 1;
    }
    if (cp >= 0x10000) {
      uint32_t v = cp - 0x10000;
      append_u_escape(0xD800 + (v >> 10), out);
      append_u_escape(0xDC00 + (v & 0x3FF), out);
    } else {
      append_u_escape(cp, out);
    }
    i += n;
  }
  out->push_back('"');
}

// ---------------------------------------------------------------------------
// Serialization

std::string Json::dump() const { return dump(DumpOptions{}); }

std::string Json::tojson() const {
  DumpOptions o;
  o.python_spacing = true;
  return dump(o);
}

std::string Json::dump(const DumpOptions& o) const {
  std::string out;
  dump_to(o, 0, &out);
  return out;
}

void Json::dump_to(const DumpOptions& o, int level, std::string* out) const {
  // json.dumps: item separator ", " without indent, "," with indent.
  const char* item_sep = o.indent >= 0 ? "," : (o.python_spacing ? ", " : ",");
  const char* key_sep = (o.python_spacing || o.indent >= 0) ? ": " : ":";
  auto newline = [&](int lvl) {
    if (o.indent < 0) return;
    out->push_back('\n');
    out->append(size_t(o.indent) * size_t(lvl), ' ');
  };
  switch (type_) {
    case Type::Null: out->append("null"); break;
    case Type::Bool: out->append(b_ ? "true" : "false"); break;
    case Type::Int: out->append(big_ ? s_ : std::to_string(i_)); break;
    case Type::Double: out->append(json_float(d_)); break;
    case Type::String: json_escape(s_, o.ensure_ascii, out); break;
    case Type::Array:
      if (arr_.empty()) {
        out->append("[]");
        break;
      }
      out->push_back('[');
      for (size_t k = 0; k < arr_.size(); ++k) {
        if (k) out->append(item_sep);
        newline(level + 1);
        arr_[k].dump_to(o, level + 1, out);
      }
      newline(level);
      out->push_back(']');
      break;
    case Type::Object: {
      if (obj_.empty()) {
        out->append("{}");
        break;
      }
      std::vector<const Member*> order;
      order.reserve(obj_.size());
      for (const Member& m : obj_) order.push_back(&m);
      if (o.sort_keys)
        std::stable_sort(order.begin(), order.end(),
                         [](const Member* a, const Member* b) { return a->first < b->first; });
      out->push_back('{');
      for (size_t k = 0; k < order.size(); ++k) {
        if (k) out->append(item_sep);
        newline(level + 1);
        json_escape(order[k]->first, o.ensure_ascii, out);
        out->append(key_sep);
        order[k]->second.dump_to(o, level + 1, out);
      }
      newline(level);
      out->push_back('}');
      break;
    }
  }
}

// ---------------------------------------------------------------------------
// Parser

namespace {

class Parser {
 public:
  Parser(std::string_view t, int max_depth) : t_(t), max_depth_(max_depth) {}

  Status parse_document(Json* out) {
    skip_ws();
    QWEN35_TRY(parse_value(out, 0));
    skip_ws();
    if (p_ != t_.size()) return err("unexpected text after the JSON value");
    return Status::Ok();
  }

 private:
  Status err(const std::string& what) const {
    return Error(QWEN35_ERR_INVALID_ARG, "JSON: {} at byte {}", what, p_);
  }
  bool at_end() const { return p_ >= t_.size(); }
  char cur() const { return t_[p_]; }
  void skip_ws() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r')) ++p_;
  }
  bool consume_word(const char* w) {
    size_t n = std::strlen(w);
    if (t_.substr(p_, n) != w) return false;
    p_ += n;
    return true;
  }

  Status parse_value(Json* out, int depth) {
    if (at_end()) return err("unexpected end of text, expected a value");
    char c = cur();
    switch (c) {
      case '{': return parse_object(out, depth + 1);
      case '[': return parse_array(out, depth + 1);
      case '"': {
        std::string s;
        QWEN35_TRY(parse_string(&s));
        *out = Json(std::move(s));
        return Status::Ok();
      }
      case 't':
        if (consume_word("true")) return *out = Json(true), Status::Ok();
        break;
      case 'f':
        if (consume_word("false")) return *out = Json(false), Status::Ok();
        break;
      case 'n':
        if (consume_word("null")) return *out = Json(), Status::Ok();
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(out);
    }
    return err(fmt::format("unexpected character '{}'", printable(c)));
  }

  static std::string printable(char c) {
    uint8_t u = uint8_t(c);
    if (u >= 0x20 && u < 0x7F) return std::string(1, c);
    return fmt::format("\\x{:02x}", u);
  }

  Status parse_object(Json* out, int depth) {
    if (depth > max_depth_) return err(fmt::format("nesting deeper than {} levels", max_depth_));
    ++p_;   // '{'
    Json obj = Json::object();
    Json::Object& members = obj.as_object();
    // Duplicate keys: Python keeps the position of the first occurrence and
    // the last value. Large objects get a hash index to stay linear.
    std::unordered_map<std::string, size_t> index;
    skip_ws();
    if (!at_end() && cur() == '}') {
      ++p_;
      *out = std::move(obj);
      return Status::Ok();
    }
    for (;;) {
      skip_ws();
      if (at_end() || cur() != '"') return err("expected a string key");
      std::string key;
      QWEN35_TRY(parse_string(&key));
      skip_ws();
      if (at_end() || cur() != ':') return err("expected ':' after an object key");
      ++p_;
      skip_ws();
      Json v;
      QWEN35_TRY(parse_value(&v, depth));
      size_t found = SIZE_MAX;
      if (members.size() < 16) {
        for (size_t k = 0; k < members.size(); ++k)
          if (members[k].first == key) found = k;
      } else {
        if (index.empty())
          for (size_t k = 0; k < members.size(); ++k) index.emplace(members[k].first, k);
        auto it = index.find(key);
        if (it != index.end()) found = it->second;
      }
      if (found != SIZE_MAX) {
        members[found].second = std::move(v);
      } else {
        if (!index.empty()) index.emplace(key, members.size());
        members.emplace_back(std::move(key), std::move(v));
      }
      skip_ws();
      if (at_end()) return err("unexpected end of text, expected ',' or '}'");
      if (cur() == ',') {
        ++p_;
        continue;
      }
      if (cur() == '}') {
        ++p_;
        break;
      }
      return err("expected ',' or '}'");
    }
    *out = std::move(obj);
    return Status::Ok();
  }

  Status parse_array(Json* out, int depth) {
    if (depth > max_depth_) return err(fmt::format("nesting deeper than {} levels", max_depth_));
    ++p_;   // '['
    Json arr = Json::array();
    skip_ws();
    if (!at_end() && cur() == ']') {
      ++p_;
      *out = std::move(arr);
      return Status::Ok();
    }
    for (;;) {
      skip_ws();
      Json v;
      QWEN35_TRY(parse_value(&v, depth));
      arr.push_back(std::move(v));
      skip_ws();
      if (at_end()) return err("unexpected end of text, expected ',' or ']'");
      if (cur() == ',') {
        ++p_;
        continue;
      }
      if (cur() == ']') {
        ++p_;
        break;
      }
      return err("expected ',' or ']'");
    }
    *out = std::move(arr);
    return Status::Ok();
  }

  Status parse_hex4(uint32_t* v) {
    if (p_ + 4 > t_.size()) return err("truncated \\u escape");
    uint32_t x = 0;
    for (int k = 0; k < 4; ++k) {
      char c = t_[p_ + size_t(k)];
      x <<= 4;
      if (c >= '0' && c <= '9') x |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') x |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') x |= uint32_t(c - 'A' + 10);
      else return err("bad hex digit in \\u escape");
    }
    p_ += 4;
    *v = x;
    return Status::Ok();
  }

  Status parse_string(std::string* out) {
    ++p_;   // opening quote
    for (;;) {
      if (at_end()) return err("unterminated string");
      uint8_t c = uint8_t(cur());
      if (c == '"') {
        ++p_;
        return Status::Ok();
      }
      if (c < 0x20) return err("unescaped control character in a string");
      if (c == '\\') {
        ++p_;
        if (at_end()) return err("unterminated escape");
        char e = cur();
        ++p_;
        switch (e) {
          case '"': out->push_back('"'); break;
          case '\\': out->push_back('\\'); break;
          case '/': out->push_back('/'); break;
          case 'b': out->push_back('\b'); break;
          case 'f': out->push_back('\f'); break;
          case 'n': out->push_back('\n'); break;
          case 'r': out->push_back('\r'); break;
          case 't': out->push_back('\t'); break;
          case 'u': {
            size_t at = p_ - 2;
            uint32_t u = 0;
            QWEN35_TRY(parse_hex4(&u));
            if (u >= 0xD800 && u <= 0xDBFF) {
              uint32_t lo = 0;
              if (t_.substr(p_, 2) != "\\u") {
                p_ = at;
                return err("lone surrogate escape");
              }
              p_ += 2;
              QWEN35_TRY(parse_hex4(&lo));
              if (lo < 0xDC00 || lo > 0xDFFF) {
                p_ = at;
                return err("lone surrogate escape");
              }
              u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            } else if (u >= 0xDC00 && u <= 0xDFFF) {
              p_ = at;
              return err("lone surrogate escape");
            }
            append_utf8(u, out);
            break;
          }
          default:
            --p_;
            return err(fmt::format("bad escape '\\{}'", printable(e)));
        }
        continue;
      }
      if (c < 0x80) {
        out->push_back(char(c));
        ++p_;
        continue;
      }
      uint32_t cp;
      size_t n = utf8_decode(t_, p_, &cp);
      if (n == 0) return err("invalid UTF-8");
      out->append(t_.substr(p_, n));
      p_ += n;
    }
  }

  Status parse_number(Json* out) {
    size_t start = p_;
    bool neg = false;
    if (cur() == '-') {
      neg = true;
      ++p_;
    }
    auto digit = [&]() { return !at_end() && cur() >= '0' && cur() <= '9'; };
    if (!digit()) return err("expected a digit");
    if (cur() == '0') {
      ++p_;
      if (digit()) return err("leading zero in a number");
    } else {
      while (digit()) ++p_;
    }
    bool is_float = false;
    if (!at_end() && cur() == '.') {
      is_float = true;
      ++p_;
      if (!digit()) return err("expected a digit after '.'");
      while (digit()) ++p_;
    }
    if (!at_end() && (cur() == 'e' || cur() == 'E')) {
      is_float = true;
      ++p_;
      if (!at_end() && (cur() == '+' || cur() == '-')) ++p_;
      if (!digit()) return err("expected a digit in the exponent");
      while (digit()) ++p_;
    }
    std::string_view text = t_.substr(start, p_ - start);
    if (!is_float) {
      int64_t v = 0;
      auto r = std::from_chars(text.data(), text.data() + text.size(), v);
      if (r.ec == std::errc()) {
        *out = Json(v);
      } else {
        // Beyond int64: keep the digits (Python ints are exact).
        *out = Json::big_int(std::string(text));
      }
      return Status::Ok();
    }
    double d = 0.0;
    auto r = std::from_chars(text.data(), text.data() + text.size(), d);
    if (r.ec == std::errc::result_out_of_range) {
      // Python float(): overflow gives inf, underflow gives (signed) zero.
      size_t e = text.find_first_of("eE");
      bool neg_exp = e != std::string_view::npos && e + 1 < text.size() && text[e + 1] == '-';
      d = neg_exp ? 0.0 : HUGE_VAL;
      if (neg) d = -d;
    } else if (r.ec != std::errc()) {
      p_ = start;
      return err("bad number");
    }
    *out = Json(d);
    return Status::Ok();
  }

  std::string_view t_;
  size_t p_ = 0;
  int max_depth_;
};

}  // namespace

Status Json::Parse(std::string_view text, Json* out, int max_depth) {
  Parser p(text, max_depth);
  Json j;
  QWEN35_TRY(p.parse_document(&j));
  *out = std::move(j);
  return Status::Ok();
}

}  // namespace qwen35
