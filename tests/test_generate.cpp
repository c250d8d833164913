// Generation through the C API: greedy output equals the argmax of reference
// logits, stop conditions (EOG, max tokens, stop strings across token
// boundaries, cancellation from another thread, context overflow), and MTP
// speculative decoding: exact greedy equivalence, unchanged sampling
// distribution, 100% acceptance on a mirror model, ~0% on a random one, and
// the adaptive pause.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "qwen35/qwen35.h"
#include "test_util.h"
#include "unicode.h"

using namespace qwen35::test;

namespace {

struct Model {
  qwen35_model* m = nullptr;
  explicit Model(const std::string& path) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = QWEN35_DEVICE_CPU;
    REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &p, &m) == QWEN35_OK, qwen35_errmsg());
  }
  ~Model() { qwen35_model_free(m); }
};

struct Ctx {
  qwen35_context* c = nullptr;
  Ctx(qwen35_model* m, int n_ctx, bool mtp, bool reference = false) {
    qwen35_context_params p = qwen35_context_default_params();
    p.n_ctx = n_ctx;
    p.use_mtp = mtp;
    p.reference = reference;
    p.n_threads = 2;
    REQUIRE_MESSAGE(qwen35_context_create(m, &p, &c) == QWEN35_OK, qwen35_errmsg());
  }
  ~Ctx() { qwen35_context_free(c); }
};

struct Sampler {
  qwen35_sampler* s = nullptr;
  Sampler(qwen35_model* m, const qwen35_sampler_params& p) {
    REQUIRE(qwen35_sampler_create(m, &p, &s) == QWEN35_OK);
  }
  ~Sampler() { qwen35_sampler_free(s); }
};

struct Out {
  std::vector<int32_t> tokens;
  std::string text;
  int calls = 0;
  std::function<bool(int32_t)> stop_after;
};

bool collect(qwen35_token t, const char* piece, size_t len, void* ud) {
  Out* o = static_cast<Out*>(ud);
  ++o->calls;
  if (t >= 0) o->tokens.push_back(t);
  o->text.append(piece, len);
  return !(o->stop_after && o->stop_after(t));
}

Out generate(qwen35_context* c, qwen35_sampler* s, const std::vector<int32_t>& prompt, int max_tokens, int use_mtp,
             qwen35_generate_stats* stats = nullptr, std::vector<const char*> stops = {},
             qwen35_status want = QWEN35_OK) {
  Out o;
  qwen35_generate_params gp = qwen35_generate_default_params();
  gp.max_tokens = max_tokens;
  gp.use_mtp = use_mtp;
  gp.on_token = collect;
  gp.user_data = &o;
  gp.stop = stops.data();
  gp.n_stop = stops.size();
  qwen35_generate_stats st;
  CHECK(qwen35_generate(c, s, prompt.data(), int32_t(prompt.size()), &gp, &st) == want);
  if (stats) *stats = st;
  return o;
}

std::vector<int32_t> prompt_of(int n, int V, int seed = 1) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(int32_t((i * 131 + seed * 17 + 7) % (V - 30)));
  return p;
}

qwen35::SynthConfig tiny_cfg(uint64_t seed) {
  qwen35::SynthConfig c;
  c.n_vocab = 600;
  c.n_embd = 128;
  c.n_ff = 256;
  c.n_layer = 4;
  c.n_head = 2;
  c.n_head_kv = 1;
  c.head_dim = 64;
  c.n_rot = 32;
  c.sections = {6, 5, 5, 0};
  c.ssm_state = 32;
  c.ssm_dv = 32;
  c.seed = seed;
  return c;
}

}  // namespace

