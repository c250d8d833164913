// qwen35_chat_generate: multi-turn prefix reuse gives exactly what a fresh
// context gives, images in messages, errors leave the context usable.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "qwen35/qwen35.h"
#include "test_util.h"

using namespace qwen35::test;

namespace {

struct Env {
  qwen35_model* model = nullptr;
  explicit Env(const std::string& path) {
    qwen35_model_params p = qwen35_model_default_params();
    p.device = QWEN35_DEVICE_CPU;
    REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &p, &model) == QWEN35_OK, qwen35_errmsg());
  }
  ~Env() { qwen35_model_free(model); }
  qwen35_context* ctx(bool mtp) const {
    qwen35_context_params p = qwen35_context_default_params();
    p.n_ctx = 1024;
    p.use_mtp = mtp;
    p.n_threads = 2;
    qwen35_context* c = nullptr;
    REQUIRE(qwen35_context_create(model, &p, &c) == QWEN35_OK);
    return c;
  }
};

struct Turn {
  std::string text;
  qwen35_generate_stats stats;
  qwen35_status status;
};

Turn chat(qwen35_context* c, const std::vector<qwen35_chat_message>& msgs, int max_tokens = 12, int thinking = 0) {
  qwen35_sampler_params sp = qwen35_sampler_greedy_params();
  qwen35_sampler* s = nullptr;
  REQUIRE(qwen35_sampler_create(qwen35_context_model(c), &sp, &s) == QWEN35_OK);
  Turn t;
  qwen35_generate_params gp = qwen35_generate_default_params();
  gp.max_tokens = max_tokens;
  gp.ignore_eos = true;
  gp.on_token = [](qwen35_token, const char* p, size_t n, void* ud) {
    static_cast<std::string*>(ud)->append(p, n);
    return true;
  };
  gp.user_data = &t.text;
  qwen35_chat_params cp = qwen35_chat_default_params();
  cp.enable_thinking = thinking;
  t.status = qwen35_chat_generate(c, s, msgs.data(), msgs.size(), &cp, &gp, &t.stats);
  qwen35_sampler_free(s);
  return t;
}

qwen35_chat_message msg(const char* role, const char* content) {
  qwen35_chat_message m;
  std::memset(&m, 0, sizeof m);
  m.role = role;
  m.content = content;
  return m;
}

}  // namespace

TEST_CASE("multi-turn chat reuses the cached prefix and matches a fresh context") {
  Env env(fixture("models/tiny-m-nvfp4.gguf"));
  for (bool mtp : {false, true}) {
    CAPTURE(mtp);
    qwen35_context* c = env.ctx(mtp);
    std::vector<qwen35_chat_message> msgs = {msg("system", "You are terse."), msg("user", "Name a colour.")};
    Turn t1 = chat(c, msgs);
    REQUIRE(t1.status == QWEN35_OK);
    CHECK(t1.stats.n_generated == 12);
    const int first_prompt = t1.stats.n_prompt;
    std::string reply = t1.text;
    msgs.push_back(msg("assistant", reply.c_str()));
    msgs.push_back(msg("user", "And another one?"));
    Turn t2 = chat(c, msgs);
    REQUIRE(t2.status == QWEN35_OK);
    // Only the new part of the conversation was evaluated.
    CHECK(t2.stats.n_prompt > 0);
    CHECK(t2.stats.n_prompt < first_prompt + 12);
    // A fresh context given the whole conversation produces the same reply.
    qwen35_context* fresh = env.ctx(mtp);
    Turn f = chat(fresh, msgs);
    REQUIRE(f.status == QWEN35_OK);
    CHECK(f.text == t2.text);
    CHECK(qwen35_context_n_past(fresh) == qwen35_context_n_past(c));
    qwen35_context_free(fresh);
    qwen35_context_free(c);
  }
}

TEST_CASE("chat errors are clear and leave the context usable") {
  Env env(fixture("models/tiny-a-nvfp4.gguf"));
  qwen35_context* c = env.ctx(false);
  qwen35_chat_message bad;
  std::memset(&bad, 0, sizeof bad);  // NULL role
  Turn t = chat(c, {bad});
  CHECK(t.status == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_context_errmsg(c)).find("role") != std::string::npos);
  // An image part without an encoded image cannot be generated from.
  qwen35_content_part parts[2] = {{QWEN35_PART_IMAGE, nullptr, nullptr}, {QWEN35_PART_TEXT, "hi", nullptr}};
  qwen35_chat_message m = msg("user", nullptr);
  m.parts = parts;
  m.n_parts = 2;
  t = chat(c, {m});
  CHECK(t.status == QWEN35_ERR_INVALID_ARG);
  t = chat(c, {msg("user", "hello")});
  CHECK(t.status == QWEN35_OK);
  CHECK(t.stats.n_generated == 12);
  qwen35_context_free(c);
}

TEST_CASE("images in chat messages: encoded once, reused across turns") {
  Env env(fixture("models/tiny-a-f32.gguf"));
  qwen35_mmproj* mp = nullptr;
  REQUIRE_MESSAGE(qwen35_mmproj_load(fixture("vision/tiny-vis.mmproj.gguf").c_str(), env.model, nullptr, &mp) ==
                      QWEN35_OK,
                  qwen35_errmsg());
  qwen35_image* img = nullptr;
  REQUIRE(qwen35_image_load_file(fixture("vision/sq128.png").c_str(), &img) == QWEN35_OK);
  qwen35_image_embed* e = nullptr;
  REQUIRE(qwen35_image_encode(mp, img, &e) == QWEN35_OK);
  qwen35_context* c = env.ctx(false);
  qwen35_content_part parts[2] = {{QWEN35_PART_IMAGE, nullptr, e}, {QWEN35_PART_TEXT, "What is this?", nullptr}};
  qwen35_chat_message m = msg("user", nullptr);
  m.parts = parts;
  m.n_parts = 2;
  Turn t1 = chat(c, {m});
  REQUIRE_MESSAGE(t1.status == QWEN35_OK, qwen35_context_errmsg(c));
  // The image rows are in the context.
  std::vector<int32_t> toks(size_t(qwen35_context_n_past(c)));
  qwen35_context_tokens(c, toks.data(), int32_t(toks.size()));
  int image_rows = 0;
  for (int32_t t : toks) image_rows += t < 0;
  CHECK(image_rows == qwen35_image_embed_n_tokens(e));
  // Second turn: the image is part of the reused prefix.
  std::string reply = t1.text;
  std::vector<qwen35_chat_message> msgs = {m, msg("assistant", reply.c_str()), msg("user", "Are you sure?")};
  Turn t2 = chat(c, msgs);
  REQUIRE(t2.status == QWEN35_OK);
  CHECK(t2.stats.n_prompt < 40);
  qwen35_context* fresh = env.ctx(false);
  Turn f = chat(fresh, msgs);
  REQUIRE(f.status == QWEN35_OK);
  CHECK(f.text == t2.text);
  qwen35_context_free(fresh);
  qwen35_context_free(c);
  qwen35_image_embed_free(e);
  qwen35_image_free(img);
  qwen35_mmproj_free(mp);
}
