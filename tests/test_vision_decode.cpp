// Images in the text model (spec vision.md §5): qwen35_context_decode_image
// against explicit decode_embd calls with hand-computed M-RoPE positions,
// text positions after the image, several images, truncation, state
// save/restore, MTP on and off, and errors that leave the context intact.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "bindings/c/handles.h"
#include "qwen35/qwen35.h"
#include "test_util.h"
#include "tokenizer.h"
#include "vision/vision.h"

using namespace qwen35;
using namespace qwen35::vision;
using namespace qwen35::test;

namespace {

struct TextModel {
  qwen35_model* m = nullptr;
  explicit TextModel(const std::string& name) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = QWEN35_DEVICE_CPU;
    REQUIRE_MESSAGE(qwen35_model_load(fixture("models/" + name).c_str(), &p, &m) == QWEN35_OK, qwen35_errmsg());
  }
  ~TextModel() { qwen35_model_free(m); }
  int32_t token(const char* text) const { return m->m->vocab ? m->m->vocab->find(text) : -1; }
};

struct Ctx {
  qwen35_context* c = nullptr;
  explicit Ctx(qwen35_model* m, bool mtp = false, int n_ctx = 256) {
    qwen35_context_params p = qwen35_context_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = 1;
    p.use_mtp = mtp;
    p.mtp_logits = mtp;
    REQUIRE_MESSAGE(qwen35_context_create(m, &p, &c) == QWEN35_OK, qwen35_errmsg());
  }
  ~Ctx() { qwen35_context_free(c); }
  Context& in() { return *c->ctx; }
  void decode(const std::vector<int32_t>& t, qwen35_logits_mode mode = QWEN35_LOGITS_ALL) {
    REQUIRE_MESSAGE(qwen35_context_decode(c, t.data(), int32_t(t.size()), mode) == QWEN35_OK,
                    qwen35_context_errmsg(c));
  }
  std::vector<float> logits(int32_t rows, int32_t V) {
    std::vector<float> out;
    for (int32_t i = 0; i < rows; ++i) {
      const float* l = qwen35_context_logits(c, i);
      REQUIRE(l);
      out.insert(out.end(), l, l + V);
    }
    return out;
  }
};

ImageEmbed encode(const char* name) {
  std::unique_ptr<Mmproj> mp;
  REQUIRE(LoadMmproj(fixture("vision/tiny-vis.mmproj.gguf"), true, Logger{}, &mp).ok());
  Image img;
  REQUIRE(ImageFromFile(fixture(std::string("vision/") + name + ".png"), &img).ok());
  ThreadPool tp(2);
  ImageEmbed e;
  REQUIRE(EncodeImage(*mp, img, VisionOptions::ForProfile(Profile::LlamaCpp), tp, &e).ok());
  return e;
}

qwen35_image_embed* to_handle(const ImageEmbed& e) {
  auto* h = new qwen35_image_embed();
  h->e = e;
  return h;
}

// Spec §5.2 written out by hand: <|vision_start|> at the next text position
// ps; image row (by, bx) at (p0, p0 + by, p0 + bx) with p0 = ps + 1;
// <|vision_end|> and the text after it from p0 + max(nx, ny).
void explicit_image(Context& c, const ImageEmbed& e, int32_t vs, int32_t ve, bool one_d_positions = false,
                    bool one_d_resume = false) {
  REQUIRE(c.decode(&vs, 1, LogitsMode::None).ok());
  const int32_t p0 = c.next_pos();
  std::vector<int32_t> pos;
  for (int32_t by = 0; by < e.ny; ++by)
    for (int32_t bx = 0; bx < e.nx; ++bx) {
      const int32_t m = by * e.nx + bx;
      if (one_d_positions) pos.insert(pos.end(), {p0 + m, p0 + m, p0 + m});
      else pos.insert(pos.end(), {p0, p0 + by, p0 + bx});
    }
  const int32_t resume = one_d_resume ? p0 + e.n_tokens() : p0 + std::max(e.nx, e.ny);
  REQUIRE(c.decode_embd(e.data.data(), e.n_tokens(), pos.data(), resume, LogitsMode::None).ok());
  REQUIRE(c.decode(&ve, 1, LogitsMode::Last).ok());
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

const std::vector<int32_t> kT1 = {785, 3974, 374, 264, 1273};  // text before the image
const std::vector<int32_t> kT2 = {13, 576, 2168, 9};           // text after it
const std::vector<int32_t> kT3 = {1112, 30, 42};

}  // namespace