TEST_CASE("greedy generation equals the token-by-token argmax of the reference logits") {
  for (const char* name : {"tiny-a-nvfp4", "tiny-m-nvfp4"}) {
    CAPTURE(name);
    Model m(fixture(std::string("models/") + name + ".gguf"));
    const int V = qwen35_model_n_vocab(m.m);
    auto prompt = read_seqs(fixture("logits/seqs.txt"))[0];
    Ctx ctx(m.m, 256, true, true);
    Sampler s(m.m, qwen35_sampler_greedy_params());
    qwen35_generate_params gp = qwen35_generate_default_params();
    Out o;
    gp.max_tokens = 40;
    gp.ignore_eos = true;
    gp.on_token = collect;
    gp.user_data = &o;
    REQUIRE(qwen35_generate(ctx.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, nullptr) == QWEN35_OK);
    REQUIRE(o.tokens.size() == 40);
    CHECK(qwen35_context_n_past(ctx.c) == int(prompt.size()) + 40);
    // Check with one batch pass of the reference path over prompt + output.
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), o.tokens.begin(), o.tokens.end());
    Ctx check(m.m, 256, false, true);
    REQUIRE(qwen35_context_decode(check.c, all.data(), int32_t(all.size()), QWEN35_LOGITS_ALL) == QWEN35_OK);
    for (size_t i = 0; i < o.tokens.size(); ++i)
      CHECK(argmax(qwen35_context_logits(check.c, int32_t(prompt.size() + i) - 1), size_t(V)) == size_t(o.tokens[i]));
  }
}

TEST_CASE("MTP greedy output is token-for-token identical to plain greedy") {
  std::vector<std::pair<std::string, std::string>> models = {
      {"tiny-m-nvfp4", fixture("models/tiny-m-nvfp4.gguf")},
      {"synth-random", synth_model("gen-random-mtp", tiny_cfg(21))}};
  for (auto& [name, path] : models) {
    CAPTURE(name);
    Model m(path);
    const int V = qwen35_model_n_vocab(m.m);
    for (int plen : {1, 7, 60}) {
      for (int max_tokens : {1, 2, 3, 150}) {
        auto prompt = prompt_of(plen, V, plen + max_tokens);
        Ctx a(m.m, 400, false), b(m.m, 400, true);
        Sampler sa(m.m, qwen35_sampler_greedy_params()), sb(m.m, qwen35_sampler_greedy_params());
        qwen35_generate_stats st;
        Out plain = generate(a.c, sa.s, prompt, max_tokens, 0);
        Out spec = generate(b.c, sb.s, prompt, max_tokens, 1, &st);
        CHECK(plain.tokens == spec.tokens);
        CHECK(plain.text == spec.text);
        CHECK(qwen35_context_n_past(a.c) == qwen35_context_n_past(b.c));
        if (max_tokens > 3) CHECK(st.n_drafted > 0);
        // The contexts hold the same state: continuing gives the same tokens.
        Out plain2 = generate(a.c, sa.s, {}, 10, 0);
        Out spec2 = generate(b.c, sb.s, {}, 10, 1);
        CHECK(plain2.tokens == spec2.tokens);
      }
    }
  }
}

TEST_CASE("MTP keeps the sampling distribution (same seed, same tokens; chi-square)") {
  Model m(synth_model("gen-random-mtp", tiny_cfg(21)));
  const int V = qwen35_model_n_vocab(m.m);
  std::map<int32_t, int> ca, cb;
  int identical = 0;
  const int runs = 60;
  for (int seed = 0; seed < runs; ++seed) {
    qwen35_sampler_params sp = qwen35_sampler_default_params(false);
    sp.temperature = 1.5f;  // flat enough that drafts get accepted and rejected
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.presence_penalty = 0.0f;
    sp.seed = uint64_t(seed);
    Sampler sa(m.m, sp), sb(m.m, sp);
    Ctx a(m.m, 200, false), b(m.m, 200, true);
    auto prompt = prompt_of(5, V, seed);
    Out x = generate(a.c, sa.s, prompt, 12, 0);
    Out y = generate(b.c, sb.s, prompt, 12, 1);
    identical += x.tokens == y.tokens;
    for (size_t i = 0; i < x.tokens.size(); ++i) ca[x.tokens[i] % 8]++;
    for (size_t i = 0; i < y.tokens.size(); ++i) cb[y.tokens[i] % 8]++;
  }
  // Each emitted token consumes one draw from the same RNG stream, so equal
  // logits give equal tokens; allow a few runs to diverge on float noise.
  CHECK(identical >= runs - 3);
  double x2 = 0;
  for (int k = 0; k < 8; ++k) {
    const double a = ca[k], b = cb[k];
    if (a + b > 0) x2 += (a - b) * (a - b) / (a + b);
  }
  CHECK(x2 < 24.3);  // chi-square, 7 dof, p = 0.001
}

