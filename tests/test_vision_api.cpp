// The LC/REF switches of qwen35_mmproj_params (spec vision.md §0.1, §8)
// through the C API: each switch changes its item and only that, against the
// fixture embeddings of both profiles and against the internal encoder run
// with the VisionOptions the switches should produce.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qwen35/qwen35.h"
#include "test_util.h"
#include "vision/vision.h"

using namespace qwen35;
using namespace qwen35::vision;
using namespace qwen35::test;

namespace {

struct Encoded {
  std::vector<float> data;  // [nx*ny, n_embd]
  int32_t nx = 0, ny = 0, width = 0, height = 0;
};

qwen35_mmproj_params params(bool lc) {
  qwen35_mmproj_params p = qwen35_mmproj_default_params();
  p.llamacpp_compat = lc;
  p.n_threads = 2;
  return p;
}

qwen35_status try_load(const qwen35_mmproj_params& p, qwen35_mmproj** out) {
  return qwen35_mmproj_load(fixture("vision/tiny-vis.mmproj.gguf").c_str(), nullptr, &p, out);
}

// Load the fixture projector with p and encode img through the C API.
Encoded api_encode(const qwen35_mmproj_params& p, const qwen35_image* img) {
  qwen35_mmproj* proj = nullptr;
  REQUIRE_MESSAGE(try_load(p, &proj) == QWEN35_OK, qwen35_errmsg());
  qwen35_image_embed* e = nullptr;
  const qwen35_status st = qwen35_image_encode(proj, img, &e);
  qwen35_mmproj_free(proj);
  REQUIRE_MESSAGE(st == QWEN35_OK, qwen35_errmsg());
  Encoded r;
  qwen35_image_embed_grid(e, &r.nx, &r.ny, &r.width, &r.height);
  const size_t n = size_t(qwen35_image_embed_n_tokens(e)) * size_t(qwen35_image_embed_n_embd(e));
  r.data.assign(qwen35_image_embed_data(e), qwen35_image_embed_data(e) + n);
  qwen35_image_embed_free(e);
  return r;
}

// The same image through the internal encoder with explicit options.
Encoded direct_encode(const VisionOptions& vo, const Image& img) {
  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(fixture("vision/tiny-vis.mmproj.gguf"), true, Logger{}, &mp);
  REQUIRE_MESSAGE(st.ok(), st.message());
  ThreadPool tp(2);
  ImageEmbed e;
  st = EncodeImage(*mp, img, vo, tp, &e);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return Encoded{e.data, e.nx, e.ny, e.width, e.height};
}

bool same(const Encoded& a, const Encoded& b) {
  return a.nx == b.nx && a.ny == b.ny && a.width == b.width && a.height == b.height && a.data.size() == b.data.size() &&
         std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0;
}

double rel(const Encoded& a, const std::vector<float>& b) {
  REQUIRE(a.data.size() == b.size());
  return rel_err(a.data.data(), b.data(), b.size());
}

struct ApiImage {
  qwen35_image* h = nullptr;
  Image img;
  explicit ApiImage(const std::string& path) {
    REQUIRE(qwen35_image_load_file(path.c_str(), &h) == QWEN35_OK);
    REQUIRE(ImageFromFile(path, &img).ok());
  }
  ApiImage(int w, int hgt, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> px(size_t(w) * size_t(hgt) * 3);
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 13 / 7 + rng() % 48) & 255);
    REQUIRE(qwen35_image_from_pixels(px.data(), w, hgt, 3, 0, &h) == QWEN35_OK);
    REQUIRE(ImageFromPixels(px.data(), w, hgt, 3, 0, &img).ok());
  }
  ~ApiImage() { qwen35_image_free(h); }
};

}  // namespace

