// The _qwen35 extension: errors, version, model and tokenizer.
//
// Every call that can take a while (loading, tokenizing long text, decoding,
// generating, encoding images) runs with the GIL released; failures become
// Python exceptions carrying the library's message.
#include <pybind11/stl.h>

#include <cstdio>
#include <vector>

#include "common.h"

namespace qwen35py {

namespace {

// Exception classes, indexed by -status (0 = the base class qwen35.Error).
constexpr int kNumStatus = 11;
PyObject* g_errors[kNumStatus] = {};

PyObject* new_error(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  std::string full = std::string("qwen35.") + name;
  PyObject* cls = PyErr_NewExceptionWithDoc(full.c_str(), doc, bases, nullptr);
  if (!cls) throw py::error_already_set();
  m.add_object(name, py::handle(cls));   // the module keeps the reference
  return cls;
}

PyObject* bases(std::initializer_list<PyObject*> types) {
  PyObject* t = PyTuple_New(Py_ssize_t(types.size()));
  Py_ssize_t i = 0;
  for (PyObject* b : types) {
    Py_INCREF(b);
    PyTuple_SET_ITEM(t, i++, b);
  }
  return t;
}

void log_to_stderr(qwen35_log_level level, const char* message, void* user_data) {
  // user_data carries the most verbose level to print. stderr is what
  // llama-cpp-python's verbose mode writes to; no GIL is needed.
  const intptr_t max_level = reinterpret_cast<intptr_t>(user_data);
  if (intptr_t(level) > max_level) return;
  static const char* names[] = {"error", "warn", "info", "debug"};
  std::fprintf(stderr, "qwen35 %s: %s\n", names[int(level) & 3], message);
}

}  // namespace

void raise_status(qwen35_status status, const std::string& message) {
  int idx = -int(status);
  PyObject* cls = (idx > 0 && idx < kNumStatus && g_errors[idx]) ? g_errors[idx] : g_errors[0];
  std::string text = message.empty() ? std::string(qwen35_status_str(status)) : message;
  PyObject* msg = PyUnicode_DecodeUTF8(text.data(), Py_ssize_t(text.size()), "replace");
  if (!msg) throw py::error_already_set();
  py::object exc = py::handle(cls)(py::reinterpret_steal<py::str>(msg));
  exc.attr("status") = int(status);
  exc.attr("status_name") = qwen35_status_str(status);
  PyErr_SetObject(cls, exc.ptr());
  throw py::error_already_set();
}

void raise_last(qwen35_status status) { raise_status(status, qwen35_errmsg()); }

void raise_state(const std::string& message) { raise_status(QWEN35_ERR_STATE, message); }

void register_errors(py::module_& m) {
  PyObject* base = new_error(m, "Error", bases({PyExc_RuntimeError}),
                             "Base class of qwen35 errors; .status is the qwen35_status code.");
  g_errors[0] = base;
  auto sub = [&](qwen35_status st, const char* name, PyObject* builtin, const char* doc) {
    PyObject* b = builtin ? bases({base, builtin}) : bases({base});
    g_errors[-int(st)] = new_error(m, name, b, doc);
    Py_DECREF(b);
  };
  sub(QWEN35_ERR_INVALID_ARG, "InvalidArgumentError", PyExc_ValueError, "An argument is invalid.");
  {
    // A missing or unreadable file: an OSError, and a ValueError as well
    // because llama-cpp-python raises ValueError for a bad model path.
    PyObject* b = bases({base, PyExc_OSError, PyExc_ValueError});
    g_errors[-int(QWEN35_ERR_IO)] = new_error(m, "FileError", b, "A file cannot be opened, read or written.");
    Py_DECREF(b);
  }
  sub(QWEN35_ERR_FORMAT, "FormatError", PyExc_ValueError, "A file (GGUF, image, state) is corrupt or truncated.");
  sub(QWEN35_ERR_UNSUPPORTED, "UnsupportedError", PyExc_ValueError, "Valid input that this library does not run.");
  sub(QWEN35_ERR_OUT_OF_MEMORY, "OutOfMemoryError", PyExc_MemoryError, "Memory could not be allocated.");
  sub(QWEN35_ERR_CONTEXT_FULL, "ContextFullError", PyExc_ValueError, "The request does not fit in n_ctx.");
  sub(QWEN35_ERR_CANCELLED, "CancelledError", nullptr, "The work was cancelled.");
  sub(QWEN35_ERR_BACKEND, "BackendError", nullptr, "The compute device failed.");
  sub(QWEN35_ERR_STATE, "StateError", nullptr, "The call is not valid in the current state.");
  g_errors[-int(QWEN35_ERR_BUFFER_TOO_SMALL)] = base;
}

namespace {

std::string meta_value(const qwen35_model* m, const char* key, bool* found) {
  char small[256];
  int32_t n = qwen35_model_meta(m, key, small, sizeof small);
  *found = n >= 0;
  if (n < 0) return {};
  if (size_t(n) < sizeof small) return std::string(small, size_t(n));
  std::string big(size_t(n) + 1, '\0');
  qwen35_model_meta(m, key, big.data(), big.size());
  big.resize(size_t(n));
  return big;
}

std::vector<qwen35_token> tokenize(const qwen35_model* m, const std::string& text, bool add_special,
                                   bool parse_special) {
  // Byte-level BPE never makes more tokens than bytes (+ a BOS).
  std::vector<qwen35_token> out(text.size() + 2);
  int32_t n = qwen35_tokenize(m, text.data(), text.size(), out.data(), int32_t(out.size()), add_special,
                              parse_special);
  if (n < 0) {
    out.resize(size_t(-int64_t(n)));
    n = qwen35_tokenize(m, text.data(), text.size(), out.data(), int32_t(out.size()), add_special, parse_special);
  }
  if (n < 0) raise_last(QWEN35_ERR_INVALID_ARG);
  out.resize(size_t(n));
  return out;
}

py::bytes token_to_piece(const qwen35_model* m, qwen35_token tok, bool render_special) {
  if (tok < 0 || tok >= qwen35_model_n_vocab(m))
    raise_status(QWEN35_ERR_INVALID_ARG, "token id " + std::to_string(tok) + " is out of range [0, " +
                                             std::to_string(qwen35_model_n_vocab(m)) + ")");
  char small[64];
  int32_t n = qwen35_token_to_piece(m, tok, small, sizeof small, render_special);
  if (n >= 0) return py::bytes(small, size_t(n));
  std::string big(size_t(-int64_t(n)), '\0');
  n = qwen35_token_to_piece(m, tok, big.data(), int32_t(big.size()), render_special);
  if (n < 0) raise_last(QWEN35_ERR_INVALID_ARG);
  return py::bytes(big.data(), size_t(n));
}

py::bytes detokenize(const qwen35_model* m, const std::vector<qwen35_token>& toks, bool render_special) {
  const int32_t V = qwen35_model_n_vocab(m);
  for (qwen35_token t : toks)
    if (t < 0 || t >= V)
      raise_status(QWEN35_ERR_INVALID_ARG,
                   "token id " + std::to_string(t) + " is out of range [0, " + std::to_string(V) + ")");
  std::string buf(toks.size() * 8 + 16, '\0');
  int32_t n;
  {
    py::gil_scoped_release nogil;
    n = qwen35_detokenize(m, toks.data(), int32_t(toks.size()), buf.data(), int32_t(buf.size()), render_special);
    if (n < 0) {
      buf.assign(size_t(-int64_t(n)), '\0');   // -(needed + 1): room for the NUL
      n = qwen35_detokenize(m, toks.data(), int32_t(toks.size()), buf.data(), int32_t(buf.size()), render_special);
    }
  }
  if (n < 0) raise_last(QWEN35_ERR_INVALID_ARG);
  return py::bytes(buf.data(), size_t(n));
}

// Incremental detokenizer: complete UTF-8 only, split characters held back.
struct DetokHandle {
  ModelUse model;
  qwen35_detok* d = nullptr;
  explicit DetokHandle(ModelPtr m) : model(std::move(m)) {}
  ~DetokHandle() { qwen35_detok_free(d); }
};

}  // namespace

void bind_model(py::module_& m) {
  m.def("version", &qwen35_version, "Version of the linked qwen35 library.");
  m.def("version_number", &qwen35_version_number);
  m.def("status_str", [](int s) { return std::string(qwen35_status_str(qwen35_status(s))); });
  m.def(
      "cuda_memory_info",
      [](int device_index) {
        uint64_t free_bytes = 0, total_bytes = 0;
        const qwen35_status st = qwen35_cuda_memory_info(device_index, &free_bytes, &total_bytes);
        if (st != QWEN35_OK) raise_last(st);
        return py::make_tuple(free_bytes, total_bytes);
      },
      py::arg("device_index") = 0,
      "(free, total) bytes of a CUDA device's memory (qwen35_cuda_memory_info), for sizing n_ctx; raises "
      "without a usable device or CUDA build.");

  py::class_<ModelHandle, ModelPtr>(m, "Model", "A loaded qwen35 GGUF model (qwen35_model).")
      .def(py::init([](const std::string& path, bool use_mmap, int device, int device_index, int n_gpu_layers,
                       int log_level) {
             qwen35_model_params p = qwen35_model_default_params();
             p.use_mmap = use_mmap;
             p.device = qwen35_device(device);
             p.device_index = device_index;
             p.n_gpu_layers = n_gpu_layers;
             if (log_level >= 0) {
               p.log_callback = log_to_stderr;
               p.log_user_data = reinterpret_cast<void*>(intptr_t(log_level));
             }
             auto h = std::make_shared<ModelHandle>();
             qwen35_status st;
             {
               py::gil_scoped_release nogil;
               st = qwen35_model_load(path.c_str(), &p, &h->model);
             }
             if (st != QWEN35_OK) raise_last(st);
             return h;
           }),
           py::arg("path"), py::arg("use_mmap") = true, py::arg("device") = int(QWEN35_DEVICE_AUTO),
           py::arg("device_index") = 0, py::arg("n_gpu_layers") = -1, py::arg("log_level") = -1,
           "Load a model. log_level: -1 silent, else the most verbose level printed to stderr "
           "(0 error, 1 warn, 2 info, 3 debug).")
      .def("close",
           [](ModelHandle& h) {
             if (h.users.load() > 0) raise_state("the model is still used by a context, sampler or projector");
             qwen35_model_free(h.model);
             h.model = nullptr;
           })
      .def_property_readonly("closed", [](const ModelHandle& h) { return h.model == nullptr; })
      .def_property_readonly("n_vocab", [](const ModelHandle& h) { return qwen35_model_n_vocab(h.get()); })
      .def_property_readonly("n_ctx_train", [](const ModelHandle& h) { return qwen35_model_n_ctx_train(h.get()); })
      .def_property_readonly("n_embd", [](const ModelHandle& h) { return qwen35_model_n_embd(h.get()); })
      .def_property_readonly("n_layer", [](const ModelHandle& h) { return qwen35_model_n_layer(h.get()); })
      .def_property_readonly("has_mtp", [](const ModelHandle& h) { return qwen35_model_has_mtp(h.get()); })
      .def_property_readonly("device", [](const ModelHandle& h) { return int(qwen35_model_device(h.get())); })
      .def_property_readonly("desc", [](const ModelHandle& h) { return std::string(qwen35_model_desc(h.get())); })
      .def_property_readonly("host_bytes", [](const ModelHandle& h) { return qwen35_model_host_bytes(h.get()); })
      .def_property_readonly("device_bytes", [](const ModelHandle& h) { return qwen35_model_device_bytes(h.get()); })
      .def_property_readonly("file_bytes", [](const ModelHandle& h) { return qwen35_model_file_bytes(h.get()); })
      .def("meta",
           [](const ModelHandle& h, const std::string& key) -> py::object {
             bool found = false;
             std::string v = meta_value(h.get(), key.c_str(), &found);
             if (!found) return py::none();
             return py::str(v);
           },
           py::arg("key"), "Metadata value as text, or None if the key does not exist.")
      .def("meta_keys",
           [](const ModelHandle& h) {
             std::vector<std::string> keys;
             const int32_t n = qwen35_model_meta_count(h.get());
             for (int32_t i = 0; i < n; ++i)
               if (const char* k = qwen35_model_meta_key(h.get(), i)) keys.emplace_back(k);
             return keys;
           })
      .def_property_readonly("token_eos", [](const ModelHandle& h) { return qwen35_token_eos(h.get()); })
      .def_property_readonly("token_bos", [](const ModelHandle& h) { return qwen35_token_bos(h.get()); })
      .def("token_is_eog", [](const ModelHandle& h, qwen35_token t) { return qwen35_token_is_eog(h.get(), t); })
      .def("token_is_control",
           [](const ModelHandle& h, qwen35_token t) { return qwen35_token_is_control(h.get(), t); })
      .def("token_lookup",
           [](const ModelHandle& h, const std::string& text) { return qwen35_token_lookup(h.get(), text.c_str()); })
      .def("tokenize",
           [](const ModelHandle& h, const py::bytes& text, bool add_special, bool parse_special) {
             std::string s = text;   // copy while holding the GIL
             const qwen35_model* mdl = h.get();
             py::gil_scoped_release nogil;
             return tokenize(mdl, s, add_special, parse_special);
           },
           py::arg("text"), py::arg("add_special") = false, py::arg("parse_special") = false)
      .def("token_to_piece",
           [](const ModelHandle& h, qwen35_token t, bool render_special) {
             return token_to_piece(h.get(), t, render_special);
           },
           py::arg("token"), py::arg("render_special") = false)
      .def("detokenize",
           [](const ModelHandle& h, const std::vector<qwen35_token>& toks, bool render_special) {
             return detokenize(h.get(), toks, render_special);
           },
           py::arg("tokens"), py::arg("render_special") = false);

  py::class_<DetokHandle, std::shared_ptr<DetokHandle>>(m, "Detokenizer",
                                                        "Streaming detokenizer (qwen35_detok): complete UTF-8 only.")
      .def(py::init([](const ModelPtr& model, bool render_special) {
             auto h = std::make_shared<DetokHandle>(model);
             qwen35_status st = qwen35_detok_create(model->get(), render_special, &h->d);
             if (st != QWEN35_OK) raise_last(st);
             return h;
           }),
           py::arg("model"), py::arg("render_special") = false)
      .def("push",
           [](DetokHandle& h, qwen35_token t) {
             const int32_t V = qwen35_model_n_vocab(h.model->get());
             if (t < 0 || t >= V)
               raise_status(QWEN35_ERR_INVALID_ARG, "token id " + std::to_string(t) + " is out of range");
             size_t len = 0;
             const char* s = qwen35_detok_push(h.d, t, &len);
             return py::bytes(s ? s : "", s ? len : 0);
           })
      .def("flush", [](DetokHandle& h) {
        size_t len = 0;
        const char* s = qwen35_detok_flush(h.d, &len);
        return py::bytes(s ? s : "", s ? len : 0);
      });
}

}  // namespace qwen35py

