// _qwen35: Context (KV cache and recurrent state, decode, state snapshots)
// and Sampler.
#include <pybind11/stl.h>

#include <vector>

#include "common.h"

namespace qwen35py {

namespace {

// Copy n floats into a bytes object (float32, native order); Python views it
// with memoryview(b).cast("f") or numpy.frombuffer without numpy being needed
// here. None when the library has no such row.
py::object floats(const float* p, int32_t n) {
  if (!p) return py::none();
  return py::bytes(reinterpret_cast<const char*>(p), size_t(n) * sizeof(float));
}

ContextPtr make_context(const ModelPtr& model, int32_t n_ctx, int32_t n_batch, int32_t n_threads, bool use_mtp,
                        bool reference, bool mtp_logits) {
  qwen35_context_params p = qwen35_context_default_params();
  p.n_ctx = n_ctx;
  if (n_batch > 0) p.n_batch = n_batch;
  if (n_threads > 0) p.n_threads = n_threads;
  p.use_mtp = use_mtp;
  p.reference = reference;
  p.mtp_logits = mtp_logits;
  auto h = std::make_shared<ContextHandle>(model);
  qwen35_model* mdl = model->get();
  qwen35_status st;
  {
    py::gil_scoped_release nogil;
    st = qwen35_context_create(mdl, &p, &h->ctx);
  }
  if (st != QWEN35_OK) raise_last(st);
  return h;
}

// Call fn(ctx) with the context claimed and the GIL released; raise on failure.
template <typename Fn>
void run_checked(const ContextPtr& c, Fn fn) {
  ContextClaim claim(c);
  qwen35_context* ctx = claim.ctx();
  qwen35_status st;
  std::string msg;
  {
    py::gil_scoped_release nogil;
    st = fn(ctx);
    if (st != QWEN35_OK) msg = qwen35_errmsg();
  }
  if (st != QWEN35_OK) raise_status(st, msg);
}

SamplerPtr make_sampler(const ModelPtr& model, float temperature, int32_t top_k, float top_p, float min_p,
                        float repeat_penalty, float presence_penalty, float frequency_penalty,
                        int32_t penalty_last_n, bool penalize_prompt, uint64_t seed,
                        const std::vector<std::pair<qwen35_token, float>>& logit_bias) {
  qwen35_sampler_params p = qwen35_sampler_greedy_params();
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.repeat_penalty = repeat_penalty;
  p.presence_penalty = presence_penalty;
  p.frequency_penalty = frequency_penalty;
  p.penalty_last_n = penalty_last_n;
  p.penalize_prompt = penalize_prompt;
  p.seed = seed;
  std::vector<qwen35_logit_bias> bias;
  for (const auto& b : logit_bias) bias.push_back({b.first, b.second});
  p.logit_bias = bias.data();
  p.n_logit_bias = bias.size();
  auto h = std::make_shared<SamplerHandle>(model);
  qwen35_status st = qwen35_sampler_create(model->get(), &p, &h->sampler);
  if (st != QWEN35_OK) raise_last(st);
  return h;
}

py::dict sampler_params_dict(const qwen35_sampler_params& p) {
  py::dict d;
  d["temperature"] = p.temperature;
  d["top_k"] = p.top_k;
  d["top_p"] = p.top_p;
  d["min_p"] = p.min_p;
  d["repeat_penalty"] = p.repeat_penalty;
  d["presence_penalty"] = p.presence_penalty;
  d["frequency_penalty"] = p.frequency_penalty;
  d["penalty_last_n"] = p.penalty_last_n;
  d["penalize_prompt"] = p.penalize_prompt;
  d["seed"] = p.seed;
  return d;
}

}  // namespace

void bind_context(py::module_& m) {
  py::class_<ContextHandle, ContextPtr>(m, "Context", "Conversation state on a model (qwen35_context).")
      .def(py::init(&make_context), py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_batch") = 0,
           py::arg("n_threads") = 0, py::arg("use_mtp") = true, py::arg("reference") = false,
           py::arg("mtp_logits") = false, "n_batch / n_threads 0: library defaults; n_ctx 0: trained context.")
      .def("close",
           [](const ContextPtr& c) {
             if (!c->ctx) return;
             ContextClaim claim(c);
             c->close();
           })
      .def_property_readonly("closed", [](const ContextHandle& c) { return c.ctx == nullptr; })
      .def_property_readonly("n_ctx", [](const ContextHandle& c) { return qwen35_context_n_ctx(c.get()); })
      .def_property_readonly("n_past", [](const ContextHandle& c) { return qwen35_context_n_past(c.get()); })
      .def_property_readonly("memory_bytes",
                             [](const ContextHandle& c) { return qwen35_context_memory_bytes(c.get()); })
      .def_property_readonly("errmsg",
                             [](const ContextHandle& c) { return std::string(qwen35_context_errmsg(c.get())); })
      .def("decode",
           [](const ContextPtr& c, const std::vector<qwen35_token>& toks, int mode) {
             run_checked(c, [&](qwen35_context* ctx) {
               return qwen35_context_decode(ctx, toks.data(), int32_t(toks.size()), qwen35_logits_mode(mode));
             });
           },
           py::arg("tokens"), py::arg("logits") = int(QWEN35_LOGITS_LAST),
           "Append tokens and run the model. logits: 0 last row, 1 all rows, 2 none.")
      .def("logits",
           [](const ContextPtr& c, int32_t i) {
             ContextClaim claim(c);
             const int32_t V = qwen35_model_n_vocab(qwen35_context_model(claim.ctx()));
             return floats(qwen35_context_logits(claim.ctx(), i), V);
           },
           py::arg("i") = -1, "Logits of row i of the last decode as float32 bytes, or None.")
      .def("hidden",
           [](const ContextPtr& c, int32_t i) {
             ContextClaim claim(c);
             const int32_t E = qwen35_model_n_embd(qwen35_context_model(claim.ctx()));
             return floats(qwen35_context_hidden(claim.ctx(), i), E);
           },
           py::arg("i") = -1, "Hidden state (after output_norm) of row i as float32 bytes, or None.")
      .def("reset",
           [](const ContextPtr& c) {
             ContextClaim claim(c);
             qwen35_context_reset(claim.ctx());
           })
      .def("truncate",
           [](const ContextPtr& c, int32_t n_keep) {
             run_checked(c, [&](qwen35_context* ctx) { return qwen35_context_truncate(ctx, n_keep); });
           },
           py::arg("n_keep"))
      .def("tokens",
           [](const ContextPtr& c) {
             ContextClaim claim(c);
             std::vector<qwen35_token> out(size_t(qwen35_context_n_past(claim.ctx())));
             int32_t n = qwen35_context_tokens(claim.ctx(), out.data(), int32_t(out.size()));
             out.resize(size_t(std::max<int32_t>(0, std::min<int32_t>(n, int32_t(out.size())))));
             return out;
           },
           "Tokens held by the context (image rows read as -1).")
      .def("abort", [](const ContextHandle& c) { qwen35_context_abort(c.ctx); },
           "Ask a running decode or generation to stop (any thread).")
      .def("state_size",
           [](const ContextPtr& c) {
             ContextClaim claim(c);
             return qwen35_context_state_size(claim.ctx());
           })
      .def("state_save",
           [](const ContextPtr& c) {
             std::string buf;
             uint64_t written = 0;
             run_checked(c, [&](qwen35_context* ctx) {
               buf.resize(size_t(qwen35_context_state_size(ctx)));
               return qwen35_context_state_save(ctx, buf.data(), buf.size(), &written);
             });
             return py::bytes(buf.data(), size_t(written));
           },
           "Snapshot of the whole conversation state as bytes.")
      .def("state_load",
           [](const ContextPtr& c, const py::bytes& data) {
             std::string buf = data;
             run_checked(c, [&](qwen35_context* ctx) {
               return qwen35_context_state_load(ctx, buf.data(), buf.size());
             });
           },
           py::arg("data"))
      .def("state_save_file",
           [](const ContextPtr& c, const std::string& path) {
             run_checked(c, [&](qwen35_context* ctx) { return qwen35_context_state_save_file(ctx, path.c_str()); });
           },
           py::arg("path"))
      .def("state_load_file",
           [](const ContextPtr& c, const std::string& path) {
             run_checked(c, [&](qwen35_context* ctx) { return qwen35_context_state_load_file(ctx, path.c_str()); });
           },
           py::arg("path"))
      .def("decode_image",
           [](const ContextPtr& c, const EmbedPtr& e) {
             run_checked(c, [&](qwen35_context* ctx) { return qwen35_context_decode_image(ctx, e->embed); });
           },
           py::arg("embed"), "Append an encoded image (vision start, embeddings, vision end).");

  py::class_<SamplerHandle, SamplerPtr>(m, "Sampler", "Token sampler (qwen35_sampler).")
      .def(py::init(&make_sampler), py::arg("model"), py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("repeat_penalty") = 1.0f,
           py::arg("presence_penalty") = 0.0f, py::arg("frequency_penalty") = 0.0f,
           py::arg("penalty_last_n") = -1, py::arg("penalize_prompt") = false, py::arg("seed") = 0x5EEDull,
           py::arg("logit_bias") = std::vector<std::pair<qwen35_token, float>>())
      .def_static("default_params",
                  [](bool thinking) { return sampler_params_dict(qwen35_sampler_default_params(thinking)); },
                  py::arg("thinking"), "The library's recommended settings (Qwen3.5 model card).")
      .def("sample",
           [](const SamplerPtr& s, const ContextPtr& c, int32_t i) {
             SamplerClaim sclaim(s, "sampler");
             ContextClaim claim(c);
             const float* logits = qwen35_context_logits(claim.ctx(), i);
             if (!logits)
               raise_status(QWEN35_ERR_STATE, "row " + std::to_string(i) + " of the last decode has no logits");
             qwen35_token t = qwen35_sampler_sample(s->sampler, logits);
             if (t < 0) raise_last(QWEN35_ERR_INVALID_ARG);
             return t;
           },
           py::arg("ctx"), py::arg("i") = -1, "Pick a token from row i of the context's last logits.")
      .def("accept",
           [](const SamplerPtr& s, qwen35_token t) {
             SamplerClaim claim(s, "sampler");
             qwen35_sampler_accept(s->sampler, t);
           })
      .def("accept_prompt",
           [](const SamplerPtr& s, const std::vector<qwen35_token>& t) {
             SamplerClaim claim(s, "sampler");
             qwen35_sampler_accept_prompt(s->sampler, t.data(), int32_t(t.size()));
           })
      .def("reset",
           [](const SamplerPtr& s, py::object seed) {
             SamplerClaim claim(s, "sampler");
             qwen35_sampler_reset(s->sampler, seed.is_none() ? UINT64_MAX : seed.cast<uint64_t>());
           },
           py::arg("seed") = py::none(), "Clear the history and reseed (None: the seed given at creation).");
}

}  // namespace qwen35py
