// Byte-level BPE vocabulary and tokenizer (spec tokenizer-chat.md §1-4).
//
// Pipeline (§2.1): split the text on special tokens (§2.2), cut each raw
// fragment into pieces (pretokenizer.h), map each piece's bytes to the byte
// tokens (GPT-2 byte map, §2.5) and apply the BPE merges by rank (§2.6).
// The BPE works on token ids: Load verifies that every merge operand and
// result is a token, so symbols are always tokens and no string is built.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gguf.h"
#include "log.h"
#include "pretokenizer.h"
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
  // Read the tokenizer.* keys of a GGUF file and build the lookup tables.
  // Refuses models other than "gpt2", pre-tokenizers other than "qwen35" /
  // "qwen2", token_type shorter than tokens or with unknown values, merges
  // that are malformed or whose operands / result are not tokens, ids 0-255
  // that are not the 256 byte tokens and NORMAL tokens that are not
  // byte-encoded. Everything is copied: the file may be closed afterwards.
  static Status Load(const GgufFile& f, const Logger& log, std::shared_ptr<Vocab>* out);

  int32_t n_tokens() const { return int32_t(type_.size()); }
  int32_t n_merges() const { return n_merges_; }
  PreType pre() const { return pre_; }
  // Vocabulary text of a token (byte-encoded form); id must be in range.
  std::string_view text(int32_t id) const {
    return std::string_view(storage_.data() + text_off_[size_t(id)],
                            text_off_[size_t(id) + 1] - text_off_[size_t(id)] - 1);
  }
  // The same, NUL-terminated (the storage keeps a NUL after every text).
  const char* text_cstr(int32_t id) const { return storage_.data() + text_off_[size_t(id)]; }
  int32_t type(int32_t id) const { return type_[size_t(id)]; }
  int32_t find(std::string_view text) const;   // exact token text -> id, or -1 (last id wins on duplicates)
  int32_t eos() const { return eos_; }          // -1 if none
  int32_t bos() const { return bos_; }          // -1 if none
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_; }  // ascending
  bool is_control(int32_t id) const { return id >= 0 && id < n_tokens() && type_[size_t(id)] == TOKEN_CONTROL; }
  std::string_view chat_template() const { return chat_template_; }

  // Encode raw bytes into *out (replacing its contents). parse_special:
  // match CONTROL tokens in the text (USER_DEFINED ones always match).
  // add_special: add BOS / EOS when the vocabulary asks for it. Invalid
  // UTF-8 is accepted (§2.3). Fails only for texts of 4 GiB or more.
  Status tokenize(std::string_view text, bool add_special, bool parse_special, std::vector<int32_t>* out) const;
  // Raw bytes of one token (spec §3.1), appended to *out; nothing for an
  // out-of-range id.
  void piece(int32_t id, bool render_special, std::string* out) const;

  // ---- the stages of tokenize(), public for tests ----
  struct Fragment {
    int32_t id;              // a special token, or -1 for raw text
    std::string_view text;   // the token's text or the raw bytes
  };
  // Special-token splitting, llama.cpp's algorithm (§2.2).
  void split_special(std::string_view text, bool parse_special, std::vector<Fragment>* out) const;
  // BPE of one piece (raw bytes, §2.6), ids appended to *out. force_heap
  // selects the O(n log n) linked-list / heap form, which tokenize() uses
  // only for long pieces; both give the same result.
  void bpe(std::string_view piece, bool force_heap, std::vector<int32_t>* out) const;

 private:
  Vocab() = default;
  struct MergeSlot {
    uint64_t key;    // (left id << 32) | right id; kEmptyKey when unused
    int32_t rank;    // index in tokenizer.ggml.merges
    int32_t result;  // id of left + right
  };
  struct IndexSlot {
    uint32_t tag;    // high bits of the text hash
    int32_t id;      // -1 when unused
    uint32_t off;    // text_off_[id], kept here to save a cache miss per probe
    uint32_t len;    // text length
  };
  struct Scratch;

  Status load_tokens(const GgufFile& f, const Logger& log);
  Status build_pieces();
  Status check_byte_tokens();
  Status load_merges(const GgufFile& f);
  Status load_special_ids(const GgufFile& f, const Logger& log);
  void index_insert(int32_t id, uint64_t hash);
  int32_t find_hashed(std::string_view text, uint64_t hash) const;
  const MergeSlot* merge_find(int32_t left, int32_t right) const;
  void bpe_small(const uint8_t* bytes, size_t n, Scratch& s, std::vector<int32_t>* out) const;
  void bpe_heap(const uint8_t* bytes, size_t n, std::vector<int32_t>* out) const;
  void encode_fragment(std::string_view frag, Scratch& s, std::vector<int32_t>* out) const;

  PreType pre_ = PreType::Qwen35;
  std::string storage_;               // every token text followed by a NUL
  std::vector<uint32_t> text_off_;    // [n_tokens + 1] offsets into storage_
  std::string pieces_;                // decoded bytes of each token (§3.1)
  std::vector<uint32_t> piece_off_;   // [n_tokens + 1] offsets into pieces_
  std::vector<int32_t> type_;         // [n_tokens] TokenType
  std::vector<IndexSlot> index_;      // open addressing, power-of-two size
  std::vector<bool> indexed_;         // [n_tokens] find(text(id)) == id (false for shadowed duplicates)
  std::vector<MergeSlot> merges_;     // open addressing, power-of-two size
  int32_t n_merges_ = 0;
  int32_t byte_id_[256] = {};         // token of each single byte
  std::vector<int32_t> specials_;     // CONTROL / USER_DEFINED / UNKNOWN ids, longest text first
  std::vector<int32_t> eog_;
  int32_t eos_ = -1;
  int32_t bos_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
  std::string chat_template_;
};

// Streaming UTF-8 assembly: bytes of a character split across tokens are
// held back until complete (spec §3.2). Raw bytes pass through unchanged
// (use unicode::sanitize_utf8 for an API string).
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
