// Case mapping tables (text_case.h).
#include "chat/text_case.h"

#include "chat/jinja_lexer.h"

namespace qwen35::jinja {

namespace {

// Ranges where upper and lower case alternate: even = upper, odd = lower
// (or the reverse when `odd_upper`).
struct PairRange {
  uint32_t first, last;
  bool odd_upper;
};
const PairRange kPairs[] = {
    {0x0100, 0x012F, false}, {0x0132, 0x0137, false}, {0x0139, 0x0148, true},  {0x014A, 0x0177, false},
    {0x0179, 0x017E, true},  {0x0460, 0x0481, false}, {0x048A, 0x04BF, false}, {0x04C1, 0x04CE, true},
    {0x04D0, 0x052F, false}, {0x1E00, 0x1E95, false}, {0x1EA0, 0x1EFF, false},
};

// Ranges mapped by a constant offset: [first, last] upper <-> +delta lower.
struct ShiftRange {
  uint32_t first, last, delta;
};
const ShiftRange kShifts[] = {
    {0x0041, 0x005A, 32}, {0x00C0, 0x00D6, 32}, {0x00D8, 0x00DE, 32}, {0x0391, 0x03A1, 32},
    {0x03A3, 0x03AB, 32}, {0x0410, 0x042F, 32}, {0x0400, 0x040F, 80}, {0x0531, 0x0556, 48},
    {0xFF21, 0xFF3A, 32}, {0x0388, 0x038A, 37}, {0x038E, 0x038F, 63},
};

// Single pairs (upper, lower).
const uint32_t kSingles[][2] = {{0x0178, 0x00FF}, {0x0386, 0x03AC}, {0x038C, 0x03CC}, {0x0049, 0x0131},
                                {0x0053, 0x017F}, {0x039C, 0x00B5}, {0x03A3, 0x03C2}};

}  // namespace

uint32_t cp_upper(uint32_t cp) {
  for (const ShiftRange& r : kShifts)
    if (cp >= r.first + r.delta && cp <= r.last + r.delta) return cp - r.delta;
  for (const PairRange& r : kPairs)
    if (cp >= r.first && cp <= r.last && (cp & 1) == (r.odd_upper ? 0u : 1u)) return cp - 1;
  for (const auto& p : kSingles)
    if (cp == p[1]) return p[0];
  return cp;
}

uint32_t cp_lower(uint32_t cp) {
  for (const ShiftRange& r : kShifts)
    if (cp >= r.first && cp <= r.last) return cp + r.delta;
  for (const PairRange& r : kPairs)
    if (cp >= r.first && cp <= r.last && (cp & 1) == (r.odd_upper ? 1u : 0u)) return cp + 1;
  for (const auto& p : kSingles)   // the shifts above already map I, S, Μ and Σ
    if (cp == p[0]) return p[1];
  return cp;
}

bool cp_is_cased(uint32_t cp) {
  return cp_upper(cp) != cp || cp_lower(cp) != cp || cp == 0x00DF || cp == 0x0138 || cp == 0x0149;
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

namespace {

enum class Case { Upper, Lower, Keep };

// Append one code point of s (at i, n bytes) in the wanted case; malformed
// bytes are copied unchanged.
void put(std::string_view s, size_t i, size_t n, uint32_t cp, Case c, std::string* out) {
  if (c == Case::Keep || (n == 1 && uint8_t(s[i]) >= 0x80)) {
    out->append(s.substr(i, n));
    return;
  }
  if (c == Case::Upper && cp == 0x00DF) {   // ß -> SS
    out->append("SS");
    return;
  }
  append_utf8(c == Case::Upper ? cp_upper(cp) : cp_lower(cp), out);
}

template <typename F>
std::string map_cps(std::string_view s, F choose) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    size_t n = utf8_next(s, i, &cp);
    put(s, i, n, cp, choose(cp), &out);
    i += n;
  }
  return out;
}

}  // namespace

std::string str_upper(std::string_view s) { return map_cps(s, [](uint32_t) { return Case::Upper; }); }
std::string str_lower(std::string_view s) { return map_cps(s, [](uint32_t) { return Case::Lower; }); }

std::string str_swapcase(std::string_view s) {
  return map_cps(s, [](uint32_t cp) {
    return cp_lower(cp) != cp ? Case::Lower : cp_upper(cp) != cp || cp == 0x00DF ? Case::Upper : Case::Keep;
  });
}

std::string str_title(std::string_view s) {
  bool prev_cased = false;
  return map_cps(s, [&](uint32_t cp) {
    Case c = prev_cased ? Case::Lower : Case::Upper;
    prev_cased = cp_is_cased(cp);
    return c;
  });
}

std::string str_capitalize(std::string_view s) {
  bool first = true;
  return map_cps(s, [&](uint32_t) {
    Case c = first ? Case::Upper : Case::Lower;
    first = false;
    return c;
  });
}

std::string jinja_title(std::string_view s) {
  bool word_start = true;
  return map_cps(s, [&](uint32_t cp) {
    bool sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_isspace(cp);
    Case c = sep ? Case::Keep : word_start ? Case::Upper : Case::Lower;
    word_start = sep;
    return c;
  });
}

bool str_islower(std::string_view s) {
  bool cased = false;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    i += utf8_next(s, i, &cp);
    if (cp_lower(cp) != cp) return false;   // an upper-case letter
    cased |= cp_is_cased(cp);
  }
  return cased;
}

bool str_isupper(std::string_view s) {
  bool cased = false;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    i += utf8_next(s, i, &cp);
    if (cp_upper(cp) != cp || cp == 0x00DF) return false;   // a lower-case letter
    cased |= cp_is_cased(cp);
  }
  return cased;
}

}  // namespace qwen35::jinja