TEST_CASE("mirror model: 100% greedy acceptance; random model: near 0%") {
  qwen35::SynthConfig mc = tiny_cfg(5);
  mc.mtp_mirror = true;
  Model mirror(synth_model("gen-mirror", mc));
  Model random(synth_model("gen-random-mtp", tiny_cfg(21)));
  for (bool is_mirror : {true, false}) {
    CAPTURE(is_mirror);
    qwen35_model* m = is_mirror ? mirror.m : random.m;
    Ctx c(m, 600, true);
    Sampler s(m, qwen35_sampler_greedy_params());
    qwen35_generate_stats st;
    auto prompt = prompt_of(10, qwen35_model_n_vocab(m));
    qwen35_generate_params gp = qwen35_generate_default_params();
    gp.max_tokens = 200;
    gp.ignore_eos = true;
    gp.use_mtp = 1;
    REQUIRE(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, &st) == QWEN35_OK);
    CHECK(st.n_generated == 200);
    if (is_mirror) {
      CHECK(st.n_drafted > 0);
      CHECK(st.n_accepted == st.n_drafted);
      CHECK(st.n_main_passes <= 101);  // two tokens per main pass
    } else {
      CHECK(double(st.n_accepted) <= 0.1 * st.n_drafted);
      // The adaptive switch pauses drafting: most tokens come from plain passes.
      CHECK(st.n_drafted < 80);
    }
  }
}

TEST_CASE("stop strings are not emitted, even across token boundaries") {
  Model m(fixture("models/tiny-a-nvfp4.gguf"));
  Ctx c(m.m, 256, false);
  Sampler s(m.m, qwen35_sampler_greedy_params());
  auto prompt = read_seqs(fixture("logits/seqs.txt"))[0];
  qwen35_generate_params gp = qwen35_generate_default_params();
  Out full = generate(c.c, s.s, prompt, 30, 0);
  REQUIRE(full.text.size() > 12);
  // Pick a stop string that spans two tokens' text.
  std::string acc;
  size_t boundary = 0;
  for (size_t i = 0; i < full.tokens.size(); ++i) {
    char buf[256];
    int32_t n = qwen35_token_to_piece(m.m, full.tokens[i], buf, sizeof buf, false);
    REQUIRE(n >= 0);
    acc.append(buf, size_t(n));
    if (i >= 2 && n >= 2 && acc.size() >= 6) {
      boundary = acc.size() - size_t(n);
      break;
    }
  }
  REQUIRE(boundary >= 2);
  const std::string stop = full.text.substr(boundary - 2, 4);
  const std::string expect = full.text.substr(0, full.text.find(stop));
  qwen35_context_reset(c.c);
  qwen35_sampler_reset(s.s, UINT64_MAX);
  qwen35_generate_stats st;
  Out o = generate(c.c, s.s, prompt, 30, 0, &st, {stop.c_str()});
  CHECK(st.stop_reason == QWEN35_STOP_STRING);
  CHECK(o.text == expect);
  CHECK(o.text.find(stop) == std::string::npos);
}

