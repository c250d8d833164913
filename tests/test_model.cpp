// End-to-end forward pass through the C API: fixture logits (reference and
// default paths, batch and step, MTP), state handling (split prefill,
// truncation, save/load, errors that leave the state intact), determinism and
// other model shapes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "qwen35/qwen35.h"
#include "fixture_logits.h"
#include "test_util.h"

using namespace qwen35::test;

namespace {

struct Model {
  qwen35_model* m = nullptr;
  explicit Model(const std::string& path, qwen35_device dev = QWEN35_DEVICE_CPU) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = dev;
    REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_OK, std::string(qwen35_errmsg()));
  }
  ~Model() { qwen35_model_free(m); }
};

struct Ctx {
  qwen35_context* c = nullptr;
  Ctx(qwen35_model* m, bool reference, int n_ctx = 512, bool mtp = false, int threads = 2, int n_batch = 512) {
    qwen35_context_params p = qwen35_context_default_params();
    p.n_ctx = n_ctx;
    p.reference = reference;
    p.use_mtp = mtp;
    p.mtp_logits = mtp;
    p.n_threads = threads;
    p.n_batch = n_batch;
    REQUIRE_MESSAGE(qwen35_context_create(m, &p, &c) == QWEN35_OK, qwen35_errmsg());
  }
  ~Ctx() { qwen35_context_free(c); }
};

}  // namespace

TEST_CASE("reference path matches the exact fixture logits (batch and step)") {
  for (const char* name : {"tiny-a-f32", "tiny-a-nvfp4", "tiny-m-nvfp4"}) {
    FixtureLogits fx(name);
    Model m(fixture(std::string("models/") + name + ".gguf"));
    const bool mtp = std::string(name) == "tiny-m-nvfp4";
    for (bool step : {false, true}) {
      CAPTURE(name);
      CAPTURE(step);
      Ctx ctx(m.m, true, 512, mtp);
      const FixtureErrors e = run_fixture_cases(ctx.c, fx, step, mtp);
      CHECK(e.main.size() == 374);
      CHECK(worst(e.main) <= 1e-3);
      if (mtp) {
        CHECK(e.mtp.size() == 371);
        CHECK(worst(e.mtp) <= 1e-3);
      }
    }
  }
}

TEST_CASE("default path meets the fixture bar") {
  for (const char* name : {"tiny-a-f32", "tiny-a-nvfp4", "tiny-m-nvfp4"}) {
    FixtureLogits fx(name);
    Model m(fixture(std::string("models/") + name + ".gguf"));
    const bool mtp = std::string(name) == "tiny-m-nvfp4";
    for (bool step : {false, true}) {
      CAPTURE(name);
      CAPTURE(step);
      Ctx ctx(m.m, false, 512, mtp);
      check_fixture_bar(fx, run_fixture_cases(ctx.c, fx, step, mtp), mtp);
    }
  }
}

