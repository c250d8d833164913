// Jinja lexer: reproduces jinja2.lexer for the default delimiters with
// trim_blocks / lstrip_blocks, which is how Hugging Face renders chat
// templates (spec tokenizer-chat.md §5.1).
#include "chat/jinja_lexer.h"

#include <charconv>
#include <cmath>
#include <cstring>

namespace qwen35::jinja {

bool py_isspace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

size_t utf8_next(std::string_view s, size_t i, uint32_t* cp) {
  uint8_t c = uint8_t(s[i]);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *cp = 0xFFFD;
    return 1;
  }
  uint32_t v = c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    uint8_t b = uint8_t(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      *cp = 0xFFFD;
      return 1;
    }
    v = (v << 6) | (b & 0x3F);
  }
  *cp = v;
  return n;
}

std::string_view py_strip(std::string_view s, bool left, bool right) {
  size_t begin = 0, end = 0, i = 0;
  bool seen = false;
  while (i < s.size()) {
    uint32_t cp;
    size_t n = utf8_next(s, i, &cp);
    if (!py_isspace(cp)) {
      if (!seen) begin = i;
      seen = true;
      end = i + n;
    }
    i += n;
  }
  if (!seen) return left || right ? std::string_view() : s;
  if (!left) begin = 0;
  if (!right) end = s.size();
  return s.substr(begin, end - begin);
}

namespace {

void append_utf8(uint32_t cp, std::string* out) {
  if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;   // not encodable in UTF-8
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

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

class Lexer {
 public:
  Lexer(std::string_view src, const LexOptions& opt, std::vector<Token>* out) : opt_(opt), out_(out) {
    // Jinja2 first normalizes every line break to "\n" and drops one
    // trailing newline (keep_trailing_newline = False).
    s_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        s_.push_back('\n');
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        s_.push_back(src[i]);
      }
    }
    if (!s_.empty() && s_.back() == '\n') s_.pop_back();
  }

