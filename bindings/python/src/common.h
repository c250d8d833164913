// Shared pieces of the _qwen35 extension: the handle wrappers that own the C
// API objects, and the conversion of qwen35_status codes into Python
// exceptions. The extension talks to the library only through qwen35.h.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <memory>
#include <string>

#include "qwen35/qwen35.h"

namespace py = pybind11;

namespace qwen35py {

// Raise the Python exception that matches `status`, with `message` (the
// library's own text) as its message. Needs the GIL.
[[noreturn]] void raise_status(qwen35_status status, const std::string& message);
// Raise for a failed call using the calling thread's qwen35_errmsg().
[[noreturn]] void raise_last(qwen35_status status);
// Raise a plain state error (closed handle, busy context) without a C call.
[[noreturn]] void raise_state(const std::string& message);
// Create the exception classes on the module (qwen35.Error and subclasses).
void register_errors(py::module_& m);

// A loaded model. Contexts, samplers and projectors keep it alive through a
// shared_ptr, so the Python objects may be dropped in any order; close() is
// refused while any of them still uses it.
struct ModelHandle {
  qwen35_model* model = nullptr;
  std::atomic<int> users{0};
  ~ModelHandle() { qwen35_model_free(model); }
  qwen35_model* get() const {
    if (!model) raise_state("the model is closed");
    return model;
  }
};
using ModelPtr = std::shared_ptr<ModelHandle>;

// Counts one user of a model for as long as it lives.
class ModelUse {
 public:
  explicit ModelUse(ModelPtr m) : m_(std::move(m)) { ++m_->users; }
  ~ModelUse() { --m_->users; }
  ModelUse(const ModelUse&) = delete;
  ModelUse& operator=(const ModelUse&) = delete;
  ModelHandle& operator*() const { return *m_; }
  ModelHandle* operator->() const { return m_.get(); }

 private:
  ModelPtr m_;
};

// A context. The C API allows one thread at a time per context; `busy` is
// taken for every call that uses it (and for the whole of a generation that
// runs on a worker thread), so a second thread gets an exception instead of
// corrupting it. qwen35_context_abort() is the exception and needs no claim.
struct ContextHandle {
  explicit ContextHandle(ModelPtr m) : model(std::make_unique<ModelUse>(std::move(m))) {}
  ~ContextHandle() { qwen35_context_free(ctx); }
  // Free the context and stop counting as a user of the model.
  void close() {
    qwen35_context_free(ctx);
    ctx = nullptr;
    model.reset();
  }
  qwen35_context* ctx = nullptr;
  std::unique_ptr<ModelUse> model;
  std::atomic<bool> busy{false};
  qwen35_context* get() const {
    if (!ctx) raise_state("the context is closed");
    return ctx;
  }
};
using ContextPtr = std::shared_ptr<ContextHandle>;

// Holds `busy` on a context or sampler for its lifetime (or until
// release()); raises StateError when another call holds it.
template <typename H>
class Claim {
 public:
  Claim(std::shared_ptr<H> h, const char* what) : h_(std::move(h)) {
    bool expected = false;
    if (!h_->busy.compare_exchange_strong(expected, true)) {
      h_.reset();
      raise_state(std::string("the ") + what + " is in use by another call (a generation still running?)");
    }
  }
  ~Claim() { release(); }
  Claim(Claim&& o) noexcept : h_(std::move(o.h_)) {}
  Claim(const Claim&) = delete;
  Claim& operator=(const Claim&) = delete;
  void release() {
    if (h_) h_->busy.store(false);
    h_.reset();
  }
  H& handle() const { return *h_; }

 private:
  std::shared_ptr<H> h_;
};

class ContextClaim : public Claim<ContextHandle> {
 public:
  explicit ContextClaim(std::shared_ptr<ContextHandle> c) : Claim(checked(std::move(c)), "context") {}
  qwen35_context* ctx() const { return handle().get(); }

 private:
  static std::shared_ptr<ContextHandle> checked(std::shared_ptr<ContextHandle> c) {
    c->get();   // raises when closed
    return c;
  }
};

struct SamplerHandle {
  explicit SamplerHandle(ModelPtr m) : model(std::move(m)) {}
  ~SamplerHandle() { qwen35_sampler_free(sampler); }
  qwen35_sampler* sampler = nullptr;
  ModelUse model;
  std::atomic<bool> busy{false};
};
using SamplerPtr = std::shared_ptr<SamplerHandle>;
using SamplerClaim = Claim<SamplerHandle>;

// A vision projector; it may have been checked against a model (kept alive).
struct MmprojHandle {
  ~MmprojHandle() { qwen35_mmproj_free(mmproj); }
  qwen35_mmproj* mmproj = nullptr;
  std::unique_ptr<ModelUse> model;
  qwen35_mmproj* get() const {
    if (!mmproj) raise_state("the projector is closed");
    return mmproj;
  }
};
using MmprojPtr = std::shared_ptr<MmprojHandle>;

struct ImageHandle {
  ~ImageHandle() { qwen35_image_free(image); }
  qwen35_image* image = nullptr;
};
using ImagePtr = std::shared_ptr<ImageHandle>;

struct EmbedHandle {
  ~EmbedHandle() { qwen35_image_embed_free(embed); }
  qwen35_image_embed* embed = nullptr;
};
using EmbedPtr = std::shared_ptr<EmbedHandle>;

// Module sections (one per source file).
void bind_model(py::module_& m);
void bind_context(py::module_& m);
void bind_generation(py::module_& m);
void bind_chat(py::module_& m);
void bind_vision(py::module_& m);

}  // namespace qwen35py
