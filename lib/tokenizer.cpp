// Byte-level BPE vocabulary: loading and validation (§1), special-token
// splitting (§2.2), BPE (§2.6), detokenization (§3). See tokenizer.h.
#include "tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <queue>

#include "unicode.h"

namespace qwen35 {

namespace {

constexpr uint64_t kEmptyKey = ~uint64_t(0);
// Pieces up to this many bytes use the quadratic array BPE (cache friendly,
// no allocation); longer ones (long runs of spaces, digits-free symbol
// strings, base64 ...) the O(n log n) heap form.
constexpr size_t kSmallPiece = 48;
// Prefetch distance (table entries) when building the hash tables at load.
constexpr size_t kAhead = 16;

// Hash of a byte string (8 bytes per step, splitmix64 finalizer).
inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t(n) * 0xD6E8FEB86659FD93ull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
  }
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 30;
  return h;
}

inline uint64_t hash_key(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDull;
  k ^= k >> 33;
  return k;
}

size_t table_size(size_t n) {
  size_t c = 16;
  while (c < 2 * n) c <<= 1;
  return c;
}

// Printable form of token text for error messages.
std::string quoted(std::string_view s) {
  std::string out = "'";
  for (unsigned char c : s.substr(0, 64)) {
    if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02X}", c);
    else out += char(c);
  }
  if (s.size() > 64) out += "...";
  return out + "'";
}

}  // namespace

// Per-call working memory of tokenize().
struct Vocab::Scratch {
  explicit Scratch(PreType t) : pre(t) {}
  PreTokenizer pre;
  std::vector<Fragment> frags;
  int32_t syms[kSmallPiece];    // current symbols (token ids)
  int32_t rank[kSmallPiece];    // rank of the pair (syms[i], syms[i+1]); INT32_MAX: no merge
  int32_t result[kSmallPiece];  // its merged token
};

// ---- loading ---------------------------------------------------------------------

