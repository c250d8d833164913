// Byte-level BPE vocabulary and tokenizer (spec tokenizer-chat.md §1-4).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gguf.h"
#include "log.h"
#include "status.h"

namespace qwen35 {

enum TokenType : int32_t {
  TOKEN_NORMAL = 1,
  TOKEN_UNKNOWN = 2,
  TOKEN_CONTROL = 3,
  TOKEN_USER_DEFINED = 4,
  TOKEN_UNUSED = 5,
  TOKEN_BYTE = 6,
};

class Vocab {
 public:
  // Read tokenizer.* keys from a GGUF file and build the lookup tables.
  // Refuses models other than "gpt2" and pre-tokenizers other than
  // "qwen35"/"qwen2". Token strings are views into the file mapping, so the
  // file must outlive the Vocab.
  static Status Load(const GgufFile& f, const Logger& log, std::shared_ptr<Vocab>* out);

  int32_t n_tokens() const { return int32_t(text_.size()); }
  std::string_view text(int32_t id) const { return text_[size_t(id)]; }
  int32_t type(int32_t id) const { return type_[size_t(id)]; }
  int32_t find(std::string_view text) const;   // exact token text -> id, or -1
  int32_t eos() const { return eos_; }
  int32_t bos() const { return bos_; }          // -1 if none
  bool add_bos() const { return add_bos_; }
  bool is_eog(int32_t id) const;
  bool is_control(int32_t id) const { return id >= 0 && id < n_tokens() && type_[size_t(id)] == TOKEN_CONTROL; }
  std::string_view chat_template() const { return chat_template_; }

  // Encode raw bytes. parse_special: match CONTROL tokens in the text
  // (USER_DEFINED ones always match). add_special: prepend BOS when the
  // vocabulary asks for it.
  Status tokenize(std::string_view text, bool add_special, bool parse_special, std::vector<int32_t>* out) const;
  // Raw bytes of one token (spec §3.1). Appends to *out.
  void piece(int32_t id, bool render_special, std::string* out) const;

 private:
  Vocab() = default;
  struct Impl;
  std::shared_ptr<Impl> impl_;   // BPE merge table, pre-tokenizer state (tokenizer.cpp)

  std::vector<std::string_view> text_;
  std::vector<int32_t> type_;
  std::unordered_map<std::string_view, int32_t> index_;
  std::vector<int32_t> eog_;
  int32_t eos_ = -1;
  int32_t bos_ = -1;
  bool add_bos_ = false;
  std::string_view chat_template_;
};

// Streaming UTF-8 assembly: bytes of a character split across tokens are
// held back until complete (spec §3.2).
class Utf8Stream {
 public:
  // Append bytes; returns the newly complete prefix.
  std::string push(std::string_view bytes);
  std::string flush();
  static size_t incomplete_tail_len(std::string_view buf);

 private:
  std::string buf_;
};

}  // namespace qwen35
