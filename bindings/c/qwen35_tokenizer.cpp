// C API: tokenizer (the "Tokenizer" section of qwen35.h).
//
// Functions that return a count use INT32_MIN for errors (NULL model, a
// model without tokenizer, bad arguments, bad token id, out of memory); the
// message is in qwen35_errmsg(). Negative values above INT32_MIN are the
// documented "buffer too small" answers.
#include <climits>
#include <cstring>
#include <new>

#include "bindings/c/handles.h"
#include "tokenizer.h"
#include "unicode.h"

using namespace qwen35;

struct qwen35_detok {
  std::shared_ptr<const Vocab> vocab;
  bool render_special = false;
  Utf8Stream stream;
  std::string out;  // text returned by the last push / flush (NUL-terminated)
};

namespace {

constexpr int32_t kFail = INT32_MIN;

const Vocab* vocab_of(const qwen35_model* m) { return m && m->m ? m->m->vocab.get() : nullptr; }

// The model's vocabulary, or an error naming the calling function.
Status get_vocab(const qwen35_model* m, const char* fn, const Vocab** out) {
  *out = vocab_of(m);
  if (!m) return Error(QWEN35_ERR_INVALID_ARG, "{}: model is NULL", fn);
  if (!*out)
    return Error(QWEN35_ERR_UNSUPPORTED, "{}: the model file '{}' has no tokenizer (no tokenizer.ggml.* keys)", fn,
                 m->m->path);
  return Status::Ok();
}

const Vocab* require_vocab(const qwen35_model* m, const char* fn) {
  const Vocab* v = nullptr;
  Status st = get_vocab(m, fn, &v);
  if (!st.ok()) set_error(st);
  return v;
}

bool check_token(const Vocab* v, qwen35_token t, const char* fn) {
  if (t >= 0 && t < v->n_tokens()) return true;
  set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: token id {} is out of range [0, {})", fn, t, v->n_tokens()));
  return false;
}

int32_t fail_oom(const char* fn) {
  set_error(QWEN35_ERR_OUT_OF_MEMORY, fmt::format("{}: out of memory", fn));
  return kFail;
}

}  // namespace

