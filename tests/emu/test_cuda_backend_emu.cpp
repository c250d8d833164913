// The whole CUDA backend on the CPU: the library's C API and context over
// cuda/backend_cuda.cpp and upload.cpp, every kernel emulated (cuda_emu.h,
// mma.sync included), the CUDA runtime and cuBLASLt replaced by CPU
// stand-ins (cuda_host_emu.cpp; a CUDA graph replays the launches and
// copies recorded while it was captured). It checks what the GPU tests
// check end to end, without a GPU: the fixture logits at the fixture bar
// through the decode kernels and graphs (steps) and the GEMM path (batch),
// and the device-side sampling path.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend_emu_util.h"
#include "backend.h"
#include "context.h"
#include "device_model.h"
#include "cuda_emu.h"
#include "fixture_logits.h"
#include "generate.h"
#include "model.h"
#include "persist_fp4.h"
#include "persist_timeline.h"
#include "qwen35/qwen35.h"
#include "sampler.h"
#include "test_util.h"
#include "tuning.h"

using namespace qwen35;
using namespace qwen35::test;

namespace {

// Every fixture case of tiny-m-nvfp4 decoded in one batch, at the bar.
void check_batch_bar(const char* what) {
  const char* name = "tiny-m-nvfp4";
  FixtureLogits fx(name);
  qwen35_model* m = load_cuda(name);
  qwen35_context* c = make_ctx(m);
  const FixtureErrors e = run_fixture_cases(c, fx, false, true);
  check_fixture_bar(fx, e, true);
  MESSAGE(std::string(what) << ": median " << median(e.main) << " worst " << worst(e.main));
  qwen35_context_free(c);
  free_model(m);
}

}  // namespace

TEST_CASE("emulated CUDA backend: every fixture case in one batch meets the fixture bar") { check_batch_bar("batch"); }

