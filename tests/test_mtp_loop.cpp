// The speculative loop of spec §5.5 on the CPU: greedy decoding with one MTP
// draft per pass (verify with a snapshot, roll back on a rejected draft)
// emits exactly the tokens of plain greedy decoding, and drafting continues
// after a rejection.
#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "context.h"
#include "generate.h"
#include "sampler.h"
#include "model.h"
#include "synth.h"
#include "test_util.h"

using namespace qwen35;
using namespace qwen35::test;

TEST_CASE("greedy MTP speculation equals plain greedy decoding, across rejections") {
  std::unique_ptr<Model> model;
  REQUIRE(LoadModel(fixture("models/tiny-m-nvfp4.gguf"), {}, {}, &model).ok());
  const int V = model->hp.n_vocab;
  ContextOptions o;
  o.n_ctx = 128;
  o.n_batch = 64;
  o.n_threads = 2;
  auto make = [&](bool mtp) {
    ContextOptions oo = o;
    oo.use_mtp = mtp;
    std::unique_ptr<Context> c;
    REQUIRE(Context::Create(*model, oo, &c).ok());
    return c;
  };
  const std::vector<int32_t> prompt = {5, 17, 300, 42, 1999, 7, 7, 123};
  const int n_gen = 24;

  std::vector<int32_t> plain;
  {
    auto c = make(false);
    REQUIRE(c->decode(prompt.data(), int32_t(prompt.size()), LogitsMode::Last).ok());
    int32_t next = int32_t(argmax(c->logits(-1), size_t(V)));
    for (int i = 0; i < n_gen; ++i) {
      plain.push_back(next);
      REQUIRE(c->decode(&next, 1, LogitsMode::Last).ok());
      next = int32_t(argmax(c->logits(-1), size_t(V)));
    }
  }

  std::vector<int32_t> spec;
  int passes = 0, accepted = 0;
  auto c = make(true);
  REQUIRE(c->decode(prompt.data(), int32_t(prompt.size()), LogitsMode::Last).ok());
  int32_t next = int32_t(argmax(c->logits(-1), size_t(V)));
  while (int(spec.size()) < n_gen) {
    const float* dl = nullptr;
    REQUIRE(c->mtp_draft(next, &dl).ok());  // also right after a rollback
    const int32_t draft = int32_t(argmax(dl, size_t(V)));
    const int32_t pair[2] = {next, draft};
    REQUIRE(c->decode_with_snapshot(pair, 2, LogitsMode::All).ok());
    ++passes;
    spec.push_back(next);
    const int32_t y0 = int32_t(argmax(c->logits(0), size_t(V)));
    if (y0 == draft) {
      ++accepted;
      if (int(spec.size()) < n_gen) spec.push_back(draft);
      next = int32_t(argmax(c->logits(1), size_t(V)));
    } else {
      REQUIRE(c->rollback_to_snapshot().ok());
      CHECK(c->n_past() == int(prompt.size() + spec.size()));
      next = y0;
    }
  }
  spec.resize(size_t(n_gen));
  CHECK(spec == plain);
  CHECK(accepted < passes);  // random weights: most drafts are rejected
}

namespace {

// Greedy tokens after `prompt`: plain decoding, one token per pass.
std::vector<int32_t> plain_greedy(const Model& model, const ContextOptions& o, const std::vector<int32_t>& prompt,
                                  int n_gen) {
  ContextOptions oo = o;
  oo.use_mtp = false;
  std::unique_ptr<Context> c;
  REQUIRE(Context::Create(model, oo, &c).ok());
  const int V = model.hp.n_vocab;
  REQUIRE(c->decode(prompt.data(), int32_t(prompt.size()), LogitsMode::Last).ok());
  std::vector<int32_t> out;
  int32_t next = int32_t(argmax(c->logits(-1), size_t(V)));
  for (int i = 0; i < n_gen; ++i) {
    out.push_back(next);
    REQUIRE(c->decode(&next, 1, LogitsMode::Last).ok());
    next = int32_t(argmax(c->logits(-1), size_t(V)));
  }
  return out;
}

}  // namespace

