// PLACEHOLDER until the BPE tokenizer lands: loads the vocabulary and
// detokenizes; tokenize() reports that encoding is not available.
#include "tokenizer.h"

namespace qwen35 {

struct Vocab::Impl {};

Status Vocab::Load(const GgufFile& f, const Logger& log, std::shared_ptr<Vocab>* out) {
  (void)log;
  std::shared_ptr<Vocab> v(new Vocab());
  const std::vector<std::string_view>* toks = nullptr;
  bool found = false;
  QWEN35_TRY(f.get_string_array("tokenizer.ggml.tokens", &toks, &found));
  if (!found) return Error(QWEN35_ERR_FORMAT, "tokenizer.ggml.tokens is missing");
  v->text_ = *toks;
  std::vector<int64_t> types;
  QWEN35_TRY(f.get_int_array("tokenizer.ggml.token_type", &types, &found));
  v->type_.assign(v->text_.size(), TOKEN_NORMAL);
  for (size_t i = 0; i < types.size() && i < v->type_.size(); ++i) v->type_[i] = int32_t(types[i]);
  for (size_t i = 0; i < v->text_.size(); ++i) v->index_.emplace(v->text_[i], int32_t(i));
  int64_t id;
  QWEN35_TRY(f.get_int("tokenizer.ggml.eos_token_id", &id, &found));
  if (found && id >= 0 && id < v->n_tokens()) v->eos_ = int32_t(id);
  QWEN35_TRY(f.get_int("tokenizer.ggml.bos_token_id", &id, &found));
  if (found && id >= 0 && id < v->n_tokens()) v->bos_ = int32_t(id);
  for (const char* t : {"<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}) {
    int32_t i = v->find(t);
    if (i >= 0) v->eog_.push_back(i);
  }
  if (v->eos_ >= 0) v->eog_.push_back(v->eos_);
  std::string_view tmpl;
  QWEN35_TRY(f.get_string("tokenizer.chat_template", &tmpl, &found));
  if (found) v->chat_template_ = tmpl;
  *out = std::move(v);
  return Status::Ok();
}

int32_t Vocab::find(std::string_view text) const {
  auto it = index_.find(text);
  return it == index_.end() ? -1 : it->second;
}

bool Vocab::is_eog(int32_t id) const {
  for (int32_t e : eog_)
    if (e == id) return true;
  return false;
}

Status Vocab::tokenize(std::string_view, bool, bool, std::vector<int32_t>*) const {
  return Error(QWEN35_ERR_UNSUPPORTED, "tokenizer not implemented yet");
}

void Vocab::piece(int32_t id, bool render_special, std::string* out) const {
  if (id < 0 || id >= n_tokens()) return;
  int32_t t = type_[size_t(id)];
  if (t == TOKEN_CONTROL || t == TOKEN_UNKNOWN) {
    if (render_special) out->append(text_[size_t(id)]);
    return;
  }
  if (t == TOKEN_USER_DEFINED) {
    out->append(text_[size_t(id)]);
    return;
  }
  if (t != TOKEN_NORMAL) return;
  // GPT-2 byte-level decoding: each code point maps back to one byte.
  std::string_view s = text_[size_t(id)];
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    int n;
    if (c < 0x80) { cp = c; n = 1; }
    else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) { cp = (c & 0x1Fu) << 6 | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu); n = 2; }
    else { cp = '?'; n = 1; }
    i += size_t(n);
    uint32_t b;
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) b = cp;
    else if (cp >= 0x100 && cp < 0x100 + 68) {
      // the 68 remapped bytes in ascending order
      static const uint8_t kRemap[68] = {
          0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10,
          0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x7F,
          0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90,
          0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xAD};
      b = kRemap[cp - 0x100];
    } else b = '?';
    out->push_back(char(b));
  }
}

size_t Utf8Stream::incomplete_tail_len(std::string_view buf) {
  size_t n = buf.size();
  for (size_t k = 1; k <= 4 && k <= n; ++k) {
    unsigned char c = static_cast<unsigned char>(buf[n - k]);
    if ((c & 0xE0) == 0xC0 && k < 2) return k;
    if ((c & 0xF0) == 0xE0 && k < 3) return k;
    if ((c & 0xF8) == 0xF0 && k < 4) return k;
  }
  return 0;
}

std::string Utf8Stream::push(std::string_view bytes) {
  buf_.append(bytes);
  size_t keep = incomplete_tail_len(buf_);
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