TEST_CASE("max tokens, callback stop, EOG, context overflow and abort from another thread") {
  Model m(fixture("models/tiny-m-nvfp4.gguf"));
  auto prompt = read_seqs(fixture("logits/seqs.txt"))[0];
  for (int mtp : {0, 1}) {
    CAPTURE(mtp);
    Sampler s(m.m, qwen35_sampler_greedy_params());
    {
      Ctx c(m.m, 256, true);
      qwen35_generate_stats st;
      Out o = generate(c.c, s.s, prompt, 5, mtp, &st);
      CHECK(st.stop_reason == QWEN35_STOP_MAX_TOKENS);
      CHECK(o.tokens.size() == 5);
      CHECK(st.n_generated == 5);
      CHECK(qwen35_context_n_past(c.c) == int(prompt.size()) + 5);
    }
    {
      Ctx c(m.m, 256, true);
      Out o;
      o.stop_after = [&](int32_t) { return o.tokens.size() >= 3; };
      qwen35_generate_params gp = qwen35_generate_default_params();
      gp.use_mtp = mtp;
      gp.on_token = collect;
      gp.user_data = &o;
      qwen35_generate_stats st;
      REQUIRE(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, &st) == QWEN35_OK);
      CHECK(st.stop_reason == QWEN35_STOP_CANCELLED);
      CHECK(o.tokens.size() == 3);
    }
    {
      // EOG: bias <|im_end|> so it is chosen right away; it is neither emitted nor decoded.
      const int32_t eos = qwen35_token_eos(m.m);
      REQUIRE(eos >= 0);
      qwen35_logit_bias bias{eos, 1000.0f};
      qwen35_sampler_params sp = qwen35_sampler_greedy_params();
      sp.logit_bias = &bias;
      sp.n_logit_bias = 1;
      Sampler se(m.m, sp);
      Ctx c(m.m, 256, true);
      qwen35_generate_stats st;
      Out o = generate(c.c, se.s, prompt, 50, mtp, &st);
      CHECK(st.stop_reason == QWEN35_STOP_EOG);
      CHECK(o.tokens.empty());
      CHECK(qwen35_context_n_past(c.c) == int(prompt.size()));
    }
    {
      Ctx c(m.m, int(prompt.size()) + 6, true);
      qwen35_generate_stats st;
      qwen35_generate_params gp = qwen35_generate_default_params();
      gp.use_mtp = mtp;
      gp.ignore_eos = true;
      REQUIRE(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, &st) == QWEN35_OK);
      CHECK(st.stop_reason == QWEN35_STOP_CONTEXT_FULL);
      CHECK(qwen35_context_n_past(c.c) == qwen35_context_n_ctx(c.c));
      // A prompt that cannot fit is refused and leaves the context as it was.
      CHECK(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, &st) == QWEN35_ERR_CONTEXT_FULL);
      CHECK(qwen35_context_n_past(c.c) == qwen35_context_n_ctx(c.c));
    }
    {
      Ctx c(m.m, 4000, true);
      std::atomic<bool> started{false};
      Out o;
      o.stop_after = [&](int32_t) {
        started = true;
        return false;
      };
      o.stop_after = nullptr;
      qwen35_generate_params gp = qwen35_generate_default_params();
      gp.use_mtp = mtp;
      gp.ignore_eos = true;
      gp.on_token = [](qwen35_token, const char*, size_t, void* ud) {
        static_cast<std::atomic<bool>*>(ud)->store(true);
        return true;
      };
      gp.user_data = &started;
      std::thread killer([&] {
        while (!started.load()) std::this_thread::yield();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        qwen35_context_abort(c.c);
      });
      qwen35_generate_stats st;
      REQUIRE(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, &st) == QWEN35_OK);
      killer.join();
      CHECK(st.stop_reason == QWEN35_STOP_CANCELLED);
      CHECK(st.n_generated < 3900);
      // The context holds the prompt and exactly the emitted tokens, and is
      // usable afterwards.
      const int np = qwen35_context_n_past(c.c);
      CHECK(np == int(prompt.size()) + st.n_generated);
      Out more = generate(c.c, s.s, {}, 2, mtp);
      CHECK(more.tokens.size() == 2);
    }
    for (int after : {1, 3}) {
      // An abort from the callback lands in the next forward pass, the one
      // that would add the emitted token to the context: the token is kept.
      CAPTURE(after);
      Ctx c(m.m, 256, true);
      struct Abort {
        qwen35_context* c;
        int after, seen = 0;
      } ab{c.c, after};
      qwen35_generate_params gp = qwen35_generate_default_params();
      gp.use_mtp = mtp;
      gp.ignore_eos = true;
      gp.on_token = [](qwen35_token t, const char*, size_t, void* ud) {
        auto* a = static_cast<Abort*>(ud);
        if (t >= 0 && ++a->seen == a->after) qwen35_context_abort(a->c);
        return true;
      };
      gp.user_data = &ab;
      qwen35_generate_stats st;
      REQUIRE(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, &st) == QWEN35_OK);
      CHECK(st.stop_reason == QWEN35_STOP_CANCELLED);
      CHECK(st.n_generated >= after);
      CHECK(qwen35_context_n_past(c.c) == int(prompt.size()) + st.n_generated);
    }
  }
}

