// Code point classes from the generated ranges, UTF-8 helpers and the GPT-2
// byte map (see unicode.h).
#include "unicode.h"

#include <cstring>
#include <unordered_map>
#include <vector>

namespace qwen35::unicode {

namespace {

struct UnicodeRange {
  uint32_t first, last;
  uint8_t flags;
};
#include "unicode_tables.inc"

// Two-level lookup: the code space in blocks of 256; identical blocks are
// shared (about 100 distinct blocks for 4352 block slots, ~30 KB in all).
class ClassTable {
 public:
  ClassTable() {
    std::vector<uint8_t> flat(size_t(kMaxCodePoint) + 1, 0);  // [0x110000], freed after building
    for (const UnicodeRange& r : kUnicodeRanges)
      std::memset(flat.data() + r.first, r.flags, size_t(r.last - r.first + 1));
    std::unordered_map<std::string_view, uint16_t> seen;  // block content -> distinct index
    for (uint32_t b = 0; b < kBlocks; ++b) {
      const uint8_t* blk = flat.data() + size_t(b) * kBlock;
      auto ins = seen.emplace(std::string_view(reinterpret_cast<const char*>(blk), kBlock),
                              uint16_t(blocks_.size() / kBlock));
      if (ins.second) blocks_.insert(blocks_.end(), blk, blk + kBlock);
      index_[b] = ins.first->second;
    }
  }
  CpClass get(uint32_t cp) const {
    if (cp > kMaxCodePoint) return CP_OTHER;
    return CpClass(blocks_[size_t(index_[cp >> 8]) * kBlock + (cp & 0xFF)]);
  }

 private:
  static constexpr uint32_t kBlock = 256;
  static constexpr uint32_t kBlocks = (kMaxCodePoint + 1) / kBlock;  // 4352
  uint16_t index_[kBlocks];      // block slot -> distinct block
  std::vector<uint8_t> blocks_;  // [n_distinct * 256] class per code point
};

const ClassTable& table() {
  static const ClassTable t;  // built on first use; thread-safe initialization
  return t;
}

// The 188 bytes that map to themselves (spec §2.5).
constexpr bool kept(uint32_t b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

struct ByteMap {
  uint32_t to_cp[256];
  int16_t from_cp[0x144];  // U(b) < 0x100 + 68
  ByteMap() {
    uint32_t k = 0;
    for (int i = 0; i < 0x144; ++i) from_cp[i] = -1;
    for (uint32_t b = 0; b < 256; ++b) {
      to_cp[b] = kept(b) ? b : 0x100 + k++;
      from_cp[to_cp[b]] = int16_t(b);
    }
  }
};
const ByteMap kByteMap;

}  // namespace

CpClass cp_class(uint32_t cp) { return table().get(cp); }

const char* tables_version() { return QWEN35_UNICODE_VERSION; }
const char* tables_sha256() { return QWEN35_UNICODE_FLAGS_SHA256; }

void append_utf8(uint32_t cp, std::string* out) {
  char buf[4];
  out->append(buf, encode_utf8(cp, buf));
}

// Well-formed sequences per Unicode Table 3-7. Returns the length of the
// valid sequence at s, or 0; *prefix gets the length of the maximal subpart
// (the longest prefix of some valid sequence, at least 1) when invalid.
static size_t utf8_check(const uint8_t* s, size_t n, size_t* prefix) {
  const uint8_t b = s[0];
  *prefix = 1;
  if (b < 0x80) return 1;
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) need = 2;
  else if (b >= 0xE0 && b <= 0xEF) {
    need = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else return 0;
  size_t k = 1;
  for (; k < need && k < n; ++k) {
    const uint8_t c = s[k];
    const bool ok = k == 1 ? (c >= lo && c <= hi) : (c & 0xC0) == 0x80;
    if (!ok) break;
  }
  if (k == need) return need;
  *prefix = k;
  return 0;
}

size_t valid_utf8_len(const uint8_t* s, size_t n) {
  size_t prefix;
  return n == 0 ? 0 : utf8_check(s, n, &prefix);
}

bool is_valid_utf8(std::string_view s) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t k = valid_utf8_len(p + i, s.size() - i);
    if (k == 0) return false;
    i += k;
  }
  return true;
}

std::string sanitize_utf8(std::string_view s) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
  std::string out;
  out.reserve(s.size());
  size_t i = 0, start = 0;  // [start, i) is a valid run not yet copied
  while (i < s.size()) {
    size_t prefix;
    size_t k = utf8_check(p + i, s.size() - i, &prefix);
    if (k) {
      i += k;
      continue;
    }
    out.append(s.data() + start, i - start);
    out.append("\xEF\xBF\xBD");
    i += prefix;
    start = i;
  }
  out.append(s.data() + start, s.size() - start);
  return out;
}

uint32_t byte_to_cp(uint8_t b) { return kByteMap.to_cp[b]; }

int cp_to_byte(uint32_t cp) { return cp < 0x144 ? kByteMap.from_cp[cp] : -1; }

}  // namespace qwen35::unicode
