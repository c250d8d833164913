// Pre-tokenizer of the qwen35 / qwen2 byte-level BPE vocabularies (spec
// tokenizer-chat.md §2.3-2.4): decodes a raw-text fragment with llama.cpp's
// lenient UTF-8 rules and cuts it into the pieces the regex would match,
// using the normative single-pass equivalent of §2.4.3 (no regex engine).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qwen35 {

enum class PreType {
  Qwen35,  // tokenizer.ggml.pre = "qwen35": combining marks continue words
  Qwen2,   // "qwen2": the same regex without \p{M} (marks are "other")
};

class PreTokenizer {
 public:
  explicit PreTokenizer(PreType type) : type_(type) {}

  // Split one fragment (text between special tokens). Returns the pieces as
  // views into `fragment`, or into an internal buffer when the fragment had
  // to be re-encoded (invalid bytes -> U+FFFD, overlong forms -> shortest
  // form; §2.3). The views stay valid until the next call.
  const std::vector<std::string_view>& split(std::string_view fragment);

 private:
  void decode(std::string_view fragment);
  void cut();

  PreType type_;
  std::string norm_;               // re-encoded fragment (only when it differs)
  std::string_view text_;          // the bytes the offsets refer to
  std::vector<uint32_t> cps_;      // [n] code points
  std::vector<uint8_t> cls_;       // [n] unicode::CpClass, marks folded into "other" for qwen2
  std::vector<uint32_t> offs_;     // [n + 1] byte offset of each code point in text_
  std::vector<uint32_t> ends_;     // piece end indices (code points)
  std::vector<std::string_view> pieces_;
};

}  // namespace qwen35
