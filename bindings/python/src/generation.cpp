// _qwen35: Generation, a qwen35_generate / qwen35_chat_generate call running
// on a worker thread.
//
// The worker never touches Python: the token callback appends to a buffer
// under a mutex, so generation speed does not depend on the GIL. Python reads
// the chunks (streaming) or waits for the end with the GIL released, checking
// for Ctrl-C every 100 ms. Cancelling (breaking out of a stream, Ctrl-C,
// dropping the object) sets a flag the callback returns and calls
// qwen35_context_abort(), so the worker stops within one forward pass.
#include <pybind11/stl.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "chat.h"
#include "common.h"

namespace qwen35py {

namespace {

struct GenerateOptions {
  int32_t max_tokens = -1;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int use_mtp = -1;
};

class Generation {
 public:
  // Plain token generation: optionally keep only the first `keep` rows of the
  // context (prefix reuse), then qwen35_generate(prompt).
  Generation(ContextPtr ctx, SamplerPtr sampler, std::vector<qwen35_token> prompt, int32_t keep,
             GenerateOptions opt, bool stream)
      : ctx_claim_(ctx), sampler_claim_(sampler, "sampler"), ctx_(std::move(ctx)), sampler_(std::move(sampler)),
        prompt_(std::move(prompt)), keep_(keep), opt_(std::move(opt)), stream_(stream) {
    start();
  }
  // Chat generation: qwen35_chat_generate(request).
  Generation(ContextPtr ctx, SamplerPtr sampler, std::unique_ptr<ChatRequest> chat, GenerateOptions opt, bool stream)
      : ctx_claim_(ctx), sampler_claim_(sampler, "sampler"), ctx_(std::move(ctx)), sampler_(std::move(sampler)),
        chat_(std::move(chat)), opt_(std::move(opt)), stream_(stream) {
    start();
  }
  ~Generation() {
    cancel();
    join();
  }
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Next streamed chunk as (token, bytes); token -1 carries text held back
  // until the end. None when the generation is over (raises if it failed).
  // After cancel() the stream ends at once (what was queued is dropped).
  py::object next_chunk() {
    wait_until([this] { return !queue_.empty() || done_ || cancelled_.load(); });
    std::unique_lock<std::mutex> lk(mu_);
    if (!queue_.empty() && !cancelled_.load()) {
      Chunk c = std::move(queue_.front());
      queue_.pop_front();
      lk.unlock();
      return py::make_tuple(c.token, py::bytes(c.text));
    }
    lk.unlock();
    join();
    raise_if_failed();
    return py::none();
  }

  // Wait for the end; returns {"text": bytes, "tokens": [...], stats...}.
  py::dict wait() {
    wait_until([this] { return done_; });
    join();
    raise_if_failed();
    py::dict d;
    d["text"] = py::bytes(text_);
    d["tokens"] = tokens_;
    d["n_prompt"] = stats_.n_prompt;
    d["n_generated"] = stats_.n_generated;
    d["t_prompt_ms"] = stats_.t_prompt_ms;
    d["t_generate_ms"] = stats_.t_generate_ms;
    d["prompt_tokens_per_s"] = stats_.prompt_tokens_per_s;
    d["generate_tokens_per_s"] = stats_.generate_tokens_per_s;
    d["n_drafted"] = stats_.n_drafted;
    d["n_accepted"] = stats_.n_accepted;
    d["n_main_passes"] = stats_.n_main_passes;
    d["stop_reason"] = int(stats_.stop_reason);
    d["n_past"] = n_past_end_;
    return d;
  }

  void cancel() {
    cancelled_.store(true);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!done_) qwen35_context_abort(ctx_->ctx);
    }
    cv_.notify_all();   // a reader waiting in next_chunk() returns at once
  }

  bool done() {
    std::lock_guard<std::mutex> lk(mu_);
    return done_;
  }

 private:
  struct Chunk {
    qwen35_token token;
    std::string text;
  };

  void start() {
    worker_ = std::thread([this] { run(); });
  }

  // Join the worker (once, even if two Python threads wait on this object).
  void join() {
    auto join_once = [this] {
      std::lock_guard<std::mutex> lk(join_mu_);
      if (worker_.joinable()) worker_.join();
    };
    if (PyGILState_Check()) {
      py::gil_scoped_release nogil;
      join_once();
    } else {
      join_once();
    }
  }

  static bool on_token(qwen35_token token, const char* piece, size_t len, void* user_data) {
    auto* g = static_cast<Generation*>(user_data);
    {
      std::lock_guard<std::mutex> lk(g->mu_);
      g->text_.append(piece, len);
      if (token >= 0) g->tokens_.push_back(token);
      if (g->stream_ && (token >= 0 || len > 0)) g->queue_.push_back({token, std::string(piece, len)});
    }
    g->cv_.notify_all();
    return !g->cancelled_.load();
  }

