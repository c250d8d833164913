// The CUDA backend's error paths on the emulated device: allocations,
// kernel launches and graph instantiations made to fail one at a time
// (emu::arm_fault) while a model loads, a context is created and a context
// decodes, and the upload's self-checks shown wrong values. Each call must
// fail with a readable error (or, where the backend has a way around the
// failure, succeed), leave nothing behind (no device or pinned memory, no
// half-made model or context), and leave what existed before working: the
// model makes contexts, and a context whose decode failed gives, on the
// next calls, the logits of a context that never failed.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend_emu_util.h"
#include "bindings/c/handles.h"
#include "cuda_emu.h"
#include "device_model.h"
#include "qwen35/qwen35.h"
#include "synth.h"
#include "test_util.h"
#include "tuning.h"

using namespace qwen35;
using namespace qwen35::test;

namespace {

// A small synthetic model (the tiled NVFP4 and Q6_K layouts, their repack
// kernels and self-checks; an MTP layer whose drafts are mostly wrong).
std::string faults_model() { return synth_model("emu-cuda-faults", small_synth(128, 3)); }

qwen35_model_params cuda_params(qwen35_device device = QWEN35_DEVICE_CUDA) {
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = device;
  return mp;
}

// Calls of each kind an operation makes.
struct Calls {
  int64_t n[emu::kFaultKinds] = {};
  static Calls now() {
    Calls c;
    for (int k = 0; k < emu::kFaultKinds; ++k) c.n[k] = emu::fault_calls(emu::Fault(k));
    return c;
  }
  int64_t since(const Calls& before, emu::Fault f) const { return n[int(f)] - before.n[int(f)]; }
};

// At most `most` fault positions out of `count` calls: all of them when
// few, else the first two, the last two and an even spread between.
std::vector<int64_t> positions(int64_t count, int64_t most) {
  std::vector<int64_t> k;
  if (count <= most) {
    for (int64_t i = 0; i < count; ++i) k.push_back(i);
    return k;
  }
  for (int64_t i = 0; i < most; ++i) k.push_back(i * (count - 1) / (most - 1));
  k.push_back(1);
  k.push_back(count - 2);
  std::sort(k.begin(), k.end());
  k.erase(std::unique(k.begin(), k.end()), k.end());
  return k;
}

std::string fault_name(emu::Fault f) {
  return f == emu::Fault::Alloc    ? "allocation"
         : f == emu::Fault::Launch ? "launch"
         : f == emu::Fault::Graph  ? "graph instantiation"
                                   : "wrong values";
}

// The decode tuning for the contexts created in its scope (they read it
// when created): the chained projections (mode 4: whole layers in one
// launch, with their pinned fault record) and the LM head's argmax; or the
// persistent launches (mode 3: runs of layers with their delta rules and attention in launches of up to
// 20 stages; 4: the same from stage tables in device memory).
struct ChainTuning {
  cuda::DecodeTuning saved = cuda::decode_tuning();
  explicit ChainTuning(int chain, int persist = 0) {
    cuda::DecodeTuning t = saved;
    t.fp4_chain = chain;
    t.q6k_argmax = chain ? 1 : 0;
    t.fp4_persist = persist;
    cuda::set_decode_tuning(t);
  }
  ~ChainTuning() { cuda::set_decode_tuning(saved); }
};

qwen35_model* load_faults_model() {
  const qwen35_model_params mp = cuda_params();
  qwen35_model* m = nullptr;
  REQUIRE_MESSAGE(qwen35_model_load(faults_model().c_str(), &mp, &m) == QWEN35_OK, qwen35_errmsg());
  return m;
}

// The first rows of a sequence, the row after them, and the logits a
// context that never failed gives for that row: the abort and state tests
// interrupt a context that holds the first rows, then decode the next one.
struct HeadThenNext {
  const std::vector<int32_t> head = {5, 17, 300, 42, 7, 99};
  const int32_t next = 123;
  std::vector<float> want;
  explicit HeadThenNext(qwen35_model* m) {
    qwen35_context* c = with_head(m);
    REQUIRE(qwen35_context_decode(c, &next, 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    const float* l = qwen35_context_logits(c, -1);
    want.assign(l, l + qwen35_model_n_vocab(m));
    qwen35_context_free(c);
  }
  qwen35_context* with_head(qwen35_model* m) const {
    qwen35_context* c = make_ctx(m);
    REQUIRE(qwen35_context_decode(c, head.data(), int32_t(head.size()), QWEN35_LOGITS_LAST) == QWEN35_OK);
    return c;
  }
  // c holds the first rows: the next one gives the reference's logits, bit
  // for bit.
  void check_next(qwen35_context* c) const {
    REQUIRE(qwen35_context_n_past(c) == int32_t(head.size()));
    REQUIRE(qwen35_context_decode(c, &next, 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(rel_err(qwen35_context_logits(c, -1), want.data(), want.size()) == 0.0);
  }
};

// Disarms on scope exit (a failed REQUIRE must not leave a fault armed).
struct Armed {
  emu::Fault kind;
  Armed(emu::Fault f, int64_t k) : kind(f) { emu::arm_fault(f, k); }
  ~Armed() { emu::arm_fault(kind, -1); }
};

}  // namespace

TEST_CASE("emulated CUDA faults: the emulated runtime's own checks (faults, capture rules, bounds, frees)") {
  const int64_t live0 = emu::live_allocations();
  void* a = nullptr;
  {
    Armed armed(emu::Fault::Alloc, 1);  // the second allocation from now
    REQUIRE(cudaMalloc(&a, 64) == cudaSuccess);
    void* b = nullptr;
    CHECK(cudaMalloc(&b, 64) == cudaErrorMemoryAllocation);
    CHECK(b == nullptr);
  }
  CHECK(emu::live_allocations() == live0 + 1);
  std::vector<char> host(128, 1);
  CHECK(cudaMemcpy(a, host.data(), 64, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(emu::take_bad_copies() == 0);
  CHECK(cudaMemcpy(static_cast<char*>(a) + 8, host.data(), 64, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(emu::take_bad_copies() == 1);  // 8 bytes past the end
  // During a capture: a synchronous call is refused and spoils the capture.
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  CHECK(emu::take_capture_violations() == 0);
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  CHECK(cudaMemsetAsync(a, 0, 64, s) == cudaSuccess);
  void* c = nullptr;
  CHECK(cudaMalloc(&c, 16) == cudaErrorStreamCaptureUnsupported);
  cudaGraph_t g = nullptr;
  CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
  CHECK(g == nullptr);
  CHECK(emu::take_capture_violations() == 1);
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(cudaFree(a) == cudaSuccess);
  CHECK(cudaFree(a) == cudaErrorInvalidValue);  // twice
  CHECK(emu::take_bad_frees() == 1);
  CHECK(emu::live_allocations() == live0);
}

TEST_CASE(
    "emulated CUDA faults: a model load fails cleanly at every allocation and launch, and AUTO falls back to the CPU") {
  const std::string path = faults_model();
  const qwen35_model_params mp = cuda_params();
  const Calls c0 = Calls::now();
  qwen35_model* m = nullptr;
  REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &mp, &m) == QWEN35_OK, qwen35_errmsg());
  const Calls c1 = Calls::now();
  free_model(m);
  for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch}) {
    const int64_t count = c1.since(c0, f);
    MESSAGE("a model load: " << count << " calls of kind " << fault_name(f));
    REQUIRE(count > 0);
    const std::string kind = fault_name(f);
    for (int64_t k : positions(count, 32)) {  // all of them (27 launches here)
      CAPTURE(kind);
      CAPTURE(k);
      qwen35_model* bad = nullptr;
      qwen35_status st;
      {
        Armed armed(f, k);
        st = qwen35_model_load(path.c_str(), &mp, &bad);
      }
      // (The first launch is the probe that tells whether this build runs
      // on the device at all.)
      const qwen35_status want = f == emu::Fault::Alloc ? QWEN35_ERR_OUT_OF_MEMORY
                                 : k == 0               ? QWEN35_ERR_UNSUPPORTED
                                                        : QWEN35_ERR_BACKEND;
      CHECK(st == want);
      CHECK(bad == nullptr);
      const std::string msg = qwen35_errmsg();
      CHECK_MESSAGE(msg.find(f == emu::Fault::Alloc ? "memory" : "CUDA") != std::string::npos, msg);
      if (k == 1) MESSAGE("for example: " << msg);
      CHECK(emu::live_allocations() == 0);
    }
  }
  // Under AUTO the same failures leave the model on the CPU, where it works.
  for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch}) {
    const std::string kind = fault_name(f);
    CAPTURE(kind);
    const qwen35_model_params auto_mp = cuda_params(QWEN35_DEVICE_AUTO);
    qwen35_model* cpu = nullptr;
    {
      Armed armed(f, c1.since(c0, f) / 2);
      REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &auto_mp, &cpu) == QWEN35_OK, qwen35_errmsg());
    }
    CHECK(qwen35_model_device(cpu) == QWEN35_DEVICE_CPU);
    CHECK(emu::live_allocations() == 0);
    qwen35_context* c = nullptr;
    qwen35_context_params cp = qwen35_context_default_params();
    cp.n_ctx = 64;
    REQUIRE(qwen35_context_create(cpu, &cp, &c) == QWEN35_OK);
    const qwen35_token t[3] = {5, 17, 300};
    CHECK(qwen35_context_decode(c, t, 3, QWEN35_LOGITS_LAST) == QWEN35_OK);
    qwen35_context_free(c);
    free_model(cpu);
  }
}