extern "C" {

qwen35_token qwen35_token_eos(const qwen35_model* model) {
  const Vocab* v = vocab_of(model);
  return v ? v->eos() : -1;
}

qwen35_token qwen35_token_bos(const qwen35_model* model) {
  const Vocab* v = vocab_of(model);
  return v ? v->bos() : -1;
}

bool qwen35_token_is_eog(const qwen35_model* model, qwen35_token token) {
  const Vocab* v = vocab_of(model);
  return v && v->is_eog(token);
}

bool qwen35_token_is_control(const qwen35_model* model, qwen35_token token) {
  const Vocab* v = vocab_of(model);
  return v && v->is_control(token);
}

const char* qwen35_token_text(const qwen35_model* model, qwen35_token token) {
  const Vocab* v = vocab_of(model);
  if (!v || token < 0 || token >= v->n_tokens()) return nullptr;
  return v->text_cstr(token);
}

qwen35_token qwen35_token_lookup(const qwen35_model* model, const char* text) {
  const Vocab* v = vocab_of(model);
  if (!v || !text) return -1;
  return v->find(text);
}

int32_t qwen35_tokenize(const qwen35_model* model, const char* text, size_t len, qwen35_token* tokens,
                        int32_t max_tokens, bool add_special, bool parse_special) {
  static const char* fn = "qwen35_tokenize";
  const Vocab* v = require_vocab(model, fn);
  if (!v) return kFail;
  if (!text && len > 0) return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: text is NULL", fn)), kFail;
  if (max_tokens < 0 || (!tokens && max_tokens > 0))
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: bad output buffer ({} tokens)", fn, max_tokens)), kFail;
  try {
    std::vector<int32_t> ids;
    Status st = v->tokenize(std::string_view(text ? text : "", len), add_special, parse_special, &ids);
    if (!st.ok()) return set_error(st), kFail;
    if (ids.size() > size_t(INT32_MAX))
      return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: {} tokens do not fit an int32", fn, ids.size())), kFail;
    const int32_t n = int32_t(ids.size());
    if (n > max_tokens) return -n;
    if (n > 0) std::memcpy(tokens, ids.data(), ids.size() * sizeof(qwen35_token));
    return n;
  } catch (const std::bad_alloc&) {
    return fail_oom(fn);
  }
}

int32_t qwen35_token_to_piece(const qwen35_model* model, qwen35_token token, char* buf, int32_t buf_size,
                              bool render_special) {
  static const char* fn = "qwen35_token_to_piece";
  const Vocab* v = require_vocab(model, fn);
  if (!v || !check_token(v, token, fn)) return kFail;
  if (buf_size < 0 || (!buf && buf_size > 0))
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: bad buffer (size {})", fn, buf_size)), kFail;
  try {
    std::string s;
    v->piece(token, render_special, &s);
    const int32_t n = int32_t(s.size());  // a piece is at most one token text long
    if (n > buf_size) return -n;
    if (n > 0) std::memcpy(buf, s.data(), s.size());
    return n;
  } catch (const std::bad_alloc&) {
    return fail_oom(fn);
  }
}

int32_t qwen35_detokenize(const qwen35_model* model, const qwen35_token* tokens, int32_t n, char* buf, int32_t buf_size,
                          bool render_special) {
  static const char* fn = "qwen35_detokenize";
  const Vocab* v = require_vocab(model, fn);
  if (!v) return kFail;
  if (n < 0 || (!tokens && n > 0))
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: bad token array (n = {})", fn, n)), kFail;
  if (buf_size < 0 || (!buf && buf_size > 0))
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: bad buffer (size {})", fn, buf_size)), kFail;
  try {
    std::string s;
    for (int32_t i = 0; i < n; ++i) {
      if (!check_token(v, tokens[i], fn)) return kFail;
      v->piece(tokens[i], render_special, &s);
      if (s.size() >= size_t(INT32_MAX))
        return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: text longer than 2 GiB", fn)), kFail;
    }
    const int32_t len = int32_t(s.size());
    if (len >= buf_size) return -(len + 1);  // needs len + 1 bytes with the NUL
    std::memcpy(buf, s.data(), s.size());
    buf[len] = '\0';
    return len;
  } catch (const std::bad_alloc&) {
    return fail_oom(fn);
  }
}

qwen35_status qwen35_detok_create(const qwen35_model* model, bool render_special, qwen35_detok** out) {
  if (out) *out = nullptr;
  if (!out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_detok_create: out is NULL");
  const Vocab* v = nullptr;
  Status st = get_vocab(model, "qwen35_detok_create", &v);
  if (!st.ok()) return set_error(st);
  qwen35_detok* d = new (std::nothrow) qwen35_detok();
  if (!d) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "qwen35_detok_create: out of memory");
  d->vocab = model->m->vocab;
  d->render_special = render_special;
  *out = d;
  return QWEN35_OK;
}

void qwen35_detok_free(qwen35_detok* d) { delete d; }

// Complete text is returned as valid UTF-8: invalid bytes become U+FFFD
// (spec §3.2, §8.5); an incomplete character is held back until the next push.
const char* qwen35_detok_push(qwen35_detok* d, qwen35_token token, size_t* len) {
  static const char* fn = "qwen35_detok_push";
  if (len) *len = 0;
  if (!d) return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("{}: detok is NULL", fn)), nullptr;
  if (!check_token(d->vocab.get(), token, fn)) return nullptr;
  try {
    std::string bytes;
    d->vocab->piece(token, d->render_special, &bytes);
    d->out = unicode::sanitize_utf8(d->stream.push(bytes));
  } catch (const std::bad_alloc&) {
    return fail_oom(fn), nullptr;
  }
  if (len) *len = d->out.size();
  return d->out.c_str();
}

const char* qwen35_detok_flush(qwen35_detok* d, size_t* len) {
  if (len) *len = 0;
  if (!d) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_detok_flush: detok is NULL"), nullptr;
  try {
    d->out = unicode::sanitize_utf8(d->stream.flush());
  } catch (const std::bad_alloc&) {
    return fail_oom("qwen35_detok_flush"), nullptr;
  }
  if (len) *len = d->out.size();
  return d->out.c_str();
}

}  // extern "C"
