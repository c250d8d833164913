// Pre-tokenizer (see pretokenizer.h).
#include "pretokenizer.h"

#include "unicode.h"

namespace qwen35 {

using namespace unicode;

void PreTokenizer::decode(std::string_view fragment) {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(fragment.data());
  const size_t n = fragment.size();
  cps_.clear();
  cls_.clear();
  offs_.clear();
  bool reencode = false;  // some code point's shortest form differs from its source bytes
  for (size_t i = 0; i < n;) {
    size_t len;
    uint32_t cp;
    CpClass k;
    if (s[i] < 0x80) {
      cp = s[i];
      len = 1;
    } else {
      cp = decode_lenient(s + i, n - i, &len);
      // Invalid bytes (U+FFFD from one byte) and overlong forms change length.
      const size_t enc = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      reencode |= enc != len;
    }
    k = cp_class(cp);
    if (type_ == PreType::Qwen2 && k == CP_MARK) k = CP_OTHER;
    cps_.push_back(cp);
    cls_.push_back(uint8_t(k));
    offs_.push_back(uint32_t(i));
    i += len;
  }
  offs_.push_back(uint32_t(n));
  text_ = fragment;
  if (!reencode) return;
  // Rebuild the bytes from the decoded code points (spec §2.3: the pieces
  // carry EF BF BD for each bad byte, and overlong forms in shortest form).
  norm_.clear();
  for (size_t j = 0; j < cps_.size(); ++j) {
    offs_[j] = uint32_t(norm_.size());
    append_utf8(cps_[j], &norm_);
  }
  offs_.back() = uint32_t(norm_.size());
  text_ = norm_;
}

// The normative procedure of spec §2.4.3; comments name the regex
// alternatives A1..A7 it reproduces.
void PreTokenizer::cut() {
  const size_t n = cps_.size();
  const uint32_t* cp = cps_.data();
  const uint8_t* cls = cls_.data();
  auto is_lm = [&](size_t i) { return i < n && (cls[i] == CP_LETTER || cls[i] == CP_MARK); };
  auto lower_ascii = [](uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; };
  auto is_nl = [](uint32_t c) { return c == '\r' || c == '\n'; };
  ends_.clear();
  size_t p = 0;
  while (p < n) {
    const uint32_t c = cp[p];
    const uint8_t k = cls[p];
    size_t q;
    // A1: 's 't 're 've 'm 'll 'd (ASCII letters in either case)
    if (c == '\'' && p + 1 < n) {
      const uint32_t a = lower_ascii(cp[p + 1]);
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        ends_.push_back(uint32_t(p + 2));
        p += 2;
        continue;
      }
      if (p + 2 < n) {
        const uint32_t b = lower_ascii(cp[p + 2]);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
          ends_.push_back(uint32_t(p + 3));
          p += 3;
          continue;
        }
      }
    }
    // A2: one optional non-CR/LF, non-L, non-N prefix, then a run of L|M
    if (k == CP_LETTER || k == CP_MARK || (!is_nl(c) && k != CP_NUMBER && is_lm(p + 1))) {
      q = p + 1;
      while (is_lm(q)) ++q;
      ends_.push_back(uint32_t(q));
      p = q;
      continue;
    }
    // A3: a single digit
    if (k == CP_NUMBER) {
      ends_.push_back(uint32_t(p + 1));
      p += 1;
      continue;
    }
    // A4: optional space, a run of "other", trailing CR/LF
    const size_t s = p + (c == ' ' ? 1 : 0);
    if (s < n && cls[s] == CP_OTHER) {
      q = s + 1;
      while (q < n && cls[q] == CP_OTHER) ++q;
      while (q < n && is_nl(cp[q])) ++q;
      ends_.push_back(uint32_t(q));
      p = q;
      continue;
    }
    // A5..A7: p is whitespace here
    q = p;
    size_t last_nl = SIZE_MAX;
    while (q < n && cls[q] == CP_SPACE) {
      if (is_nl(cp[q])) last_nl = q;
      ++q;
    }
    if (last_nl != SIZE_MAX) q = last_nl + 1;     // A5: cut after the last CR/LF
    else if (q == n) {}                           // A6: run reaches the fragment end
    else if (q - p >= 2) q -= 1;                  // A6: leave the last space to the next piece
    else if (q == p) q = p + 1;                   // unreachable with disjoint classes; never loop
    // A7: a single space before a non-space
    ends_.push_back(uint32_t(q));
    p = q;
  }
}

const std::vector<std::string_view>& PreTokenizer::split(std::string_view fragment) {
  decode(fragment);
  cut();
  pieces_.clear();
  uint32_t start = 0;
  for (uint32_t e : ends_) {
    pieces_.push_back(text_.substr(offs_[start], offs_[e] - offs_[start]));
    start = e;
  }
  return pieces_;
}

}  // namespace qwen35