TEST_CASE("C API vision switches: the defaults are the REF preset") {
  const qwen35_mmproj_params p = qwen35_mmproj_default_params();
  CHECK(!p.llamacpp_compat);
  CHECK(p.preprocess == QWEN35_VISION_PREPROCESS_PRESET);
  CHECK(p.pos_interp == QWEN35_VISION_POS_INTERP_PRESET);
  CHECK(p.merger_gelu == QWEN35_VISION_GELU_PRESET);
  CHECK(p.image_min_tokens == 0);
  CHECK(p.image_max_tokens == 0);
  CHECK(!p.reference);
  // Default params and params == NULL behave alike (REF: the 64-token
  // minimum upscales the 16-token image).
  ApiImage sq(fixture("vision/sq128.png"));
  qwen35_mmproj* proj = nullptr;
  REQUIRE(qwen35_mmproj_load(fixture("vision/tiny-vis.mmproj.gguf").c_str(), nullptr, nullptr, &proj) == QWEN35_OK);
  qwen35_image_embed* e = nullptr;
  REQUIRE(qwen35_image_encode(proj, sq.h, &e) == QWEN35_OK);
  const Encoded def = api_encode(qwen35_mmproj_default_params(), sq.h);
  CHECK(qwen35_image_embed_n_tokens(e) == def.nx * def.ny);
  CHECK(std::memcmp(qwen35_image_embed_data(e), def.data.data(), def.data.size() * sizeof(float)) == 0);
  CHECK(def.nx * def.ny >= 64);
  CHECK(same(def, direct_encode(VisionOptions::ForProfile(Profile::Ref), sq.img)));
  qwen35_image_embed_free(e);
  qwen35_mmproj_free(proj);
}

TEST_CASE("C API vision switches: the presets and the encoder switches against the fixtures") {
  for (const char* name : {"sq128", "wide160x96", "tall64x128"}) {
    CAPTURE(name);
    ApiImage im(fixture(std::string("vision/") + name + ".png"));
    const auto want_lc = read_f32(fixture(std::string("vision/") + name + ".emb.f32"));
    const auto want_ref = read_f32(fixture(std::string("vision/") + name + ".ref.emb.f32"));
    // LC preset. (The fixture sizes pass both preprocessing profiles
    // unchanged once REF's 64-token minimum is lowered to 8.)
    const Encoded lc = api_encode(params(true), im.h);
    CHECK(lc.width == im.img.width);
    CHECK(lc.height == im.img.height);
    CHECK(rel(lc, want_lc) <= 1e-4);
    qwen35_mmproj_params p = params(false);
    p.image_min_tokens = 8;
    const Encoded ref = api_encode(p, im.h);
    CHECK(rel(ref, want_ref) <= 1e-4);

    // The two encoder switches turn one profile into the other.
    p = params(true);
    p.pos_interp = QWEN35_VISION_POS_INTERP_ALIGN_CORNERS;
    p.merger_gelu = QWEN35_VISION_GELU_ERF;
    CHECK(rel(api_encode(p, im.h), want_ref) <= 1e-4);
    p = params(false);
    p.image_min_tokens = 8;
    p.pos_interp = QWEN35_VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS;
    p.merger_gelu = QWEN35_VISION_GELU_TANH;
    CHECK(rel(api_encode(p, im.h), want_lc) <= 1e-4);

    // One switch at a time on the LC preset. The GELU flavour alone moves
    // the output by about 2e-4, the position resampling by 8 % or more where
    // the table is resampled (fixture README); sq128 uses the table as is.
    const bool resampled = std::string(name) != "sq128";
    const double gelu_gap = rel_err(want_lc.data(), want_ref.data(), want_lc.size());
    p = params(true);
    p.merger_gelu = QWEN35_VISION_GELU_ERF;
    const Encoded only_gelu = api_encode(p, im.h);
    CHECK(rel(only_gelu, want_lc) > 5e-5);
    CHECK(rel(only_gelu, want_lc) < 2e-3);
    if (resampled) CHECK(rel(only_gelu, want_ref) > 1e-2);
    else CHECK(rel(only_gelu, want_ref) <= std::max(1e-4, gelu_gap / 10));
    p = params(true);
    p.pos_interp = QWEN35_VISION_POS_INTERP_ALIGN_CORNERS;
    const Encoded only_pos = api_encode(p, im.h);
    if (resampled) {
      CHECK(rel(only_pos, want_lc) > 1e-2);
      // What is left to the REF fixture is the GELU flavour.
      CHECK(rel(only_pos, want_ref) > 5e-5);
      CHECK(rel(only_pos, want_ref) < 2e-3);
    } else {
      CHECK(rel(only_pos, want_lc) <= 1e-4);
    }
    // Neither changes the preprocessing.
    CHECK(only_gelu.width == lc.width);
    CHECK(only_pos.height == lc.height);
  }
}