TEST_CASE("an image enters with M-RoPE positions and text resumes at p0 + max(nx, ny)") {
  TextModel tm("tiny-a-f32.gguf");
  const int32_t V = qwen35_model_n_vocab(tm.m), vs = tm.token("<|vision_start|>"), ve = tm.token("<|vision_end|>");
  REQUIRE(vs >= 0);
  REQUIRE(ve >= 0);
  const ImageEmbed e = encode("wide160x96");  // 5 x 3 tokens
  REQUIRE(e.nx == 5);
  REQUIRE(e.ny == 3);
  qwen35_image_embed* h = to_handle(e);

  Ctx a(tm.m);
  a.decode(kT1, QWEN35_LOGITS_NONE);
  REQUIRE_MESSAGE(qwen35_context_decode_image(a.c, h) == QWEN35_OK, qwen35_context_errmsg(a.c));
  CHECK(qwen35_context_n_past(a.c) == 5 + 1 + 15 + 1);
  // <|vision_start|> at 5, p0 = 6, <|vision_end|> at 6 + 5 = 11, text from 12.
  CHECK(a.in().next_pos() == 12);
  const std::vector<float> ve_logits = a.logits(1, V);
  a.decode(kT2);
  const std::vector<float> la = a.logits(4, V);
  std::vector<int32_t> toks(32);
  REQUIRE(qwen35_context_tokens(a.c, toks.data(), 32) == 26);
  CHECK(toks[5] == vs);
  CHECK(toks[6] == -1);
  CHECK(toks[20] == -1);
  CHECK(toks[21] == ve);
  CHECK(toks[22] == kT2[0]);

  // The same rows through explicit calls give the same logits, bit for bit.
  Ctx b(tm.m);
  b.decode(kT1, QWEN35_LOGITS_NONE);
  explicit_image(b.in(), e, vs, ve);
  CHECK(max_abs_diff(b.logits(1, V), ve_logits) == 0.0);
  b.decode(kT2);
  CHECK(max_abs_diff(b.logits(4, V), la) == 0.0);

  // Controls: 1-D positions for the image rows, or text resuming at p0 + N,
  // change the logits, so the test above does see the position rules.
  Ctx c1(tm.m);
  c1.decode(kT1, QWEN35_LOGITS_NONE);
  explicit_image(c1.in(), e, vs, ve, /*one_d_positions=*/true, /*one_d_resume=*/false);
  c1.decode(kT2);
  const std::vector<float> l1 = c1.logits(4, V);
  CHECK(rel_err(l1.data(), la.data(), la.size()) > 1e-3);
  Ctx c2(tm.m);
  c2.decode(kT1, QWEN35_LOGITS_NONE);
  explicit_image(c2.in(), e, vs, ve, false, /*one_d_resume=*/true);
  c2.decode(kT2);
  const std::vector<float> l2 = c2.logits(4, V);
  CHECK(rel_err(l2.data(), la.data(), la.size()) > 1e-3);
  // And the image itself matters: a different image, different logits.
  const ImageEmbed other = encode("sq128");
  Ctx c3(tm.m);
  c3.decode(kT1, QWEN35_LOGITS_NONE);
  explicit_image(c3.in(), other, vs, ve);
  c3.decode(kT2);
  const std::vector<float> l3 = c3.logits(4, V);
  CHECK(rel_err(l3.data(), la.data(), la.size()) > 1e-3);
  qwen35_image_embed_free(h);
}

TEST_CASE("several images per conversation, and one encoded image reused across contexts") {
  TextModel tm("tiny-a-f32.gguf");
  const int32_t V = qwen35_model_n_vocab(tm.m), vs = tm.token("<|vision_start|>"), ve = tm.token("<|vision_end|>");
  const ImageEmbed wide = encode("wide160x96"), tall = encode("tall64x128");  // advances 5 and 4
  qwen35_image_embed* hw = to_handle(wide);
  qwen35_image_embed* ht = to_handle(tall);
  std::vector<float> first;
  for (int rep = 0; rep < 2; ++rep) {
    Ctx a(tm.m);
    a.decode(kT1, QWEN35_LOGITS_NONE);
    REQUIRE(qwen35_context_decode_image(a.c, hw) == QWEN35_OK);
    a.decode(kT2, QWEN35_LOGITS_NONE);
    REQUIRE(qwen35_context_decode_image(a.c, ht) == QWEN35_OK);
    // 5 text, vs@5, wide p0 = 6, ve@11, T2 12..15, vs@16, tall p0 = 17, ve@21, T3 from 22.
    CHECK(a.in().next_pos() == 22);
    a.decode(kT3);
    const std::vector<float> la = a.logits(3, V);
    if (rep == 0) first = la;
    else CHECK(max_abs_diff(la, first) == 0.0);  // the cached embedding gives the same result again
  }
  Ctx b(tm.m);
  b.decode(kT1, QWEN35_LOGITS_NONE);
  explicit_image(b.in(), wide, vs, ve);
  b.decode(kT2, QWEN35_LOGITS_NONE);
  explicit_image(b.in(), tall, vs, ve);
  b.decode(kT3);
  CHECK(max_abs_diff(b.logits(3, V), first) == 0.0);
  qwen35_image_embed_free(hw);
  qwen35_image_embed_free(ht);
}