TEST_CASE("splitting a prompt across calls and chunks gives the same logits") {
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  auto seqs = read_seqs(fixture("logits/seqs.txt"));
  const auto& s = seqs[2];  // 300 tokens
  for (bool reference : {true, false}) {
    Ctx one(m.m, reference, 512, true);
    REQUIRE(qwen35_context_decode(one.c, s.data(), int(s.size()), QWEN35_LOGITS_LAST) == QWEN35_OK);
    std::vector<float> want(qwen35_context_logits(one.c, -1), qwen35_context_logits(one.c, -1) + 4122);
    // Two calls, and a tiny n_batch that forces internal chunking.
    Ctx two(m.m, reference, 512, true, 2, 37);
    REQUIRE(qwen35_context_decode(two.c, s.data(), 123, QWEN35_LOGITS_NONE) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(two.c, s.data() + 123, int(s.size()) - 123, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(qwen35_context_n_past(two.c) == int(s.size()));
    CHECK(rel_err(qwen35_context_logits(two.c, -1), want.data(), 4122) < 1e-5);
    // MTP cache stayed complete: the next draft equals the one-call context's.
    const float *d1 = nullptr, *d2 = nullptr;
    REQUIRE(qwen35_context_mtp_draft(one.c, 42, &d1) == QWEN35_OK);
    std::vector<float> draft1(d1, d1 + 4122);
    REQUIRE(qwen35_context_mtp_draft(two.c, 42, &d2) == QWEN35_OK);
    CHECK(rel_err(d2, draft1.data(), 4122) < 1e-5);
  }
}

TEST_CASE("logits are bitwise reproducible across runs and thread counts") {
  Model m(fixture("models/tiny-a-nvfp4.gguf"));
  auto s = read_seqs(fixture("logits/seqs.txt"))[1];
  std::vector<float> first;
  for (int threads : {1, 2, 3, 2}) {
    Ctx ctx(m.m, false, 512, false, threads);
    REQUIRE(qwen35_context_decode(ctx.c, s.data(), int(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
    std::vector<float> all;
    for (int i = 0; i < int(s.size()); ++i) all.insert(all.end(), qwen35_context_logits(ctx.c, i), qwen35_context_logits(ctx.c, i) + 4122);
    if (first.empty()) first = all;
    else CHECK(std::memcmp(first.data(), all.data(), all.size() * 4) == 0);
  }
}

TEST_CASE("truncate, state save/load and failed calls keep the state exact") {
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  auto s = read_seqs(fixture("logits/seqs.txt"))[2];
  Ctx ctx(m.m, false, 400, true);
  // Uninterrupted run.
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 60, QWEN35_LOGITS_LAST) == QWEN35_OK);
  std::vector<float> want(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 4122);

  SUBCASE("truncate and re-decode") {
    REQUIRE(qwen35_context_truncate(ctx.c, 25) == QWEN35_OK);
    CHECK(qwen35_context_n_past(ctx.c) == 25);
    REQUIRE(qwen35_context_decode(ctx.c, s.data() + 25, 35, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 4122) < 1e-5);
    CHECK(qwen35_context_truncate(ctx.c, 61) == QWEN35_ERR_INVALID_ARG);
    CHECK(qwen35_context_truncate(ctx.c, -1) == QWEN35_ERR_INVALID_ARG);
  }
  SUBCASE("save, continue, load, continue again") {
    std::vector<uint8_t> st(qwen35_context_state_size(ctx.c));
    uint64_t written = 0;
    REQUIRE(qwen35_context_state_save(ctx.c, st.data(), st.size(), &written) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(ctx.c, s.data() + 60, 10, QWEN35_LOGITS_LAST) == QWEN35_OK);
    std::vector<float> after(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 4122);
    // Into a fresh context, and from a file.
    Ctx other(m.m, false, 400, true);
    REQUIRE(qwen35_context_state_load(other.c, st.data(), written) == QWEN35_OK);
    CHECK(qwen35_context_n_past(other.c) == 60);
    REQUIRE(qwen35_context_decode(other.c, s.data() + 60, 10, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(std::memcmp(qwen35_context_logits(other.c, -1), after.data(), after.size() * 4) == 0);
    const std::string path = tmp_path("state.bin");
    REQUIRE(qwen35_context_state_save_file(other.c, path.c_str()) == QWEN35_OK);
    Ctx third(m.m, false, 400, true);
    REQUIRE(qwen35_context_state_load_file(third.c, path.c_str()) == QWEN35_OK);
    CHECK(qwen35_context_n_past(third.c) == 70);
    // Corrupt or foreign states are refused and leave the context untouched.
    std::vector<uint8_t> bad(st.begin(), st.begin() + int64_t(written / 2));
    CHECK(qwen35_context_state_load(third.c, bad.data(), bad.size()) == QWEN35_ERR_FORMAT);
    CHECK(qwen35_context_n_past(third.c) == 70);
    Model other_model(fixture("models/tiny-a-nvfp4.gguf"));
    Ctx foreign(other_model.m, false, 400, false);
    CHECK(qwen35_context_state_load(foreign.c, st.data(), written) != QWEN35_OK);
    CHECK(qwen35_context_state_load(ctx.c, st.data(), 3) == QWEN35_ERR_FORMAT);
  }
  SUBCASE("bad token ids and overflow leave the state intact") {
    int32_t bad[3] = {5, 4122, 7};
    CHECK(qwen35_context_decode(ctx.c, bad, 3, QWEN35_LOGITS_LAST) == QWEN35_ERR_INVALID_ARG);
    CHECK(std::string(qwen35_context_errmsg(ctx.c)).find("4122") != std::string::npos);
    int32_t neg = -3;
    CHECK(qwen35_context_decode(ctx.c, &neg, 1, QWEN35_LOGITS_LAST) == QWEN35_ERR_INVALID_ARG);
    std::vector<int32_t> many(400, 5);
    CHECK(qwen35_context_decode(ctx.c, many.data(), 400, QWEN35_LOGITS_LAST) == QWEN35_ERR_CONTEXT_FULL);
    CHECK(qwen35_context_n_past(ctx.c) == 60);
    REQUIRE(qwen35_context_truncate(ctx.c, 59) == QWEN35_OK);
    REQUIRE(qwen35_context_decode(ctx.c, s.data() + 59, 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
    CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 4122) < 1e-5);
  }
}

TEST_CASE("abort from another thread cancels a long decode and keeps the state") {
  qwen35::SynthConfig cfg;
  cfg.n_embd = 512;
  cfg.n_ff = 2048;
  cfg.n_layer = 8;
  cfg.n_vocab = 2000;
  Model m(synth_model("abort-model", cfg));
  Ctx ctx(m.m, true, 3000, false, 1);
  std::vector<int32_t> s(10, 3);
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 10, QWEN35_LOGITS_LAST) == QWEN35_OK);
  std::vector<float> want(qwen35_context_logits(ctx.c, -1), qwen35_context_logits(ctx.c, -1) + 2000);
  std::vector<int32_t> longp(2000, 7);
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    qwen35_context_abort(ctx.c);
  });
  qwen35_status st = qwen35_context_decode(ctx.c, longp.data(), 2000, QWEN35_LOGITS_LAST);
  killer.join();
  CHECK(st == QWEN35_ERR_CANCELLED);
  CHECK(qwen35_context_n_past(ctx.c) == 10);
  REQUIRE(qwen35_context_truncate(ctx.c, 9) == QWEN35_OK);
  REQUIRE(qwen35_context_decode(ctx.c, s.data(), 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
  CHECK(rel_err(qwen35_context_logits(ctx.c, -1), want.data(), 2000) < 1e-6);
}

TEST_CASE("other shapes and mixed weight types: batch, step and reference agree") {
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
    Model m(synth_model(sh.name, sh.cfg));
    const int V = qwen35_model_n_vocab(m.m);
    std::vector<int32_t> s;
    for (int i = 0; i < 700; ++i) s.push_back((i * 37 + 11) % (V - 20));
    Ctx ref(m.m, true, 800, sh.cfg.n_mtp > 0);
    REQUIRE(qwen35_context_decode(ref.c, s.data(), int(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
    Ctx fast(m.m, false, 800, sh.cfg.n_mtp > 0);
    Ctx step(m.m, false, 800, sh.cfg.n_mtp > 0);
    REQUIRE(qwen35_context_decode(fast.c, s.data(), int(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
    double worst = 0;
    for (int i = 0; i < int(s.size()); ++i) {
      REQUIRE(qwen35_context_decode(step.c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
      const float* r = qwen35_context_logits(ref.c, i);
      for (const float* l : {qwen35_context_logits(fast.c, i), qwen35_context_logits(step.c, -1)}) {
        REQUIRE(l);
        worst = std::max(worst, rel_err(l, r, size_t(V)));
      }
    }
    CHECK(worst < 0.25);
  }
}

namespace {

std::vector<float> all_logits(qwen35_model* m, bool reference, const std::vector<int32_t>& s) {
  Ctx c(m, reference, 128);
  REQUIRE(qwen35_context_decode(c.c, s.data(), int32_t(s.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
  const size_t V = size_t(qwen35_model_n_vocab(m));
  std::vector<float> out;
  for (size_t i = 0; i < s.size(); ++i) {
    const float* l = qwen35_context_logits(c.c, int32_t(i));
    out.insert(out.end(), l, l + V);
  }
  return out;
}

}  // namespace

TEST_CASE("NVFP4 per-tensor .scale tensors multiply the product's output (spec 3.6), on every path") {
  qwen35::SynthConfig c;
  c.n_embd = 128; c.n_ff = 256; c.n_layer = 4; c.head_dim = 64; c.n_rot = 32; c.sections = {6, 5, 5, 0};
  c.ssm_state = 32; c.ssm_dv = 32; c.n_mtp = 0; c.n_vocab = 600; c.seed = 13;
  c.untied = true; c.output_type = qwen35::GGML_NVFP4;  // an NVFP4 LM head: its scale scales the logits
  const std::string plain = synth_model("scale-plain-4l", c);
  std::vector<int32_t> s;
  for (int i = 0; i < 24; ++i) s.push_back((i * 53 + 5) % 580);
  Model a(plain);
  const std::vector<float> ref_a = all_logits(a.m, true, s), fast_a = all_logits(a.m, false, s);

  // output.scale = 2: exactly twice the logits (a power of two), both paths.
  const std::string doubled = tmp_path("scale-output.gguf");
  REQUIRE(copy_gguf_with_f32(plain, doubled, {{"output.scale", {2.0f}}}));
  Model b(doubled);
  const std::vector<float> ref_b = all_logits(b.m, true, s), fast_b = all_logits(b.m, false, s);
  bool exact_ref = true, exact_fast = true;
  for (size_t i = 0; i < ref_a.size(); ++i) {
    exact_ref = exact_ref && ref_b[i] == 2.0f * ref_a[i];
    exact_fast = exact_fast && fast_b[i] == 2.0f * fast_a[i];
  }
  CHECK(exact_ref);
  CHECK(exact_fast);

  // Scales inside the layers change the result; fast and reference agree.
  const std::string inner = tmp_path("scale-inner.gguf");
  REQUIRE(copy_gguf_with_f32(plain, inner, {{"blk.0.ffn_down.scale", {0.75f}}, {"blk.1.ffn_up.scale", {1.5f}},
                                            {"blk.3.attn_output.scale", {0.5f}}}));
  Model d(inner);
  const std::vector<float> ref_d = all_logits(d.m, true, s), fast_d = all_logits(d.m, false, s);
  CHECK(rel_err(ref_d.data(), ref_a.data(), ref_a.size()) > 1e-3);
  CHECK(rel_err(fast_d.data(), ref_d.data(), ref_d.size()) < 0.08);

  // A scale that is not one F32 value is refused.
  const std::string bad = tmp_path("scale-bad.gguf");
  REQUIRE(copy_gguf_with_f32(plain, bad, {{"output.scale", {0.0f, 0.0f}}}));
  qwen35_model* m = nullptr;
  qwen35_model_params p = qwen35_model_default_params();
  p.device = QWEN35_DEVICE_CPU;
  CHECK(qwen35_model_load(bad.c_str(), &p, &m) == QWEN35_ERR_FORMAT);
  CHECK(std::string(qwen35_errmsg()).find("output.scale") != std::string::npos);
}