TEST_CASE("C API vision switches: each one maps to exactly its VisionOptions item") {
  // An odd-sized image: the preprocessing profiles resize it differently.
  ApiImage im(200, 150, 7);
  ApiImage wide(fixture("vision/wide160x96.png"));
  for (bool lc : {false, true}) {
    CAPTURE(lc);
    const VisionOptions base = VisionOptions::ForProfile(lc ? Profile::LlamaCpp : Profile::Ref);
    struct Case {
      const char* what;
      void (*set)(qwen35_mmproj_params*);
      void (*expect)(VisionOptions*);
    };
    const Case cases[] = {
        {"preset only", [](qwen35_mmproj_params*) {}, [](VisionOptions*) {}},
        {"preprocess REF", [](qwen35_mmproj_params* p) { p->preprocess = QWEN35_VISION_PREPROCESS_REF; },
         [](VisionOptions* o) { o->pre.profile = Profile::Ref; }},
        {"preprocess LC", [](qwen35_mmproj_params* p) { p->preprocess = QWEN35_VISION_PREPROCESS_LC; },
         [](VisionOptions* o) { o->pre.profile = Profile::LlamaCpp; }},
        {"pos align corners", [](qwen35_mmproj_params* p) { p->pos_interp = QWEN35_VISION_POS_INTERP_ALIGN_CORNERS; },
         [](VisionOptions* o) { o->pos_interp = PosInterp::AlignCorners; }},
        {"pos half pixel",
         [](qwen35_mmproj_params* p) { p->pos_interp = QWEN35_VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS; },
         [](VisionOptions* o) { o->pos_interp = PosInterp::HalfPixelAntialias; }},
        {"gelu erf", [](qwen35_mmproj_params* p) { p->merger_gelu = QWEN35_VISION_GELU_ERF; },
         [](VisionOptions* o) { o->merger_act = MergerAct::GeluErf; }},
        {"gelu tanh", [](qwen35_mmproj_params* p) { p->merger_gelu = QWEN35_VISION_GELU_TANH; },
         [](VisionOptions* o) { o->merger_act = MergerAct::GeluTanh; }},
        {"min tokens", [](qwen35_mmproj_params* p) { p->image_min_tokens = 40; },
         [](VisionOptions* o) { o->pre.min_tokens = 40; }},
        {"max tokens", [](qwen35_mmproj_params* p) { p->image_max_tokens = 70; },
         [](VisionOptions* o) { o->pre.max_tokens = 70; }},
        {"reference", [](qwen35_mmproj_params* p) { p->reference = true; },
         [](VisionOptions* o) { o->reference = true; }},
    };
    for (const Case& c : cases) {
      CAPTURE(c.what);
      qwen35_mmproj_params p = params(lc);
      c.set(&p);
      VisionOptions want = base;
      c.expect(&want);
      for (const ApiImage* img : {&im, &wide}) CHECK(same(api_encode(p, img->h), direct_encode(want, img->img)));
    }
  }

  // The preprocessing switch alone: REF stretches the odd-sized image, LC
  // letterboxes it (same target size once the token bounds agree), so the
  // embeddings differ while the encoder switches stay LC.
  qwen35_mmproj_params p = params(true);
  p.image_min_tokens = 8;
  const Encoded lc = api_encode(p, im.h);
  p.preprocess = QWEN35_VISION_PREPROCESS_REF;
  const Encoded ref_pre = api_encode(p, im.h);
  CHECK(lc.width == ref_pre.width);
  CHECK(lc.height == ref_pre.height);
  CHECK(rel(ref_pre, lc.data) > 1e-2);
  // ... and its default token bounds: REF's 64-token minimum.
  p.image_min_tokens = 0;
  const Encoded sq_ref_pre = api_encode(p, ApiImage(fixture("vision/sq128.png")).h);
  CHECK(sq_ref_pre.nx * sq_ref_pre.ny >= 64);

  // Token bounds: 15-token image squeezed to at most 8, grown to at least 32.
  p = params(true);
  p.image_max_tokens = 8;
  Encoded small = api_encode(p, wide.h);
  CHECK(small.nx * small.ny <= 8);
  CHECK(small.nx * small.ny >= 1);
  p = params(true);
  p.image_min_tokens = 32;
  Encoded big = api_encode(p, wide.h);
  CHECK(big.nx * big.ny >= 32);
}