Status Vocab::Load(const GgufFile& f, const Logger& log, std::shared_ptr<Vocab>* out) {
  out->reset();
  std::shared_ptr<Vocab> v(new Vocab());
  std::string_view model, pre;
  bool found = false;
  QWEN35_TRY(f.get_string("tokenizer.ggml.model", &model, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.model is missing");
  if (model != "gpt2")
    return Error(QWEN35_ERR_UNSUPPORTED, "tokenizer.ggml.model is {}; only 'gpt2' (byte-level BPE) is supported",
                 quoted(model));
  QWEN35_TRY(f.get_string("tokenizer.ggml.pre", &pre, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.pre is missing (expected 'qwen35')");
  if (pre == "qwen35") v->pre_ = PreType::Qwen35;
  else if (pre == "qwen2") v->pre_ = PreType::Qwen2;
  else
    return Error(QWEN35_ERR_UNSUPPORTED, "tokenizer.ggml.pre is {}; only 'qwen35' and 'qwen2' are supported",
                 quoted(pre));
  QWEN35_TRY(v->load_tokens(f, log));
  QWEN35_TRY(v->load_merges(f));
  QWEN35_TRY(v->load_special_ids(f, log));
  std::string_view tmpl;
  QWEN35_TRY(f.get_string("tokenizer.chat_template", &tmpl, &found));
  if (found) v->chat_template_ = std::string(tmpl);
  log.debug("tokenizer: {} tokens, {} merges, pre '{}', eos {}, bos {}, {} special tokens", v->n_tokens(),
            v->n_merges_, pre, v->eos_, v->bos_, v->specials_.size());
  *out = std::move(v);
  return Status::Ok();
}

Status Vocab::load_tokens(const GgufFile& f, const Logger& log) {
  const std::vector<std::string_view>* toks = nullptr;
  bool found = false;
  QWEN35_TRY(f.get_string_array("tokenizer.ggml.tokens", &toks, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.tokens is missing");
  const size_t n = toks->size();
  if (n < 256 || n > (size_t(1) << 30))
    return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.tokens has {} entries (expected 256 .. 2^30)", n);
  std::vector<int64_t> types;
  QWEN35_TRY(f.get_int_array("tokenizer.ggml.token_type", &types, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.token_type is missing");
  if (types.size() < n)
    return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                 types.size(), n);
  if (types.size() > n)
    log.warn("tokenizer.ggml.token_type has {} entries, more than the {} tokens; the rest is ignored", types.size(), n);

  // Token texts, each followed by a NUL (qwen35_token_text returns them).
  size_t total = 0;
  for (std::string_view s : *toks) total += (s.empty() ? 20 : s.size()) + 1;
  if (total > UINT32_MAX / 2) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.tokens is too large ({} bytes)", total);
  storage_.reserve(total + 64);
  text_off_.resize(n + 1);
  type_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t t = types[i];
    if (t < TOKEN_NORMAL || t > TOKEN_BYTE)
      return Error(QWEN35_ERR_FORMAT, "token {} has type {} (expected 1..6, tokenizer.ggml.token_type)", i, t);
    type_[i] = int32_t(t);
    text_off_[i] = uint32_t(storage_.size());
    std::string_view s = (*toks)[i];
    if (s.empty()) storage_ += fmt::format("[EMPTY_{}]", i);  // llama.cpp's replacement
    else storage_.append(s);
    storage_.push_back('\0');
  }
  text_off_[n] = uint32_t(storage_.size());

  // Text -> id index. On duplicate texts the last id wins, as in llama.cpp.
  index_.assign(table_size(n), IndexSlot{0, -1, 0, 0});
  indexed_.assign(n, false);
  // The tables are larger than the caches: hash kAhead tokens ahead and
  // prefetch their slots so that the misses overlap.
  const size_t mask = index_.size() - 1;
  uint64_t ahead[kAhead];
  auto hash_of = [&](size_t i) {
    const std::string_view s = text(int32_t(i));
    const uint64_t h = hash_bytes(s.data(), s.size());
    __builtin_prefetch(&index_[h & mask]);
    return h;
  };
  for (size_t i = 0; i < kAhead && i < n; ++i) ahead[i] = hash_of(i);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t h = ahead[i % kAhead];
    if (i + kAhead < n) ahead[i % kAhead] = hash_of(i + kAhead);
    index_insert(int32_t(i), h);
  }
  QWEN35_TRY(build_pieces());
  return check_byte_tokens();
}

// Decoded bytes of every token (§3.1), which also validates NORMAL texts.
Status Vocab::build_pieces() {
  const size_t n = type_.size();
  pieces_.reserve(storage_.size());
  piece_off_.resize(n + 1);
  for (size_t i = 0; i < n; ++i) {
    piece_off_[i] = uint32_t(pieces_.size());
    const int32_t id = int32_t(i);
    const std::string_view s = text(id);
    switch (type_[i]) {
      case TOKEN_NORMAL: {
        const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
        for (size_t k = 0; k < s.size();) {
          size_t len;
          const uint32_t cp = unicode::decode_lenient(p + k, s.size() - k, &len);
          // One of the 256 byte images, in shortest form.
          const int b = unicode::cp_to_byte(cp);
          if (b < 0 || len != (cp < 0x80 ? 1u : 2u))
            return Error(QWEN35_ERR_FORMAT,
                         "token {} {} is NORMAL but its text is not byte-level BPE encoded (at byte {})", i,
                         quoted(s), k);
          pieces_.push_back(char(b));
          k += len;
        }
        break;
      }
      case TOKEN_BYTE: {
        // "<0xXX>"
        unsigned v = 0;
        bool ok = s.size() == 6 && s.substr(0, 3) == "<0x" && s[5] == '>';
        for (size_t k = 3; ok && k < 5; ++k) {
          const char c = s[k];
          const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
          ok = d >= 0;
          v = v * 16 + unsigned(d);
        }
        if (!ok) return Error(QWEN35_ERR_FORMAT, "token {} {} has type BYTE but is not of the form <0xXX>", i, quoted(s));
        pieces_.push_back(char(v));
        break;
      }
      case TOKEN_CONTROL:
      case TOKEN_USER_DEFINED:
      case TOKEN_UNKNOWN: pieces_.append(s); break;
      default: break;  // UNUSED renders as nothing
    }
  }
  piece_off_[n] = uint32_t(pieces_.size());
  return Status::Ok();
}

// The 256 byte tokens (§1.2): ids 0-255 are them, and every byte has one.
Status Vocab::check_byte_tokens() {
  bool seen[256] = {};
  for (int32_t i = 0; i < 256; ++i) {
    const uint32_t len = piece_off_[size_t(i) + 1] - piece_off_[size_t(i)];
    const uint8_t b = len == 1 ? uint8_t(pieces_[piece_off_[size_t(i)]]) : 0;
    if (type_[size_t(i)] != TOKEN_NORMAL || len != 1 || seen[b])
      return Error(QWEN35_ERR_FORMAT, "token {} is {}; ids 0-255 must be the 256 byte tokens of byte-level BPE", i,
                   quoted(text(i)));
    seen[b] = true;
  }
  for (int b = 0; b < 256; ++b) {
    char enc[4];
    const size_t k = unicode::encode_utf8(unicode::byte_to_cp(uint8_t(b)), enc);
    byte_id_[b] = find(std::string_view(enc, k));
    // The ids 0-255 cover all bytes, so only a duplicate text can move it.
    if (byte_id_[b] < 0 || type_[size_t(byte_id_[b])] != TOKEN_NORMAL)
      return Error(QWEN35_ERR_FORMAT, "no NORMAL token for byte 0x{:02X}", b);
  }
  return Status::Ok();
}

void Vocab::index_insert(int32_t id, uint64_t h) {
  const std::string_view s = text(id);
  const uint32_t tag = uint32_t(h >> 32);
  const size_t mask = index_.size() - 1;
  for (size_t i = size_t(h) & mask;; i = (i + 1) & mask) {
    IndexSlot& e = index_[i];
    if (e.id >= 0 && !(e.tag == tag && text(e.id) == s)) continue;
    if (e.id >= 0) indexed_[size_t(e.id)] = false;  // a later duplicate shadows it
    e = IndexSlot{tag, id, text_off_[size_t(id)], uint32_t(s.size())};
    indexed_[size_t(id)] = true;
    return;
  }
}

int32_t Vocab::find(std::string_view s) const { return find_hashed(s, hash_bytes(s.data(), s.size())); }

int32_t Vocab::find_hashed(std::string_view s, uint64_t h) const {
  if (index_.empty()) return -1;
  const uint32_t tag = uint32_t(h >> 32);
  const size_t mask = index_.size() - 1;
  for (size_t i = size_t(h) & mask;; i = (i + 1) & mask) {
    const IndexSlot& e = index_[i];
    if (e.id < 0) return -1;
    if (e.tag == tag && e.len == s.size() && std::memcmp(storage_.data() + e.off, s.data(), s.size()) == 0)
      return e.id;
  }
}

Status Vocab::load_merges(const GgufFile& f) {
  const std::vector<std::string_view>* merges = nullptr;
  bool found = false;
  QWEN35_TRY(f.get_string_array("tokenizer.ggml.merges", &merges, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.merges is missing");
  if (merges->size() > size_t(INT32_MAX / 4))
    return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.merges has {} entries", merges->size());
  const size_t n = merges->size();
  n_merges_ = int32_t(n);

  // Pass 1: resolve every merge to (left, right, result) ids. The operand
  // hashes are computed kAhead merges ahead and their index slots prefetched.
  struct Resolved {
    int32_t left, right, result;
  };
  std::vector<Resolved> resolved(n);  // [n_merges]
  struct Split {
    std::string_view ls, rs;
    uint64_t hl, hr;
  };
  Split ahead[kAhead];
  const size_t imask = index_.size() - 1;
  auto split = [&](size_t r) {
    Split s{};
    const std::string_view m = (*merges)[r];
    // "<left> <right>", split at the first space at index >= 1 (§1.4).
    const size_t sp = m.find(' ', 1);
    if (sp == std::string_view::npos || sp + 1 >= m.size()) return s;  // reported below
    s.ls = m.substr(0, sp);
    s.rs = m.substr(sp + 1);
    s.hl = hash_bytes(s.ls.data(), s.ls.size());
    s.hr = hash_bytes(s.rs.data(), s.rs.size());
    __builtin_prefetch(&index_[s.hl & imask]);
    __builtin_prefetch(&index_[s.hr & imask]);
    return s;
  };
  for (size_t r = 0; r < kAhead && r < n; ++r) ahead[r] = split(r);
  std::string joined;
  for (size_t r = 0; r < n; ++r) {
    const Split sp = ahead[r % kAhead];
    if (r + kAhead < n) ahead[r % kAhead] = split(r + kAhead);
    const std::string_view m = (*merges)[r];
    if (sp.ls.empty())
      return Error(QWEN35_ERR_FORMAT, "merge {} {} is not two tokens separated by a space (tokenizer.ggml.merges)", r,
                   quoted(m));
    const std::string_view ls = sp.ls, rs = sp.rs;
    const int32_t left = find_hashed(ls, sp.hl), right = find_hashed(rs, sp.hr);
    if (left < 0 || right < 0)
      return Error(QWEN35_ERR_FORMAT, "merge {} {}: {} is not a token", r, quoted(m), quoted(left < 0 ? ls : rs));
    joined.assign(ls);
    joined.append(rs);
    // Vocabularies built by BPE training list the result of merge r as
    // token 256 + r; try that id first (verified, so only a shortcut).
    const size_t guess = 256 + r;
    const int32_t res = guess < type_.size() && indexed_[guess] && text(int32_t(guess)) == joined
                            ? int32_t(guess) : find(joined);
    if (res < 0) return Error(QWEN35_ERR_FORMAT, "merge {} {}: the result {} is not a token", r, quoted(m), quoted(joined));
    resolved[r] = Resolved{left, right, res};
  }

  // Pass 2: the (left, right) -> (rank, result) table, slots prefetched ahead.
  merges_.assign(table_size(n), MergeSlot{kEmptyKey, 0, 0});
  const size_t mask = merges_.size() - 1;
  auto key_of = [&](size_t r) { return (uint64_t(uint32_t(resolved[r].left)) << 32) | uint32_t(resolved[r].right); };
  for (size_t r = 0; r < n; ++r) {
    if (r + kAhead < n) __builtin_prefetch(&merges_[hash_key(key_of(r + kAhead)) & mask]);
    const uint64_t key = key_of(r);
    for (size_t i = size_t(hash_key(key)) & mask;; i = (i + 1) & mask) {
      MergeSlot& e = merges_[i];
      if (e.key == key) break;  // duplicate pair: the first occurrence keeps its rank
      if (e.key == kEmptyKey) {
        e = MergeSlot{key, int32_t(r), resolved[r].result};
        break;
      }
    }
  }
  return Status::Ok();
}

inline const Vocab::MergeSlot* Vocab::merge_find(int32_t left, int32_t right) const {
  const uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  const size_t mask = merges_.size() - 1;
  for (size_t i = size_t(hash_key(key)) & mask;; i = (i + 1) & mask) {
    const MergeSlot& e = merges_[i];
    if (e.key == key) return &e;
    if (e.key == kEmptyKey) return nullptr;
  }
}

Status Vocab::load_special_ids(const GgufFile& f, const Logger& log) {
  const int32_t n = n_tokens();
  // Optional id keys; a value out of range is ignored (llama.cpp's rule),
  // and there is no default (llama.cpp's id 11 for gpt2 is not copied).
  auto id_key = [&](const char* key, int32_t* out) -> Status {
    int64_t v = 0;
    bool found = false;
    QWEN35_TRY(f.get_int(key, &v, &found));
    if (!found) return Status::Ok();
    if (v < 0 || v >= n) {
      log.warn("{} = {} is out of range ({} tokens); ignored", key, v, n);
      return Status::Ok();
    }
    *out = int32_t(v);
    return Status::Ok();
  };
  QWEN35_TRY(id_key("tokenizer.ggml.eos_token_id", &eos_));
  QWEN35_TRY(id_key("tokenizer.ggml.bos_token_id", &bos_));
  if (eos_ < 0) log.warn("tokenizer has no valid tokenizer.ggml.eos_token_id");
  bool found = false;
  QWEN35_TRY(f.get_bool("tokenizer.ggml.add_bos_token", &add_bos_, &found));
  if (!found) add_bos_ = false;
  QWEN35_TRY(f.get_bool("tokenizer.ggml.add_eos_token", &add_eos_, &found));
  if (!found) add_eos_ = false;

  // End-of-generation set (§1.3, §7.1): EOS, EOT, EOM and the FIM pad /
  // repo / separator tokens, from their keys or else their text, plus every
  // token whose text llama.cpp treats as end-of-generation.
  std::vector<int32_t> eog;
  auto by_key_or_text = [&](const char* key, std::initializer_list<const char*> texts) -> Status {
    int32_t id = -1;
    QWEN35_TRY(id_key(key, &id));
    for (auto it = texts.begin(); id < 0 && it != texts.end(); ++it) id = find(*it);
    if (id >= 0) eog.push_back(id);
    return Status::Ok();
  };
  if (eos_ >= 0) eog.push_back(eos_);
  QWEN35_TRY(by_key_or_text("tokenizer.ggml.eot_token_id", {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                                            "<|endoftext|>", "<EOT>", "_<EOT>", "<|end_of_text|>"}));
  QWEN35_TRY(by_key_or_text("tokenizer.ggml.eom_token_id", {"<|eom_id|>"}));
  QWEN35_TRY(by_key_or_text("tokenizer.ggml.fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>"}));
  QWEN35_TRY(by_key_or_text("tokenizer.ggml.fim_rep_token_id", {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>"}));
  QWEN35_TRY(by_key_or_text("tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>", "<fim-sep>"}));
  for (const char* t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
                        "_<EOT>", "<|end_of_text|>"}) {
    const int32_t id = find(t);
    if (id >= 0) eog.push_back(id);
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  eog_ = std::move(eog);

  // Candidates for raw-text matching (§2.2), longest text first.
  for (int32_t i = 0; i < n; ++i) {
    const int32_t t = type_[size_t(i)];
    if (t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED || t == TOKEN_UNKNOWN) specials_.push_back(i);
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int32_t a, int32_t b) { return text(a).size() > text(b).size(); });
  return Status::Ok();
}

bool Vocab::is_eog(int32_t id) const { return std::binary_search(eog_.begin(), eog_.end(), id); }

// ---- encoding --------------------------------------------------------------------

void Vocab::split_special(std::string_view text_in, bool parse_special, std::vector<Fragment>* out) const {
  out->clear();
  if (text_in.empty()) return;
  out->push_back(Fragment{-1, text_in});
  std::vector<Fragment> next;
  // llama.cpp's order: each candidate in turn (longest first) splits every
  // raw fragment left by the previous ones.
  for (int32_t id : specials_) {
    const int32_t t = type_[size_t(id)];
    if (!parse_special && (t == TOKEN_CONTROL || t == TOKEN_UNKNOWN)) continue;
    const std::string_view tok = text(id);
    bool hit = false;
    for (const Fragment& fr : *out)
      if (fr.id < 0 && fr.text.find(tok) != std::string_view::npos) {
        hit = true;
        break;
      }
    if (!hit) continue;
    next.clear();
    for (const Fragment& fr : *out) {
      if (fr.id >= 0) {
        next.push_back(fr);
        continue;
      }
      size_t pos = 0;
      for (size_t k; (k = fr.text.find(tok, pos)) != std::string_view::npos; pos = k + tok.size()) {
        if (k > pos) next.push_back(Fragment{-1, fr.text.substr(pos, k - pos)});
        next.push_back(Fragment{id, tok});
      }
      if (pos < fr.text.size()) next.push_back(Fragment{-1, fr.text.substr(pos)});
    }
    out->swap(next);
  }
}

// Lowest rank first, leftmost on ties (§2.6), on an array of symbols: for a
// short piece a linear scan beats a heap.
void Vocab::bpe_small(const uint8_t* bytes, size_t n, Scratch& s, std::vector<int32_t>* out) const {
  int32_t* syms = s.syms;
  int32_t* rank = s.rank;
  int32_t* result = s.result;
  auto pair = [&](size_t i) {
    const MergeSlot* e = merge_find(syms[i], syms[i + 1]);
    rank[i] = e ? e->rank : INT32_MAX;
    result[i] = e ? e->result : -1;
  };
  for (size_t i = 0; i < n; ++i) syms[i] = byte_id_[bytes[i]];
  size_t m = n;
  for (size_t i = 0; i + 1 < m; ++i) pair(i);
  while (m > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < m; ++i)
      if (rank[i] < rank[best]) best = i;
    if (rank[best] == INT32_MAX) break;
    syms[best] = result[best];
    // Drop symbol best+1 and pair best; pairs best-1 and best change.
    std::memmove(syms + best + 1, syms + best + 2, (m - best - 2) * sizeof(int32_t));
    std::memmove(rank + best, rank + best + 1, (m - best - 2) * sizeof(int32_t));
    std::memmove(result + best, result + best + 1, (m - best - 2) * sizeof(int32_t));
    --m;
    if (best > 0) pair(best - 1);
    if (best + 1 < m) pair(best);
  }
  out->insert(out->end(), syms, syms + m);
}

// The reference algorithm of §2.6: a doubly linked list of symbols and a
// min-heap of candidate pairs ordered by (rank, left position); entries made
// stale by earlier merges are skipped when popped.
void Vocab::bpe_heap(const uint8_t* bytes, size_t n, std::vector<int32_t>* out) const {
  struct Sym {
    int32_t id;          // -1 once merged into its left neighbour
    int32_t prev, next;  // -1 at the ends
  };
  struct Cand {
    int32_t rank, left, right, left_id, right_id, result;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::vector<Sym> sym(n);
  for (size_t i = 0; i < n; ++i) sym[i] = Sym{byte_id_[bytes[i]], int32_t(i) - 1, i + 1 < n ? int32_t(i + 1) : -1};
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const MergeSlot* e = merge_find(sym[size_t(l)].id, sym[size_t(r)].id);
    if (e) heap.push(Cand{e->rank, l, r, sym[size_t(l)].id, sym[size_t(r)].id, e->result});
  };
  for (size_t i = 1; i < n; ++i) push(int32_t(i - 1), int32_t(i));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& l = sym[size_t(c.left)];
    Sym& r = sym[size_t(c.right)];
    if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;  // stale
    l.id = c.result;
    r.id = -1;
    l.next = r.next;
    if (r.next >= 0) sym[size_t(r.next)].prev = c.left;
    push(l.prev, c.left);
    push(c.left, l.next);
  }
  for (int32_t i = 0; i >= 0; i = sym[size_t(i)].next) out->push_back(sym[size_t(i)].id);
}

void Vocab::bpe(std::string_view piece, bool force_heap, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(piece.data());
  if (force_heap || piece.size() > kSmallPiece) {
    bpe_heap(p, piece.size(), out);
  } else {
    Scratch s(pre_);
    bpe_small(p, piece.size(), s, out);
  }
}

void Vocab::encode_fragment(std::string_view frag, Scratch& s, std::vector<int32_t>* out) const {
  for (std::string_view piece : s.pre.split(frag)) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(piece.data());
    if (piece.size() == 1) out->push_back(byte_id_[p[0]]);
    else if (piece.size() <= kSmallPiece) bpe_small(p, piece.size(), s, out);
    else bpe_heap(p, piece.size(), out);
  }
}

Status Vocab::tokenize(std::string_view text_in, bool add_special, bool parse_special, std::vector<int32_t>* out) const {
  out->clear();
  if (text_in.size() >= UINT32_MAX)
    return Error(QWEN35_ERR_INVALID_ARG, "text of {} bytes is too long to tokenize (limit 4 GiB)", text_in.size());
  if (add_special && add_bos_ && bos_ >= 0) out->push_back(bos_);
  Scratch s(pre_);
  split_special(text_in, parse_special, &s.frags);
  for (const Fragment& fr : s.frags) {
    if (fr.id >= 0) out->push_back(fr.id);
    else encode_fragment(fr.text, s, out);
  }
  if (add_special && add_eos_ && eos_ >= 0) out->push_back(eos_);
  return Status::Ok();
}

// ---- decoding --------------------------------------------------------------------

void Vocab::piece(int32_t id, bool render_special, std::string* out) const {
  if (id < 0 || id >= n_tokens()) return;
  const int32_t t = type_[size_t(id)];
  if ((t == TOKEN_CONTROL || t == TOKEN_UNKNOWN) && !render_special) return;
  out->append(pieces_.data() + piece_off_[size_t(id)], piece_off_[size_t(id) + 1] - piece_off_[size_t(id)]);
}

// llama.cpp's server rule (§3.2), except that the backward scan stops at the
// first byte that is not a continuation byte: a lead byte followed by a
// non-continuation byte can never complete, so it is not held back.
size_t Utf8Stream::incomplete_tail_len(std::string_view buf) {
  const size_t n = buf.size();
  for (size_t k = 1; k <= 4 && k <= n; ++k) {
    const unsigned char c = static_cast<unsigned char>(buf[n - k]);
    if ((c & 0xC0) == 0x80) continue;
    if ((c & 0xE0) == 0xC0 && k < 2) return k;
    if ((c & 0xF0) == 0xE0 && k < 3) return k;
    if ((c & 0xF8) == 0xF0 && k < 4) return k;
    return 0;
  }
  return 0;
}

std::string Utf8Stream::push(std::string_view bytes) {
  buf_.append(bytes);
  const size_t keep = incomplete_tail_len(buf_);
  std::string out = buf_.substr(0, buf_.size() - keep);
  buf_.erase(0, buf_.size() - keep);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  out.swap(buf_);
  return out;
}

}  // namespace qwen35