  // The worker thread.
  void run() {
    qwen35_context* ctx = ctx_->ctx;
    qwen35_generate_params p = qwen35_generate_default_params();
    p.max_tokens = opt_.max_tokens;
    std::vector<const char*> stops;
    for (const std::string& s : opt_.stop) stops.push_back(s.c_str());
    p.stop = stops.data();
    p.n_stop = stops.size();
    p.ignore_eos = opt_.ignore_eos;
    p.use_mtp = opt_.use_mtp;
    p.on_token = &Generation::on_token;
    p.user_data = this;

    qwen35_status st = QWEN35_OK;
    if (cancelled_.load()) {
      stats_.stop_reason = QWEN35_STOP_CANCELLED;
    } else if (chat_) {
      st = qwen35_chat_generate(ctx, sampler_->sampler, chat_->messages.data(), chat_->messages.size(),
                                &chat_->params, &p, &stats_);
    } else {
      if (keep_ >= 0) st = qwen35_context_truncate(ctx, keep_);
      if (st == QWEN35_OK)
        st = qwen35_generate(ctx, sampler_->sampler, prompt_.data(), int32_t(prompt_.size()), &p, &stats_);
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      status_ = st;
      if (st != QWEN35_OK) errmsg_ = qwen35_errmsg();   // thread-local: read on this thread
      n_past_end_ = qwen35_context_n_past(ctx);
      ctx_claim_.release();
      sampler_claim_.release();
      // Nothing needs them any more: let a closed Llama free its model.
      ctx_.reset();
      sampler_.reset();
      chat_.reset();
      done_ = true;
    }
    cv_.notify_all();
  }

  // Block (GIL released) until pred() holds under mu_; Ctrl-C cancels the
  // generation, waits for the worker to stop and raises KeyboardInterrupt.
  template <typename Pred>
  void wait_until(Pred pred) {
    for (;;) {
      bool ok;
      {
        py::gil_scoped_release nogil;
        std::unique_lock<std::mutex> lk(mu_);
        ok = cv_.wait_for(lk, std::chrono::milliseconds(100), pred);
      }
      if (ok) return;
      if (PyErr_CheckSignals() != 0) {
        py::error_already_set err;   // fetch the pending KeyboardInterrupt
        cancel();
        join();
        throw err;
      }
    }
  }

  void raise_if_failed() {
    if (status_ != QWEN35_OK) raise_status(status_, errmsg_);
  }

  ContextClaim ctx_claim_;
  SamplerClaim sampler_claim_;
  ContextPtr ctx_;
  SamplerPtr sampler_;
  std::vector<qwen35_token> prompt_;
  int32_t keep_ = -1;
  std::unique_ptr<ChatRequest> chat_;
  GenerateOptions opt_;
  const bool stream_;

  std::thread worker_;
  std::mutex join_mu_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;   // guards everything below until done_
  std::condition_variable cv_;
  std::deque<Chunk> queue_;
  std::string text_;
  std::vector<qwen35_token> tokens_;
  qwen35_generate_stats stats_{};
  qwen35_status status_ = QWEN35_OK;
  std::string errmsg_;
  int32_t n_past_end_ = 0;
  bool done_ = false;
};

GenerateOptions make_options(int32_t max_tokens, std::vector<std::string> stop, bool ignore_eos, int use_mtp) {
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.stop = std::move(stop);
  o.ignore_eos = ignore_eos;
  o.use_mtp = use_mtp;
  return o;
}

}  // namespace

void bind_generation(py::module_& m) {
  py::class_<Generation, std::shared_ptr<Generation>>(
      m, "Generation", "A generation running on a worker thread; read chunks with next_chunk() or wait().")
      .def("next_chunk", &Generation::next_chunk,
           "(token, bytes) for the next streamed piece, or None at the end (raises if generation failed).")
      .def("wait", &Generation::wait, "Wait for the end; dict with text (bytes), tokens and statistics.")
      .def("cancel", &Generation::cancel, "Stop the generation as soon as possible (any thread).")
      .def_property_readonly("done", &Generation::done);

  m.def(
      "generate",
      [](const ContextPtr& ctx, const SamplerPtr& sampler, std::vector<qwen35_token> prompt, int32_t keep,
         int32_t max_tokens, std::vector<std::string> stop, bool ignore_eos, int use_mtp, bool stream) {
        return std::make_shared<Generation>(ctx, sampler, std::move(prompt), keep,
                                            make_options(max_tokens, std::move(stop), ignore_eos, use_mtp), stream);
      },
      py::arg("ctx"), py::arg("sampler"), py::arg("prompt"), py::arg("keep") = -1, py::arg("max_tokens") = -1,
      py::arg("stop") = std::vector<std::string>(), py::arg("ignore_eos") = false, py::arg("use_mtp") = -1,
      py::arg("stream") = false,
      "Start qwen35_generate on a worker thread (after truncating the context to `keep` rows if keep >= 0).");

  m.def(
      "chat_generate",
      [](const ContextPtr& ctx, const SamplerPtr& sampler, const py::list& messages, const py::object& tools_json,
         int enable_thinking, const py::object& template_override, int32_t max_tokens, std::vector<std::string> stop,
         bool ignore_eos, int use_mtp, bool stream) {
        auto req = build_chat_request(messages, tools_json, true, enable_thinking, template_override);
        return std::make_shared<Generation>(ctx, sampler, std::move(req),
                                            make_options(max_tokens, std::move(stop), ignore_eos, use_mtp), stream);
      },
      py::arg("ctx"), py::arg("sampler"), py::arg("messages"), py::arg("tools_json") = py::none(),
      py::arg("enable_thinking") = -1, py::arg("template_override") = py::none(), py::arg("max_tokens") = -1,
      py::arg("stop") = std::vector<std::string>(), py::arg("ignore_eos") = false, py::arg("use_mtp") = -1,
      py::arg("stream") = false, "Start qwen35_chat_generate on a worker thread.");
}

}  // namespace qwen35py