TEST_CASE("C API vision switches: bad values are refused at load, older structs get the preset") {
  int not_a_projector = 0;  // *out must be set to NULL on failure
  qwen35_mmproj* proj = reinterpret_cast<qwen35_mmproj*>(&not_a_projector);
  qwen35_mmproj_params p = params(true);
  p.image_min_tokens = -1;
  CHECK(try_load(p, &proj) == QWEN35_ERR_INVALID_ARG);
  CHECK(proj == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("image_min_tokens") != std::string::npos);
  p = params(true);
  p.image_min_tokens = 100;
  p.image_max_tokens = 50;
  CHECK(try_load(p, &proj) == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_errmsg()).find("[100, 50]") != std::string::npos);
  p = params(true);
  p.image_min_tokens = 5000;  // above LC's default maximum of 4096
  CHECK(try_load(p, &proj) == QWEN35_ERR_INVALID_ARG);
  p.llamacpp_compat = false;  // REF's maximum is 16384
  REQUIRE(try_load(p, &proj) == QWEN35_OK);
  qwen35_mmproj_free(proj);
  p = params(false);
  p.pos_interp = qwen35_vision_pos_interp(3);  // (3 is within the enum's value range: no UB)
  CHECK(try_load(p, &proj) == QWEN35_ERR_INVALID_ARG);
  CHECK(std::string(qwen35_errmsg()).find("pos_interp") != std::string::npos);
  p = params(false);
  p.merger_gelu = qwen35_vision_gelu(3);
  CHECK(try_load(p, &proj) == QWEN35_ERR_INVALID_ARG);
  p = params(false);
  p.preprocess = qwen35_vision_preprocess(3);
  CHECK(try_load(p, &proj) == QWEN35_ERR_INVALID_ARG);

  // A caller built against the header before the switches passes a struct
  // that ends at `device`: whatever follows in memory is not read.
  ApiImage im(fixture("vision/tall64x128.png"));
  p = params(true);
  p.struct_size = offsetof(qwen35_mmproj_params, preprocess);
  p.preprocess = qwen35_vision_preprocess(3);
  p.pos_interp = QWEN35_VISION_POS_INTERP_ALIGN_CORNERS;
  p.image_min_tokens = -5;
  const Encoded old = api_encode(p, im.h);
  CHECK(same(old, api_encode(params(true), im.h)));
  CHECK(rel(old, read_f32(fixture("vision/tall64x128.emb.f32"))) <= 1e-4);
}

TEST_CASE("C API vision: AUTO follows the model, qwen35_mmproj_device says where images are encoded") {
  CHECK(qwen35_mmproj_device(nullptr) == QWEN35_DEVICE_CPU);
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CPU;
  qwen35_model* model = nullptr;
  REQUIRE(qwen35_model_load(fixture("models/tiny-a-f32.gguf").c_str(), &mp, &model) == QWEN35_OK);
  const qwen35_mmproj_params p = params(true);  // device AUTO
  CHECK(p.device == QWEN35_DEVICE_AUTO);
  qwen35_mmproj* proj = nullptr;
  REQUIRE(qwen35_mmproj_load(fixture("vision/tiny-vis.mmproj.gguf").c_str(), model, &p, &proj) == QWEN35_OK);
  CHECK(qwen35_mmproj_device(proj) == QWEN35_DEVICE_CPU);  // the model is on the CPU
  qwen35_mmproj_free(proj);
  REQUIRE(try_load(p, &proj) == QWEN35_OK);  // no model: the CPU
  CHECK(qwen35_mmproj_device(proj) == QWEN35_DEVICE_CPU);
  qwen35_mmproj_free(proj);
  qwen35_model_free(model);
}