TEST_CASE("emulated CUDA faults: an upload self-check that sees wrong values drops those layouts, and the model works") {
  // Q8_0 projections (the tiles of ktiles.h) and a Q6_K LM head (its own
  // tiled layout): the upload checks each repacked type's kernels against
  // the generic kernel on the staged GGUF bytes. A check that sees wrong
  // values (as a kernel computing wrong results on some GPU would give)
  // must redo the upload: without the tiles of ktiles.h when one of theirs
  // failed, else without any repacked layout. Every synchronous copy back
  // to the host during the load is corrupted in turn.
  SynthConfig cfg = small_synth(256, 21);
  cfg.matrix_type = GGML_Q8_0;
  cfg.n_mtp = 0;
  const std::string path = synth_model("emu-cuda-faults-q8-q6k", cfg);
  const qwen35_model_params mp = cuda_params();
  auto ktiles_in = [](qwen35_model* m) {
    int n = 0;
    for (const cuda::DevLayer& d : cuda::device_model(*m->m)->layers)
      for (const cuda::DevLinear* l : {&d.in_proj, &d.out_proj, &d.gate_up, &d.down}) {
        n += l->stack.present() ? 1 : 0;
        for (const cuda::KTiles& q : l->tiles) n += q.present() ? 1 : 0;
      }
    return n;
  };
  const std::vector<int32_t> toks = {5, 17, 300, 42, 7, 99};
  auto last_logits = [&](qwen35_model* m) {
    qwen35_context* c = make_ctx(m);
    REQUIRE(qwen35_context_decode(c, toks.data(), int32_t(toks.size()), QWEN35_LOGITS_LAST) == QWEN35_OK);
    const float* l = qwen35_context_logits(c, -1);
    std::vector<float> v(l, l + qwen35_model_n_vocab(m));
    qwen35_context_free(c);
    return v;
  };
  const Calls c0 = Calls::now();
  qwen35_model* good = nullptr;
  REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &mp, &good) == QWEN35_OK, qwen35_errmsg());
  const int64_t copies = Calls::now().since(c0, emu::Fault::Corrupt);
  REQUIRE(cuda::device_model(*good->m)->fast);
  REQUIRE(ktiles_in(good) > 0);
  const std::vector<float> want = last_logits(good);
  free_model(good);
  MESSAGE("a model load: " << copies << " copies to the host");
  REQUIRE(copies > 0);
  int ktiles_dropped = 0, all_dropped = 0;
  for (int64_t k : positions(copies, 24)) {
    CAPTURE(k);
    qwen35_model* m = nullptr;
    {
      Armed armed(emu::Fault::Corrupt, k);
      REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &mp, &m) == QWEN35_OK, qwen35_errmsg());
    }
    const cuda::DeviceModel* dm = cuda::device_model(*m->m);
    const bool fast = dm->fast, tiles = ktiles_in(m) > 0;
    CHECK((!fast || !tiles));  // one kind of layout or the other dropped
    ktiles_dropped += fast && !tiles ? 1 : 0;
    all_dropped += !fast ? 1 : 0;
    CHECK(rel_err(last_logits(m).data(), want.data(), want.size()) < 1e-2);
    free_model(m);
    CHECK(emu::live_allocations() == 0);
  }
  MESSAGE("without the tiles of ktiles.h: " << ktiles_dropped << " loads; without any repacked layout: "
                                            << all_dropped);
  CHECK(ktiles_dropped > 0);  // both retries taken
  CHECK(all_dropped > 0);
}

