// End-to-end CUDA backend tests through the C API (and the internal Context
// for the MTP loop): fixture logits at the fixture bar (batch and step, MTP),
// agreement with the CPU backend on other shapes and weight types, split
// prompts, truncation, state save/load (also across backends), rollback,
// greedy MTP equivalence and device selection. Skips without a CUDA device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "context.h"
#include "generate.h"
#include "sampler.h"
#include "gpu_test_util.h"
#include "model.h"
#include "qwen35/qwen35.h"
#include "fixture_logits.h"
#include "test_util.h"
#include "tuning.h"

using namespace qwen35::test;

namespace {

struct Model {
  qwen35_model* m = nullptr;
  explicit Model(const std::string& path, qwen35_device dev = QWEN35_DEVICE_CUDA) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = dev;
    REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_OK, qwen35_errmsg());
  }
  ~Model() { qwen35_model_free(m); }
};

struct Ctx {
  qwen35_context* c = nullptr;
  Ctx(qwen35_model* m, int n_ctx = 512, bool mtp = false, int n_batch = 512, bool reference = false) {
    qwen35_context_params p = qwen35_context_default_params();
    p.n_ctx = n_ctx;
    p.reference = reference;
    p.use_mtp = mtp;
    p.mtp_logits = mtp;
    p.n_threads = std::min(16, std::max(2, int(std::thread::hardware_concurrency())));  // CPU reference contexts
    p.n_batch = n_batch;
    REQUIRE_MESSAGE(qwen35_context_create(m, &p, &c) == QWEN35_OK, qwen35_errmsg());
  }
  ~Ctx() { qwen35_context_free(c); }
};

}  // namespace

TEST_CASE("CUDA: fixture logits meet the fixture bar (batch and step, MTP)") {
  QWEN35_REQUIRE_GPU();
  for (const char* name : {"tiny-a-f32", "tiny-a-nvfp4", "tiny-m-nvfp4"}) {
    FixtureLogits fx(name);
    Model m(fixture(std::string("models/") + name + ".gguf"));
    REQUIRE(qwen35_model_device(m.m) == QWEN35_DEVICE_CUDA);
    CHECK(qwen35_model_device_bytes(m.m) > 0);
    const bool mtp = std::string(name) == "tiny-m-nvfp4";
    for (bool step : {false, true}) {
      CAPTURE(name);
      CAPTURE(step);
      Ctx ctx(m.m, 512, mtp);
      const FixtureErrors e = run_fixture_cases(ctx.c, fx, step, mtp);
      check_fixture_bar(fx, e, mtp);
      MESSAGE(name << (step ? " step" : " batch") << ": median " << median(e.main) << " worst " << worst(e.main));
    }
  }
}

TEST_CASE("CUDA: small batches as chunked NVFP4 matvecs meet the fixture bar") {
  QWEN35_REQUIRE_GPU();
  EnvVar medium("QWEN35_CUDA_MEDIUM_ROWS", "64");  // the fixture cases of 18-54 rows take it
  for (const char* name : {"tiny-a-nvfp4", "tiny-m-nvfp4"}) {
    FixtureLogits fx(name);
    Model m(fixture(std::string("models/") + name + ".gguf"));
    const bool mtp = std::string(name) == "tiny-m-nvfp4";
    Ctx ctx(m.m, 512, mtp);
    const FixtureErrors e = run_fixture_cases(ctx.c, fx, false, mtp);
    check_fixture_bar(fx, e, mtp);
    MESSAGE(name << " batch, chunked matvecs: median " << median(e.main) << " worst " << worst(e.main));
  }
}

TEST_CASE("CUDA: with F32 GEMMs the batch path stays close to the exact logits") {
  QWEN35_REQUIRE_GPU();
  EnvVar env("QWEN35_CUDA_GEMM", "f32");
  for (const char* name : {"tiny-a-f32", "tiny-m-nvfp4"}) {
    FixtureLogits fx(name);
    Model m(fixture(std::string("models/") + name + ".gguf"));
    const bool mtp = std::string(name) == "tiny-m-nvfp4";
    Ctx ctx(m.m, 512, mtp);
    const FixtureErrors e = run_fixture_cases(ctx.c, fx, false, mtp);
    CAPTURE(name);
    MESSAGE(name << " F32 GEMM: median " << median(e.main) << " worst " << worst(e.main));
    // Only the F16 KV cache separates this path from the float reference.
    CHECK(worst(e.main) <= 2e-2);
    if (!e.mtp.empty()) CHECK(worst(e.mtp) <= 2e-2);
  }
}

