// qwen35-cuda-bench: prefill and decode throughput of one model on one
// device, for tests/gpu/run.sh (a stand-in with qwen35-bench's interface).
//
//   qwen35-cuda-bench -m MODEL [-p 512] [-n 128] [--device cuda|cpu] [--json]
//                     [--check N] [--sweep]
//
// Prefill: one call of p tokens (the best of 3). Decode, greedy, n tokens:
//   backend:  the backend's device argmax (one id copied per token)
//   api:      qwen35_context_decode + the host argmax of the copied logits
//   generate: the generation loop (Generate) with a greedy sampler: token
//             ids from the device, no MTP
//   mtp:      the same with MTP speculation (models with an MTP layer)
// --check N: also run an N-token prompt on the CPU backend and report the
// relative difference of the last row's logits (batch and one-token steps).
// --sweep: then time backend decoding for a short list of decode-kernel
// variants (cuda/tuning.h: the default, chained projections, the probes,
// kernel 3 around the default) and print a table (and a "sweep" JSON line);
// --sweep-all: every NVFP4 kernel variant instead.
// --profile prefill|decode: for a profiler started with its collection off
// (ncu --profile-from-start off, nsys --capture-range=cudaProfilerApi):
// after the warm-up, only one prefill of p tokens, or only n decode steps
// after it (graphs captured beforehand), run between cudaProfilerStart and
// cudaProfilerStop; nothing else is measured.
// --trace prefill|decode: the same region, with the kernel timeline recorded
// through CUPTI (real clocks, PDL and graphs as they run) and printed as
// "trace|" lines (tests/gpu/kernel_trace.h); needs a build with CUPTI.
// --profile/--trace api: n decode steps through the context API (logits
// copied to the host, argmax on the host), the kernels and the copies.
// With QWEN35_CUDA_FP4_PERSIST and QWEN35_CUDA_FP4_PERSIST_TIMELINE=1 (steps
// without graphs): `persist-tl` lines after the decode, the persistent
// kernel's timeline probe of the last step (tests/gpu/persist_timeline.h).
// --probe: NVFP4 kernel 3 without the stream's arithmetic (tuning fp4_probe,
// WRONG results), set after the upload: what the rest of each kernel costs.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backend.h"
#include "context.h"
#include "device_model.h"
#include "generate.h"
#include "kernel_trace.h"
#include "model.h"
#include "persist_fp4.h"
#include "persist_timeline.h"
#include "sampler.h"
#include "tuning.h"

using namespace qwen35;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}


int usage() {
  std::fprintf(stderr,
               "usage: qwen35-cuda-bench -m MODEL [-p 512] [-n 128] [--ctx N] [--device cuda|cpu] [--json] [--check N]\n"
               "                         [--sweep | --sweep-all] [--profile prefill|decode|api] [--trace prefill|decode|api]\n"
               "                         [--probe]\n");
  return 2;
}

int fail(const char* what, const Status& st) {
  std::fprintf(stderr, "qwen35-cuda-bench: %s: %s\n", what, st.message().c_str());
  return 1;
}