TEST_CASE("speculate_greedy (argmax outputs, fused MTP passes) equals plain greedy decoding; the MTP cache stays exact") {
  // A random model (drafts mostly rejected) and a mirror model (drafts accepted).
  SynthConfig cfg;
  cfg.n_vocab = 1500;
  cfg.mtp_mirror = true;
  cfg.seed = 5;
  const std::string mirror = synth_model("mtp-mirror-spec", cfg);
  for (const std::string& path : {fixture("models/tiny-m-nvfp4.gguf"), mirror}) {
    CAPTURE(path);
    std::unique_ptr<Model> model;
    REQUIRE(LoadModel(path, {}, {}, &model).ok());
    const int V = model->hp.n_vocab;
    ContextOptions o;
    o.n_ctx = 128;
    o.n_batch = 64;
    o.n_threads = 2;
    const std::vector<int32_t> prompt = {5, 17, 300, 42, 1499, 7, 7, 123};
    const int n_gen = 30;
    const auto plain = plain_greedy(*model, o, prompt, n_gen);

    // The speculative loop with ids, as Generate runs it on a GPU.
    std::unique_ptr<Context> c;
    REQUIRE(Context::Create(*model, o, &c).ok());
    REQUIRE(c->decode_argmax(prompt.data(), int32_t(prompt.size()), LogitsMode::Last).ok());
    CHECK(c->logits(-1) == nullptr);
    int32_t next = c->argmax(-1);
    int32_t draft = -1;
    std::vector<int32_t> spec;
    int passes = 0, accepted = 0;
    while (int(spec.size()) < n_gen) {
      if (draft < 0) REQUIRE(c->mtp_draft_argmax(next, &draft).ok());
      SpecStep r;
      REQUIRE(c->speculate_greedy(next, draft, &r).ok());
      ++passes;
      spec.push_back(next);
      if (r.accepted) {
        ++accepted;
        spec.push_back(draft);
      }
      CHECK(c->n_past() == int(prompt.size() + spec.size()));
      next = r.next;
      draft = r.next_draft;
      REQUIRE(draft >= 0);
    }
    spec.resize(size_t(n_gen));
    CHECK(spec == plain);
    MESSAGE(accepted << " of " << passes << " drafts accepted");
    if (path == mirror) CHECK(accepted > passes / 2);

    // The MTP cache it left equals that of the logits loop: the same draft
    // logits for the next token (within the CPU's batch-size rounding).
    const float* dl = nullptr;
    REQUIRE(c->mtp_draft(next, &dl).ok());
    std::vector<float> got(dl, dl + V);
    CHECK(int32_t(argmax(got.data(), size_t(V))) == draft);
    std::unique_ptr<Context> ref;
    REQUIRE(Context::Create(*model, o, &ref).ok());
    std::vector<int32_t> all(prompt);
    all.insert(all.end(), c->tokens().begin() + int64_t(prompt.size()), c->tokens().end());
    REQUIRE(ref->decode(all.data(), int32_t(all.size()), LogitsMode::Last).ok());
    REQUIRE(ref->mtp_draft(next, &dl).ok());
    CHECK(rel_err(got.data(), dl, size_t(V)) < 1e-4);
  }
}