TEST_CASE("emulated CUDA faults: a context creation fails cleanly at every allocation and leaves the model usable") {
  qwen35_model* m = load_faults_model();
  const int64_t model_allocs = emu::live_allocations();
  for (auto [chain, persist] : {std::pair{0, 0}, std::pair{4, 0}, std::pair{0, 3}, std::pair{0, 4}}) {
    CAPTURE(chain);
    CAPTURE(persist);
    ChainTuning tuning(chain, persist);
    const Calls c0 = Calls::now();
    qwen35_context* c = make_ctx(m);
    const Calls c1 = Calls::now();
    qwen35_context_free(c);
    CHECK(emu::live_allocations() == model_allocs);
    const int64_t count = c1.since(c0, emu::Fault::Alloc);
    MESSAGE("a context creation: " << count << " allocations");
    REQUIRE(count > 0);
    qwen35_context_params cp = qwen35_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.use_mtp = true;
    cp.mtp_logits = true;
    for (int64_t k = 0; k < count; ++k) {
      CAPTURE(k);
      qwen35_context* bad = nullptr;
      qwen35_status st;
      {
        Armed armed(emu::Fault::Alloc, k);
        st = qwen35_context_create(m, &cp, &bad);
      }
      CHECK(st == QWEN35_ERR_OUT_OF_MEMORY);
      CHECK(bad == nullptr);
      const std::string msg = qwen35_errmsg();
      CHECK_MESSAGE(msg.find("memory") != std::string::npos, msg);
      // The KV cache is what n_ctx sizes: its message says so.
      if (msg.find("KV cache") != std::string::npos) CHECK_MESSAGE(msg.find("n_ctx 512") != std::string::npos, msg);
      CHECK(emu::live_allocations() == model_allocs);
    }
    // The model still makes working contexts.
    c = make_ctx(m);
    const qwen35_token t[3] = {5, 17, 300};
    CHECK(qwen35_context_decode(c, t, 3, QWEN35_LOGITS_LAST) == QWEN35_OK);
    qwen35_context_free(c);
  }
  free_model(m);
}