TEST_CASE("streamed text is valid UTF-8 even when sampled byte tokens are ill-formed") {
  Model m(fixture("models/tiny-a-nvfp4.gguf"));
  int bad_raw = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    CAPTURE(seed);
    Ctx c(m.m, 256, false);
    qwen35_sampler_params sp = qwen35_sampler_default_params(false);
    sp.seed = seed;
    sp.temperature = 1.5f;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    Sampler s(m.m, sp);
    std::vector<std::string> pieces;
    qwen35_generate_params gp = qwen35_generate_default_params();
    gp.max_tokens = 48;
    gp.ignore_eos = true;
    gp.on_token = [](qwen35_token, const char* piece, size_t len, void* ud) {
      static_cast<std::vector<std::string>*>(ud)->emplace_back(piece, len);
      return true;
    };
    gp.user_data = &pieces;
    auto prompt = prompt_of(6, qwen35_model_n_vocab(m.m), int(seed));
    REQUIRE(qwen35_generate(c.c, s.s, prompt.data(), int32_t(prompt.size()), &gp, nullptr) == QWEN35_OK);
    std::vector<qwen35_token> toks(size_t(qwen35_context_n_past(c.c)));
    REQUIRE(qwen35_context_tokens(c.c, toks.data(), int32_t(toks.size())) == int32_t(toks.size()));
    std::string raw;
    for (size_t i = prompt.size(); i < toks.size(); ++i) {
      char buf[256];
      const int32_t n = qwen35_token_to_piece(m.m, toks[i], buf, sizeof buf, false);
      REQUIRE(n >= 0);
      raw.append(buf, size_t(n));
    }
    if (!qwen35::unicode::is_valid_utf8(raw)) ++bad_raw;
    std::string all;
    for (const std::string& p : pieces) {
      CHECK(qwen35::unicode::is_valid_utf8(p));
      all += p;
    }
    CHECK(all == qwen35::unicode::sanitize_utf8(raw));
  }
  MESSAGE(bad_raw << " of 6 generations produced ill-formed bytes");
  CHECK(bad_raw > 0);  // the case the test is about did occur
}

namespace {
// Generations of 40 tokens after a 6-token prompt, one per seed, with the
// backend's sampling candidates (QWEN35_TOPK_CANDIDATES=1) and from the
// copied rows (=0): the same tokens. `bias` adds a bias and a ban.
void check_candidates_ab(qwen35_model* m, qwen35_sampler_params sp, bool bias, std::initializer_list<uint64_t> seeds,
                         int mtp) {
  const int V = qwen35_model_n_vocab(m);
  const qwen35_logit_bias biases[2] = {{3, 4.0f}, {17, -INFINITY}};
  if (bias) {
    sp.logit_bias = biases;
    sp.n_logit_bias = 2;
  }
  std::vector<std::vector<int32_t>> outs;
  for (const char* env : {"1", "0"}) {
    EnvVar e("QWEN35_TOPK_CANDIDATES", env);
    for (uint64_t seed : seeds) {
      sp.seed = seed;
      Sampler s(m, sp);
      Ctx ctx(m, 300, mtp != 0);
      outs.push_back(generate(ctx.c, s.s, prompt_of(6, V, int(seed)), 40, mtp).tokens);
    }
  }
  const size_t n = seeds.size();
  for (size_t i = 0; i < n; ++i) CHECK(outs[i] == outs[i + n]);
  for (size_t i = 0; i < n; ++i) CHECK(outs[i].size() == 40);
}
}  // namespace