TEST_CASE("lazy MTP fill (drafting paused): waiting rows are computed later, in batches, to the same cache") {
  std::unique_ptr<Model> model;
  REQUIRE(LoadModel(fixture("models/tiny-m-nvfp4.gguf"), {}, {}, &model).ok());
  const int V = model->hp.n_vocab;
  ContextOptions o;
  o.n_ctx = 128;
  o.n_batch = 8;  // the backlog flushes itself every 8 rows
  o.n_threads = 2;
  o.use_mtp = true;
  std::vector<int32_t> toks;
  for (int i = 0; i < 40; ++i) toks.push_back((i * 977 + 13) % V);

  // Reference: every row decoded with an eager MTP fill.
  auto draft_of = [&](Context& c, int32_t next, std::vector<float>* out) {
    const float* dl = nullptr;
    REQUIRE(c.mtp_draft(next, &dl).ok());
    out->assign(dl, dl + V);
  };
  std::unique_ptr<Context> ref;
  REQUIRE(Context::Create(*model, o, &ref).ok());
  REQUIRE(ref->decode(toks.data(), 5, LogitsMode::Last).ok());
  for (int i = 5; i < 40; ++i) REQUIRE(ref->decode(&toks[size_t(i)], 1, LogitsMode::Last).ok());
  std::vector<float> want;
  draft_of(*ref, 3, &want);

  // Lazy: the same token-by-token decodes; logits are unaffected, the draft
  // flushes the backlog first.
  std::unique_ptr<Context> c;
  REQUIRE(Context::Create(*model, o, &c).ok());
  c->set_mtp_lazy(true);
  REQUIRE(c->decode(toks.data(), 5, LogitsMode::Last).ok());
  for (int i = 5; i < 40; ++i) {
    REQUIRE(c->decode(&toks[size_t(i)], 1, LogitsMode::Last).ok());
    if (i == 21) REQUIRE(c->checkpoint().ok());  // a checkpoint flushes too
  }
  std::vector<float> got;
  draft_of(*c, 3, &got);
  CHECK(rel_err(got.data(), want.data(), size_t(V)) < 1e-4);

  // Truncating into rows that waited, then decoding lazily again.
  c->set_mtp_lazy(true);
  for (int i = 0; i < 3; ++i) REQUIRE(c->decode(&toks[size_t(i)], 1, LogitsMode::Last).ok());
  REQUIRE(c->truncate(30).ok());
  for (int i = 30; i < 40; ++i) REQUIRE(c->decode(&toks[size_t(i)], 1, LogitsMode::Last).ok());
  draft_of(*c, 3, &got);
  CHECK(rel_err(got.data(), want.data(), size_t(V)) < 1e-4);
}

TEST_CASE("adaptive drafting: shadow probes after a pause decide whether real drafting resumes") {
  SynthConfig cfg;
  cfg.n_vocab = 1500;
  cfg.mtp_mirror = true;
  cfg.seed = 5;
  const std::string mirror = synth_model("mtp-mirror-spec", cfg);  // drafts always right
  for (const std::string& path : {mirror, fixture("models/tiny-m-nvfp4.gguf")}) {
    CAPTURE(path);
    std::unique_ptr<Model> model;
    REQUIRE(LoadModel(path, {}, {}, &model).ok());
    ContextOptions o;
    o.n_ctx = 256;
    o.n_batch = 64;
    o.n_threads = 2;
    const std::vector<int32_t> prompt = {5, 17, 300, 42, 1499, 7, 7, 123};
    const int n_gen = 80;
    const auto plain = plain_greedy(*model, o, prompt, n_gen);
    for (bool greedy_ids : {true, false}) {
      CAPTURE(greedy_ids);
      std::unique_ptr<Context> c;
      REQUIRE(Context::Create(*model, o, &c).ok());
      SamplerOptions so;  // greedy
      if (!greedy_ids) so.logit_bias = {{1, 0.0f}};  // not a plain argmax: the logits path
      Sampler sampler(model->hp.n_vocab, so);
      GenerateOptions go;
      go.max_tokens = n_gen;
      go.ignore_eos = true;
      std::vector<int32_t> got;
      go.on_token = [&](int32_t t, const std::string&) {
        if (t >= 0) got.push_back(t);
        return true;
      };
      MtpPolicy policy;
      policy.initial_pause = 10;  // start paused: 10 plain tokens, then probes
      GenerateStats gs;
      REQUIRE(Generate(*c, sampler, prompt, go, &gs, policy).ok());
      CHECK(got == plain);  // probes never change the output
      MESSAGE(gs.n_drafted << " drafts, " << gs.n_accepted << " accepted, " << gs.n_main_passes << " main passes");
      if (path == mirror) {
        // 10 plain steps, 4 probes that hit, then real drafting, all accepted.
        CHECK(gs.n_drafted > 20);
        CHECK(gs.n_accepted == gs.n_drafted);
        CHECK(gs.n_main_passes < n_gen - 20);
      } else {
        // Random MTP weights: the probes miss, drafting never resumes.
        CHECK(gs.n_drafted == 0);
        CHECK(gs.n_main_passes == n_gen);
      }
    }
  }
}

