// C API: version, errors, logging, model and context (the core of qwen35.h).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <new>

#include "backend.h"
#include "bindings/c/handles.h"
#include "log.h"
#include "threadpool.h"

using namespace qwen35;

namespace {
thread_local std::string t_errmsg;
std::mutex g_log_mu;
qwen35_log_callback g_log_cb = nullptr;
void* g_log_ud = nullptr;
}  // namespace

namespace qwen35 {

qwen35_status set_error(const Status& st, qwen35_context* ctx) {
  t_errmsg = st.message();
  if (ctx) ctx->errmsg = st.message();
  return st.code();
}

Logger default_logger() {
  std::lock_guard<std::mutex> lk(g_log_mu);
  return Logger{g_log_cb, g_log_ud};
}

}  // namespace qwen35

extern "C" {

const char* qwen35_version(void) { return QWEN35_VERSION_STRING; }
int qwen35_version_number(void) { return QWEN35_VERSION_NUMBER; }

const char* qwen35_status_str(qwen35_status s) {
  switch (s) {
    case QWEN35_OK: return "ok";
    case QWEN35_ERR_INVALID_ARG: return "invalid argument";
    case QWEN35_ERR_IO: return "I/O error";
    case QWEN35_ERR_FORMAT: return "invalid or corrupt file";
    case QWEN35_ERR_UNSUPPORTED: return "unsupported";
    case QWEN35_ERR_OUT_OF_MEMORY: return "out of memory";
    case QWEN35_ERR_CONTEXT_FULL: return "context full";
    case QWEN35_ERR_CANCELLED: return "cancelled";
    case QWEN35_ERR_BACKEND: return "compute backend error";
    case QWEN35_ERR_STATE: return "invalid state";
    case QWEN35_ERR_BUFFER_TOO_SMALL: return "buffer too small";
  }
  return "unknown status";
}

const char* qwen35_errmsg(void) { return t_errmsg.c_str(); }

void qwen35_log_set(qwen35_log_callback cb, void* ud) {
  std::lock_guard<std::mutex> lk(g_log_mu);
  g_log_cb = cb;
  g_log_ud = ud;
}

// ---- model ---------------------------------------------------------------------

qwen35_model_params qwen35_model_default_params(void) {
  qwen35_model_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.use_mmap = true;
  p.device = QWEN35_DEVICE_AUTO;
  p.device_index = 0;
  p.n_gpu_layers = -1;
  return p;
}

qwen35_status qwen35_model_load(const char* path, const qwen35_model_params* params, qwen35_model** out) {
  if (out) *out = nullptr;
  if (!path || !out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_model_load: path and out_model must not be NULL");
  const qwen35_model_params p = read_params(params, qwen35_model_default_params());
  const int dev = raw_enum(p.device);
  if (dev != QWEN35_DEVICE_AUTO && dev != QWEN35_DEVICE_CPU && dev != QWEN35_DEVICE_CUDA)
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("qwen35_model_load: bad device {}", dev));
  Logger log = p.log_callback ? Logger{p.log_callback, p.log_user_data} : default_logger();
  LoadOptions opt;
  opt.use_mmap = p.use_mmap;
  opt.progress = p.progress_callback;
  opt.progress_user_data = p.progress_user_data;
  std::unique_ptr<qwen35_model> h(new (std::nothrow) qwen35_model());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  const std::string what = fmt::format("loading '{}'", path);
  Status st = guarded(what.c_str(), [&] {
    QWEN35_TRY(LoadModel(path, opt, log, &h->m));
    // Device selection: a GPU backend claims the model when asked for (or
    // on AUTO when one is usable).
    const bool want_cpu = p.device == QWEN35_DEVICE_CPU || p.n_gpu_layers == 0;
    if (!want_cpu && !h->m->vocab_only)
      QWEN35_TRY(UploadModelToCuda(*h->m, p.device_index, p.device == QWEN35_DEVICE_CUDA));
    h->desc = h->m->desc;
    // NUL-terminated copies of the metadata keys (the file's are not), for
    // qwen35_model_meta_key.
    for (const auto& kv : h->m->file->kvs()) h->meta_keys.emplace_back(kv.key);
    return Status::Ok();
  });
  if (!st.ok()) return set_error(st);
  *out = h.release();
  return QWEN35_OK;
}

void qwen35_model_free(qwen35_model* model) { delete model; }

int32_t qwen35_model_n_vocab(const qwen35_model* m) { return m ? m->m->hp.n_vocab : 0; }
int32_t qwen35_model_n_ctx_train(const qwen35_model* m) { return m ? m->m->hp.n_ctx_train : 0; }
int32_t qwen35_model_n_embd(const qwen35_model* m) { return m ? m->m->hp.n_embd : 0; }
int32_t qwen35_model_n_layer(const qwen35_model* m) { return m ? m->m->hp.n_layer : 0; }
bool qwen35_model_has_mtp(const qwen35_model* m) { return m && m->m->mtp != nullptr; }
qwen35_device qwen35_model_device(const qwen35_model* m) {
  return m ? qwen35_device(m->m->device) : QWEN35_DEVICE_CPU;
}
uint64_t qwen35_model_host_bytes(const qwen35_model* m) { return m ? m->m->host_bytes : 0; }
uint64_t qwen35_model_device_bytes(const qwen35_model* m) { return m ? m->m->device_bytes : 0; }
uint64_t qwen35_model_file_bytes(const qwen35_model* m) { return m && m->m->file ? m->m->file->size() : 0; }

qwen35_status qwen35_cuda_memory_info(int device_index, uint64_t* free_bytes, uint64_t* total_bytes) {
  if (!free_bytes || !total_bytes) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_cuda_memory_info: NULL argument");
  Status st = CudaMemoryInfo(device_index, free_bytes, total_bytes);
  return st.ok() ? QWEN35_OK : set_error(st);
}
const char* qwen35_model_desc(const qwen35_model* m) { return m ? m->desc.c_str() : nullptr; }

int32_t qwen35_model_meta(const qwen35_model* m, const char* key, char* buf, size_t buf_size) {
  if (!m || !key) return -1;
  const GgufKV* kv = m->m->file->find_kv(key);
  if (!kv) return -1;
  std::string v = m->m->file->value_to_string(*kv);
  if (buf && buf_size > 0) {
    size_t k = std::min(v.size(), buf_size - 1);
    std::memcpy(buf, v.data(), k);
    buf[k] = '\0';
  }
  return int32_t(std::min<size_t>(v.size(), INT32_MAX));
}

int32_t qwen35_model_meta_count(const qwen35_model* m) { return m ? int32_t(m->m->file->kvs().size()) : 0; }

const char* qwen35_model_meta_key(const qwen35_model* m, int32_t i) {
  if (!m || i < 0 || size_t(i) >= m->m->file->kvs().size()) return nullptr;
  return m->meta_keys[size_t(i)].c_str();
}

// ---- context -------------------------------------------------------------------

qwen35_context_params qwen35_context_default_params(void) {
  qwen35_context_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.n_ctx = 4096;
  p.n_batch = 512;
  p.n_threads = ThreadPool::default_threads();
  p.use_mtp = true;
  return p;
}

qwen35_status qwen35_context_create(qwen35_model* model, const qwen35_context_params* params, qwen35_context** out) {
  if (out) *out = nullptr;
  if (!model || !out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_create: model and out_ctx must not be NULL");
  const qwen35_context_params p = read_params(params, qwen35_context_default_params());
  ContextOptions o;
  o.n_ctx = p.n_ctx == 0 ? model->m->hp.n_ctx_train : p.n_ctx;
  o.n_batch = p.n_batch;
  o.n_threads = p.n_threads <= 0 ? ThreadPool::default_threads() : p.n_threads;
  o.use_mtp = p.use_mtp;
  o.mtp_prenorm = p.mtp_prenorm;
  o.reference = p.reference;
  o.mtp_logits = p.mtp_logits;
  if (o.n_ctx < 0) return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("n_ctx {} is negative", p.n_ctx));
  std::unique_ptr<qwen35_context> h(new (std::nothrow) qwen35_context());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  h->model = model;
  const std::string what = fmt::format("creating a context of {} tokens", o.n_ctx);
  Status st = guarded(what.c_str(), [&] { return Context::Create(*model->m, o, &h->ctx); });
  if (!st.ok()) return set_error(st);
  *out = h.release();
  return QWEN35_OK;
}

void qwen35_context_free(qwen35_context* ctx) { delete ctx; }

const char* qwen35_context_errmsg(const qwen35_context* ctx) { return ctx ? ctx->errmsg.c_str() : ""; }
const qwen35_model* qwen35_context_model(const qwen35_context* ctx) { return ctx ? ctx->model : nullptr; }
int32_t qwen35_context_n_ctx(const qwen35_context* ctx) { return ctx ? ctx->ctx->n_ctx() : 0; }
int32_t qwen35_context_n_past(const qwen35_context* ctx) { return ctx ? ctx->ctx->n_past() : 0; }
uint64_t qwen35_context_memory_bytes(const qwen35_context* ctx) { return ctx ? ctx->ctx->memory_bytes() : 0; }


qwen35_status qwen35_context_decode(qwen35_context* ctx, const qwen35_token* tokens, int32_t n,
                                    qwen35_logits_mode mode) {
  if (!ctx) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_decode: ctx is NULL");
  clear_error(ctx);
  if (!tokens || n <= 0) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_decode: need n > 0 tokens", ctx);
  const int m = raw_enum(mode);
  if (m != QWEN35_LOGITS_LAST && m != QWEN35_LOGITS_ALL && m != QWEN35_LOGITS_NONE)
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_decode: bad logits mode", ctx);
  const LogitsMode lm = m == QWEN35_LOGITS_ALL ? LogitsMode::All : m == QWEN35_LOGITS_NONE ? LogitsMode::None
                                                                                          : LogitsMode::Last;
  ctx->ctx->abort.store(false);
  Status st = guarded("decode", [&] { return ctx->ctx->decode(tokens, n, lm); });
  return st.ok() ? QWEN35_OK : set_error(st, ctx);
}

const float* qwen35_context_logits(qwen35_context* ctx, int32_t i) { return ctx ? ctx->ctx->logits(i) : nullptr; }
const float* qwen35_context_hidden(qwen35_context* ctx, int32_t i) { return ctx ? ctx->ctx->hidden(i) : nullptr; }

qwen35_status qwen35_context_mtp_draft(qwen35_context* ctx, qwen35_token next_token, const float** out_logits) {
  if (out_logits) *out_logits = nullptr;
  if (!ctx || !out_logits) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_mtp_draft: NULL argument");
  clear_error(ctx);
  Status st = guarded("MTP draft", [&] { return ctx->ctx->mtp_draft(next_token, out_logits); });
  return st.ok() ? QWEN35_OK : set_error(st, ctx);
}

const float* qwen35_context_mtp_logits(qwen35_context* ctx, int32_t pos) {
  return ctx ? ctx->ctx->mtp_logits(pos) : nullptr;
}

void qwen35_context_reset(qwen35_context* ctx) {
  if (ctx) ctx->ctx->reset();
}

qwen35_status qwen35_context_truncate(qwen35_context* ctx, int32_t n_keep) {
  if (!ctx) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_truncate: ctx is NULL");
  clear_error(ctx);
  Status st = guarded("truncate", [&] { return ctx->ctx->truncate(n_keep); });
  return st.ok() ? QWEN35_OK : set_error(st, ctx);
}

int32_t qwen35_context_tokens(const qwen35_context* ctx, qwen35_token* out, int32_t max) {
  if (!ctx) return 0;
  const auto& t = ctx->ctx->tokens();
  if (out)
    for (int32_t i = 0; i < max && size_t(i) < t.size(); ++i) out[i] = t[size_t(i)];
  return int32_t(t.size());
}

void qwen35_context_abort(qwen35_context* ctx) {
  if (ctx) ctx->ctx->abort.store(true);
}

// The context's state as bytes; a snapshot holds the complete MTP cache.
static Status serialize_state(qwen35_context* ctx, std::vector<uint8_t>* data) {
  return guarded("state save", [&] {
    QWEN35_TRY(ctx->ctx->mtp_flush());
    return ctx->ctx->state_save(data);
  });
}

uint64_t qwen35_context_state_size(qwen35_context* ctx) {
  if (!ctx) return 0;
  uint64_t n = 0;
  Status st = guarded("state size", [&] {
    QWEN35_TRY(ctx->ctx->mtp_flush());  // a snapshot holds the complete MTP cache
    n = ctx->ctx->state_size();
    return Status::Ok();
  });
  return st.ok() ? n : 0;
}

qwen35_status qwen35_context_state_save(qwen35_context* ctx, void* buf, uint64_t buf_size, uint64_t* written) {
  if (written) *written = 0;
  if (!ctx || !buf) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_state_save: NULL argument");
  clear_error(ctx);
  std::vector<uint8_t> data;
  Status st = serialize_state(ctx, &data);
  if (!st.ok()) return set_error(st, ctx);
  if (data.size() > buf_size)
    return set_error(Error(QWEN35_ERR_BUFFER_TOO_SMALL, "state needs {} bytes, buffer has {}", data.size(), buf_size),
                     ctx);
  std::memcpy(buf, data.data(), data.size());
  if (written) *written = data.size();
  return QWEN35_OK;
}

qwen35_status qwen35_context_state_load(qwen35_context* ctx, const void* buf, uint64_t size) {
  if (!ctx || !buf) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_state_load: NULL argument");
  clear_error(ctx);
  Status st = guarded("state load", [&] { return ctx->ctx->state_load(static_cast<const uint8_t*>(buf), size); });
  return st.ok() ? QWEN35_OK : set_error(st, ctx);
}

qwen35_status qwen35_context_state_save_file(qwen35_context* ctx, const char* path) {
  if (!ctx || !path) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_state_save_file: NULL argument");
  clear_error(ctx);
  std::vector<uint8_t> data;
  Status st = serialize_state(ctx, &data);
  if (!st.ok()) return set_error(st, ctx);
  FILE* f = std::fopen(path, "wb");
  if (!f) return set_error(Error(QWEN35_ERR_IO, "cannot open '{}' for writing: {}", path, std::strerror(errno)), ctx);
  const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) return set_error(Error(QWEN35_ERR_IO, "cannot write '{}'", path), ctx);
  return QWEN35_OK;
}

qwen35_status qwen35_context_state_load_file(qwen35_context* ctx, const char* path) {
  if (!ctx || !path) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_state_load_file: NULL argument");
  clear_error(ctx);
  FILE* f = std::fopen(path, "rb");
  if (!f) return set_error(Error(QWEN35_ERR_IO, "cannot open '{}': {}", path, std::strerror(errno)), ctx);
  Status st = guarded("state load", [&] {
    std::vector<uint8_t> data;
    uint8_t chunk[1 << 16];
    size_t k;
    while ((k = std::fread(chunk, 1, sizeof chunk, f)) > 0) data.insert(data.end(), chunk, chunk + k);
    if (std::ferror(f)) return Error(QWEN35_ERR_IO, "read error on '{}'", path);
    return ctx->ctx->state_load(data.data(), data.size());
  });
  std::fclose(f);
  return st.ok() ? QWEN35_OK : set_error(st, ctx);
}

}  // extern "C"
