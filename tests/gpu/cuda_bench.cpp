// qwen35-cuda-bench: prefill and decode throughput of one model on one
// device, for tests/gpu/run.sh (a stand-in with qwen35-bench's interface).
//
//   qwen35-cuda-bench -m MODEL [-p 512] [-n 128] [--device cuda|cpu] [--json]
//
// Prefill: one call of p tokens (the best of 3). Decode, greedy, n tokens:
//   backend: the backend's device argmax (one id copied per token)
//   api:     qwen35_context_decode + the host argmax of the copied logits
//   mtp:     the speculative loop of spec §5.5 with one MTP draft (models
//            with an MTP layer), through the context
// --check N: also run an N-token prompt on the CPU backend and report the
// relative difference of the last row's logits (batch and one-token steps).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "context.h"
#include "device_model.h"
#include "model.h"

using namespace qwen35;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int32_t argmax(const float* x, int64_t n) {
  int32_t b = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[b]) b = int32_t(i);
  return b;
}

int usage() {
  std::fprintf(stderr, "usage: qwen35-cuda-bench -m MODEL [-p 512] [-n 128] [--device cuda|cpu] [--json]\n");
  return 2;
}

int fail(const char* what, const Status& st) {
  std::fprintf(stderr, "qwen35-cuda-bench: %s: %s\n", what, st.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, device = "cuda";
  int p = 512, n = 128, check = 0;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m" && i + 1 < argc) path = argv[++i];
    else if (a == "-p" && i + 1 < argc) p = std::atoi(argv[++i]);
    else if (a == "-n" && i + 1 < argc) n = std::atoi(argv[++i]);
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--json") json = true;
    else if (a == "--check" && i + 1 < argc) check = std::atoi(argv[++i]);
    else return usage();
  }
  if (path.empty() || p < 1 || n < 1) return usage();

  double t0 = now_s();
  std::unique_ptr<Model> model;
  Status st = LoadModel(path, {}, {}, &model);
  if (!st.ok()) return fail("loading", st);
  const double t_load = now_s() - t0;
  t0 = now_s();
  if (device == "cuda") {
    st = UploadModelToCuda(*model, 0, true);
    if (!st.ok()) return fail("uploading", st);
  }
  const double t_upload = now_s() - t0;
  const int V = model->hp.n_vocab;
  std::vector<int32_t> prompt(static_cast<size_t>(p));
  for (int i = 0; i < p; ++i) prompt[size_t(i)] = (i * 7919 + 13) % (V - 1);

  ContextOptions o;
  o.n_ctx = p + 2 * n + 16;
  o.n_batch = std::max(p, 16);
  o.n_threads = 16;
  auto make = [&](bool mtp, std::unique_ptr<Context>* c) {
    ContextOptions oo = o;
    oo.use_mtp = mtp;
    return Context::Create(*model, oo, c);
  };

  // Prefill (after a warm-up that creates the GEMM plans).
  std::unique_ptr<Context> ctx;
  st = make(false, &ctx);
  if (!st.ok()) return fail("creating a context", st);
  st = ctx->decode(prompt.data(), std::min(p, 16), LogitsMode::Last);
  if (!st.ok()) return fail("warm-up", st);
  double t_prefill = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    ctx->reset();
    t0 = now_s();
    st = ctx->decode(prompt.data(), p, LogitsMode::Last);
    if (!st.ok()) return fail("prefill", st);
    t_prefill = std::min(t_prefill, now_s() - t0);
  }

  // Decode with the device argmax, straight on the backend.
  Backend& be = ctx->backend();
  int32_t tok = argmax(ctx->logits(-1), V);
  std::vector<float> hidden(static_cast<size_t>(model->hp.n_embd));
  auto step = [&](int32_t n_past) {
    EvalBatch b;
    int32_t pos[3] = {n_past, n_past, n_past};
    b.n = 1;
    b.tokens = &tok;
    b.pos = pos;
    b.n_past = n_past;
    b.logits_first = 0;
    int32_t next = 0;
    Status s = be.eval_greedy(b, &next);
    tok = next;
    return s;
  };
  // Warm-up steps; their KV rows are overwritten below and the recurrent
  // state is put back.
  if (!(st = be.save_recurrent(1)).ok()) return fail("saving the state", st);
  for (int i = 0; i < 4; ++i)
    if (!(st = step(p + i)).ok()) return fail("decode warm-up", st);
  if (!(st = be.restore_recurrent(1)).ok()) return fail("restoring the state", st);
  tok = argmax(ctx->logits(-1), V);
  t0 = now_s();
  for (int i = 0; i < n; ++i)
    if (!(st = step(p + i)).ok()) return fail("decode", st);
  const double t_decode = now_s() - t0;

  // Decode through the context API (logits copied to the host every token).
  ctx->reset();
  if (!(st = ctx->decode(prompt.data(), p, LogitsMode::Last)).ok()) return fail("prefill", st);
  tok = argmax(ctx->logits(-1), V);
  t0 = now_s();
  for (int i = 0; i < n; ++i) {
    if (!(st = ctx->decode(&tok, 1, LogitsMode::Last)).ok()) return fail("decode (api)", st);
    tok = argmax(ctx->logits(-1), V);
  }
  const double t_decode_api = now_s() - t0;
  ctx.reset();

  // Speculative decoding with the MTP head.
  double t_mtp = 0;
  int drafted = 0, accepted = 0, emitted = 0;
  if (model->mtp) {
    std::unique_ptr<Context> c;
    if (!(st = make(true, &c)).ok()) return fail("creating an MTP context", st);
    if (!(st = c->decode(prompt.data(), p, LogitsMode::Last)).ok()) return fail("prefill (mtp)", st);
    int32_t next = argmax(c->logits(-1), V);
    t0 = now_s();
    while (emitted < n) {
      const float* dl = nullptr;
      if (!(st = c->mtp_draft(next, &dl)).ok()) return fail("draft", st);
      const int32_t d = argmax(dl, V);
      const int32_t pair[2] = {next, d};
      if (!(st = c->decode_with_snapshot(pair, 2, LogitsMode::All)).ok()) return fail("verify", st);
      ++drafted;
      ++emitted;
      const int32_t y0 = argmax(c->logits(0), V);
      if (y0 == d) {
        ++accepted;
        ++emitted;
        next = argmax(c->logits(1), V);
      } else {
        if (!(st = c->rollback_to_snapshot()).ok()) return fail("rollback", st);
        next = y0;
      }
    }
    t_mtp = now_s() - t0;
  }

  // Agreement with the CPU backend on a short prompt.
  double check_batch = -1, check_step = -1;
  int check_argmax = -1;
  if (check > 0 && device == "cuda") {
    std::unique_ptr<Model> cpu_model;
    if (!(st = LoadModel(path, {}, {}, &cpu_model)).ok()) return fail("loading for the check", st);
    ContextOptions oc = o;
    oc.use_mtp = false;
    oc.n_threads = 16;
    std::unique_ptr<Context> cc, gb, gs;
    if (!(st = Context::Create(*cpu_model, oc, &cc)).ok()) return fail("check context", st);
    if (!(st = Context::Create(*model, oc, &gb)).ok()) return fail("check context", st);
    if (!(st = Context::Create(*model, oc, &gs)).ok()) return fail("check context", st);
    if (!(st = cc->decode(prompt.data(), check, LogitsMode::Last)).ok()) return fail("check (cpu)", st);
    if (!(st = gb->decode(prompt.data(), check, LogitsMode::Last)).ok()) return fail("check (gpu)", st);
    for (int i = 0; i < check; ++i)
      if (!(st = gs->decode(prompt.data() + i, 1, LogitsMode::Last)).ok()) return fail("check (gpu steps)", st);
    auto rel = [&](const float* a, const float* b) {
      double num = 0, den = 0;
      for (int i = 0; i < V; ++i) {
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += double(b[i]) * b[i];
      }
      return std::sqrt(num / std::max(den, 1e-30));
    };
    check_batch = rel(gb->logits(-1), cc->logits(-1));
    check_step = rel(gs->logits(-1), cc->logits(-1));
    check_argmax = argmax(gb->logits(-1), V) == argmax(cc->logits(-1), V);
  }

  const cuda::DeviceModel* dm = cuda::device_model(*model);
  const char* layouts = !dm ? "cpu" : dm->fast ? "decode" : "gguf";
  const double pf = p / t_prefill, dc = n / t_decode, dca = n / t_decode_api;
  const double mt = t_mtp > 0 ? emitted / t_mtp : 0;
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"device\": \"%s\", \"prompt_tokens\": %d, \"decode_tokens\": %d, "
        "\"load_s\": %.3f, \"upload_s\": %.3f, \"device_bytes\": %llu, "
        "\"prefill_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.1f, \"decode_api_tokens_per_s\": %.1f, "
        "\"decode_mtp_tokens_per_s\": %.1f, \"mtp_drafted\": %d, \"mtp_accepted\": %d, \"layouts\": \"%s\", "
        "\"check_rel_batch\": %.4g, \"check_rel_step\": %.4g, \"check_argmax_equal\": %d}\n",
        path.c_str(), device.c_str(), p, n, t_load, t_upload, (unsigned long long)model->device_bytes, pf, dc, dca, mt,
        drafted, accepted, layouts, check_batch, check_step, check_argmax);
  } else {
    std::printf("load %.2f s, upload %.2f s, %.0f MiB on the device\n", t_load, t_upload,
                double(model->device_bytes) / (1 << 20));
    std::printf("prefill %d tokens: %.1f tok/s\n", p, pf);
    std::printf("decode %d tokens: %.1f tok/s (device argmax), %.1f tok/s (api)\n", n, dc, dca);
    if (model->mtp) std::printf("decode with MTP: %.1f tok/s, %d/%d drafts accepted\n", mt, accepted, drafted);
  }
  return 0;
}