  Status run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < s_.size()) {
      size_t t = find_tag(pos);
      if (t == std::string::npos) {
        emit_text(std::string_view(s_).substr(pos));
        break;
      }
      char kind = s_[t + 1];
      char sign = t + 2 < s_.size() && (s_[t + 2] == '-' || s_[t + 2] == '+') ? s_[t + 2] : 0;
      size_t raw_end = kind == '%' ? match_raw_begin(t) : 0;
      std::string_view text = std::string_view(s_).substr(pos, t - pos);
      text = left_of_tag(text, kind == '{' ? 'v' : 'b', sign, line_starting);
      emit_text(text);
      line_ += count_nl(pos, t);
      if (raw_end) {
        QWEN35_TRY(lex_raw(t, raw_end, &pos, &line_starting));
        continue;
      }
      pos = t + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        QWEN35_TRY(lex_comment(&pos, &line_starting));
        continue;
      }
      push(kind == '{' ? Tok::VarBegin : Tok::BlockBegin, kind == '{' ? "{{" : "{%");
      QWEN35_TRY(lex_tag(kind == '{', &pos, &line_starting));
    }
    push(Tok::Eof, "");
    return Status::Ok();
  }

 private:
  Status err(const std::string& what) const {
    return Error(QWEN35_ERR_FORMAT, "chat template line {}: {}", line_, what);
  }

  int count_nl(size_t a, size_t b) const {
    int n = 0;
    for (size_t i = a; i < b && i < s_.size(); ++i) n += s_[i] == '\n';
    return n;
  }

  size_t find_tag(size_t pos) const {
    for (size_t i = pos; i + 1 < s_.size(); ++i)
      if (s_[i] == '{' && (s_[i + 1] == '{' || s_[i + 1] == '%' || s_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  // Whitespace control applied to the text before a tag: "-" strips all
  // whitespace; lstrip_blocks strips spaces from the start of the line up to
  // a block or comment tag (not a variable tag) unless the tag says "+".
  std::string_view left_of_tag(std::string_view text, char kind, char sign, bool line_starting) const {
    if (sign == '-') return py_strip(text, false, true);
    if (sign == '+' || !opt_.lstrip_blocks || kind == 'v') return text;
    size_t l = text.rfind('\n');
    l = l == std::string_view::npos ? 0 : l + 1;
    if (l == 0 && !line_starting) return text;
    std::string_view tail = text.substr(l);
    if (!tail.empty() && py_strip(tail, true, true).empty()) return text.substr(0, l);
    return text;
  }

  // After a tag end: "-" eats all following whitespace, trim_blocks eats one
  // newline after a block/comment end unless the end is "+%}".
  void right_of_tag(char sign, bool block, size_t* pos, bool* line_starting) {
    size_t p = *pos;
    if (sign == '-') {
      while (p < s_.size()) {
        uint32_t cp;
        size_t n = utf8_next(s_, p, &cp);
        if (!py_isspace(cp)) break;
        p += n;
      }
    } else if (sign != '+' && block && opt_.trim_blocks && p < s_.size() && s_[p] == '\n') {
      ++p;
    }
    line_ += count_nl(*pos, p);
    // The last character of the whole tag match (Jinja2's line_starting).
    *line_starting = p > 0 && s_[p - 1] == '\n';
    *pos = p;
  }

  void emit_text(std::string_view text) {
    if (text.empty()) return;
    if (!out_->empty() && out_->back().type == Tok::Text) {
      out_->back().text.append(text);
      return;
    }
    Token tk;
    tk.type = Tok::Text;
    tk.text = std::string(text);
    tk.line = line_;
    out_->push_back(std::move(tk));
  }

  void push(Tok type, std::string text) {
    Token tk;
    tk.type = type;
    tk.text = std::move(text);
    tk.line = line_;
    out_->push_back(std::move(tk));
  }

  size_t skip_ws(size_t p) const {
    while (p < s_.size()) {
      uint32_t cp;
      size_t n = utf8_next(s_, p, &cp);
      if (!py_isspace(cp)) break;
      p += n;
    }
    return p;
  }

  // "{%[-+]? raw [-]?%}" at t: returns the position after it, or 0.
  size_t match_raw_begin(size_t t) const {
    size_t p = t + 2;
    if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ++p;
    p = skip_ws(p);
    if (s_.compare(p, 3, "raw") != 0) return 0;
    p = skip_ws(p + 3);
    if (s_.compare(p, 3, "-%}") == 0) return skip_ws(p + 3);
    if (s_.compare(p, 2, "%}") == 0) return p + 2;
    return 0;
  }

  Status lex_raw(size_t t, size_t body, size_t* pos, bool* line_starting) {
    line_ += count_nl(t, body);
    bool starting = body > 0 && s_[body - 1] == '\n';
    for (size_t k = s_.find("{%", body); k != std::string::npos; k = s_.find("{%", k + 1)) {
      size_t p = k + 2;
      char sign = 0;
      if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) sign = s_[p++];
      p = skip_ws(p);
      if (s_.compare(p, 6, "endraw") != 0) continue;
      p = skip_ws(p + 6);
      char end_sign = 0;
      if (s_.compare(p, 3, "-%}") == 0 || s_.compare(p, 3, "+%}") == 0) {
        end_sign = s_[p];
        p += 3;
      } else if (s_.compare(p, 2, "%}") == 0) {
        p += 2;
      } else {
        continue;
      }
      std::string_view data = std::string_view(s_).substr(body, k - body);
      emit_text(left_of_tag(data, 'b', sign, starting));
      line_ += count_nl(body, p);
      *pos = p;
      right_of_tag(end_sign, true, pos, line_starting);
      return Status::Ok();
    }
    return err("missing end of raw directive");
  }

  Status lex_comment(size_t* pos, bool* line_starting) {
    size_t j = s_.find("#}", *pos);
    if (j == std::string::npos) return err("missing end of comment tag");
    char sign = j > *pos && (s_[j - 1] == '-' || s_[j - 1] == '+') ? s_[j - 1] : 0;
    line_ += count_nl(*pos, j);
    *pos = j + 2;
    right_of_tag(sign, true, pos, line_starting);
    return Status::Ok();
  }

  Status lex_tag(bool var, size_t* pos, bool* line_starting) {
    std::vector<char> balance;
    size_t p = *pos;
    for (;;) {
      size_t q = skip_ws(p);
      line_ += count_nl(p, q);
      p = q;
      if (p >= s_.size()) return err(var ? "missing '}}'" : "missing '%}'");
      if (balance.empty()) {
        const char* end = var ? "}}" : "%}";
        char sign = 0;
        size_t len = 0;
        if ((s_[p] == '-' || (!var && s_[p] == '+')) && s_.compare(p + 1, 2, end) == 0) {
          sign = s_[p];
          len = 3;
        } else if (s_.compare(p, 2, end) == 0) {
          len = 2;
        }
        if (len) {
          push(var ? Tok::VarEnd : Tok::BlockEnd, end);
          *pos = p + len;
          right_of_tag(sign, !var, pos, line_starting);
          return Status::Ok();
        }
      }
      QWEN35_TRY(lex_token(&p, &balance));
    }
  }

  Status lex_token(size_t* pos, std::vector<char>* balance) {
    size_t p = *pos;
    char c = s_[p];
    if (is_digit(c)) return lex_number(pos);
    if (is_name_start(c)) {
      size_t q = p;
      while (q < s_.size() && is_name_char(s_[q])) ++q;
      push(Tok::Name, s_.substr(p, q - p));
      *pos = q;
      return Status::Ok();
    }
    if (c == '\'' || c == '"') return lex_string(pos);
    static const char* kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : kOps2) {
      if (s_.compare(p, 2, op) == 0) {
        push(Tok::Op, op);
        *pos = p + 2;
        return Status::Ok();
      }
    }
    if (std::strchr("+-/*%~[](){}><=.:|,;", c) == nullptr || c == 0) {
      uint8_t u = uint8_t(c);
      return err(u >= 0x20 && u < 0x7F ? fmt::format("unexpected character '{}'", c)
                                       : fmt::format("unexpected byte 0x{:02x}", u));
    }
    if (c == '(' || c == '[' || c == '{') balance->push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (balance->empty()) return err(fmt::format("unexpected '{}'", c));
      if (balance->back() != c) return err(fmt::format("unexpected '{}', expected '{}'", c, balance->back()));
      balance->pop_back();
    }
    push(Tok::Op, std::string(1, c));
    *pos = p + 1;
    return Status::Ok();
  }

  // Digits with optional '_' separators starting at p; returns the end.
  size_t digits(size_t p, bool hex = false) const {
    size_t q = p;
    while (q < s_.size()) {
      char c = s_[q];
      if (is_digit(c) || (hex && hexval(c) >= 0)) {
        ++q;
      } else if (c == '_' && q > p && q + 1 < s_.size() && (is_digit(s_[q + 1]) || (hex && hexval(s_[q + 1]) >= 0))) {
        ++q;
      } else {
        break;
      }
    }
    return q;
  }

  Status lex_number(size_t* pos) {
    size_t p = *pos;
    std::string clean;
    auto strip_us = [&](size_t a, size_t b) {
      std::string r;
      for (size_t i = a; i < b; ++i)
        if (s_[i] != '_') r.push_back(s_[i]);
      return r;
    };
    // Prefixed integers.
    if (s_[p] == '0' && p + 1 < s_.size() && std::strchr("xXoObB", s_[p + 1]) && s_[p + 1] != 0) {
      char k = char(s_[p + 1] | 0x20);
      int base = k == 'x' ? 16 : k == 'o' ? 8 : 2;
      size_t q = p + 2;
      if (q < s_.size() && s_[q] == '_') ++q;
      size_t e = digits(q, base == 16);
      if (e > q) {
        uint64_t v = 0;
        for (size_t i = q; i < e; ++i) {
          if (s_[i] == '_') continue;
          int d = hexval(s_[i]);
          if (d >= base) return err("bad digit in an integer literal");
          if (v > (UINT64_MAX >> 4)) return err("integer literal out of range");
          v = v * uint64_t(base) + uint64_t(d);
        }
        if (v > uint64_t(INT64_MAX)) return err("integer literal out of range");
        Token tk;
        tk.type = Tok::Int;
        tk.ival = int64_t(v);
        tk.text = s_.substr(p, e - p);
        tk.line = line_;
        out_->push_back(std::move(tk));
        *pos = e;
        return Status::Ok();
      }
    }
    size_t e = digits(p);
    size_t f = e;
    bool is_float = false;
    // Float: a '.' must be followed by digits; an exponent needs digits. A
    // number right after '.' (as in x.0) never lexes as a float.
    bool after_dot = p > 0 && s_[p - 1] == '.';
    if (!after_dot) {
      if (f + 1 < s_.size() && s_[f] == '.' && is_digit(s_[f + 1])) {
        f = digits(f + 1);
        is_float = true;
      }
      if (f < s_.size() && (s_[f] == 'e' || s_[f] == 'E')) {
        size_t g = f + 1;
        if (g < s_.size() && (s_[g] == '+' || s_[g] == '-')) ++g;
        if (g < s_.size() && is_digit(s_[g])) {
          f = digits(g);
          is_float = true;
        }
      }
    }
    Token tk;
    tk.line = line_;
    if (is_float) {
      clean = strip_us(p, f);
      tk.type = Tok::Float;
      // from_chars: locale-independent (strtod would follow LC_NUMERIC).
      auto r = std::from_chars(clean.data(), clean.data() + clean.size(), tk.fval);
      if (r.ec == std::errc::result_out_of_range) tk.fval = clean.find("e-") != std::string::npos ? 0.0 : HUGE_VAL;
      tk.text = s_.substr(p, f - p);
      *pos = f;
    } else {
      clean = strip_us(p, e);
      tk.type = Tok::Int;
      uint64_t v = 0;
      auto r = std::from_chars(clean.data(), clean.data() + clean.size(), v);
      if (r.ec != std::errc() || v > uint64_t(INT64_MAX)) return err("integer literal out of range");
      tk.ival = int64_t(v);
      tk.text = s_.substr(p, e - p);
      *pos = e;
    }
    out_->push_back(std::move(tk));
    return Status::Ok();
  }

  // String literal with Python "unicode-escape" semantics (what Jinja2 does
  // after backslash-replacing non-ASCII characters).
  Status lex_string(size_t* pos) {
    size_t p = *pos;
    char q = s_[p];
    size_t i = p + 1;
    std::string v;
    int start_line = line_;
    for (;;) {
      if (i >= s_.size()) {
        line_ = start_line;
        return err("unterminated string literal");
      }
      char c = s_[i];
      if (c == q) break;
      if (c == '\n') ++line_;
      if (c != '\\') {
        v.push_back(c);
        ++i;
        continue;
      }
      if (i + 1 >= s_.size()) {
        line_ = start_line;
        return err("unterminated string literal");
      }
      char e = s_[i + 1];
      i += 2;
      switch (e) {
        case '\n': ++line_; break;   // line continuation
        case '\\': v.push_back('\\'); break;
        case '\'': v.push_back('\''); break;
        case '"': v.push_back('"'); break;
        case 'a': v.push_back('\a'); break;
        case 'b': v.push_back('\b'); break;
        case 'f': v.push_back('\f'); break;
        case 'n': v.push_back('\n'); break;
        case 'r': v.push_back('\r'); break;
        case 't': v.push_back('\t'); break;
        case 'v': v.push_back('\v'); break;
        case 'x':
        case 'u':
        case 'U': {
          size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            int h = i + k < s_.size() ? hexval(s_[i + k]) : -1;
            if (h < 0) return err(fmt::format("truncated \\{} escape in a string literal", e));
            cp = (cp << 4) | uint32_t(h);
          }
          if (cp > 0x10FFFF) return err("escape out of the Unicode range in a string literal");
          append_utf8(cp, &v);
          i += n;
          break;
        }
        case 'N': return err("\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = uint32_t(e - '0');
            for (int k = 0; k < 2 && i < s_.size() && s_[i] >= '0' && s_[i] <= '7'; ++k, ++i)
              cp = cp * 8 + uint32_t(s_[i] - '0');
            append_utf8(cp, &v);
          } else if (uint8_t(e) >= 0x80) {
            // Jinja2 backslash-replaces the non-ASCII character first, so the
            // backslash escapes the first character of that replacement.
            uint32_t cp;
            size_t n = utf8_next(s_, i - 1, &cp);
            i = i - 1 + n;
            v += cp < 0x100 ? fmt::format("\\x{:02x}", cp)
                            : cp < 0x10000 ? fmt::format("\\u{:04x}", cp) : fmt::format("\\U{:08x}", cp);
          } else {
            v.push_back('\\');   // unknown escapes stay as written
            v.push_back(e);
          }
      }
    }
    Token tk;
    tk.type = Tok::String;
    tk.text = std::move(v);
    tk.line = start_line;
    out_->push_back(std::move(tk));
    *pos = i + 1;
    return Status::Ok();
  }

  std::string s_;
  LexOptions opt_;
  std::vector<Token>* out_;
  int line_ = 1;
};

}  // namespace

Status Lex(std::string_view source, const LexOptions& opt, std::vector<Token>* out) {
  out->clear();
  Lexer lx(source, opt, out);
  return lx.run();
}

}  // namespace qwen35::jinja