TEST_CASE("emulated CUDA faults: a decode that fails leaves the context's sequence as it was") {
  qwen35_model* m = load_faults_model();
  const int32_t V = qwen35_model_n_vocab(m);
  for (auto [chain, persist] : {std::pair{0, 0}, std::pair{4, 0}, std::pair{0, 3}, std::pair{0, 4}}) {
    CAPTURE(chain);
    CAPTURE(persist);
    ChainTuning tuning(chain, persist);
    // The calls: a prompt of 6 rows, steps of one row (graphs: the first
    // step captures, the next ones replay), 4 more rows (launched one by one:
    // a failure there has a sequence to restore), 20 rows (the prefill path:
    // GEMMs on weights dequantized ahead), a step; with MTP passes and their
    // logits.
    std::vector<int32_t> tokens = {5, 17, 300, 42, 7, 99, 123, 8, 450, 31, 77, 2};
    for (int32_t i = 0; i < 21; ++i) tokens.push_back((i * 97 + 13) % 600);
    struct Op {
      int32_t first, n;
    };
    const std::vector<Op> ops = {{0, 6}, {6, 1}, {7, 1}, {8, 4}, {12, 20}, {32, 1}};
    auto run_op = [&](qwen35_context* c, const Op& op) {
      return qwen35_context_decode(c, tokens.data() + op.first, op.n, QWEN35_LOGITS_LAST);
    };
    // The reference: no faults; each call's last logits and calls made.
    std::vector<std::vector<float>> want;
    std::vector<Calls> before, after;
    {
      qwen35_context* c = make_ctx(m);
      for (const Op& op : ops) {
        before.push_back(Calls::now());
        REQUIRE(run_op(c, op) == QWEN35_OK);
        after.push_back(Calls::now());
        const float* l = qwen35_context_logits(c, -1);
        want.emplace_back(l, l + V);
      }
      qwen35_context_free(c);
    }
    const int64_t model_allocs = emu::live_allocations();
    double worst = 0;
    int failed = 0, recovered = 0;
    for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch, emu::Fault::Graph})
      for (size_t target = 0; target + 1 < ops.size(); ++target) {
        const int64_t count = after[target].since(before[target], f);
        const std::string kind = fault_name(f);
        const int failed0 = failed;
        for (int64_t k : positions(count, 5)) {
          CAPTURE(kind);
          CAPTURE(target);
          CAPTURE(k);
          qwen35_context* c = make_ctx(m);
          for (size_t i = 0; i <= target + 1; ++i) {  // up to the call after the failed one
            qwen35_status st = QWEN35_OK;
            if (i == target) {
              Armed armed(f, k);
              st = run_op(c, ops[i]);
              if (st != QWEN35_OK) {
                ++failed;
                const std::string msg = qwen35_errmsg();
                const bool readable = msg.find("CUDA") != std::string::npos || msg.find("memory") != std::string::npos;
                CHECK_MESSAGE(readable, msg);
                if (failed == 1) MESSAGE("for example: " << msg);
                CHECK(qwen35_context_n_past(c) == ops[i].first);  // the rows are not there
              } else {
                ++recovered;  // a way around it (graphs off: eager launches)
              }
            }
            if (i != target || st != QWEN35_OK) REQUIRE_MESSAGE(run_op(c, ops[i]) == QWEN35_OK, qwen35_errmsg());
            CHECK(qwen35_context_n_past(c) == ops[i].first + ops[i].n);
            const double e = rel_err(qwen35_context_logits(c, -1), want[i].data(), size_t(V));
            worst = std::max(worst, e);
            // The replay of the rows before the failed call may run them in
            // other batch shapes (other kernels): close, not the same bits.
            CHECK(e <= 2e-2);
          }
          qwen35_context_free(c);
          CHECK(emu::live_allocations() == model_allocs);
        }
        MESSAGE("call " << target << ": " << count << " calls of kind " << kind << ", "
                        << std::min<int64_t>(count, int64_t(positions(count, 5).size())) << " faults, "
                        << failed - failed0 << " failed");
      }
    MESSAGE("decodes that failed: " << failed << ", went around the fault: " << recovered
                                    << ", worst logits after: " << worst);
    CHECK(failed > 0);
  }
  free_model(m);
}

