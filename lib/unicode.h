// Unicode support for the tokenizer (spec tokenizer-chat.md §2.3-2.5, §3.2, §4):
// the four code point classes of the pre-tokenizer, llama.cpp's lenient UTF-8
// decoder, UTF-8 encoding and repair, and the GPT-2 byte <-> code point map.
// The class data is generated (scripts/gen_unicode_tables.py); no ICU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qwen35::unicode {

// Classes are disjoint (spec §2.4.1); the values are the generated flags.
enum CpClass : uint8_t {
  CP_OTHER = 0,   // O: punctuation, symbols, controls, unassigned, U+FFFD, > U+10FFFF
  CP_LETTER = 1,  // L: Lu Ll Lt Lm Lo
  CP_MARK = 2,    // M: Mn Mc Me
  CP_NUMBER = 3,  // N: Nd Nl No
  CP_SPACE = 4,   // WS: the White_Space property (25 code points)
};

constexpr uint32_t kReplacement = 0xFFFD;
constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// Class of a code point (a two-level table built once from the generated ranges).
CpClass cp_class(uint32_t cp);
inline bool is_letter(uint32_t cp) { return cp_class(cp) == CP_LETTER; }
inline bool is_mark(uint32_t cp) { return cp_class(cp) == CP_MARK; }
inline bool is_number(uint32_t cp) { return cp_class(cp) == CP_NUMBER; }
inline bool is_white_space(uint32_t cp) { return cp_class(cp) == CP_SPACE; }

// Unicode version of the class data, and the SHA-256 of its flag array (§4).
const char* tables_version();
const char* tables_sha256();

// llama.cpp's decoder (spec §2.3): decodes one code point at s[0] (n >= 1
// bytes available) and stores its length in *len. Not validating: overlong
// forms and surrogates are accepted; an invalid lead byte, a lone
// continuation byte or a truncated sequence gives U+FFFD with *len = 1.
// Deviation from llama.cpp (which fails the whole call): a 4-byte form above
// U+10FFFF is also invalid, so its four bytes become four U+FFFD.
inline uint32_t decode_lenient(const uint8_t* s, size_t n, size_t* len) {
  const uint8_t b = s[0];
  auto cont = [&](size_t k) { return (s[k] & 0xC0) == 0x80; };
  if (b < 0x80) {
    *len = 1;
    return b;
  }
  if ((b & 0xE0) == 0xC0 && n > 1 && cont(1)) {
    *len = 2;
    return (uint32_t(b & 0x1F) << 6) | (s[1] & 0x3F);
  }
  if ((b & 0xF0) == 0xE0 && n > 2 && cont(1) && cont(2)) {
    *len = 3;
    return (uint32_t(b & 0x0F) << 12) | (uint32_t(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
  }
  if ((b & 0xF8) == 0xF0 && n > 3 && cont(1) && cont(2) && cont(3)) {
    const uint32_t cp = (uint32_t(b & 0x07) << 18) | (uint32_t(s[1] & 0x3F) << 12) | (uint32_t(s[2] & 0x3F) << 6) |
                        (s[3] & 0x3F);
    if (cp <= kMaxCodePoint) {
      *len = 4;
      return cp;
    }
  }
  *len = 1;
  return kReplacement;
}

// Shortest UTF-8 form of cp (<= 0x10FFFF; surrogates are encoded as they
// are). Writes 1-4 bytes to out and returns the count.
inline size_t encode_utf8(uint32_t cp, char* out) {
  if (cp < 0x80) {
    out[0] = char(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = char(0xC0 | (cp >> 6));
    out[1] = char(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = char(0xE0 | (cp >> 12));
    out[1] = char(0x80 | ((cp >> 6) & 0x3F));
    out[2] = char(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = char(0xF0 | (cp >> 18));
  out[1] = char(0x80 | ((cp >> 12) & 0x3F));
  out[2] = char(0x80 | ((cp >> 6) & 0x3F));
  out[3] = char(0x80 | (cp & 0x3F));
  return 4;
}
void append_utf8(uint32_t cp, std::string* out);

// Length of the well-formed UTF-8 sequence at s (strict: no overlongs, no
// surrogates, <= U+10FFFF), or 0 if it is ill-formed / truncated.
size_t valid_utf8_len(const uint8_t* s, size_t n);
// Copy with every maximal ill-formed subsequence replaced by one U+FFFD
// (Unicode's "maximal subpart" practice, as Python's errors="replace").
std::string sanitize_utf8(std::string_view s);
bool is_valid_utf8(std::string_view s);

// GPT-2 byte-level map (spec §2.5): byte -> code point U(b), and back
// (-1 for a code point that is not one of the 256 images).
uint32_t byte_to_cp(uint8_t b);
int cp_to_byte(uint32_t cp);

}  // namespace qwen35::unicode
