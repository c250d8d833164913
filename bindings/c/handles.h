// Definitions of the opaque C handles and the error plumbing shared by the
// C API implementation files.
#pragma once

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "context.h"
#include "model.h"
#include "qwen35/qwen35.h"
#include "status.h"
#include "vision/vision.h"

struct qwen35_model {
  std::unique_ptr<qwen35::Model> m;
  std::string desc;
  std::vector<std::string> meta_keys;  // NUL-terminated metadata keys, file order
};

struct qwen35_context {
  qwen35_model* model = nullptr;
  std::unique_ptr<qwen35::Context> ctx;
  std::string errmsg;
};

// Vision handles (bindings/c/qwen35_vision.cpp). An image embedding is
// immutable after qwen35_image_encode and may be shared by contexts.
struct qwen35_mmproj {
  std::unique_ptr<qwen35::vision::Mmproj> mp;
  qwen35::vision::VisionOptions opt;  // profile switches picked at load
  int n_threads = 1;
};

struct qwen35_image {
  qwen35::vision::Image img;
};

struct qwen35_image_embed {
  qwen35::vision::ImageEmbed e;
};

namespace qwen35 {

// Record a failure for qwen35_errmsg() (and the context's errmsg when given)
// and return its code.
qwen35_status set_error(const Status& st, qwen35_context* ctx = nullptr);
inline qwen35_status set_error(qwen35_status code, const std::string& msg, qwen35_context* ctx = nullptr) {
  return set_error(Status(code, msg), ctx);
}
// Clear the context's message at the start of a call.
inline void clear_error(qwen35_context* ctx) {
  if (ctx) ctx->errmsg.clear();
}

// Run f() (returning Status) and turn escaping exceptions into a status:
// nothing escapes the C API.
template <typename F>
Status guarded(const char* what, F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "{}: out of memory", what);
  } catch (const std::exception& e) {
    return Error(QWEN35_ERR_BACKEND, "{}: {}", what, e.what());
  } catch (...) {
    return Error(QWEN35_ERR_BACKEND, "{}: unexpected failure", what);
  }
}

// The value of a C enum argument or field as an int. A C caller may store any
// int there, and loading an out-of-range value as the enum type is undefined
// in C++: read the bits instead, then validate.
template <typename E>
int raw_enum(const E& e) {
  static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
  int v;
  std::memcpy(&v, &e, sizeof v);
  return v;
}

// Copy a struct that starts with struct_size: take min(given, ours) bytes
// over the defaults so older callers keep working.
template <typename T>
T read_params(const T* p, T defaults) {
  if (!p) return defaults;
  size_t n = p->struct_size;
  if (n == 0 || n > sizeof(T)) n = sizeof(T);
  std::memcpy(static_cast<void*>(&defaults), p, n);
  defaults.struct_size = sizeof(T);
  return defaults;
}

}  // namespace qwen35