TEST_CASE("MTP draft screen (large vocabularies): exact greedy output, the drafts of the full LM head") {
  // 70,000 tokens: above the screen's threshold (the CPU backend screens the
  // Q6_K head for vocabularies of 65,536 or more when the kernel set has it).
  SynthConfig cfg;
  cfg.n_vocab = 70000;
  cfg.mtp_mirror = true;
  cfg.seed = 9;
  const std::string path = synth_model("mtp-mirror-screen", cfg);
  std::unique_ptr<Model> model;
  REQUIRE(LoadModel(path, {}, {}, &model).ok());
  ContextOptions o;
  o.n_ctx = 96;
  o.n_batch = 16;
  o.n_threads = 2;
  const std::vector<int32_t> prompt = {5, 17, 300, 42, 69999, 7, 7, 123};
  const int n_gen = 24;
  const auto plain = plain_greedy(*model, o, prompt, n_gen);
  // The speculative loop with the screen (default) and without it.
  auto run = [&](bool screen, std::vector<int32_t>* drafts, int* accepted) {
    std::unique_ptr<EnvVar> off;
    if (!screen) off = std::make_unique<EnvVar>("QWEN35_MTP_SCREEN", "0");
    std::unique_ptr<Context> c;
    REQUIRE(Context::Create(*model, o, &c).ok());
    REQUIRE(c->decode_argmax(prompt.data(), int32_t(prompt.size()), LogitsMode::Last).ok());
    int32_t next = c->argmax(-1), draft = -1;
    std::vector<int32_t> out;
    *accepted = 0;
    while (int(out.size()) < n_gen) {
      if (draft < 0) REQUIRE(c->mtp_draft_argmax(next, &draft).ok());
      drafts->push_back(draft);
      SpecStep r;
      REQUIRE(c->speculate_greedy(next, draft, &r).ok());
      out.push_back(next);
      if (r.accepted) {
        ++*accepted;
        out.push_back(draft);
      }
      next = r.next;
      draft = r.next_draft;
    }
    out.resize(size_t(n_gen));
    return out;
  };
  std::vector<int32_t> d_screen, d_full;
  int acc_screen = 0, acc_full = 0;
  CHECK(run(true, &d_screen, &acc_screen) == plain);
  CHECK(run(false, &d_full, &acc_full) == plain);
  // Both see the same tokens, so the drafts are comparable one by one: the
  // screen's candidates hold the full head's argmax, so they agree.
  const size_t n = std::min(d_screen.size(), d_full.size());
  size_t same = 0;
  for (size_t i = 0; i < n; ++i) same += d_screen[i] == d_full[i];
  MESSAGE(same << " of " << n << " drafts equal; accepted " << acc_screen << " (screen) vs " << acc_full << " (full)");
  CHECK(same == n);
  CHECK(acc_screen == acc_full);
}