TEST_CASE("truncation inside and after an image, and state save/restore, reproduce the logits") {
  TextModel tm("tiny-a-f32.gguf");
  const int32_t V = qwen35_model_n_vocab(tm.m), vs = tm.token("<|vision_start|>"), ve = tm.token("<|vision_end|>");
  const ImageEmbed e = encode("wide160x96");
  qwen35_image_embed* h = to_handle(e);
  Ctx a(tm.m);
  a.decode(kT1, QWEN35_LOGITS_NONE);
  REQUIRE(qwen35_context_decode_image(a.c, h) == QWEN35_OK);
  a.decode(kT2);
  const std::vector<float> want = a.logits(4, V);
  const int32_t p0 = 6;

  // Inside the image: keep 7 of its 15 rows, append the other 8 again.
  REQUIRE(qwen35_context_truncate(a.c, 6 + 7) == QWEN35_OK);
  std::vector<int32_t> pos;
  for (int32_t m = 7; m < 15; ++m) pos.insert(pos.end(), {p0, p0 + m / 5, p0 + m % 5});
  REQUIRE(a.in().decode_embd(e.data.data() + 7 * 256, 8, pos.data(), p0 + 5, LogitsMode::None).ok());
  CHECK(a.in().next_pos() == p0 + 5);
  REQUIRE(a.in().decode(&ve, 1, LogitsMode::None).ok());
  a.decode(kT2);
  CHECK(rel_err(a.logits(4, V).data(), want.data(), want.size()) < 1e-5);

  // After the image rows, before <|vision_end|>: text position p0 + max(nx, ny).
  REQUIRE(qwen35_context_truncate(a.c, 6 + 15) == QWEN35_OK);
  CHECK(a.in().next_pos() == p0 + 5);
  REQUIRE(a.in().decode(&ve, 1, LogitsMode::None).ok());
  a.decode(kT2);
  CHECK(rel_err(a.logits(4, V).data(), want.data(), want.size()) < 1e-5);

  // Before the image: decode it again.
  REQUIRE(qwen35_context_truncate(a.c, 5) == QWEN35_OK);
  REQUIRE(qwen35_context_decode_image(a.c, h) == QWEN35_OK);
  a.decode(kT2);
  CHECK(rel_err(a.logits(4, V).data(), want.data(), want.size()) < 1e-5);

  // State after the image, restored into a fresh context and into this one.
  REQUIRE(qwen35_context_truncate(a.c, 5 + 17) == QWEN35_OK);
  std::vector<uint8_t> state(qwen35_context_state_size(a.c));
  uint64_t written = 0;
  REQUIRE(qwen35_context_state_save(a.c, state.data(), state.size(), &written) == QWEN35_OK);
  Ctx b(tm.m);
  REQUIRE(qwen35_context_state_load(b.c, state.data(), written) == QWEN35_OK);
  CHECK(qwen35_context_n_past(b.c) == 22);
  CHECK(b.in().next_pos() == 12);
  b.decode(kT2);
  CHECK(rel_err(b.logits(4, V).data(), want.data(), want.size()) < 1e-5);
  a.decode(kT3, QWEN35_LOGITS_NONE);
  REQUIRE(qwen35_context_state_load(a.c, state.data(), written) == QWEN35_OK);
  a.decode(kT2);
  CHECK(rel_err(a.logits(4, V).data(), want.data(), want.size()) < 1e-5);
  // Truncating inside a restored image still works (its rows came with the state).
  REQUIRE(qwen35_context_truncate(b.c, 6 + 3) == QWEN35_OK);
  pos.clear();
  for (int32_t m = 3; m < 15; ++m) pos.insert(pos.end(), {p0, p0 + m / 5, p0 + m % 5});
  REQUIRE(b.in().decode_embd(e.data.data() + 3 * 256, 12, pos.data(), p0 + 5, LogitsMode::None).ok());
  REQUIRE(b.in().decode(&ve, 1, LogitsMode::None).ok());
  b.decode(kT2);
  CHECK(rel_err(b.logits(4, V).data(), want.data(), want.size()) < 1e-5);
  qwen35_image_embed_free(h);
}