TEST_CASE("emulated CUDA backend: one token at a time (the decode kernels, CUDA graphs) tracks the fixture") {
  const char* name = "tiny-m-nvfp4";
  FixtureLogits fx(name);
  qwen35_model* m = load_cuda(name);
  const cuda::DecodeTuning saved = cuda::decode_tuning();
  for (int persist : {0, 1}) {  // the LM head: a warp per tile; 2 blocks walking the tiles
    CAPTURE(persist);
    cuda::DecodeTuning t = saved;
    t.q6k_persist = persist;
    cuda::set_decode_tuning(t);
    qwen35_context* c = make_ctx(m);
    const int64_t graphs0 = emu::graph_launches();
    // The first sequence's first tokens (the emulated decode step is slow).
    const std::vector<int32_t>& s = fx.seqs[0];
    const int n = std::min<int>(int(s.size()), persist ? 4 : 10);
    std::vector<double> errs;
    for (int i = 0; i < n; ++i) {
      REQUIRE(qwen35_context_decode(c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      const float* l = qwen35_context_logits(c, -1);
      REQUIRE(l != nullptr);
      errs.push_back(rel_err(l, fx.main.data() + size_t(i) * size_t(fx.V), size_t(fx.V)));
    }
    MESSAGE("steps: median " << median(errs) << " worst " << worst(errs));
    CHECK(emu::graph_launches() - graphs0 >= n);  // every step ran as a graph
    CHECK(median(errs) <= 8e-2);
    CHECK(worst(errs) <= 0.25);
    qwen35_context_free(c);
    // Without graphs: the same launches, the same bits.
    EnvVar eager("QWEN35_CUDA_GRAPHS", "0");
    qwen35_context* ce = make_ctx(m);
    std::vector<double> errs_eager;
    for (int i = 0; i < n; ++i) {
      REQUIRE(qwen35_context_decode(ce, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      errs_eager.push_back(
          rel_err(qwen35_context_logits(ce, -1), fx.main.data() + size_t(i) * size_t(fx.V), size_t(fx.V)));
    }
    CHECK(errs_eager == errs);
    qwen35_context_free(ce);
  }
  cuda::set_decode_tuning(saved);
  free_model(m);
}

TEST_CASE("emulated CUDA backend: chained projections (FFNs, layer tails, delta rule, attention) give the logits of single launches") {
  const char* name = "tiny-m-nvfp4";
  FixtureLogits fx(name);
  qwen35_model* m = load_cuda(name);
  const std::vector<int32_t>& s = fx.seqs[0];
  REQUIRE(s.size() >= 6);
  // Steps of 1, 2 and 3 rows (the decode kernels; 1 and 2 with the causal
  // conv in the input projection's epilogue), with MTP logits (the MTP
  // layer's FFN too), graphs on; the contexts read the tuning when created.
  auto run = [&](int chain, bool early = true, int persist = 0) {
    const cuda::DecodeTuning saved = cuda::decode_tuning();
    cuda::DecodeTuning t = saved;
    t.fp4_chain = chain;
    t.fp4_chain_early = early ? 1 : 0;
    t.fp4_persist = persist;
    cuda::set_decode_tuning(t);
    qwen35_context* c = make_ctx(m);
    cuda::set_decode_tuning(saved);
    std::vector<float> out;
    int32_t pos = 0;
    for (int rows : {1, 2, 3}) {
      decode_append_logits(c, &s[size_t(pos)], rows, fx.V, out);
      pos += rows;
      append_mtp_logits(c, pos, fx.V, out);
    }
    qwen35_context_free(c);
    return out;
  };
  const std::vector<float> single = run(0);
  REQUIRE(single.size() > size_t(6 * fx.V));  // main and MTP logits
  CHECK(run(1) == single);
  CHECK(run(2) == single);
  CHECK(run(3) == single);
  CHECK(run(4) == single);
  // The norms' stages after the whole stage before (no SliceNorm waits).
  CHECK(run(2, false) == single);
  CHECK(run(4, false) == single);
  // Layer tails of the one-row step as persistent launches (persist_fp4.h;
  // the later steps' products one launch each): other column slices and
  // the norms' sums of squares from the stage before, so rounding apart
  // (this tiny model's logits are sensitive to it: kernel 3 planned for one
  // block per multiprocessor, other split-K slices, differs from its
  // default by as much, 5.4e-4 at the median).
  const std::vector<float> persist = run(0, true, 1);
  std::vector<double> errs = row_errors(persist, single, fx.V);
  MESSAGE("persistent tails against single launches: median " << median(errs) << " worst " << worst(errs));
  CHECK(worst(errs) < 1e-3);
  CHECK(persist != single);  // (the persistent kernel ran)
  // Also the delta rules: the three delta-net layers and the attention's
  // input projection in one launch.
  const std::vector<float> layers = run(0, true, 2);
  errs = row_errors(layers, single, fx.V);
  MESSAGE("persistent delta-net layers against single launches: median " << median(errs) << " worst " << worst(errs));
  CHECK(worst(errs) < 1e-3);  // (equal to the tails' logits here: the delta rule stage has delta_net's bits)
  // Also the attention (a warp per key split: other sums than the fused
  // kernel's), so the one- and two-row steps of this model are each one
  // launch and the head.
  const std::vector<float> attn = run(0, true, 3);
  errs = row_errors(attn, single, fx.V);
  MESSAGE("persistent layers with attention against single launches: median " << median(errs) << " worst "
                                                                              << worst(errs));
  CHECK(worst(errs) < 1e-3);  // (the path ran: fewer kernels, below; the out projection's F16 activations may
                              // round the attention's last bits away, as here)
  // Kernels of a one-row step (the main pass, no MTP logits), and of a
  // two-row step (an MTP verify's shape).
  auto grids_per_step = [&](int persist, int rows = 1) {
    const cuda::DecodeTuning saved = cuda::decode_tuning();
    cuda::DecodeTuning t = saved;
    t.fp4_persist = persist;
    cuda::set_decode_tuning(t);
    qwen35_context* c = make_ctx(m);
    cuda::set_decode_tuning(saved);
    REQUIRE(qwen35_context_decode(c, &s[0], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    const int64_t g0 = emu::grids_run();
    REQUIRE(qwen35_context_decode(c, &s[1], rows, QWEN35_LOGITS_LAST) == QWEN35_OK);
    const int64_t g = emu::grids_run() - g0;
    qwen35_context_free(c);
    return g;
  };
  const int64_t g0 = grids_per_step(0), g1 = grids_per_step(1), g2 = grids_per_step(2), g3 = grids_per_step(3);
  MESSAGE("kernels per one-row step: " << g0 << " separate, " << g1 << " with persistent tails, " << g2
                                       << " with persistent delta-net layers, " << g3 << " with attention too");
  // 4 layers (3 delta net, 1 attention): 4 tails of 4 products in 3 + 2
  // launches; then the delta rules and input projections join them; then
  // the attention (all 20 stages of the 4 layers in one launch).
  CHECK(g1 < g0);
  CHECK(g2 < g1);
  CHECK(g3 < g2);
  CHECK(grids_per_step(2, 2) == g2);
  CHECK(grids_per_step(3, 2) == g3);
  CHECK(grids_per_step(0, 2) == g0);
  free_model(m);
}

TEST_CASE("emulated CUDA backend: persistent decode steps with attention stages track the fixture and the default") {
  // QWEN35_CUDA_FP4_PERSIST=3 one token at a time past the first key split
  // (16 keys a split: the later steps merge several splits, the others of
  // the context's splits empty), with graphs, against the default launches
  // and the exact fixture logits.
  const char* name = "tiny-m-nvfp4";
  FixtureLogits fx(name);
  qwen35_model* m = load_cuda(name);
  const std::vector<int32_t>& s = fx.seqs[2];
  const int n = std::min<int>(int(s.size()), 36);
  REQUIRE(n > 32);
  auto run = [&](int persist) {
    const cuda::DecodeTuning saved = cuda::decode_tuning();
    cuda::DecodeTuning t = saved;
    t.fp4_persist = persist;
    cuda::set_decode_tuning(t);
    qwen35_context* c = make_ctx(m);
    cuda::set_decode_tuning(saved);
    std::vector<float> out;
    for (int i = 0; i < n; ++i) {
      REQUIRE(qwen35_context_decode(c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      const float* l = qwen35_context_logits(c, -1);
      REQUIRE(l != nullptr);
      out.insert(out.end(), l, l + fx.V);
    }
    qwen35_context_free(c);
    return out;
  };
  const std::vector<float> base = run(0), attn = run(3);
  // The fixture rows of sequence 2 follow those of sequences 0 and 1.
  const size_t row0 = fx.seqs[0].size() + fx.seqs[1].size();
  std::vector<double> to_default, to_fixture, default_to_fixture;
  for (int i = 0; i < n; ++i) {
    const float* a = attn.data() + size_t(i) * size_t(fx.V);
    const float* ref = fx.main.data() + (row0 + size_t(i)) * size_t(fx.V);
    to_default.push_back(rel_err(a, base.data() + size_t(i) * size_t(fx.V), size_t(fx.V)));
    to_fixture.push_back(rel_err(a, ref, size_t(fx.V)));
    default_to_fixture.push_back(rel_err(base.data() + size_t(i) * size_t(fx.V), ref, size_t(fx.V)));
  }
  MESSAGE("persistent with attention: against the default median " << median(to_default) << " worst "
                                                                    << worst(to_default) << "; against the fixture "
                                                                    << median(to_fixture) << " worst "
                                                                    << worst(to_fixture) << " (the default: "
                                                                    << worst(default_to_fixture) << ")");
  CHECK(worst(to_default) < 2e-3);
  CHECK(median(to_fixture) <= 8e-2);  // (the one-token-at-a-time bar above)
  CHECK(worst(to_fixture) <= 0.25);
  CHECK(worst(to_fixture) <= worst(default_to_fixture) + 2e-3);  // no worse than the default's rounding
  free_model(m);
}

TEST_CASE("emulated CUDA backend: persistent steps from a stage table in device memory (QWEN35_CUDA_FP4_PERSIST=4)") {
  // Mode 4 is mode 3 with the stages in a table in device memory instead of
  // the launch's parameters (at most kPersistInline = 20 stages), so that a
  // step's layers are one launch: each CUDA graph has its own table, filled
  // while it is captured and uploaded once; launches outside graphs copy
  // theirs in the stream first. One-row steps, a two-row step, and the MTP
  // pass (a graph of its own), with graphs and without.
  struct Run {
    std::vector<float> logits;  // main and MTP logits of every step
    int64_t kernels = 0;        // grids of the last one-row step
    uint64_t memory = 0;        // the context's device memory after the steps
  };
  auto run = [](qwen35_model* m, const std::vector<int32_t>& s, int64_t V, int persist, bool graphs,
                bool timeline = false, bool slices = false) {
    const cuda::DecodeTuning saved = cuda::decode_tuning();
    cuda::DecodeTuning t = saved;
    t.fp4_persist = persist;
    t.fp4_persist_timeline = timeline ? 1 : 0;
    t.fp4_persist_slices = slices ? 1 : 0;
    cuda::set_decode_tuning(t);
    std::optional<EnvVar> eager;
    if (!graphs) eager.emplace("QWEN35_CUDA_GRAPHS", "0");
    qwen35_context* c = make_ctx(m);
    cuda::set_decode_tuning(saved);
    Run r;
    int32_t pos = 0;
    for (int rows : {1, 1, 2, 1, 1}) {
      const int64_t g0 = emu::grids_run();
      decode_append_logits(c, &s[size_t(pos)], rows, V, r.logits);
      r.kernels = emu::grids_run() - g0;
      pos += rows;
      append_mtp_logits(c, pos, V, r.logits);
    }
    r.memory = qwen35_context_memory_bytes(c);
    qwen35_context_free(c);
    return r;
  };
  SUBCASE("the tiny fixture model: 20 stages a step, the bits of mode 3's one launch") {
    const char* name = "tiny-m-nvfp4";
    FixtureLogits fx(name);
    qwen35_model* m = load_cuda(name);
    const Run r3 = run(m, fx.seqs[0], fx.V, 3, true), r4 = run(m, fx.seqs[0], fx.V, 4, true);
    const Run r4e = run(m, fx.seqs[0], fx.V, 4, false);
    REQUIRE(r3.logits.size() > size_t(6 * fx.V));  // main and MTP logits
    CHECK(r4.logits == r3.logits);   // (the same plan and grid: only where the stages are differs)
    CHECK(r4e.logits == r4.logits);  // graphs or not
    CHECK(r4.kernels == r3.kernels);
    CHECK(r4.memory > r3.memory);  // (the graphs' tables: the main pass's and the MTP pass's)
    // The timeline probe (QWEN35_CUDA_FP4_PERSIST_TIMELINE=1; its steps run
    // without graphs): the same logits, and the last pass's stages (here the
    // MTP pass: its input projection, attention layer and FFN), every time
    // written, in the order the waits make (the emulated clock counts its
    // readings, so strictly).
    const Run rt = run(m, fx.seqs[0], fx.V, 4, true, true);
    CHECK(rt.logits == r4e.logits);
    std::vector<cuda::PersistStageTime> tl = cuda::persist_timeline_last();
    REQUIRE(tl.size() == 6);
    CHECK(tl[2].kind == cuda::PersistKind::Attention);
    CHECK(timeline_ordered(tl, true));
    // A context without MTP: the main pass's 20 stages (3 delta-net layers
    // and an attention layer of five).
    const auto main_pass = [&](bool slices) {
      const cuda::DecodeTuning saved = cuda::decode_tuning();
      cuda::DecodeTuning t = saved;
      t.fp4_persist = 4;
      t.fp4_persist_timeline = 1;
      t.fp4_persist_slices = slices ? 1 : 0;
      cuda::set_decode_tuning(t);
      qwen35_context_params cp = qwen35_context_default_params();
      cp.n_ctx = 64;
      qwen35_context* c = nullptr;
      REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
      cuda::set_decode_tuning(saved);
      REQUIRE(qwen35_context_decode(c, fx.seqs[0].data(), 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      qwen35_context_free(c);
      return cuda::persist_timeline_last();
    };
    // With slice waits: the stages in their order. (The emulation's grid is
    // one block, for which every stage of this model is one column slice,
    // so a slice wait waits for the whole stage before here; the op tests
    // run stages of several slices.)
    const std::vector<cuda::PersistStageTime> tls = main_pass(true);
    REQUIRE(tls.size() == 20);
    CHECK(timeline_ordered(tls, true, true));
    tl = main_pass(false);
    REQUIRE(tl.size() == 20);
    CHECK(std::count_if(tl.begin(), tl.end(), [](const auto& e) { return e.kind == cuda::PersistKind::DeltaRule; }) ==
          3);
    CHECK(tl[16].kind == cuda::PersistKind::Attention);
    CHECK(timeline_ordered(tl, true));
    // Slice waits (QWEN35_CUDA_FP4_PERSIST_SLICES=1): the same bits in
    // modes 3 and 4, graphs or not; the probe's stages in their order.
    CHECK(run(m, fx.seqs[0], fx.V, 3, true, false, true).logits == r3.logits);
    CHECK(run(m, fx.seqs[0], fx.V, 4, true, false, true).logits == r4.logits);
    CHECK(run(m, fx.seqs[0], fx.V, 4, false, false, true).logits == r4.logits);
    CHECK(run(m, fx.seqs[0], fx.V, 4, true, true, true).logits == r4.logits);
    tl = cuda::persist_timeline_last();
    REQUIRE(tl.size() == 6);
    CHECK(timeline_ordered(tl, true, true));
    // Planned for a grid of 16 blocks (the emulation runs them one after
    // another, so the first takes every ticket), the stages have several
    // column slices, as on a GPU (the output projections and down: 4):
    // slice waits still give mode 4's bits, one and two rows, graphs or
    // not. (Units do not start early here: each stage's units are dealt
    // evenly to the one block's four warps, which finish it together; the
    // op tests have stages that start early.)
    {
      cuda::persist_emu_set_grid(16);
      struct Reset {
        ~Reset() { cuda::persist_emu_set_grid(1); }
      } reset;
      const Run w = run(m, fx.seqs[0], fx.V, 4, true);
      CHECK(run(m, fx.seqs[0], fx.V, 4, true, false, true).logits == w.logits);
      CHECK(run(m, fx.seqs[0], fx.V, 4, false, false, true).logits == w.logits);
      const double to_one = worst(row_errors(w.logits, r4.logits, fx.V));  // (other slices: rounding)
      MESSAGE("mode 4 planned for 16 blocks against 1: worst " << to_one);
      CHECK(to_one < 2e-3);
      const std::vector<cuda::PersistStageTime> t16 = main_pass(true);
      REQUIRE(t16.size() == 20);
      CHECK(timeline_ordered(t16, true, true));
    }
    free_model(m);
  }
  SUBCASE("a 12-layer model: 60 stages a step, one launch instead of three") {
    SynthConfig cfg;  // the fixture's shapes (small_synth's delta net is too narrow for the gated-norm stage)
    cfg.n_vocab = 600;
    cfg.n_layer = 12;  // (9 delta-net and 3 attention layers)
    cfg.seed = 23;
    qwen35_model* m = load_cuda_path(synth_model("emu-cuda-persist-12l", cfg));
    const int64_t V = qwen35_model_n_vocab(m);
    std::vector<int32_t> s;
    for (int32_t i = 0; i < 8; ++i) s.push_back((i * 131 + 7) % int32_t(V));
    const Run r0 = run(m, s, V, 0, true), r3 = run(m, s, V, 3, true), r4 = run(m, s, V, 4, true);
    const Run r4e = run(m, s, V, 4, false);
    MESSAGE("kernels per one-row step: " << r0.kernels << " separate, " << r3.kernels << " with mode 3, "
                                         << r4.kernels << " with mode 4");
    CHECK(r4.kernels == r3.kernels - 2);  // (three launches of 20 stages, then one of 60)
    CHECK(r4e.logits == r4.logits);
    CHECK(run(m, s, V, 4, true, false, true).logits == r4.logits);  // slice waits: the same bits
    CHECK(run(m, s, V, 4, false, false, true).logits == r4.logits);
    // Other launch boundaries: a norm after one reads the whole row instead
    // of the stage before's sums of squares, so rounding apart.
    const double to3 = worst(row_errors(r4.logits, r3.logits, V)), to0 = worst(row_errors(r4.logits, r0.logits, V));
    MESSAGE("mode 4 against mode 3: worst " << to3 << ", against single launches: worst " << to0);
    CHECK(to3 < 1e-3);
    CHECK(to0 < 2e-3);
    free_model(m);
  }
}

TEST_CASE("emulated CUDA backend: the FP8 arithmetic (QWEN35_CUDA_FP4_FP8) tracks the fixture and the default") {
  // The codes' FP8 copy is made at load (tuning fp4_fp8 then); the kernels
  // use it while the tuning says so: one-row steps (with the conv epilogue,
  // the gated norm, SwiGLU) and a two-row step, graphs on.
  const char* name = "tiny-m-nvfp4";
  FixtureLogits fx(name);
  qwen35_model* m0 = load_cuda(name);
  const uint64_t bytes0 = qwen35_model_device_bytes(m0);
  free_model(m0);
  const cuda::DecodeTuning saved = cuda::decode_tuning();
  cuda::DecodeTuning t8 = saved;
  t8.fp4_fp8 = 1;
  cuda::set_decode_tuning(t8);
  qwen35_model* m = load_cuda(name);
  cuda::set_decode_tuning(saved);
  // The decode layouts with the copy (the upload's self-check, which runs
  // the FP8 arithmetic on two rows, passed: no fallback to the GGUF layout).
  CHECK(qwen35_model_device_bytes(m) > bytes0);
  const std::vector<int32_t>& s = fx.seqs[0];
  const int n = std::min<int>(int(s.size()), 12);
  REQUIRE(n > 4);
  auto run = [&](int fp8, int persist = 0) {
    cuda::DecodeTuning t = saved;
    t.fp4_fp8 = fp8;
    t.fp4_persist = persist;
    cuda::set_decode_tuning(t);
    qwen35_context* c = make_ctx(m);
    std::vector<float> out;
    for (int i = 0; i < n;) {
      const int rows = i == 2 ? 2 : 1;
      decode_append_logits(c, &s[size_t(i)], rows, fx.V, out);
      i += rows;
    }
    qwen35_context_free(c);
    cuda::set_decode_tuning(saved);
    return out;
  };
  const std::vector<float> base = run(0), fp8 = run(1);
  std::vector<double> to_default, to_fixture, default_to_fixture;
  for (int i = 0; i < n; ++i) {
    const float* a = fp8.data() + size_t(i) * size_t(fx.V);
    const float* ref = fx.main.data() + size_t(i) * size_t(fx.V);
    to_default.push_back(rel_err(a, base.data() + size_t(i) * size_t(fx.V), size_t(fx.V)));
    to_fixture.push_back(rel_err(a, ref, size_t(fx.V)));
    default_to_fixture.push_back(rel_err(base.data() + size_t(i) * size_t(fx.V), ref, size_t(fx.V)));
  }
  MESSAGE("FP8 arithmetic: against the default median " << median(to_default) << " worst " << worst(to_default)
                                                        << "; against the fixture " << median(to_fixture) << " worst "
                                                        << worst(to_fixture) << " (the default: "
                                                        << worst(default_to_fixture) << ")");
  // It ran (other arithmetic, other rounding), and its three E4M3 terms per
  // activation carry more bits than the default's F16: 3.7e-4 from the
  // fixture at worst against the default's 6.0e-3.
  CHECK(worst(to_default) > 0.0);
  CHECK(worst(to_fixture) < 2e-3);
  CHECK(worst(to_fixture) <= worst(default_to_fixture));
  // And in persistent launches (QWEN35_CUDA_FP4_PERSIST=3: the warps' compact
  // FP8 activations; the norms' factors from per-tile sums).
  const std::vector<float> pers = run(1, 3);
  std::vector<double> p_to_fp8, p_to_fixture;
  for (int i = 0; i < n; ++i) {
    const float* a = pers.data() + size_t(i) * size_t(fx.V);
    p_to_fp8.push_back(rel_err(a, fp8.data() + size_t(i) * size_t(fx.V), size_t(fx.V)));
    p_to_fixture.push_back(rel_err(a, fx.main.data() + size_t(i) * size_t(fx.V), size_t(fx.V)));
  }
  MESSAGE("FP8 persistent: against kernel 3's FP8 " << worst(p_to_fp8) << "; against the fixture "
                                                    << worst(p_to_fixture));
  CHECK(worst(p_to_fp8) < 2e-3);
  CHECK(worst(p_to_fixture) < 2e-3);
  free_model(m);
}

TEST_CASE("emulated CUDA backend: the chunked delta rule in the batch path meets the fixture bar") {
  EnvVar chunked("QWEN35_CUDA_DELTA_CHUNKED", "1");  // read when the context is created
  check_batch_bar("batch, chunked delta rule");
}

TEST_CASE("emulated CUDA backend: small batches as chunked NVFP4 matvecs meet the fixture bar") {
  // The fixture cases of 18-54 rows take the chunked matvecs, the longer ones the GEMMs.
  EnvVar medium("QWEN35_CUDA_MEDIUM_ROWS", "64");  // read when the context is created
  check_batch_bar("batch, chunked matvecs up to 64 rows");
}

TEST_CASE("emulated CUDA backend: the F32 tiled attention in the batch path meets the fixture bar") {
  EnvVar mma("QWEN35_CUDA_ATTN_MMA", "0");  // read when the context is created (default: tensor cores)
  check_batch_bar("batch, F32 tiled attention");
}

namespace {
std::vector<int32_t> generate_tokens(qwen35_model* m, const qwen35_sampler_params& sp, int n, bool mtp,
                                     qwen35_generate_stats* stats = nullptr, bool mtp_logits = false) {
  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = 128;
  cp.n_batch = 64;
  cp.use_mtp = mtp;
  cp.mtp_logits = mtp_logits;
  qwen35_context* c = nullptr;
  REQUIRE(qwen35_context_create(m, &cp, &c) == QWEN35_OK);
  qwen35_sampler* s = nullptr;
  REQUIRE(qwen35_sampler_create(m, &sp, &s) == QWEN35_OK);
  std::vector<int32_t> out;
  qwen35_generate_params gp = qwen35_generate_default_params();
  gp.max_tokens = n;
  gp.ignore_eos = true;
  gp.use_mtp = mtp ? 1 : 0;
  gp.on_token = [](qwen35_token t, const char*, size_t, void* ud) {
    if (t >= 0) static_cast<std::vector<int32_t>*>(ud)->push_back(t);
    return true;
  };
  gp.user_data = &out;
  const qwen35_token prompt[4] = {5, 17, 300, 42};
  REQUIRE_MESSAGE(qwen35_generate(c, s, prompt, 4, &gp, stats) == QWEN35_OK, std::string(qwen35_errmsg()));
  qwen35_sampler_free(s);
  qwen35_context_free(c);
  return out;
}
}  // namespace

TEST_CASE("emulated CUDA backend: sampling from device-selected candidates gives the tokens of the rows") {
  qwen35_model* m = load_cuda("tiny-m-nvfp4");
  // full 1: no top-k (the best 1,024 and the normalizer from the device);
  // full 2: so hot that nearly every draw goes past the candidates (also the
  // first one, after the prompt's pass has filled the MTP cache rows).
  for (int full : {0, 1, 2})
  for (bool mtp : {false, true}) {  // with MTP: both rows of the verify passes
    qwen35_sampler_params sp = qwen35_sampler_default_params(false);  // top-k 20, top-p 0.8, presence 1.5
    sp.seed = 11;
    if (full) {
      sp.top_k = 0;
      sp.top_p = mtp ? 1.0f : 0.95f;
      sp.temperature = full == 2 ? 50.0f : mtp ? 2.0f : 1.0f;  // hot: some draws go past the candidates
    }
    CAPTURE(full);
    CAPTURE(mtp);
    std::vector<int32_t> a, b;
    {
      EnvVar on("QWEN35_TOPK_CANDIDATES", "1");
      const int64_t graphs0 = emu::graph_launches();
      // full 2 with MTP: a context that also computes the MTP logits of
      // every row (an MTP pass with logits after each main pass).
      // (At temperature 50 over 4,122 tokens the best 1,024 hold about a
      // quarter of the mass: most draws miss.)
      a = generate_tokens(m, sp, 6, mtp, nullptr, full == 2 && mtp);
      CHECK(emu::graph_launches() > graphs0);
    }
    {
      EnvVar off("QWEN35_TOPK_CANDIDATES", "0");
      b = generate_tokens(m, sp, 6, mtp);
    }
    CHECK(a.size() == 6);
    CHECK(a == b);
  }
  free_model(m);
}

TEST_CASE("emulated CUDA backend: the argmax in the LM head's epilogue picks the tokens of the argmax kernel") {
  // A tied Q6_K head of 256 columns (the tiled layout of Q6_K kernel 2),
  // plain greedy decoding and MTP speculation (its own LM head pass).
  qwen35_model* m = load_mirror_synth("emu-cuda-q6k-head", 256, 9);
  const qwen35_sampler_params greedy = qwen35_sampler_greedy_params();
  const int n = 8;
  auto run = [&](int fused, bool mtp, int64_t* grids) {
    const cuda::DecodeTuning saved = cuda::decode_tuning();
    cuda::DecodeTuning t = saved;
    t.q6k_argmax = fused;
    cuda::set_decode_tuning(t);
    const int64_t g0 = emu::grids_run();
    std::vector<int32_t> out = generate_tokens(m, greedy, n, mtp);
    *grids = emu::grids_run() - g0;
    cuda::set_decode_tuning(saved);
    return out;
  };
  for (bool mtp : {false, true}) {
    CAPTURE(mtp);
    int64_t g_kernel = 0, g_fused = 0;
    const std::vector<int32_t> a = run(0, mtp, &g_kernel), b = run(1, mtp, &g_fused);
    CHECK(a.size() == size_t(n));
    CHECK(b == a);
    // One argmax kernel fewer per greedy step (the path ran).
    CHECK(g_fused + n - 1 <= g_kernel);
  }
  free_model(m);
}

TEST_CASE("emulated CUDA backend: greedy MTP speculation (graphs, snapshots, rollback) equals plain greedy") {
  // NVFP4 matrices, and Q8_0 ones (the k-quant tiles: the verify pass's
  // two rows through the conv epilogue with its snapshot).
  // With NVFP4 also as persistent launches (QWEN35_CUDA_FP4_PERSIST=2 and 3,
  // with the attention: the one-row steps, the drafts and the two-row verify
  // passes; each row gets the bits it gets alone).
  // And with the FP8 arithmetic (persist -1: QWEN35_CUDA_FP4_FP8=1; -3: with
  // persistent mode 3).
  for (auto [type, persist] : {std::pair{uint32_t(GGML_NVFP4), 0}, std::pair{uint32_t(GGML_Q8_0), 0},
                               std::pair{uint32_t(GGML_NVFP4), 2}, std::pair{uint32_t(GGML_NVFP4), 3},
                               std::pair{uint32_t(GGML_NVFP4), -1}, std::pair{uint32_t(GGML_NVFP4), -3}}) {
    const std::string name = type_info(type)->name;
    CAPTURE(name);
    CAPTURE(persist);
    const cuda::DecodeTuning saved = cuda::decode_tuning();
    cuda::DecodeTuning t = saved;
    t.fp4_persist = persist == -1 ? 0 : std::abs(persist);
    t.fp4_fp8 = persist < 0 ? 1 : 0;
    cuda::set_decode_tuning(t);
    qwen35_model* m = load_mirror_synth(type == GGML_NVFP4 ? "emu-cuda-mirror" : "emu-cuda-mirror-q8", 128, 5, type);
    const qwen35_sampler_params greedy = qwen35_sampler_greedy_params();
    const std::vector<int32_t> plain = generate_tokens(m, greedy, 8, false);
    qwen35_generate_stats st;
    const std::vector<int32_t> spec = generate_tokens(m, greedy, 8, true, &st);
    cuda::set_decode_tuning(saved);
    CHECK(plain.size() == 8);
    CHECK(spec == plain);
    CHECK(st.n_drafted > 0);
    CHECK(st.n_accepted == st.n_drafted);
    free_model(m);
  }
}

TEST_CASE("emulated CUDA backend: a model on each of two devices gives the same logits") {
  // The kernels' shared memory limits belong to a device: a launch on the
  // second device needs its own opt-in (the emulated runtime checks that).
  emu::set_device_count(2);
  const char* name = "tiny-m-nvfp4";
  FixtureLogits fx(name);
  std::vector<int32_t> s;
  for (int32_t i = 0; i < 23; ++i) s.push_back((i * 37 + 5) % fx.V);
  auto run = [&](int device) {
    qwen35_model_params mp = qwen35_model_default_params();
    mp.device = QWEN35_DEVICE_CUDA;
    mp.device_index = device;
    qwen35_model* m = nullptr;
    REQUIRE_MESSAGE(qwen35_model_load(fixture(std::string("models/") + name + ".gguf").c_str(), &mp, &m) == QWEN35_OK,
                    qwen35_errmsg());
    qwen35_context* c = make_ctx(m);
    std::vector<float> out;
    // A prefill of 20 rows (GEMMs, the tiled attention), then steps.
    int32_t pos = 0;
    for (int rows : {20, 1, 2}) {
      REQUIRE_MESSAGE(qwen35_context_decode(c, &s[size_t(pos)], rows, QWEN35_LOGITS_LAST) == QWEN35_OK,
                      qwen35_errmsg());
      const float* l = qwen35_context_logits(c, -1);
      out.insert(out.end(), l, l + fx.V);
      pos += rows;
    }
    qwen35_context_free(c);
    free_model(m);
    return out;
  };
  const std::vector<float> a = run(0), b = run(1);
  emu::set_device_count(1);
  CHECK(b == a);
}

TEST_CASE("emulated CUDA backend: Q8_0, Q4_K, Q6_K and mixed-type models (tiles, generic kernels) track the CPU reference") {
  struct Shape {
    const char* name;
    SynthConfig cfg;
    bool mixed;
  };
  std::vector<Shape> shapes;
  {
    SynthConfig c = small_synth(128, 11);  // every matrix Q8_0 (the MTP layer too), Q8_0 embedding
    c.matrix_type = GGML_Q8_0;
    c.embd_type = GGML_Q8_0;
    shapes.push_back({"emu-cuda-q8", c, false});
  }
  {
    SynthConfig c = small_synth(256, 13);  // Q4_K where rows allow (256-column blocks), else F16; Q4_K embedding
    c.matrix_type = GGML_Q4_K;
    c.embd_type = GGML_Q4_K;
    c.n_mtp = 0;
    shapes.push_back({"emu-cuda-q4k", c, false});
  }
  {
    SynthConfig c = small_synth(256, 14);  // Q6_K projections where rows allow, else F16; Q6_K embedding
    c.matrix_type = GGML_Q6_K;
    c.n_mtp = 0;
    shapes.push_back({"emu-cuda-q6k", c, false});
  }
  {
    SynthConfig c = small_synth(128, 12);  // types cycling per matrix (Q8_0 among them), untied head
    c.mixed = true;
    c.untied = true;
    c.output_type = GGML_Q8_0;
    c.n_mtp = 0;
    shapes.push_back({"emu-cuda-mixed", c, true});
  }
  for (const Shape& sh : shapes) {
    CAPTURE(sh.name);
    const std::string path = synth_model(sh.name, sh.cfg);
    {
      // The upload puts the Q8_0, Q4_K, Q6_K and F16 projections into their
      // tiles (and the self-checks pass: otherwise it uploads GGUF layouts
      // only).
      std::unique_ptr<Model> model;
      REQUIRE(LoadModel(path, {}, {}, &model).ok());
      REQUIRE(UploadModelToCuda(*model, 0, true).ok());
      const cuda::DeviceModel* dm = cuda::device_model(*model);
      REQUIRE(dm);
      CHECK(dm->fast);
      auto tiled_type = [](uint32_t t) {
        return t == GGML_Q8_0 || t == GGML_Q4_K || t == GGML_Q6_K || t == GGML_F16;
      };
      int q6k = 0;
      for (const Layer& L : model->layers)
        for (const Weight* w : {&L.wqkv, &L.wgate, &L.ssm_out, &L.wq, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down})
          q6k += w->present() && w->type == GGML_Q6_K ? 1 : 0;
      if (sh.cfg.matrix_type == GGML_Q6_K) CHECK(q6k > 0);
      int tiled = 0, want = 0;
      for (const Layer& L : model->layers)
        for (const Weight* w : {&L.wqkv, &L.wgate, &L.wbeta, &L.walpha, &L.ssm_out, &L.wq, &L.wk, &L.wv, &L.wo,
                                &L.ffn_gate, &L.ffn_up, &L.ffn_down})
          want += w->present() && tiled_type(w->type) ? 1 : 0;
      int stacks = 0;
      for (const cuda::DevLayer& d : dm->layers)
        for (const cuda::DevLinear* l : {&d.in_proj, &d.out_proj, &d.gate_up, &d.down}) {
          if (l->stack.present()) {  // every part in one (same type): one launch
            tiled += int(l->parts.size());
            stacks += l->parts.size() > 1 ? 1 : 0;
          }
          for (const cuda::KTiles& q : l->tiles) tiled += q.present() ? 1 : 0;
        }
      CHECK(want > 0);
      CHECK(tiled == want);
      if (!sh.mixed) {
        CHECK(stacks > 0);  // gate/up at least
        // gate/up in pairs: SwiGLU in the kernel's epilogue.
        CHECK(dm->layers[0].gate_up.stack.paired());
      }
      // The embedding (tied: also the LM head; Q8_0 where 128 columns are
      // too few for Q6_K, which has its own kernels there) and the untied
      // LM head.
      auto embd_tiled = [&](uint32_t t) { return tiled_type(t) && t != GGML_Q6_K; };  // (Q6_K: its head kernels)
      CHECK(dm->token_embd.tiles.present() == embd_tiled(model->token_embd.type));
      CHECK(dm->token_embd.repacked());
      CHECK(dm->output_own.tiles.present() == (!model->tied_output && embd_tiled(model->output.type)));
      CHECK(model->tied_output == !sh.cfg.untied);
    }
    // The CPU reference (float path), the GPU with the tiles and the GPU
    // with the generic kernels for Q8_0 and Q4_K (QWEN35_CUDA_KTILES=0).
    auto load = [&](qwen35_device dev, bool fast) {
      qwen35_model_params mp = qwen35_model_default_params();
      mp.device = dev;
      if (!fast) setenv("QWEN35_CUDA_KTILES", "0", 1);
      qwen35_model* m = nullptr;
      const qwen35_status st = qwen35_model_load(path.c_str(), &mp, &m);
      unsetenv("QWEN35_CUDA_KTILES");
      REQUIRE_MESSAGE(st == QWEN35_OK, qwen35_errmsg());
      return m;
    };
    qwen35_model* cpu = load(QWEN35_DEVICE_CPU, true);
    const int V = qwen35_model_n_vocab(cpu);
    std::vector<int32_t> s;
    for (int i = 0; i < 24; ++i) s.push_back((i * 37 + 11) % (V - 20));
    // Logits of every position: 20 rows in one call (the GEMM path, the
    // tiles dequantized) then single steps (decode kernels, graphs);
    // on the CPU the reference path.
    auto logits = [&](qwen35_model* m, bool reference) {
      qwen35_context_params p = qwen35_context_default_params();
      p.n_ctx = 64;
      p.reference = reference;
      qwen35_context* c = nullptr;
      REQUIRE_MESSAGE(qwen35_context_create(m, &p, &c) == QWEN35_OK, qwen35_errmsg());
      std::vector<float> out;
      REQUIRE_MESSAGE(qwen35_context_decode(c, s.data(), 20, QWEN35_LOGITS_ALL) == QWEN35_OK, qwen35_errmsg());
      for (int i = 0; i < 20; ++i) out.insert(out.end(), qwen35_context_logits(c, i), qwen35_context_logits(c, i) + V);
      for (size_t i = 20; i < s.size(); ++i) {
        REQUIRE_MESSAGE(qwen35_context_decode(c, &s[i], 1, QWEN35_LOGITS_LAST) == QWEN35_OK, qwen35_errmsg());
        out.insert(out.end(), qwen35_context_logits(c, -1), qwen35_context_logits(c, -1) + V);
      }
      qwen35_context_free(c);
      return out;
    };
    const std::vector<float> ref = logits(cpu, true);
    qwen35_model_free(cpu);
    qwen35_model* tiles = load(QWEN35_DEVICE_CUDA, true);
    const std::vector<float> fast = logits(tiles, false);
    free_model(tiles);
    qwen35_model* generic = load(QWEN35_DEVICE_CUDA, false);
    const std::vector<float> slow = logits(generic, false);
    free_model(generic);
    double vs_ref = 0, vs_generic = 0, generic_vs_ref = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const size_t o = i * size_t(V);
      vs_ref = std::max(vs_ref, rel_err(fast.data() + o, ref.data() + o, size_t(V)));
      vs_generic = std::max(vs_generic, rel_err(fast.data() + o, slow.data() + o, size_t(V)));
      generic_vs_ref = std::max(generic_vs_ref, rel_err(slow.data() + o, ref.data() + o, size_t(V)));
    }
    MESSAGE(std::string(sh.name) << ": worst relative difference, tiles vs the CPU reference " << vs_ref
                                 << ", vs the generic kernels " << vs_generic << "; generic vs the reference "
                                 << generic_vs_ref);
    // The tiles round the activations to F16 per 16 columns (measured
    // ~1e-3 here); both GPU paths sit ~3-5e-2 from the float reference on
    // these random models (the batch path's BF16 GEMMs, the F16 KV cache).
    CHECK(vs_generic < 1e-2);
    CHECK(vs_ref < 0.1);
  }
}

TEST_CASE("emulated CUDA backend: Q8_0 and Q4_K models decode a token in as many kernels as their NVFP4 twins") {
  // The tiles fuse what the NVFP4 kernels fuse: the RMS norms and the
  // delta net's gated norm in the prologues, SwiGLU and the causal conv in
  // the epilogues; so a decode step runs the same kernels per layer.
  for (uint32_t type : {uint32_t(GGML_Q8_0), uint32_t(GGML_Q4_K)}) {
    const std::string name = type_info(type)->name;
    CAPTURE(name);
    auto kernels_per_token = [&](uint32_t matrix_type) {
      SynthConfig c = small_synth(256, 15);
      c.matrix_type = matrix_type;
      c.embd_type = GGML_Q8_0;
      c.ssm_dv = 64;  // (the NVFP4 kernels' gated norm takes heads of multiples of 64)
      c.n_mtp = 0;
      const std::string file = std::string("emu-cuda-twin-dv64-") + type_info(matrix_type)->name;
      qwen35_model* m = load_cuda_path(synth_model(file, c));
      qwen35_context* ctx = make_ctx(m);
      const std::vector<int32_t> s = {3, 14, 15, 92, 65};
      REQUIRE(qwen35_context_decode(ctx, s.data(), 3, QWEN35_LOGITS_LAST) == QWEN35_OK);
      REQUIRE(qwen35_context_decode(ctx, &s[3], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      const int64_t g0 = emu::grids_run();
      REQUIRE(qwen35_context_decode(ctx, &s[4], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      const int64_t grids = emu::grids_run() - g0;
      qwen35_context_free(ctx);
      free_model(m);
      return grids;
    };
    const int64_t tiles = kernels_per_token(type), fp4 = kernels_per_token(GGML_NVFP4);
    MESSAGE(name << ": " << tiles << " kernels per token, NVFP4: " << fp4);
    CHECK(tiles == fp4);
  }
}

TEST_CASE("emulated CUDA backend: prefill GEMMs of k-quant and mixed models with the dequantization ahead (or cached) equal row blocks") {
  // Batches of Q8_0 / Q4_K tiles and GGUF-layout parts (the mixed model:
  // parts of several types and scales, GEMMs per run of one scale) go
  // through the second stream's dequantization one projection ahead, or
  // the weights dequantized once (QWEN35_CUDA_DEQ_CACHE=1), instead of
  // row blocks before each GEMM; the emulated GEMM sums each output in one
  // order, so the logits are the same bits.
  struct Shape {
    const char* name;
    uint32_t type;
    bool mixed;
  };
  for (const Shape sh : {Shape{"emu-cuda-deq-q8", GGML_Q8_0, false}, Shape{"emu-cuda-deq-q4k", GGML_Q4_K, false},
                         Shape{"emu-cuda-deq-mixed", GGML_Q8_0, true}}) {
    CAPTURE(sh.name);
    SynthConfig c = small_synth(256, 17);
    c.matrix_type = sh.type;
    c.mixed = sh.mixed;
    qwen35_model* m = load_cuda_path(synth_model(sh.name, c));
    const int V = qwen35_model_n_vocab(m);
    std::vector<int32_t> s;
    for (int i = 0; i < 20; ++i) s.push_back((i * 41 + 7) % (V - 20));
    uint64_t bytes[3] = {};
    auto batch_logits = [&](const char* ahead, const char* cache, uint64_t* ctx_bytes) {
      EnvVar a("QWEN35_CUDA_DEQ_AHEAD", ahead), b("QWEN35_CUDA_DEQ_CACHE", cache);
      qwen35_context* ctx = make_ctx(m);  // (reads the switches)
      *ctx_bytes = qwen35_context_memory_bytes(ctx);
      REQUIRE(qwen35_context_decode(ctx, s.data(), int32_t(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
      std::vector<float> out;
      for (int i = 0; i < int(s.size()); ++i)
        out.insert(out.end(), qwen35_context_logits(ctx, i), qwen35_context_logits(ctx, i) + V);
      const float* d = nullptr;
      if (qwen35_model_has_mtp(m)) {
        REQUIRE(qwen35_context_mtp_draft(ctx, 42, &d) == QWEN35_OK);
        out.insert(out.end(), d, d + V);
      }
      qwen35_context_free(ctx);
      return out;
    };
    const std::vector<float> blocks = batch_logits("0", "0", &bytes[0]), ahead = batch_logits("1", "0", &bytes[1]),
                             cached = batch_logits("1", "1", &bytes[2]);
    // The two projection buffers, and the whole model's projections in BF16.
    MESSAGE(std::string(sh.name) << ": context bytes " << bytes[0] << ", ahead " << bytes[1] << ", cached " << bytes[2]);
    CHECK(bytes[1] > bytes[0]);
    CHECK(bytes[2] > bytes[1]);
    CHECK(ahead == blocks);
    CHECK(cached == blocks);
    free_model(m);
  }
}