TEST_CASE("sampling candidates: decode_topk keeps select_topk of the row; Generate samples from them") {
  std::unique_ptr<Model> model;
  REQUIRE(LoadModel(fixture("models/tiny-m-nvfp4.gguf"), {}, {}, &model).ok());
  const int32_t V = model->hp.n_vocab;
  ContextOptions o;
  o.n_ctx = 128;
  o.n_threads = 2;
  std::unique_ptr<Context> a, b;
  REQUIRE(Context::Create(*model, o, &a).ok());
  REQUIRE(Context::Create(*model, o, &b).ok());
  REQUIRE(a->backend().device_topk());  // the CPU fast path selects them itself
  const std::vector<int32_t> prompt = {5, 17, 300, 42, 1999, 7};
  SamplerOptions so;
  so.temperature = 0.9f;
  so.top_k = 30;
  so.presence_penalty = 1.5f;
  so.logit_bias = {{12, 2.5f}};
  Sampler s(V, so);
  for (int32_t t : {17, 42, 42}) s.accept(t);
  TopKRequest req;
  REQUIRE(s.topk_request(&req));
  REQUIRE(a->decode_topk(prompt.data(), int32_t(prompt.size()), req).ok());
  REQUIRE(b->decode(prompt.data(), int32_t(prompt.size()), LogitsMode::Last).ok());
  REQUIRE(a->topk(-1));
  CHECK(a->logits(-1) == nullptr);
  std::vector<TokenLogit> want;
  select_topk(b->logits(-1), V, req, &want);
  std::vector<TokenLogit> got = a->topk(-1)->best;
  std::sort(got.begin(), got.end(), ranks_before);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].id == want[i].id);
    CHECK(got[i].logit == want[i].logit);
  }
  // The next plain decode drops them.
  const int32_t t = 9;
  REQUIRE(a->decode(&t, 1, LogitsMode::Last).ok());
  CHECK(a->topk(-1) == nullptr);
  REQUIRE(b->decode(&t, 1, LogitsMode::Last).ok());

  // A verify pass: each row with its own request (the second counts the
  // draft as accepted, as the sampler will when it samples that row).
  const int32_t pair[2] = {77, 1234};
  TopKRequest reqs[2];
  REQUIRE(s.topk_request(&reqs[0]));
  REQUIRE(s.topk_request_after(pair[1], &reqs[1]));
  Sampler s2 = s;
  s2.accept(pair[1]);
  TopKRequest after;
  REQUIRE(s2.topk_request(&after));
  REQUIRE(after.adjust.size() == reqs[1].adjust.size());
  for (size_t i = 0; i < after.adjust.size(); ++i) {
    CHECK(after.adjust[i].id == reqs[1].adjust[i].id);
    CHECK(after.adjust[i].sub == reqs[1].adjust[i].sub);
    CHECK(after.adjust[i].flags == reqs[1].adjust[i].flags);
  }
  REQUIRE(a->decode_with_snapshot_topk(pair, 2, reqs).ok());
  REQUIRE(b->decode_with_snapshot(pair, 2, LogitsMode::All).ok());
  for (int32_t row = 0; row < 2; ++row) {
    CAPTURE(row);
    REQUIRE(a->topk(row));
    select_topk(b->logits(row), V, reqs[row], &want);
    got = a->topk(row)->best;
    std::sort(got.begin(), got.end(), ranks_before);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i].id == want[i].id);
  }
  // Rolling back keeps the context usable.
  REQUIRE(a->rollback_to_snapshot().ok());
  CHECK(a->n_past() == b->n_past() - 1);

  // Generate takes the path for every pass (the prompt's too, and the
  // speculative verify passes) and emits what sampling from the copied rows
  // emits.
  for (bool mtp : {false, true}) {
    CAPTURE(mtp);
    std::vector<int32_t> toks[2];
    for (int pass = 0; pass < 2; ++pass) {
      EnvVar e("QWEN35_TOPK_CANDIDATES", pass == 0 ? "1" : "0");
      ContextOptions oo = o;
      oo.use_mtp = mtp;
      std::unique_ptr<Context> c;
      REQUIRE(Context::Create(*model, oo, &c).ok());
      Sampler gs(V, so);
      GenerateOptions go;
      go.max_tokens = 20;
      go.ignore_eos = true;
      go.use_mtp = mtp;
      go.on_token = [&](int32_t tok, const std::string&) {
        if (tok >= 0) toks[pass].push_back(tok);
        return true;
      };
      GenerateStats st;
      MtpPolicy always;
      always.min_rate = 0.0;  // keep drafting whatever the acceptance
      REQUIRE(Generate(*c, gs, prompt, go, &st, always).ok());
      // The prompt's pass and every step's.
      CHECK(st.n_candidate_steps == (pass == 0 ? st.n_main_passes + 1 : 0));
      if (mtp) CHECK(st.n_drafted > 0);
    }
    CHECK(toks[0].size() == 20);
    CHECK(toks[0] == toks[1]);
  }
}