TEST_CASE("CUDA: other shapes and mixed weight types agree with the CPU backend (batch and step)") {
  QWEN35_REQUIRE_GPU();
  struct Shape {
    const char* name;
    qwen35::SynthConfig cfg;
  };
  std::vector<Shape> shapes;
  {
    qwen35::SynthConfig c;  // mixed types, untied head, wider model, no MTP
    c.n_embd = 512; c.n_ff = 1024; c.n_layer = 5; c.n_head = 4; c.n_head_kv = 2; c.head_dim = 128; c.n_rot = 32;
    c.sections = {6, 5, 5, 0}; c.ssm_state = 32; c.ssm_heads_k = 4; c.ssm_heads_v = 8; c.ssm_dv = 32; c.n_mtp = 0;
    c.mixed = true; c.untied = true; c.output_type = qwen35::GGML_Q8_0; c.n_vocab = 3000; c.seed = 5;
    shapes.push_back({"mixed-untied", c});
  }
  {
    qwen35::SynthConfig c;  // interval 2, conv width 3, Q4_K embeddings, F16 matrices
    c.n_embd = 256; c.n_ff = 768; c.n_layer = 4; c.full_attn_interval = 2; c.ssm_conv = 3;
    c.matrix_type = qwen35::GGML_F16; c.embd_type = qwen35::GGML_Q4_K; c.n_vocab = 1500; c.seed = 6;
    shapes.push_back({"f16-interval2", c});
  }
  for (const Shape& sh : shapes) {
    CAPTURE(sh.name);
    const std::string path = synth_model(sh.name, sh.cfg);
    Model cpu(path, QWEN35_DEVICE_CPU), gpu(path, QWEN35_DEVICE_CUDA);
    REQUIRE(qwen35_model_device(gpu.m) == QWEN35_DEVICE_CUDA);
    const int V = qwen35_model_n_vocab(cpu.m);
    std::vector<int32_t> s;
    for (int i = 0; i < 700; ++i) s.push_back((i * 37 + 11) % (V - 20));
    // The CPU side is the float reference path (the oracle), not the CPU's
    // own 8-bit-activation fast path.
    Ctx ref(cpu.m, 800, false, 512, true), fast(gpu.m, 800), step(gpu.m, 800);
    REQUIRE(qwen35_context_decode(ref.c, s.data(), int(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(fast.c, s.data(), int(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
    double w = 0;
    for (int i = 0; i < int(s.size()); ++i) {
      REQUIRE(qwen35_context_decode(step.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      const float* r = qwen35_context_logits(ref.c, i);
      for (const float* l : {qwen35_context_logits(fast.c, i), qwen35_context_logits(step.c, -1)}) {
        REQUIRE(l);
        w = std::max(w, rel_err(l, r, size_t(V)));
      }
    }
    MESSAGE(sh.name << ": worst relative error vs the CPU reference " << w);
    CHECK(w < 0.25);
  }
}

TEST_CASE("CUDA: splitting a prompt across calls and chunks gives the same logits") {
  QWEN35_REQUIRE_GPU();
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  auto seqs = read_seqs(fixture("logits/seqs.txt"));
  const auto& s = seqs[2];  // 300 tokens
  Ctx one(m.m, 512, true);
  REQUIRE(qwen35_context_decode(one.c, s.data(), int(s.size()), QWEN35_LOGITS_LAST) == QWEN35_OK);
  std::vector<float> want(qwen35_context_logits(one.c, -1), qwen35_context_logits(one.c, -1) + 4122);
  Ctx two(m.m, 512, true, 37);
  REQUIRE(qwen35_context_decode(two.c, s.data(), 123, QWEN35_LOGITS_NONE) == QWEN35_OK);
  REQUIRE(qwen35_context_decode(two.c, s.data() + 123, int(s.size()) - 123, QWEN35_LOGITS_LAST) == QWEN35_OK);
  CHECK(qwen35_context_n_past(two.c) == int(s.size()));
  // Different chunkings may pick different GEMM kernels: equal up to rounding.
  CHECK(rel_err(qwen35_context_logits(two.c, -1), want.data(), 4122) < 1e-3);
  const float *d1 = nullptr, *d2 = nullptr;
  REQUIRE(qwen35_context_mtp_draft(one.c, 42, &d1) == QWEN35_OK);
  std::vector<float> draft1(d1, d1 + 4122);
  REQUIRE(qwen35_context_mtp_draft(two.c, 42, &d2) == QWEN35_OK);
  CHECK(rel_err(d2, draft1.data(), 4122) < 1e-3);
}

TEST_CASE("CUDA: truncate, state save/load (also into a CPU context) and failed calls keep the state") {
  QWEN35_REQUIRE_GPU();
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  auto s = read_seqs(fixture("logits/seqs.txt"))[2];
  Ctx ctx(m.m, 400, true);
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 60, QWEN35_LOGITS_LAST) == QWEN35_OK);
  std::vector<float> want(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 4122);

  SUBCASE("truncate and re-decode") {
    REQUIRE(qwen35_context_truncate(ctx.c, 25) == QWEN35_OK);
    CHECK(qwen35_context_n_past(ctx.c) == 25);
    REQUIRE(qwen35_context_decode(ctx.c, s.data() + 25, 35, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 4122) < 1e-3);
    // One token at a time after a truncation (the matvec path): the batch and
    // step paths round differently, both within the fixture bar.
    REQUIRE(qwen35_context_truncate(ctx.c, 57) == QWEN35_OK);
    for (int i = 57; i < 60; ++i) REQUIRE(qwen35_context_decode(ctx.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 4122) < 0.25);
  }
  SUBCASE("save, continue, load, continue again; load on the CPU") {
    std::vector<uint8_t> st(qwen35_context_state_size(ctx.c));
    uint64_t written = 0;
    REQUIRE(qwen35_context_state_save(ctx.c, st.data(), st.size(), &written) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(ctx.c, s.data() + 60, 10, QWEN35_LOGITS_LAST) == QWEN35_OK);
    std::vector<float> after(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 4122);
    Ctx other(m.m, 400, true);
    REQUIRE(qwen35_context_state_load(other.c, st.data(), written) == QWEN35_OK);
    CHECK(qwen35_context_n_past(other.c) == 60);
    REQUIRE(qwen35_context_decode(other.c, s.data() + 60, 10, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(std::memcmp(qwen35_context_logits(other.c, -1), after.data(), after.size() * 4) == 0);
    // The serialized state is the CPU backend's format.
    Model cpu(fixture("models/tiny-m-nvfp4.gguf"), QWEN35_DEVICE_CPU);
    Ctx on_cpu(cpu.m, 400, true);
    REQUIRE(qwen35_context_state_load(on_cpu.c, st.data(), written) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(on_cpu.c, s.data() + 60, 10, QWEN35_LOGITS_LAST) == QWEN35_OK);
    // A wrong layout would give O(1) errors; the paths' rounding differs.
    CHECK(rel_err(qwen35_context_logits(on_cpu.c, -1), after.data(), 4122) < 0.25);
    std::vector<uint8_t> st2(qwen35_context_state_size(on_cpu.c));
    REQUIRE(qwen35_context_state_save(on_cpu.c, st2.data(), st2.size(), &written) == QWEN35_OK);
    Ctx back(m.m, 400, true);
    REQUIRE(qwen35_context_state_load(back.c, st2.data(), written) == QWEN35_OK);
    CHECK(qwen35_context_n_past(back.c) == 70);
    std::vector<uint8_t> bad(st.begin(), st.begin() + int64_t(st.size() / 2));
    CHECK(qwen35_context_state_load(back.c, bad.data(), bad.size()) == QWEN35_ERR_FORMAT);
    CHECK(qwen35_context_n_past(back.c) == 70);
  }
  SUBCASE("bad token ids and overflow leave the state intact") {
    int32_t bad[3] = {5, 4122, 7};
    CHECK(qwen35_context_decode(ctx.c, bad, 3, QWEN35_LOGITS_LAST) == QWEN35_ERR_INVALID_ARG);
    std::vector<int32_t> many(400, 5);
    CHECK(qwen35_context_decode(ctx.c, many.data(), 400, QWEN35_LOGITS_LAST) == QWEN35_ERR_CONTEXT_FULL);
    CHECK(qwen35_context_n_past(ctx.c) == 60);
    // Truncating replays the 59 rows as one batch; a fresh context doing the
    // same work gives the same bits (the kernels are deterministic).
    REQUIRE(qwen35_context_truncate(ctx.c, 59) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(ctx.c, s.data() + 59, 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    Ctx fresh(m.m, 400, true);
    REQUIRE(qwen35_context_decode(fresh.c, s.data(), 59, QWEN35_LOGITS_NONE) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(fresh.c, s.data() + 59, 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(std::memcmp(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(fresh.c, -1), 4122 * 4) == 0);
    CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 4122) < 0.25);
  }
}

TEST_CASE("CUDA: snapshot rollback, greedy device argmax and greedy MTP equivalence") {
  QWEN35_REQUIRE_GPU();
  qwen35::SynthConfig cfg;
  cfg.n_vocab = 2000;
  cfg.mtp_mirror = true;  // the MTP head reproduces the trunk: drafts are accepted
  cfg.seed = 9;
  const std::string path = synth_model("mtp-mirror-gpu", cfg);
  std::unique_ptr<qwen35::Model> model;
  REQUIRE(qwen35::LoadModel(path, {}, {}, &model).ok());
  REQUIRE(qwen35::UploadModelToCuda(*model, 0, true).ok());
  qwen35::ContextOptions o;
  o.n_ctx = 256;
  o.n_batch = 64;
  auto make = [&](bool mtp) {
    qwen35::ContextOptions oo = o;
    oo.use_mtp = mtp;
    std::unique_ptr<qwen35::Context> c;
    REQUIRE(qwen35::Context::Create(*model, oo, &c).ok());
    return c;
  };
  const std::vector<int32_t> prompt = {5, 17, 300, 42, 1999, 7, 7, 123};
  const int n_gen = 40;
  const int V = model->hp.n_vocab;

  // Plain greedy decoding, one token per pass.
  std::vector<int32_t> plain;
  {
    auto c = make(false);
    REQUIRE(c->decode(prompt.data(), int32_t(prompt.size()), qwen35::LogitsMode::Last).ok());
    int32_t next = int32_t(argmax(c->logits(-1), size_t(V)));
    for (int i = 0; i < n_gen; ++i) {
      plain.push_back(next);
      REQUIRE(c->decode(&next, 1, qwen35::LogitsMode::Last).ok());
      next = int32_t(argmax(c->logits(-1), size_t(V)));
    }
  }
  // The device argmax (eval_greedy) equals the host argmax of eval's logits.
  {
    auto a = make(false), b = make(false);
    REQUIRE(a->decode(prompt.data(), int32_t(prompt.size()), qwen35::LogitsMode::Last).ok());
    REQUIRE(b->decode(prompt.data(), int32_t(prompt.size()), qwen35::LogitsMode::Last).ok());
    const int32_t tok = plain[0];
    REQUIRE(a->decode(&tok, 1, qwen35::LogitsMode::Last).ok());
    qwen35::EvalBatch eb;
    std::vector<int32_t> pos = {8, 8, 8};
    std::vector<float> hidden(static_cast<size_t>(model->hp.n_embd));
    eb.n = 1;
    eb.tokens = &tok;
    eb.pos = pos.data();
    eb.n_past = 8;
    eb.logits_first = 0;
    eb.hidden = hidden.data();
    int32_t dev = -1;
    REQUIRE(b->backend().eval_greedy(eb, &dev).ok());
    CHECK(dev == int32_t(argmax(a->logits(-1), size_t(V))));
    CHECK(dev == plain[1]);
  }
  // Speculative greedy decoding with one MTP draft per pass (spec §5.5).
  std::vector<int32_t> spec;
  int accepted = 0, passes = 0;
  {
    auto c = make(true);
    REQUIRE(c->decode(prompt.data(), int32_t(prompt.size()), qwen35::LogitsMode::Last).ok());
    int32_t next = int32_t(argmax(c->logits(-1), size_t(V)));
    while (int(spec.size()) < n_gen) {
      const float* dl = nullptr;
      REQUIRE(c->mtp_draft(next, &dl).ok());
      const int32_t draft = int32_t(argmax(dl, size_t(V)));
      const int32_t pair[2] = {next, draft};
      REQUIRE(c->decode_with_snapshot(pair, 2, qwen35::LogitsMode::All).ok());
      ++passes;
      spec.push_back(next);
      const int32_t y0 = int32_t(argmax(c->logits(0), size_t(V)));
      if (y0 == draft) {
        ++accepted;
        if (int(spec.size()) < n_gen) spec.push_back(draft);
        next = int32_t(argmax(c->logits(1), size_t(V)));
      } else {
        REQUIRE(c->rollback_to_snapshot().ok());
        next = y0;
      }
    }
  }
  spec.resize(size_t(n_gen));
  CHECK(spec == plain);
  MESSAGE("MTP on the GPU: " << accepted << " of " << passes << " drafts accepted");
  CHECK(accepted > passes / 2);

  // The generation loop with a greedy sampler: token ids from the device,
  // speculate_greedy with fused MTP passes; the same tokens as plain decoding.
  for (bool use_mtp : {false, true}) {
    CAPTURE(use_mtp);
    auto c = make(true);
    qwen35::Sampler sampler(V, qwen35::SamplerOptions());
    qwen35::GenerateOptions go;
    go.max_tokens = n_gen;
    go.ignore_eos = true;
    go.use_mtp = use_mtp;
    std::vector<int32_t> got;
    go.on_token = [&](int32_t t, const std::string&) {
      if (t >= 0) got.push_back(t);
      return true;
    };
    qwen35::GenerateStats gs;
    REQUIRE(qwen35::Generate(*c, sampler, prompt, go, &gs).ok());
    CHECK(got == plain);
    CHECK(c->n_past() == int(prompt.size()) + n_gen);
    MESSAGE("Generate (ids): " << gs.n_accepted << " of " << gs.n_drafted << " drafts accepted, " << gs.n_main_passes
                               << " main passes");
    if (use_mtp) CHECK(gs.n_accepted > gs.n_drafted / 2);
    // The context can go on with logits afterwards.
    REQUIRE(c->decode(&plain[0], 1, qwen35::LogitsMode::Last).ok());
    CHECK(c->logits(-1) != nullptr);
  }
}

TEST_CASE("CUDA: device selection, memory query and cancellation") {
  QWEN35_REQUIRE_GPU();
  const std::string path = fixture("models/tiny-a-nvfp4.gguf");
  {
    Model autom(path, QWEN35_DEVICE_AUTO);
    CHECK(qwen35_model_device(autom.m) == QWEN35_DEVICE_CUDA);
    Model cpu(path, QWEN35_DEVICE_CPU);
    CHECK(qwen35_model_device(cpu.m) == QWEN35_DEVICE_CPU);
    CHECK(qwen35_model_device_bytes(cpu.m) == 0);
  }
  qwen35_model_params p = qwen35_model_default_params();
  p.n_gpu_layers = 0;
  qwen35_model* m = nullptr;
  REQUIRE(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_OK);
  CHECK(qwen35_model_device(m) == QWEN35_DEVICE_CPU);
  qwen35_model_free(m);
  p = qwen35_model_default_params();
  p.device = QWEN35_DEVICE_CUDA;
  p.device_index = 99;
  CHECK(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_ERR_INVALID_ARG);
  CHECK(m == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("99") != std::string::npos);
  uint64_t fr = 0, tot = 0;
  REQUIRE(qwen35_cuda_memory_info(0, &fr, &tot) == QWEN35_OK);
  CHECK(tot > 0);
  CHECK(fr <= tot);
  CHECK(qwen35_cuda_memory_info(99, &fr, &tot) == QWEN35_ERR_INVALID_ARG);

  // Cancellation between layers keeps the state exact.
  qwen35::SynthConfig cfg;
  cfg.n_embd = 512;
  cfg.n_ff = 2048;
  cfg.n_layer = 16;
  cfg.n_vocab = 2000;
  Model big(synth_model("abort-model-gpu", cfg));
  Ctx ctx(big.m, 8192, false, 4096);
  std::vector<int32_t> s(10, 3);
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 9, QWEN35_LOGITS_NONE) == QWEN35_OK);
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
  std::vector<float> want(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 2000);
  std::vector<int32_t> longp(8000, 7);
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    qwen35_context_abort(ctx.c);
  });
  const qwen35_status st = qwen35_context_decode(ctx.c, longp.data(), 8000, QWEN35_LOGITS_LAST);
  killer.join();
  if (st == QWEN35_ERR_CANCELLED) {
    CHECK(qwen35_context_n_past(ctx.c) == 10);
  } else {
    MESSAGE("the long decode finished before the abort arrived");
    CHECK(st == QWEN35_OK);
  }
  REQUIRE(qwen35_context_truncate(ctx.c, 9) == QWEN35_OK);
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
  CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 2000) < 1e-6);
}

TEST_CASE("without a usable GPU, device=CUDA fails cleanly and AUTO runs on the CPU") {
  if (qwen35::CudaAvailable()) return;  // covered by the cases above
  const std::string path = fixture("models/tiny-a-nvfp4.gguf");
  qwen35_model_params p = qwen35_model_default_params();
  p.device = QWEN35_DEVICE_CUDA;
  qwen35_model* m = nullptr;
  CHECK(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_ERR_UNSUPPORTED);
  CHECK(m == nullptr);
  p.device = QWEN35_DEVICE_AUTO;
  REQUIRE(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_OK);
  CHECK(qwen35_model_device(m) == QWEN35_DEVICE_CPU);
  qwen35_model_free(m);
  uint64_t fr = 0, tot = 0;
  CHECK(qwen35_cuda_memory_info(0, &fr, &tot) == QWEN35_ERR_UNSUPPORTED);
}

TEST_CASE("CUDA: graphs and PDL change nothing; the fast kernels agree with the generic ones") {
  QWEN35_REQUIRE_GPU();
  const std::string path = fixture("models/tiny-m-nvfp4.gguf");
  auto s = read_seqs(fixture("logits/seqs.txt"))[1];
  auto run_steps = [&](qwen35_model* m) {
    Ctx ctx(m, 512, true);
    std::vector<float> all;
    for (int i = 0; i < 20; ++i) {
      REQUIRE(qwen35_context_decode(ctx.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      all.insert(all.end(), qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 4122);
    }
    // An MTP draft too (the head's own path).
    const float* d = nullptr;
    REQUIRE(qwen35_context_mtp_draft(ctx.c, 7, &d) == QWEN35_OK);
    all.insert(all.end(), d, d + 4122);
    return all;
  };
  Model fast(path);
  const auto with_graphs = run_steps(fast.m);
  std::vector<float> eager;
  {
    EnvVar g("QWEN35_CUDA_GRAPHS", "0"), p("QWEN35_CUDA_PDL", "0");
    eager = run_steps(fast.m);
  }
  CHECK(std::memcmp(with_graphs.data(), eager.data(), eager.size() * 4) == 0);
  std::vector<float> generic;
  {
    EnvVar f("QWEN35_CUDA_FAST", "0");
    Model slow(path);
    generic = run_steps(slow.m);
  }
  double worst = 0;
  for (size_t r = 0; r * 4122 < generic.size(); ++r)
    worst = std::max(worst, rel_err(with_graphs.data() + r * 4122, generic.data() + r * 4122, 4122));
  MESSAGE("fast vs generic decode kernels: worst relative difference " << worst);
  CHECK(worst < 5e-2);
}

TEST_CASE("CUDA: every decode-kernel variant agrees with the generic kernels; graphs equal eager launches for each") {
  QWEN35_REQUIRE_GPU();
  const std::string path = fixture("models/tiny-m-nvfp4.gguf");
  auto s = read_seqs(fixture("logits/seqs.txt"))[1];
  auto run_steps = [&](qwen35_model* m) {
    Ctx ctx(m, 512, true);
    std::vector<float> all;
    for (int i = 0; i < 12; ++i) {
      REQUIRE(qwen35_context_decode(ctx.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      all.insert(all.end(), qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 4122);
    }
    const float* d = nullptr;
    REQUIRE(qwen35_context_mtp_draft(ctx.c, 7, &d) == QWEN35_OK);
    all.insert(all.end(), d, d + 4122);
    return all;
  };
  std::vector<float> generic;
  {
    EnvVar f("QWEN35_CUDA_FAST", "0");
    Model slow(path);
    generic = run_steps(slow.m);
  }
  const qwen35::cuda::DecodeTuning saved = qwen35::cuda::decode_tuning();
  std::vector<qwen35::cuda::DecodeTuning> variants;
  qwen35::cuda::DecodeTuning t;
  t.fp4_kernel = 1;
  t.q6k_kernel = 1;
  variants.push_back(t);
  t.fp4_kernel = 2;
  t.q6k_kernel = 2;
  for (auto [w, bps, d] : {std::tuple{4, 4, 8}, std::tuple{8, 32, 16}, std::tuple{4, 1, 4}}) {
    t.fp4_warps = w;
    t.fp4_blocks_per_sm = bps;
    t.fp4_depth = d;
    variants.push_back(t);
  }
  t.fp4_kernel = 3;
  t.fp4_warps = 4;
  for (auto [bps, st, lean, cluster] : {std::tuple{4, 4, 0, 0}, std::tuple{32, 4, 0, 0}, std::tuple{1, 2, 1, 0},
                                        std::tuple{8, 2, 1, 0}, std::tuple{4, 4, 0, 1}, std::tuple{32, 2, 1, 1},
                                        std::tuple{2, 8, 0, 0}}) {
    t.fp4_blocks_per_sm = bps;
    t.fp4_stages = st;
    t.fp4_lean = lean;
    t.fp4_cluster = cluster;
    variants.push_back(t);
  }
  t.fp4_late_pdl = 1;  // the PDL trigger after the stream (graphs: the same ordering)
  variants.push_back(t);
  t.fp4_late_pdl = 0;
  t.fp4_x_l1 = 1;  // the activation rows into L1 first (the same values)
  variants.push_back(t);
  t.fp4_x_l1 = 0;
  for (int persist : {1, 2, 3, 4}) {  // persistent launches (graphs and eager: the same launches; 4: stage tables)
    t.fp4_persist = persist;
    variants.push_back(t);
  }
  t.fp4_persist_slices = 1;  // (mode 4 waiting by column slice: mode 4's bits, checked below)
  variants.push_back(t);
  t.fp4_persist_slices = 0;
  t.fp4_persist = 0;
  std::vector<float> persist4;
  for (const auto& v : variants) {
    CAPTURE(qwen35::cuda::describe(v));
    qwen35::cuda::set_decode_tuning(v);
    Model fast(path);  // the Q6_K layout is chosen at upload
    const auto graphs = run_steps(fast.m);
    std::vector<float> eager;
    {
      EnvVar g("QWEN35_CUDA_GRAPHS", "0"), p("QWEN35_CUDA_PDL", "0");
      eager = run_steps(fast.m);
    }
    CHECK(std::memcmp(graphs.data(), eager.data(), eager.size() * 4) == 0);
    if (v.fp4_persist == 4 && !v.fp4_persist_slices) persist4 = graphs;
    if (v.fp4_persist_slices) CHECK(graphs == persist4);
    double worst = 0;
    for (size_t r = 0; r * 4122 < generic.size(); ++r)
      worst = std::max(worst, rel_err(graphs.data() + r * 4122, generic.data() + r * 4122, 4122));
    MESSAGE(qwen35::cuda::describe(v) << " vs generic kernels: worst relative difference " << worst);
    CHECK(worst < 5e-2);
  }
  qwen35::cuda::set_decode_tuning(saved);
}

TEST_CASE("CUDA: prefill with the dequantization ahead (or cached) equals the row-block path") {
  QWEN35_REQUIRE_GPU();
  // The NVFP4 fixture (with its MTP layer), a Q4_K model (k-quant tiles,
  // stacks in one) and a mixed-type model (parts of several types and
  // layouts, one GEMM per run of one scale).
  qwen35::SynthConfig q4k;
  q4k.matrix_type = qwen35::GGML_Q4_K;
  q4k.n_vocab = 4122;
  q4k.seed = 8;
  qwen35::SynthConfig mixed = q4k;
  mixed.mixed = true;
  mixed.seed = 9;
  const std::vector<std::string> paths = {fixture("models/tiny-m-nvfp4.gguf"), synth_model("deq-ahead-q4k", q4k),
                                          synth_model("deq-ahead-mixed", mixed)};
  const auto s = read_seqs(fixture("logits/seqs.txt"))[2];  // 300 tokens
  for (const std::string& path : paths) {
    CAPTURE(path);
    Model m(path);
    REQUIRE(qwen35_model_n_vocab(m.m) == 4122);
    auto run = [&](int n_batch) {
      Ctx c(m.m, 512, true, n_batch);
      REQUIRE(qwen35_context_decode(c.c, s.data(), int(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
      std::vector<float> out;
      for (int i = 0; i < int(s.size()); i += 37)
        out.insert(out.end(), qwen35_context_logits(c.c, i), qwen35_context_logits(c.c, i) + 4122);
      const float* d = nullptr;
      REQUIRE(qwen35_context_mtp_draft(c.c, 42, &d) == QWEN35_OK);
      out.insert(out.end(), d, d + 4122);
      return out;
    };
    // Chunks of 64 rows: the prefetch chain wraps from the MTP layer to layer 0.
    for (int n_batch : {512, 64}) {
      CAPTURE(n_batch);
      std::vector<float> blocks;
      {
        EnvVar e("QWEN35_CUDA_DEQ_AHEAD", "0");
        blocks = run(n_batch);
      }
      for (bool cache : {false, true}) {
        CAPTURE(cache);
        std::vector<float> ahead;
        {
          EnvVar e("QWEN35_CUDA_DEQ_CACHE", cache ? "1" : "0");
          ahead = run(n_batch);
        }
        // One GEMM per projection instead of row blocks: equal up to the GEMM's rounding.
        double worst = 0;
        for (size_t r = 0; r * 4122 < blocks.size(); ++r)
          worst = std::max(worst, rel_err(ahead.data() + r * 4122, blocks.data() + r * 4122, 4122));
        MESSAGE((cache ? "cached weights" : "dequantization ahead") << " vs row blocks: worst relative difference "
                                                                   << worst);
        CHECK(worst < 1e-4);
      }
    }
  }
}

TEST_CASE("CUDA: the tiled attention and every delta-rule thread split agree with the first kernels") {
  QWEN35_REQUIRE_GPU();
  // F32 GEMMs: no BF16 rounding of activations to amplify the F32
  // summation-order differences between the kernels.
  EnvVar f32("QWEN35_CUDA_GEMM", "f32");
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  const auto s = read_seqs(fixture("logits/seqs.txt"))[2];  // 300 tokens
  const int n_pre = 290;
  // Rows of a 290-token prefill (chunks of 128: the tiled kernel with and
  // without n_past), then 10 one-token steps and an MTP draft.
  auto run = [&](std::vector<float>* pre, std::vector<float>* steps) {
    Ctx c(m.m, 512, true, 128);
    REQUIRE(qwen35_context_decode(c.c, s.data(), n_pre, QWEN35_LOGITS_ALL) == QWEN35_OK);
    for (int i = 0; i < n_pre; i += 29)
      pre->insert(pre->end(), qwen35_context_logits(c.c, i), qwen35_context_logits(c.c, i) + 4122);
    for (int i = n_pre; i < int(s.size()); ++i) {
      REQUIRE(qwen35_context_decode(c.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      steps->insert(steps->end(), qwen35_context_logits(c.c, -1), qwen35_context_logits(c.c, -1) + 4122);
    }
    const float* d = nullptr;
    REQUIRE(qwen35_context_mtp_draft(c.c, 42, &d) == QWEN35_OK);
    steps->insert(steps->end(), d, d + 4122);
  };
  auto worst_of = [](const std::vector<float>& a, const std::vector<float>& b) {
    double w = 0;
    for (size_t r = 0; r * 4122 < b.size(); ++r) w = std::max(w, rel_err(a.data() + r * 4122, b.data() + r * 4122, 4122));
    return w;
  };
  const qwen35::cuda::DecodeTuning saved = qwen35::cuda::decode_tuning();
  qwen35::cuda::DecodeTuning t = saved;
  std::vector<float> base_pre, base_steps;
  {
    EnvVar e("QWEN35_CUDA_TILED_ATTN", "0");
    t.delta_ept = 32;
    qwen35::cuda::set_decode_tuning(t);
    run(&base_pre, &base_steps);
  }
  for (int ept : {8, 16, 32}) {
    CAPTURE(ept);
    t.delta_ept = ept;
    qwen35::cuda::set_decode_tuning(t);
    std::vector<float> pre, steps;
    run(&pre, &steps);
    const double wp = worst_of(pre, base_pre), ws = worst_of(steps, base_steps);
    MESSAGE("tensor-core tiled attention, " << ept << " delta-rule elements per thread vs split attention, 32: prefill " << wp
                                << ", steps " << ws);
    CHECK(wp < 1e-4);
    // Steps round activations to F16 in the decode kernels: a changed input
    // bit can flip a rounding.
    CHECK(ws < 2e-3);
  }
  // The batch kernels behind a switch: the F32 tiled attention (the
  // tensor-core one is the default), and the chunked delta rule (chunks of
  // 128 rows: two delta-rule chunks each, and a partial one).
  struct Switch {
    const char *var, *value, *what;
  };
  for (const Switch& sw : {Switch{"QWEN35_CUDA_ATTN_MMA", "0", "F32 tiled attention vs split attention"},
                           Switch{"QWEN35_CUDA_DELTA_CHUNKED", "1", "chunked delta rule vs recurrent"}}) {
    const char* what = sw.what;
    EnvVar e(sw.var, sw.value);
    t.delta_ept = 16;
    qwen35::cuda::set_decode_tuning(t);
    std::vector<float> pre, steps;
    run(&pre, &steps);
    const double wp = worst_of(pre, base_pre), ws = worst_of(steps, base_steps);
    MESSAGE(what << ": prefill " << wp << ", steps " << ws);
    CHECK(wp < 1e-4);
    CHECK(ws < 2e-3);
  }
  qwen35::cuda::set_decode_tuning(saved);
}

TEST_CASE("CUDA: decode with the fused attention kernel agrees with the three kernels (steps, MTP verify)") {
  QWEN35_REQUIRE_GPU();
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  const auto s = read_seqs(fixture("logits/seqs.txt"))[1];
  // One-token steps, then a two-row batch (the verify shape) and an MTP draft.
  auto run = [&] {
    Ctx c(m.m, 512, true);
    std::vector<float> all;
    for (int i = 0; i < 10; ++i) {
      REQUIRE(qwen35_context_decode(c.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      all.insert(all.end(), qwen35_context_logits(c.c, -1), qwen35_context_logits(c.c, -1) + 4122);
    }
    REQUIRE(qwen35_context_decode(c.c, &s[10], 2, QWEN35_LOGITS_ALL) == QWEN35_OK);
    for (int i = 0; i < 2; ++i)
      all.insert(all.end(), qwen35_context_logits(c.c, i), qwen35_context_logits(c.c, i) + 4122);
    const float* d = nullptr;
    REQUIRE(qwen35_context_mtp_draft(c.c, 7, &d) == QWEN35_OK);
    all.insert(all.end(), d, d + 4122);
    return all;
  };
  std::vector<float> three;
  {
    EnvVar e("QWEN35_CUDA_FUSED_ATTN", "0");
    three = run();
  }
  const std::vector<float> fused = run();
  double worst = 0;
  for (size_t r = 0; r * 4122 < three.size(); ++r)
    worst = std::max(worst, rel_err(fused.data() + r * 4122, three.data() + r * 4122, 4122));
  MESSAGE("fused vs separate decode attention: worst relative difference " << worst);
  // Equal formulas; a different contraction of a*b+c can flip an F16
  // rounding in the cache or in a decode kernel's activations.
  CHECK(worst < 2e-3);
}

TEST_CASE("CUDA: lazy MTP fill (drafting paused) leaves the same MTP cache as the eager fill") {
  QWEN35_REQUIRE_GPU();
  std::unique_ptr<qwen35::Model> model;
  REQUIRE(qwen35::LoadModel(fixture("models/tiny-m-nvfp4.gguf"), {}, {}, &model).ok());
  REQUIRE(qwen35::UploadModelToCuda(*model, 0, true).ok());
  const int V = model->hp.n_vocab;
  qwen35::ContextOptions o;
  o.n_ctx = 128;
  o.n_batch = 8;  // the backlog flushes itself every 8 rows
  o.use_mtp = true;
  std::vector<int32_t> toks;
  for (int i = 0; i < 40; ++i) toks.push_back((i * 977 + 13) % V);
  auto draft_of = [&](qwen35::Context& c, std::vector<float>* out) {
    const float* dl = nullptr;
    REQUIRE(c.mtp_draft(3, &dl).ok());
    out->assign(dl, dl + V);
  };
  std::vector<float> want, got;
  for (bool lazy : {false, true}) {
    std::unique_ptr<qwen35::Context> c;
    REQUIRE(qwen35::Context::Create(*model, o, &c).ok());
    c->set_mtp_lazy(lazy);
    REQUIRE(c->decode(toks.data(), 5, qwen35::LogitsMode::Last).ok());
    for (int i = 5; i < 40; ++i) {
      REQUIRE(c->decode(&toks[size_t(i)], 1, qwen35::LogitsMode::Last).ok());
      if (i == 21) REQUIRE(c->checkpoint().ok());
    }
    draft_of(*c, lazy ? &got : &want);
  }
  // Batched MTP rows on the GPU round like a prefill, one-row ones like decode.
  CHECK(rel_err(got.data(), want.data(), size_t(V)) < 2e-2);
  CHECK(argmax(got.data(), size_t(V)) == argmax(want.data(), size_t(V)));
}

TEST_CASE("CUDA: NVFP4 per-tensor .scale tensors are applied like on the CPU") {
  QWEN35_REQUIRE_GPU();
  qwen35::SynthConfig c;
  c.n_embd = 128; c.n_ff = 256; c.n_layer = 4; c.head_dim = 64; c.n_rot = 32; c.sections = {6, 5, 5, 0};
  c.ssm_state = 32; c.ssm_dv = 32; c.n_mtp = 0; c.n_vocab = 600; c.seed = 13;
  const std::string plain = synth_model("gpu-scale-plain", c);
  // Copy with scales inside the layers (spec 3.6).
  const std::string scaled = tmp_path("gpu-scale-inner.gguf");
  REQUIRE(copy_gguf_with_f32(plain, scaled, {{"blk.0.ffn_down.scale", {0.75f}}, {"blk.1.ffn_up.scale", {1.5f}},
                                             {"blk.3.attn_output.scale", {0.5f}}}));
  Model gpu(scaled), cpu(scaled, QWEN35_DEVICE_CPU);
  std::vector<int32_t> s;
  for (int i = 0; i < 24; ++i) s.push_back((i * 53 + 5) % 580);
  Ctx g(gpu.m, 128), r(cpu.m, 128, false, 512, true);
  REQUIRE(qwen35_context_decode(g.c, s.data(), int32_t(s.size()), QWEN35_LOGITS_LAST) == QWEN35_OK);
  REQUIRE(qwen35_context_decode(r.c, s.data(), int32_t(s.size()), QWEN35_LOGITS_LAST) == QWEN35_OK);
  CHECK(rel_err(qwen35_context_logits(g.c, -1), qwen35_context_logits(r.c, -1), 600) < 0.08);
}

TEST_CASE("CUDA: sampling candidates selected on the device equal select_topk of the row; Generate samples the same") {
  QWEN35_REQUIRE_GPU();
  qwen35::SynthConfig cfg;
  cfg.n_vocab = 70000;  // the radix search's deeper levels and many blocks
  cfg.seed = 4;
  const std::string path = synth_model("topk-gpu", cfg);
  std::unique_ptr<qwen35::Model> model;
  REQUIRE(qwen35::LoadModel(path, {}, {}, &model).ok());
  REQUIRE(qwen35::UploadModelToCuda(*model, 0, true).ok());
  qwen35::ContextOptions o;
  o.n_ctx = 256;
  o.n_batch = 64;
  o.use_mtp = false;
  const int32_t V = model->hp.n_vocab;
  std::unique_ptr<qwen35::Context> a, b;
  REQUIRE(qwen35::Context::Create(*model, o, &a).ok());
  REQUIRE(qwen35::Context::Create(*model, o, &b).ok());
  REQUIRE(a->backend().device_topk());
  // A prompt (eager or graph by length), then single steps (graphs).
  std::vector<int32_t> toks = {5, 17, 300, 42, 1999, 7, 7, 123, 4000, 65000};
  for (int step = 0; step < 6; ++step) {
    for (int32_t k : {1, 20, 1024}) {
      CAPTURE(step);
      CAPTURE(k);
      qwen35::SamplerOptions so;
      so.temperature = k == 1 ? 0.0f : 0.8f;
      so.top_k = k == 1 ? 0 : k;
      so.repeat_penalty = 1.2f;
      so.presence_penalty = 1.5f;
      so.logit_bias = {{12, 2.5f}, {toks[0], -INFINITY}};
      qwen35::Sampler s(V, so);
      for (int32_t t : toks) s.accept(t);
      qwen35::TopKRequest req;
      REQUIRE(s.topk_request(&req));
      REQUIRE(req.k == k);
      const int32_t* in = step == 0 ? toks.data() : &toks.back();
      const int32_t n = step == 0 ? int32_t(toks.size()) : 1;
      if (k > 1) {  // re-decode the same rows in both contexts
        REQUIRE(a->truncate(a->n_past() - n).ok());
        REQUIRE(b->truncate(b->n_past() - n).ok());
      }
      REQUIRE(a->decode_topk(in, n, req).ok());
      REQUIRE(b->decode(in, n, qwen35::LogitsMode::Last).ok());
      REQUIRE(a->topk(-1));
      std::vector<qwen35::TokenLogit> want, got = a->topk(-1)->best;
      qwen35::select_topk(b->logits(-1), V, req, &want);
      std::sort(got.begin(), got.end(), qwen35::ranks_before);
      REQUIRE(got.size() >= want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        CHECK(got[i].id == want[i].id);
        CHECK(got[i].logit == want[i].logit);
      }
    }
    {
      // Without top-k: the best 1,024 and the normalizer of the adjusted
      // row bit for bit, and the adjusted row itself.
      qwen35::SamplerOptions so;
      so.temperature = 0.9f;
      so.top_p = 0.95f;
      so.presence_penalty = 1.5f;
      so.logit_bias = {{12, 2.5f}};
      qwen35::Sampler s(V, so);
      for (int32_t t : toks) s.accept(t);
      qwen35::TopKRequest req;
      REQUIRE(s.full_request(&req));
      REQUIRE(a->truncate(a->n_past() - 1).ok());
      REQUIRE(b->truncate(b->n_past() - 1).ok());
      REQUIRE(a->decode_topk(&toks.back(), 1, req).ok());
      REQUIRE(b->decode(&toks.back(), 1, qwen35::LogitsMode::Last).ok());
      qwen35::TopKResult want;
      std::vector<float> want_row;
      qwen35::select_candidates(b->logits(-1), V, req, &want, &want_row);
      REQUIRE(a->topk(-1));
      CHECK(std::memcmp(&a->topk(-1)->total, &want.total, sizeof(double)) == 0);
      std::vector<qwen35::TokenLogit> got = a->topk(-1)->best;
      std::sort(got.begin(), got.end(), qwen35::ranks_before);
      REQUIRE(got.size() >= want.best.size());
      for (size_t i = 0; i < want.best.size(); ++i) CHECK(got[i].id == want.best[i].id);
      std::vector<float> row;
      REQUIRE(a->topk_row(-1, &row).ok());
      REQUIRE(row.size() == want_row.size());
      int differ = 0;
      for (size_t i = 0; i < row.size(); ++i)
        differ += std::memcmp(&row[i], &want_row[i], 4) != 0 && !(row[i] != row[i] && want_row[i] != want_row[i]);
      CHECK(differ == 0);
    }
    toks.push_back(int32_t((step * 7919 + 11) % V));
  }
  // Generate on the device path and from copied rows: the same tokens (with
  // MTP: the verify passes' two rows, each with its own request).
  for (float temp : {0.0f, 0.7f, 1.3f})  // 1.3: no top-k (the best 1,024 and the normalizer)
  for (bool mtp : {false, true}) {
    if (mtp && !model->mtp) continue;
    std::vector<int32_t> out[2];
    int32_t cand_steps[2] = {0, 0}, passes = 0;
    for (int pass = 0; pass < 2; ++pass) {
      EnvVar e("QWEN35_TOPK_CANDIDATES", pass == 0 ? "1" : "0");
      qwen35::ContextOptions oo = o;
      oo.use_mtp = mtp;
      std::unique_ptr<qwen35::Context> c;
      REQUIRE(qwen35::Context::Create(*model, oo, &c).ok());
      qwen35::SamplerOptions so;
      so.temperature = temp;
      so.top_k = temp > 1.0f ? 0 : 20;
      so.top_p = temp > 1.0f ? 1.0f : 0.8f;
      so.presence_penalty = 1.5f;
      so.seed = 3;
      qwen35::Sampler s(V, so);
      qwen35::GenerateOptions go;
      go.max_tokens = 32;
      go.ignore_eos = true;
      go.use_mtp = mtp;
      go.on_token = [&](int32_t t, const std::string&) {
        if (t >= 0) out[pass].push_back(t);
        return true;
      };
      qwen35::GenerateStats st;
      qwen35::MtpPolicy always;
      always.min_rate = 0.0;
      const qwen35::Status gs = qwen35::Generate(*c, s, {5, 17, 300, 42}, go, &st, always);
      REQUIRE_MESSAGE(gs.ok(), "temperature ", temp, ", mtp ", mtp, ": ", gs.message());
      cand_steps[pass] = st.n_candidate_steps;
      passes = st.n_main_passes;
    }
    CAPTURE(temp);
    CAPTURE(mtp);
    CHECK(cand_steps[0] == passes + 1);  // the prompt's pass and every step's
    CHECK(cand_steps[1] == 0);
    CHECK(out[0].size() == 32);
    CHECK(out[0] == out[1]);
  }
}