PYBIND11_MODULE(_qwen35, m) {
  m.doc() = "Low-level bindings of the qwen35 C API (use the qwen35 package instead).";
  qwen35py::register_errors(m);
  qwen35py::bind_model(m);
  qwen35py::bind_context(m);
  qwen35py::bind_generation(m);
  qwen35py::bind_chat(m);
  qwen35py::bind_vision(m);
  m.attr("DEVICE_AUTO") = int(QWEN35_DEVICE_AUTO);
  m.attr("DEVICE_CPU") = int(QWEN35_DEVICE_CPU);
  m.attr("DEVICE_CUDA") = int(QWEN35_DEVICE_CUDA);
  m.attr("VISION_PREPROCESS_PRESET") = int(QWEN35_VISION_PREPROCESS_PRESET);
  m.attr("VISION_PREPROCESS_REF") = int(QWEN35_VISION_PREPROCESS_REF);
  m.attr("VISION_PREPROCESS_LC") = int(QWEN35_VISION_PREPROCESS_LC);
  m.attr("VISION_POS_INTERP_PRESET") = int(QWEN35_VISION_POS_INTERP_PRESET);
  m.attr("VISION_POS_INTERP_ALIGN_CORNERS") = int(QWEN35_VISION_POS_INTERP_ALIGN_CORNERS);
  m.attr("VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS") = int(QWEN35_VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS);
  m.attr("VISION_GELU_PRESET") = int(QWEN35_VISION_GELU_PRESET);
  m.attr("VISION_GELU_ERF") = int(QWEN35_VISION_GELU_ERF);
  m.attr("VISION_GELU_TANH") = int(QWEN35_VISION_GELU_TANH);
  const std::pair<const char*, qwen35_status> statuses[] = {
      {"OK", QWEN35_OK}, {"ERR_INVALID_ARG", QWEN35_ERR_INVALID_ARG}, {"ERR_IO", QWEN35_ERR_IO},
      {"ERR_FORMAT", QWEN35_ERR_FORMAT}, {"ERR_UNSUPPORTED", QWEN35_ERR_UNSUPPORTED},
      {"ERR_OUT_OF_MEMORY", QWEN35_ERR_OUT_OF_MEMORY}, {"ERR_CONTEXT_FULL", QWEN35_ERR_CONTEXT_FULL},
      {"ERR_CANCELLED", QWEN35_ERR_CANCELLED}, {"ERR_BACKEND", QWEN35_ERR_BACKEND}, {"ERR_STATE", QWEN35_ERR_STATE},
      {"ERR_BUFFER_TOO_SMALL", QWEN35_ERR_BUFFER_TOO_SMALL}};
  for (const auto& s : statuses) m.attr(s.first) = int(s.second);
  m.attr("LOGITS_LAST") = int(QWEN35_LOGITS_LAST);
  m.attr("LOGITS_ALL") = int(QWEN35_LOGITS_ALL);
  m.attr("LOGITS_NONE") = int(QWEN35_LOGITS_NONE);
  m.attr("STOP_NONE") = int(QWEN35_STOP_NONE);
  m.attr("STOP_EOG") = int(QWEN35_STOP_EOG);
  m.attr("STOP_MAX_TOKENS") = int(QWEN35_STOP_MAX_TOKENS);
  m.attr("STOP_STRING") = int(QWEN35_STOP_STRING);
  m.attr("STOP_CANCELLED") = int(QWEN35_STOP_CANCELLED);
  m.attr("STOP_CONTEXT_FULL") = int(QWEN35_STOP_CONTEXT_FULL);
}