TEST_CASE("sampling from backend-selected candidates gives the tokens of sampling from the logits") {
  // The CPU fast path selects the k best adjusted logits itself
  // (Backend::eval_topk), like the GPU; QWEN35_TOPK_CANDIDATES=0 samples
  // from the copied rows instead. Same seed: the same tokens.
  qwen35::SynthConfig mc = tiny_cfg(5);
  mc.mtp_mirror = true;
  Model m(synth_model("gen-mirror", mc));
  struct Case {
    float temp;
    int top_k;
    float presence, repeat;
    bool bias, penalize_prompt;
    int mtp;
  };
  for (const Case& c : {Case{0.8f, 20, 1.5f, 1.0f, false, false, 0}, Case{1.2f, 50, 0.0f, 1.3f, true, false, 0},
                        Case{0.0f, 0, 1.5f, 1.0f, true, false, 0}, Case{0.7f, 20, 1.5f, 1.1f, false, true, 0},
                        Case{1.0f, 20, 0.5f, 1.0f, true, false, 1}}) {
    CAPTURE(c.temp);
    CAPTURE(c.top_k);
    CAPTURE(c.mtp);
    qwen35_sampler_params sp = qwen35_sampler_default_params(false);
    sp.temperature = c.temp;
    sp.top_k = c.top_k;
    sp.top_p = 0.9f;
    sp.presence_penalty = c.presence;
    sp.repeat_penalty = c.repeat;
    sp.penalize_prompt = c.penalize_prompt;
    check_candidates_ab(m.m, sp, c.bias, {1, 2, 3}, c.mtp);
  }
}

TEST_CASE("samplers without top-k: candidates and the normalizer from the backend give the tokens of the rows") {
  // Backend::eval_topk with a temperature returns the best 1,024 adjusted
  // logits and the softmax normalizer (Sampler::full_request); draws that
  // go past them re-sample the whole adjusted row. A 3,000-token vocabulary
  // and hot temperatures make both happen. QWEN35_TOPK_CANDIDATES=0
  // samples from the copied rows instead: the same tokens.
  qwen35::SynthConfig mc = tiny_cfg(8);
  mc.n_vocab = 3000;
  mc.mtp_mirror = true;
  Model m(synth_model("gen-mirror-3000", mc));
  struct Case {
    float temp, top_p, min_p, presence;
    bool bias;
    int mtp;
  };
  for (const Case& c : {Case{0.8f, 0.9f, 0.0f, 1.5f, false, 0}, Case{1.8f, 1.0f, 0.0f, 0.0f, true, 0},
                        Case{2.5f, 1.0f, 0.01f, 0.5f, false, 0}, Case{1.5f, 0.98f, 0.0f, 0.5f, true, 1},
                        Case{3.0f, 1.0f, 0.0f, 0.0f, false, 1}}) {
    CAPTURE(c.temp);
    CAPTURE(c.top_p);
    CAPTURE(c.min_p);
    CAPTURE(c.mtp);
    qwen35_sampler_params sp = qwen35_sampler_default_params(false);
    sp.temperature = c.temp;
    sp.top_k = 0;
    sp.top_p = c.top_p;
    sp.min_p = c.min_p;
    sp.presence_penalty = c.presence;
    check_candidates_ab(m.m, sp, c.bias, {1, 2}, c.mtp);
  }
}