TEST_CASE("emulated CUDA faults: a greedy MTP generation that fails stops with an error and a consistent context") {
  qwen35_model* m = load_faults_model();
  const std::vector<qwen35_token> prompt = {5, 17, 300, 42};
  const int n = 8;
  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = 64;
  cp.n_batch = 16;
  cp.use_mtp = true;
  qwen35_sampler_params sp = qwen35_sampler_greedy_params();
  qwen35_sampler* s = nullptr;
  REQUIRE(qwen35_sampler_create(m, &sp, &s) == QWEN35_OK);
  // Speculative greedy generation (drafts, verify passes of two rows,
  // rollbacks: the synthetic MTP layer's drafts are mostly wrong).
  auto generate = [&](qwen35_context* c, std::vector<qwen35_token>* out) {
    qwen35_generate_params gp = qwen35_generate_default_params();
    gp.max_tokens = n;
    gp.ignore_eos = true;
    gp.use_mtp = 1;
    gp.on_token = [](qwen35_token t, const char*, size_t, void* ud) {
      if (t >= 0) static_cast<std::vector<qwen35_token>*>(ud)->push_back(t);
      return true;
    };
    gp.user_data = out;
    return qwen35_generate(c, s, prompt.data(), int32_t(prompt.size()), &gp, nullptr);
  };
  std::vector<qwen35_token> want;
  Calls c0, c1;
  {
    qwen35_context* c = nullptr;
    REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
    c0 = Calls::now();
    REQUIRE(generate(c, &want) == QWEN35_OK);
    c1 = Calls::now();
    qwen35_context_free(c);
  }
  REQUIRE(want.size() == size_t(n));
  std::vector<qwen35_token> all = prompt;
  all.insert(all.end(), want.begin(), want.end());
  int failed = 0;
  for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch, emu::Fault::Graph}) {
    const std::string kind = fault_name(f);
    MESSAGE("a generation: " << c1.since(c0, f) << " calls of kind " << kind);
    for (int64_t k : positions(c1.since(c0, f), 6)) {
      CAPTURE(kind);
      CAPTURE(k);
      qwen35_context* c = nullptr;
      REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
      std::vector<qwen35_token> got;
      qwen35_status st;
      {
        Armed armed(f, k);
        st = generate(c, &got);
      }
      // The tokens so far are the reference's; the context holds a prefix
      // of the reference sequence.
      CHECK(std::equal(got.begin(), got.end(), want.begin(), want.begin() + std::min(got.size(), want.size())));
      std::vector<qwen35_token> held(all.size() + 2);
      const int32_t np = qwen35_context_tokens(c, held.data(), int32_t(held.size()));
      REQUIRE(np >= 0);
      REQUIRE(size_t(np) <= all.size());
      CHECK(std::equal(held.begin(), held.begin() + np, all.begin()));
      if (st == QWEN35_OK) {
        CHECK(got == want);  // went around the fault
      } else {
        ++failed;
        // The same context generates the reference again from scratch.
        qwen35_context_reset(c);
        std::vector<qwen35_token> again;
        REQUIRE_MESSAGE(generate(c, &again) == QWEN35_OK, qwen35_errmsg());
        CHECK(again == want);
      }
      qwen35_context_free(c);
    }
  }
  MESSAGE("generations that failed: " << failed);
  CHECK(failed > 0);
  qwen35_sampler_free(s);
  free_model(m);
}