// Greedy decoding of n tokens after the prompt through Backend::eval_greedy
// (one id per token copied back), in tokens per second.
Status backend_decode_rate(const Model& model, const ContextOptions& o, const std::vector<int32_t>& prompt, int n,
                           double* rate, std::vector<int32_t>* tokens) {
  ContextOptions oo = o;
  oo.use_mtp = false;
  std::unique_ptr<Context> ctx;
  QWEN35_TRY(Context::Create(model, oo, &ctx));
  const int32_t p = int32_t(prompt.size());
  QWEN35_TRY(ctx->decode_argmax(prompt.data(), p, LogitsMode::Last));
  int32_t tok = ctx->argmax(-1);
  Backend& be = ctx->backend();
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
  QWEN35_TRY(be.save_recurrent(1));
  for (int i = 0; i < 4; ++i) QWEN35_TRY(step(p + i));  // graph capture
  QWEN35_TRY(be.restore_recurrent(1));
  tok = ctx->argmax(-1);
  tokens->clear();
  tokens->reserve(size_t(n));
  const double t0 = now_s();
  for (int i = 0; i < n; ++i) {
    QWEN35_TRY(step(p + i));
    tokens->push_back(tok);
  }
  *rate = n / (now_s() - t0);
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, device = "cuda", profile;
  int p = 512, n = 128, check = 0, n_ctx = 0;
  bool json = false, sweep = false, sweep_all = false, trace = false, probe = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m" && i + 1 < argc) path = argv[++i];
    else if (a == "-p" && i + 1 < argc) p = std::atoi(argv[++i]);
    else if (a == "-n" && i + 1 < argc) n = std::atoi(argv[++i]);
    else if (a == "--ctx" && i + 1 < argc) n_ctx = std::atoi(argv[++i]);
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--json") json = true;
    else if (a == "--check" && i + 1 < argc) check = std::atoi(argv[++i]);
    else if (a == "--sweep") sweep = true;
    else if (a == "--probe") probe = true;
    else if (a == "--sweep-all") sweep = sweep_all = true;
    else if (a == "--profile" && i + 1 < argc) profile = argv[++i];
    else if (a == "--trace" && i + 1 < argc) profile = argv[++i], trace = true;
    else return usage();
  }
  if (path.empty() || p < 1 || n < 1) return usage();
  if (!profile.empty() && profile != "prefill" && profile != "decode" && profile != "api") return usage();

  double t0 = now_s();
  std::unique_ptr<Model> model;
  Status st = LoadModel(path, {}, {}, &model);
  if (!st.ok()) return fail("loading", st);
  const double t_load = now_s() - t0;
  t0 = now_s();
  if (device == "cuda") {
    st = UploadModelToCuda(*model, 0, true);
    if (!st.ok()) return fail("uploading", st);
    if (probe) {  // after the upload's self-check, which the wrong results would fail
      cuda::DecodeTuning t = cuda::decode_tuning();
      t.fp4_probe = 1;
      cuda::set_decode_tuning(t);
    }
  }
  const double t_upload = now_s() - t0;
  const int V = model->hp.n_vocab;
  std::vector<int32_t> prompt(static_cast<size_t>(p));
  for (int i = 0; i < p; ++i) prompt[size_t(i)] = (i * 7919 + 13) % (V - 1);

  ContextOptions o;
  // The context's size sets decode attention's key splits (one per 64
  // positions of capacity, at most 32): --ctx gives a user's larger one.
  o.n_ctx = std::max(n_ctx, p + 2 * n + 16);
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
  // The measured region of --profile / --trace.
  std::string why;
  auto region_start = [&] {
    if (trace && !test::trace_start(&why)) return false;
    cudaProfilerStart();
    return true;
  };
  auto region_stop = [&](int steps) {
    cudaProfilerStop();
    if (trace) test::trace_report(test::trace_stop(), steps, stdout);
  };
  if (profile == "prefill") {
    ctx->reset();
    if (!region_start()) return fail("tracing", Error(QWEN35_ERR_UNSUPPORTED, "{}", why));
    st = ctx->decode(prompt.data(), p, LogitsMode::Last);
    region_stop(1);
    if (!st.ok()) return fail("prefill", st);
    std::printf("profiled one prefill of %d tokens\n", p);
    return 0;
  }
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
  int32_t tok = argmax_logits(ctx->logits(-1), V);
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
  tok = argmax_logits(ctx->logits(-1), V);
  if (profile == "decode") {
    if (!region_start()) return fail("tracing", Error(QWEN35_ERR_UNSUPPORTED, "{}", why));
    for (int i = 0; i < n && st.ok(); ++i) st = step(p + i);
    region_stop(n);
    if (!st.ok()) return fail("decode", st);
    std::printf("profiled %d decode steps after a prefill of %d tokens\n", n, p);
    return 0;
  }
  std::vector<int32_t> dev_tokens, api_tokens;  // the two greedy loops' tokens: equal
  dev_tokens.reserve(size_t(n));
  t0 = now_s();
  for (int i = 0; i < n; ++i) {
    if (!(st = step(p + i)).ok()) return fail("decode", st);
    dev_tokens.push_back(tok);
  }
  const double t_decode = now_s() - t0;
  // The persistent kernel's timeline probe of the last step
  // (QWEN35_CUDA_FP4_PERSIST_TIMELINE=1 with QWEN35_CUDA_FP4_PERSIST: steps without graphs).
  if (cuda::decode_tuning().fp4_persist_timeline && cuda::decode_tuning().fp4_persist)
    test::print_persist_timeline(cuda::persist_timeline_last(), "decode step");

  // Decode through the context API (logits copied to the host every token).
  ctx->reset();
  if (!(st = ctx->decode(prompt.data(), p, LogitsMode::Last)).ok()) return fail("prefill", st);
  tok = argmax_logits(ctx->logits(-1), V);
  const bool trace_api = profile == "api";
  if (trace_api && !region_start()) return fail("tracing", Error(QWEN35_ERR_UNSUPPORTED, "{}", why));
  t0 = now_s();
  for (int i = 0; i < n; ++i) {
    if (!(st = ctx->decode(&tok, 1, LogitsMode::Last)).ok()) return fail("decode (api)", st);
    tok = argmax_logits(ctx->logits(-1), V);
    api_tokens.push_back(tok);
  }
  // Greedy tokens of the backend's device argmax (the argmax kernel, or the
  // LM head's epilogue) against the host's argmax of the same logits.
  const int greedy_equal = dev_tokens == api_tokens ? 1 : 0;
  const double t_decode_api = now_s() - t0;
  if (trace_api) {
    region_stop(n);
    std::printf("profiled %d decode steps through the context API (logits to the host, host argmax) after a "
                "prefill of %d tokens: %.1f tok/s while traced\n",
                n, p, n / t_decode_api);
    return 0;
  }
  ctx.reset();

  // The generation loop with a greedy sampler (ids from the device), with
  // and without MTP speculation.
  auto generate = [&](bool mtp, GenerateStats* gs, const SamplerOptions& so = SamplerOptions(),
                      int max_tokens = 0) -> Status {
    std::unique_ptr<Context> c;
    QWEN35_TRY(make(mtp, &c));
    Sampler sampler(V, so);
    GenerateOptions go;
    go.max_tokens = max_tokens > 0 ? max_tokens : n;
    go.ignore_eos = true;
    go.use_mtp = mtp;
    // A short warm-up generation (graph capture), then the measured one.
    GenerateOptions warm = go;
    warm.max_tokens = 4;
    QWEN35_TRY(Generate(*c, sampler, prompt, warm, gs));
    c->reset();
    return Generate(*c, sampler, prompt, go, gs);
  };
  GenerateStats gen{}, mtp_stats{};
  if (!(st = generate(false, &gen)).ok()) return fail("generate", st);
  // Sampling with Qwen3.5's recommended settings (non-thinking: temperature
  // 0.7, top-k 20, top-p 0.8, presence penalty 1.5): candidates selected on
  // the device, and (QWEN35_TOPK_CANDIDATES=0) from rows copied to the host.
  SamplerOptions rec;
  rec.temperature = 0.7f;
  rec.top_k = 20;
  rec.top_p = 0.8f;
  rec.presence_penalty = 1.5f;
  rec.seed = 1;
  // Sampled generation with candidates from the backend, then from rows
  // copied to the host.
  auto sampled_ab = [&](const SamplerOptions& so, GenerateStats* dev, GenerateStats* rows, int max_tokens = 0) -> Status {
    QWEN35_TRY(generate(false, dev, so, max_tokens));
    setenv("QWEN35_TOPK_CANDIDATES", "0", 1);
    const Status r = generate(false, rows, so, max_tokens);
    unsetenv("QWEN35_TOPK_CANDIDATES");
    return r;
  };
  GenerateStats sampled{}, sampled_rows{};
  if (!(st = sampled_ab(rec, &sampled, &sampled_rows)).ok()) return fail("generate (sampled)", st);
  // A sampler without top-k (temperature 1.0, top-p 0.95): the best 1,024
  // candidates and the softmax normalizer from the device, or rows. At most
  // 32 tokens: on the synthetic file's flat logits most draws go past the
  // candidates and each such step ranks a whole row on the host (~40 ms).
  SamplerOptions nok;
  nok.temperature = 1.0f;
  nok.top_p = 0.95f;
  nok.seed = 1;
  GenerateStats full{}, full_rows{};
  if (!(st = sampled_ab(nok, &full, &full_rows, std::min(n, 32))).ok()) return fail("generate (no top-k)", st);
  auto rate = [](const GenerateStats& g) { return g.t_generate_ms > 0 ? g.n_generated / (g.t_generate_ms / 1e3) : 0.0; };
  double t_mtp = 0;
  int drafted = 0, accepted = 0, emitted = 0;
  if (model->mtp) {
    if (!(st = generate(true, &mtp_stats)).ok()) return fail("generate (mtp)", st);
    t_mtp = mtp_stats.t_generate_ms / 1e3;
    drafted = mtp_stats.n_drafted;
    accepted = mtp_stats.n_accepted;
    emitted = mtp_stats.n_generated;
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
    ContextOptions oref = oc;
    oref.reference = true;  // the oracle: float activations, exact dequantization
    if (!(st = Context::Create(*cpu_model, oref, &cc)).ok()) return fail("check context", st);
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
    check_argmax = argmax_logits(gb->logits(-1), V) == argmax_logits(cc->logits(-1), V);
  }

  // Decode-kernel variants: backend decoding (device argmax) per tuning.
  // The Q6_K layout is chosen at upload, so its variants reload the model.
  if (sweep && device == "cuda") {
    const cuda::DecodeTuning base = cuda::decode_tuning();
    std::vector<cuda::DecodeTuning> variants;
    cuda::DecodeTuning t = base;
    if (sweep_all) {
      t.fp4_kernel = 1;
      for (int q6k : {1, 2}) {
        t.q6k_kernel = q6k;
        variants.push_back(t);
      }
      t.fp4_kernel = 2;
      t.q6k_kernel = 2;
      for (int warps : {4, 8})
        for (int bps : {2, 4, 8, 16})
          for (int depth : {4, 8, 16}) {
            t.fp4_warps = warps;
            t.fp4_blocks_per_sm = bps;
            t.fp4_depth = depth;
            variants.push_back(t);
          }
      t.fp4_kernel = 3;
      t.fp4_depth = base.fp4_depth;
      for (int cluster : {0, 1})
        for (int lean : {0, 1})
          for (int bps : {1, 2, 3, 4, 5, 6, 8})
            for (int stages : {2, 4, 8}) {
              if (stages == 8 && lean) continue;
              t.fp4_cluster = cluster;
              t.fp4_lean = lean;
              t.fp4_blocks_per_sm = bps;
              t.fp4_stages = stages;
              variants.push_back(t);
            }
    } else {
      // The default first, then chained projections (chain_fp4.h: each FFN;
      // each layer's tail; the tail with the delta rule in front; also with
      // the attention in front, in one launch; all slower than separate
      // launches on the H100, run 14), the layer chains with full waits,
      // and kernel 3's timing probes (wrong results): without the stream's
      // arithmetic, without the activation load, without the split-K
      // combine and stores, without all three (what is left: the weight
      // traffic and the launches).
      variants.push_back(base);
      // One-row steps as persistent launches (persist_fp4.h; not measured
      // yet): layer tails, then runs of delta-net layers, then with the
      // attention too, at the default poll interval, then the whole step's
      // layers in one launch (its stages in a table in device memory); runs
      // of delta-net layers also without sleeps and at 512 ns, the step in
      // one launch at 256 ns (up to ~1,500 warps poll one stage's counter,
      // the line the stage's tiles are counted on); the step in one launch
      // with its stages waiting by column slice.
      for (auto [persist, poll] : {std::pair{1, 64}, std::pair{2, 64}, std::pair{3, 64}, std::pair{4, 64},
                                   std::pair{2, 0}, std::pair{2, 512}, std::pair{4, 256}}) {
        t = base;
        t.fp4_persist = persist;
        t.fp4_chain_poll_ns = poll;
        variants.push_back(t);
      }
      t = base;
      t.fp4_persist = 4;
      t.fp4_persist_slices = 1;
      variants.push_back(t);
      for (int chain : {1, 2, 3, 4}) {
        t = base;
        t.fp4_chain = chain;
        variants.push_back(t);
      }
      for (int chain : {2, 4}) {
        t = base;
        t.fp4_chain = chain;
        t.fp4_chain_early = 0;
        variants.push_back(t);
      }
      // (The chains' waiters polling less often: QWEN35_CUDA_FP4_CHAIN_POLL_NS,
      // left out for the persistent tails' rows above.)
      for (int probe : {cuda::kFp4ProbeNoMath, cuda::kFp4ProbeNoX, cuda::kFp4ProbeNoCombine,
                        cuda::kFp4ProbeNoMath | cuda::kFp4ProbeNoX | cuda::kFp4ProbeNoCombine}) {
        t = base;
        t.fp4_probe = probe;
        variants.push_back(t);
      }
      t = base;
      t.fp4_cluster = 0;
      variants.push_back(t);
      // Kernel 2's fastest variant of the H100 sweep of 2026-11-26 (run 2).
      t = base;
      t.fp4_kernel = 2;
      t.fp4_warps = 4;
      t.fp4_blocks_per_sm = 4;
      t.fp4_depth = 4;
      variants.push_back(t);
      // Kernel 3 around the default: block counts, 2 stages, lean mode.
      // (Measured slower or no faster in runs 9-13 and left out here: 8
      // stages, the late PDL trigger, the L2 prefetch of the next weights,
      // the persistent Q6_K head; --sweep-all and the QWEN35_CUDA_* switches
      // still reach them.)
      for (auto [bps, stages, lean] : {std::tuple{2, 4, 0}, std::tuple{6, 4, 0}, std::tuple{4, 2, 0}, std::tuple{4, 2, 1}}) {
        t = base;
        t.fp4_blocks_per_sm = bps;
        t.fp4_stages = stages;
        t.fp4_lean = lean;
        variants.push_back(t);
      }
      // The activation rows into L1 before kernel 3's slice load and row
      // norms (one wait for L2 instead of two; not measured yet).
      t = base;
      t.fp4_x_l1 = 1;
      variants.push_back(t);
      t = base;
      t.delta_ept = 16;  // the default is 8
      variants.push_back(t);
      // The LM head: Q6_K kernel 2 with 8 kgroups in flight per warp, kernel
      // 3 (bulk copies, persistent: 3 and 2 blocks per multiprocessor), and
      // kernel 3 with the layer chains with the delta rule and attention.
      t = base;
      t.fp4_depth = 8;
      variants.push_back(t);
      for (int persist : {0, 2}) {
        t = base;
        t.q6k_kernel = 3;
        t.q6k_persist = persist;
        variants.push_back(t);
      }
      t = base;
      t.q6k_kernel = 3;
      t.fp4_chain = 4;
      variants.push_back(t);
      // The greedy argmax in the LM head's epilogue, alone and with the
      // chains of mode 4.
      t = base;
      t.q6k_argmax = 1;
      variants.push_back(t);
      t.fp4_chain = 4;
      variants.push_back(t);
    }
    std::unique_ptr<Model> sm;
    int sm_q6k = -1;
    std::string rows_json;
    double best = 0;
    std::string best_name, best_env;
    // Each variant's greedy tokens against the first's (the default): the
    // chained projections and the head's argmax compute the same bits, so
    // their tokens must be the same; the probes' (no arithmetic) differ.
    std::vector<int32_t> first_tokens, tokens;
    for (const cuda::DecodeTuning& v : variants) {
      cuda::set_decode_tuning(v);
      if (std::min(v.q6k_kernel, 2) != sm_q6k) {  // the layout: kernel 1's, or the tiled one of 2 and 3
        sm.reset();
        if (!(st = LoadModel(path, {}, {}, &sm)).ok()) return fail("loading (sweep)", st);
        if (!(st = UploadModelToCuda(*sm, 0, true)).ok()) return fail("uploading (sweep)", st);
        sm_q6k = std::min(v.q6k_kernel, 2);
      }
      double rate = 0;
      if (!(st = backend_decode_rate(*sm, o, prompt, n, &rate, &tokens)).ok()) return fail("decode (sweep)", st);
      if (first_tokens.empty()) first_tokens = tokens;
      const bool same = tokens == first_tokens;
      const std::string name = cuda::describe(v);
      std::printf("sweep| %-34s | %8.1f tok/s | %6.3f ms/token | tokens %s\n", name.c_str(), rate, 1e3 / rate,
                  same ? "= default" : "differ");
      std::fflush(stdout);
      rows_json += fmt::format("{}{{\"variant\": \"{}\", \"decode_tokens_per_s\": {:.1f}, \"tokens_equal\": {}}}",
                               rows_json.empty() ? "" : ", ", name, rate, same ? 1 : 0);
      if (rate > best && v.fp4_probe == 0) {  // (a probe's results are wrong)
        best = rate;
        best_name = name;
        best_env = cuda::env_settings(v);
      }
    }
    std::printf("sweep| best: %s, %.1f tok/s (%s)\n", best_name.c_str(), best,
                best_env.empty() ? "the defaults" : best_env.c_str());
    std::printf("{\"sweep\": [%s]}\n", rows_json.c_str());
    cuda::set_decode_tuning(base);
  }

  const cuda::DeviceModel* dm = cuda::device_model(*model);
  const char* layouts = !dm ? "cpu" : dm->fast ? "decode" : "gguf";
  const double pf = p / t_prefill, dc = n / t_decode, dca = n / t_decode_api;
  const double mt = t_mtp > 0 ? emitted / t_mtp : 0;
  const double dg = gen.t_generate_ms > 0 ? gen.n_generated / (gen.t_generate_ms / 1e3) : 0;
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"device\": \"%s\", \"prompt_tokens\": %d, \"decode_tokens\": %d, "
        "\"load_s\": %.3f, \"upload_s\": %.3f, \"device_bytes\": %llu, "
        "\"prefill_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.1f, \"decode_api_tokens_per_s\": %.1f, "
        "\"decode_generate_tokens_per_s\": %.1f, \"decode_sampled_tokens_per_s\": %.1f, "
        "\"decode_sampled_rows_tokens_per_s\": %.1f, \"decode_topp_tokens_per_s\": %.1f, "
        "\"decode_topp_rows_tokens_per_s\": %.1f, \"topp_misses\": %d, "
        "\"decode_mtp_tokens_per_s\": %.1f, \"mtp_drafted\": %d, \"mtp_accepted\": %d, \"layouts\": \"%s\", "
        "\"tuning\": \"%s\", \"check_rel_batch\": %.4g, \"check_rel_step\": %.4g, \"check_argmax_equal\": %d, "
        "\"greedy_device_host_equal\": %d}\n",
        path.c_str(), device.c_str(), p, n, t_load, t_upload, (unsigned long long)model->device_bytes, pf, dc, dca, dg,
        rate(sampled), rate(sampled_rows), rate(full), rate(full_rows), full.n_candidate_misses,
        mt, drafted, accepted, layouts, cuda::describe(cuda::decode_tuning()).c_str(), check_batch, check_step,
        check_argmax, greedy_equal);
  } else {
    std::printf("load %.2f s, upload %.2f s, %.0f MiB on the device\n", t_load, t_upload,
                double(model->device_bytes) / (1 << 20));
    std::printf("prefill %d tokens: %.1f tok/s\n", p, pf);
    std::printf("decode %d tokens: %.1f tok/s (device argmax), %.1f tok/s (api), %.1f tok/s (generate)\n", n, dc, dca, dg);
    std::printf("greedy tokens, device argmax vs host argmax of the logits: %s\n", greedy_equal ? "equal" : "DIFFERENT");
    std::printf("sampled generate (temp 0.7, top-k 20, top-p 0.8, presence 1.5): %.1f tok/s (device candidates), "
                "%.1f tok/s (rows to the host)\n",
                rate(sampled), rate(sampled_rows));
    std::printf("sampled generate (temp 1.0, top-p 0.95, no top-k): %.1f tok/s (device candidates + normalizer, "
                "%d of %d draws needed the row), %.1f tok/s (rows to the host)\n",
                rate(full), full.n_candidate_misses, full.n_generated, rate(full_rows));
    if (model->mtp) std::printf("decode with MTP: %.1f tok/s, %d/%d drafts accepted\n", mt, accepted, drafted);
  }
  return 0;
}