TEST_CASE("images with MTP on and off") {
  TextModel tm("tiny-m-nvfp4.gguf");
  REQUIRE(qwen35_model_has_mtp(tm.m));
  const int32_t V = qwen35_model_n_vocab(tm.m), vs = tm.token("<|vision_start|>"), ve = tm.token("<|vision_end|>");
  const ImageEmbed e = encode("tall64x128");
  qwen35_image_embed* h = to_handle(e);
  Ctx on(tm.m, /*mtp=*/true), off(tm.m, /*mtp=*/false), expl(tm.m, /*mtp=*/true);
  for (Ctx* c : {&on, &off}) {
    c->decode(kT1, QWEN35_LOGITS_NONE);
    REQUIRE_MESSAGE(qwen35_context_decode_image(c->c, h) == QWEN35_OK, qwen35_context_errmsg(c->c));
    c->decode(kT2);
  }
  expl.decode(kT1, QWEN35_LOGITS_NONE);
  explicit_image(expl.in(), e, vs, ve);
  expl.decode(kT2);
  // The MTP head never changes the main model's logits.
  const std::vector<float> l_on = on.logits(4, V), l_off = off.logits(4, V);
  CHECK(max_abs_diff(l_on, l_off) == 0.0);
  CHECK(max_abs_diff(expl.logits(4, V), l_on) == 0.0);
  // The MTP cache ran over the image rows: the MTP logits of the last call's
  // rows agree with the explicit route, and drafting works after the image.
  const int32_t n_past = qwen35_context_n_past(on.c);
  int checked = 0;
  for (int32_t pos = n_past - 5; pos < n_past; ++pos) {
    const float* a = qwen35_context_mtp_logits(on.c, pos);
    const float* b = qwen35_context_mtp_logits(expl.c, pos);
    if (!a) continue;
    REQUIRE(b);
    CHECK(rel_err(a, b, size_t(V)) == 0.0);
    ++checked;
  }
  CHECK(checked >= 3);
  const float* draft = nullptr;
  REQUIRE(qwen35_context_mtp_draft(on.c, 42, &draft) == QWEN35_OK);
  CHECK(draft != nullptr);
  // An image right after another image's end, with MTP on, still decodes.
  REQUIRE(qwen35_context_decode_image(on.c, h) == QWEN35_OK);
  qwen35_image_embed_free(h);
}

TEST_CASE("decode_image errors leave the context as it was") {
  TextModel tm("tiny-a-f32.gguf");
  const int32_t V = qwen35_model_n_vocab(tm.m);
  const ImageEmbed e = encode("wide160x96");
  qwen35_image_embed* h = to_handle(e);
  // Context full: 5 + 17 rows do not fit in 20.
  Ctx small(tm.m, false, 20);
  small.decode(kT1, QWEN35_LOGITS_NONE);
  CHECK(qwen35_context_decode_image(small.c, h) == QWEN35_ERR_CONTEXT_FULL);
  CHECK(std::string(qwen35_context_errmsg(small.c)).find("17") != std::string::npos);
  CHECK(qwen35_context_n_past(small.c) == 5);
  small.decode(kT2);
  Ctx ref(tm.m);
  ref.decode(kT1, QWEN35_LOGITS_NONE);
  ref.decode(kT2);
  CHECK(max_abs_diff(small.logits(4, V), ref.logits(4, V)) == 0.0);
  // Embeddings of the wrong width; NULL arguments.
  ImageEmbed narrow = e;
  narrow.n_embd = 128;
  narrow.data.resize(size_t(narrow.n_tokens()) * 128);
  qwen35_image_embed* hn = to_handle(narrow);
  CHECK(qwen35_context_decode_image(ref.c, hn) == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_context_errmsg(ref.c)).find("128") != std::string::npos);
  CHECK(qwen35_context_n_past(ref.c) == 9);
  CHECK(qwen35_context_decode_image(ref.c, nullptr) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_context_decode_image(nullptr, h) == QWEN35_ERR_INVALID_ARG);
  // A model without a tokenizer has no vision delimiters.
  Model bare;
  int32_t vs = 0, ve = 0;
  CHECK(VisionTokenIds(bare, &vs, &ve).code() == QWEN35_ERR_UNSUPPORTED);
  qwen35_image_embed_free(hn);
  qwen35_image_embed_free(h);
}