TEST_CASE("emulated CUDA faults: an aborted prefill returns CANCELLED and leaves the context as it was") {
  qwen35_model* m = load_faults_model();
  const HeadThenNext ref(m);
  std::vector<int32_t> longp;
  for (int32_t i = 0; i < 200; ++i) longp.push_back((i * 131 + 7) % qwen35_model_n_vocab(m));
  qwen35_context* c = ref.with_head(m);
  // Another thread asks for the abort until the call returns (the call
  // clears the flag when it starts; the backend looks at it between layers).
  std::atomic<bool> done{false};
  std::thread killer([&] {
    while (!done.load()) {
      qwen35_context_abort(c);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const qwen35_status st = qwen35_context_decode(c, longp.data(), int32_t(longp.size()), QWEN35_LOGITS_LAST);
  done.store(true);
  killer.join();
  CHECK(st == QWEN35_ERR_CANCELLED);
  ref.check_next(c);
  qwen35_context_free(c);
  free_model(m);
}

TEST_CASE("emulated CUDA faults: a state save that fails leaves the context as it was; a failed load leaves it empty") {
  qwen35_model* m = load_faults_model();
  const HeadThenNext ref(m);
  qwen35_context* c = ref.with_head(m);
  std::vector<uint8_t> state(qwen35_context_state_size(c));
  uint64_t written = 0;
  const Calls c0 = Calls::now();
  REQUIRE(qwen35_context_state_save(c, state.data(), state.size(), &written) == QWEN35_OK);
  const Calls c1 = Calls::now();
  const int64_t model_and_ctx = emu::live_allocations();
  // Saves that fail: the context goes on as if they had not been made.
  for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch})
    for (int64_t k : positions(c1.since(c0, f), 4)) {
      const std::string kind = fault_name(f);
      CAPTURE(kind);
      CAPTURE(k);
      std::vector<uint8_t> other(state.size());
      uint64_t w = 0;
      qwen35_status st;
      {
        Armed armed(f, k);
        st = qwen35_context_state_save(c, other.data(), other.size(), &w);
      }
      CHECK(st != QWEN35_OK);
      CHECK(qwen35_context_n_past(c) == int32_t(ref.head.size()));
      CHECK(emu::live_allocations() == model_and_ctx);
    }
  ref.check_next(c);
  // Loads that fail while writing the caches leave the context empty; the
  // same snapshot then loads and goes on as the reference.
  const Calls l0 = Calls::now();
  REQUIRE(qwen35_context_state_load(c, state.data(), written) == QWEN35_OK);
  const Calls l1 = Calls::now();
  int failed = 0;
  for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch})
    for (int64_t k : positions(l1.since(l0, f), 4)) {
      const std::string kind = fault_name(f);
      CAPTURE(kind);
      CAPTURE(k);
      qwen35_status st;
      {
        Armed armed(f, k);
        st = qwen35_context_state_load(c, state.data(), written);
      }
      CHECK(st != QWEN35_OK);
      failed += st != QWEN35_OK;
      CHECK(qwen35_context_n_past(c) == 0);
      REQUIRE(qwen35_context_state_load(c, state.data(), written) == QWEN35_OK);
      ref.check_next(c);
    }
  MESSAGE("saves: " << c1.since(c0, emu::Fault::Alloc) << " allocations, " << c1.since(c0, emu::Fault::Launch)
                    << " launches; loads: " << l1.since(l0, emu::Fault::Alloc) << " allocations, "
                    << l1.since(l0, emu::Fault::Launch) << " launches; failed loads " << failed);
  qwen35_context_free(c);
  free_model(m);
}
