// The vision encoder: kernels against their reference twins, preprocessing
// numbers of spec vision.md §6, fixture embeddings (both profiles), other
// encoder shapes (fast vs reference path), image decoding, bad inputs and the
// C API.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#define STBI_WRITE_NO_STDIO
#include <stb/stb_image_write.h>

#include "backend.h"
#include "ggml_types.h"
#include "qwen35/qwen35.h"
#include "quants.h"
#include "test_util.h"
#include "vision/kernels.h"
#include "vision/synth_mmproj.h"
#include "vision/vision.h"

using namespace qwen35;
using namespace qwen35::vision;
using namespace qwen35::test;

namespace {

const char* kImages[] = {"sq128", "wide160x96", "tall64x128"};

std::unique_ptr<Mmproj> load_fixture_mmproj() {
  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(fixture("vision/tiny-vis.mmproj.gguf"), true, Logger{}, &mp);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return mp;
}

Image load_image(const std::string& path) {
  Image img;
  Status st = ImageFromFile(path, &img);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return img;
}

std::vector<uint8_t> random_pixels(int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> px(size_t(w) * size_t(h) * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 7 + rng() % 64) & 255);
  return px;
}

std::string synth_mmproj(const std::string& name, const SynthMmprojConfig& cfg) {
  const std::string path = tmp_path(name + ".mmproj.gguf");
  const std::string part = path + ".part" + std::to_string(::getpid());  // (renamed into place: see synth_model)
  Status st = WriteSynthMmproj(cfg, part);
  REQUIRE_MESSAGE(st.ok(), st.message());
  REQUIRE(std::rename(part.c_str(), path.c_str()) == 0);
  return path;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f);
  if (!b.empty()) REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
  std::fclose(f);
}

void stbi_to_vector(void* ctx, void* data, int size) {
  auto* v = static_cast<std::vector<uint8_t>*>(ctx);
  v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
}

// A random weight of `rows` x `cols` in type t (values ~ U(-1, 1)).
struct TestWeight {
  std::vector<uint8_t> bytes;
  Weight w;
  TestWeight(uint32_t t, int64_t cols, int64_t rows, uint32_t seed) {
    const TypeInfo* ti = type_info(t);
    const uint64_t rb = row_bytes(*ti, cols);
    bytes.resize(rb * uint64_t(rows));
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (float& v : row) v = u(rng);
      quantize_row(t, row.data(), bytes.data() + uint64_t(r) * rb, cols);
    }
    w.type = t;
    w.cols = cols;
    w.rows = rows;
    w.row_bytes = rb;
    w.data = bytes.data();
  }
};

}  // namespace

// ---- kernels ------------------------------------------------------------------

TEST_CASE("fp16 row conversion is bit-exact for every half value") {
  std::vector<uint16_t> h(65536);
  for (size_t i = 0; i < h.size(); ++i) h[i] = uint16_t(i);
  std::vector<float> f(h.size());
  fp16_to_fp32_row(h.data(), f.data(), int64_t(h.size()));
  for (size_t i = 0; i < h.size(); ++i) {
    const float want = fp16_to_fp32(h[i]);
    if (std::isnan(want)) {
      CHECK(std::isnan(f[i]));
    } else {
      uint32_t a, b;
      std::memcpy(&a, &f[i], 4);
      std::memcpy(&b, &want, 4);
      CHECK_MESSAGE(a == b, "half 0x" << std::hex << i);
    }
  }
}

TEST_CASE("GEMM kernels match the reference on every variant and weight type") {
  ThreadPool tp(2);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const std::string& name : gemm_kernel_names()) {
    REQUIRE(select_gemm_kernel(name));
    CAPTURE(name);
    for (uint32_t t : {uint32_t(GGML_F16), uint32_t(GGML_F32), uint32_t(GGML_BF16), uint32_t(GGML_Q8_0)}) {
      for (int64_t K : {int64_t(96), int64_t(320)}) {  // 320: a K block tail
        for (int64_t M : {int64_t(1), int64_t(13)}) {
          const int64_t N = 45;  // panel tail
          CAPTURE(t);
          CAPTURE(K);
          CAPTURE(M);
          TestWeight tw(t, K, N, uint32_t(K + M));
          std::vector<float> x(static_cast<size_t>(M * (K + 3))), bias(static_cast<size_t>(N)),
              y(static_cast<size_t>(M * (N + 2))), yr(y.size());
          for (float& v : x) v = u(rng);
          for (float& v : bias) v = u(rng);
          gemm_weight(x.data(), M, K + 3, tw.w, bias.data(), y.data(), N + 2, tp);
          gemm_weight_ref(x.data(), M, K + 3, tw.w, bias.data(), yr.data(), N + 2, tp);
          for (int64_t m = 0; m < M; ++m)
            CHECK(rel_err(y.data() + m * (N + 2), yr.data() + m * (N + 2), size_t(N)) < 1e-5);
        }
      }
    }
    // The attention product with strided operands and tails in M and N.
    const int64_t M = 11, N = 70, K = 37;
    std::vector<float> A(static_cast<size_t>(M * 40)), B(static_cast<size_t>(K * 75)),
        C(static_cast<size_t>(M * 72)), Cr(C.size());
    for (float& v : A) v = u(rng);
    for (float& v : B) v = u(rng);
    gemm_f32_kn(A.data(), M, 40, B.data(), 75, N, K, 0.5f, C.data(), 72);
    gemm_f32_kn_ref(A.data(), M, 40, B.data(), 75, N, K, 0.5f, Cr.data(), 72);
    for (int64_t m = 0; m < M; ++m) CHECK(rel_err(C.data() + m * 72, Cr.data() + m * 72, size_t(N)) < 1e-5);
  }
  select_gemm_kernel("");
}

TEST_CASE("element-wise kernels match their references") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> x(1000), g(1000), b(1000);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = nd(rng) + 2.0f;
    g[i] = 1.0f + 0.1f * nd(rng);
    b[i] = 0.1f * nd(rng);
  }
  std::vector<float> y(x.size()), yr(x.size());
  layer_norm(x.data(), g.data(), b.data(), int64_t(x.size()), 1e-6f, y.data());
  layer_norm_ref(x.data(), g.data(), b.data(), int64_t(x.size()), 1e-6f, yr.data());
  CHECK(rel_err(y.data(), yr.data(), y.size()) < 1e-6);

  std::vector<float> e = x, er = x;
  e.push_back(-200.0f);  // far tails: exactly 0 / x
  er.push_back(-200.0f);
  e.push_back(200.0f);
  er.push_back(200.0f);
  gelu_tanh(e.data(), int64_t(e.size()));
  gelu_tanh_ref(er.data(), int64_t(er.size()));
  double worst = 0;
  for (size_t i = 0; i < e.size(); ++i) worst = std::max(worst, double(std::fabs(e[i] - er[i])) / (1e-3 + std::fabs(er[i])));
  CHECK(worst < 1e-6);

  std::vector<float> s = x, sr = x;
  softmax(s.data(), int64_t(s.size()));
  softmax_ref(sr.data(), int64_t(sr.size()));
  CHECK(rel_err(s.data(), sr.data(), s.size()) < 1e-6);

  std::vector<float> ge = {-3.0f, -1.0f, 0.0f, 0.5f, 2.0f};
  gelu_erf(ge.data(), int64_t(ge.size()));
  CHECK(ge[0] == doctest::Approx(-0.0040496).epsilon(1e-4));
  CHECK(ge[1] == doctest::Approx(-0.1586553).epsilon(1e-6));
  CHECK(ge[2] == 0.0f);
  CHECK(ge[4] == doctest::Approx(1.9544997).epsilon(1e-6));
}

// ---- preprocessing (spec §6) ----------------------------------------------------

TEST_CASE("smart resize reproduces the table of spec 6.2 for both profiles") {
  struct Row {
    int w, h, lc_w, lc_h, lc_n, pad_x, pad_y, ref_w, ref_h, ref_n;
  };
  const Row rows[] = {
      {640, 480, 640, 480, 300, 0, 0, 640, 480, 300},       {768, 768, 768, 768, 576, 0, 0, 768, 768, 576},
      {1024, 1024, 1024, 1024, 1024, 0, 0, 1024, 1024, 1024}, {800, 600, 800, 608, 475, 0, 4, 800, 608, 475},
      {1000, 750, 992, 736, 713, 5, 0, 992, 736, 713},      {1920, 1080, 1920, 1088, 2040, 0, 4, 1920, 1088, 2040},
      {1280, 720, 1280, 736, 920, 0, 8, 1280, 704, 880},    {300, 200, 288, 192, 54, 0, 0, 320, 224, 70},
      {100, 100, 96, 96, 9, 0, 0, 256, 256, 64},            {4000, 3000, 2336, 1760, 4015, 0, 4, 4000, 3008, 11750},
  };
  for (const Row& r : rows) {
    CAPTURE(r.w);
    CAPTURE(r.h);
    int32_t W = 0, H = 0;
    REQUIRE(SmartResize(r.w, r.h, 32, 8 * 1024, 4096 * 1024, Profile::LlamaCpp, &W, &H).ok());
    CHECK(W == r.lc_w);
    CHECK(H == r.lc_h);
    CHECK((W / 32) * (H / 32) == r.lc_n);
    REQUIRE(SmartResize(r.w, r.h, 32, 64 * 1024, 16384 * 1024, Profile::Ref, &W, &H).ok());
    CHECK(W == r.ref_w);
    CHECK(H == r.ref_h);
    CHECK((W / 32) * (H / 32) == r.ref_n);
  }
  // The letterbox offsets (LC) come from the full preprocessing; small grey
  // images of the same sizes keep this cheap where it matters.
  VisionHParams hp;
  hp.patch = 16;
  hp.merge = 2;
  for (const Row& r : rows) {
    if (int64_t(r.w) * r.h > 2000000) continue;
    Image img;
    img.width = r.w;
    img.height = r.h;
    img.rgb.assign(size_t(r.w) * size_t(r.h) * 3, 128);
    PreprocessOptions po;
    po.profile = Profile::LlamaCpp;
    Preprocessed pre;
    REQUIRE(Preprocess(img, hp, po, &pre).ok());
    CHECK(pre.width == r.lc_w);
    CHECK(pre.height == r.lc_h);
    CHECK(pre.content_x == r.pad_x);
    CHECK(pre.content_y == r.pad_y);
    CHECK(pre.nx * pre.ny == r.lc_n);
  }
  // 1000x750 -> content 982x736 (spec 6.2).
  Image img;
  img.width = 1000;
  img.height = 750;
  img.rgb.assign(size_t(1000) * 750 * 3, 200);
  PreprocessOptions po;
  po.profile = Profile::LlamaCpp;
  Preprocessed pre;
  REQUIRE(Preprocess(img, hp, po, &pre).ok());
  CHECK(pre.content_w == 982);
  CHECK(pre.content_h == 736);
  // Letterbox pixels are black: -1 after normalization; content 200 -> 200/127.5 - 1.
  CHECK(pre.patches[0] == doctest::Approx(-1.0f));
  const int64_t s = patch_seq_index(0, 1, pre.nx);  // patch (0,1) lies inside the content
  CHECK(pre.patches[size_t(s * 768)] == doctest::Approx(200.0 / 127.5 - 1.0).epsilon(1e-6));

  // REF refuses extreme aspect ratios; both refuse empty sizes.
  int32_t W = 0, H = 0;
  CHECK(SmartResize(10000, 40, 32, 65536, 16777216, Profile::Ref, &W, &H).code() == QWEN35_ERR_INVALID_ARG);
  CHECK(SmartResize(0, 40, 32, 8192, 4194304, Profile::LlamaCpp, &W, &H).code() == QWEN35_ERR_INVALID_ARG);
}

TEST_CASE("position table resampling taps match spec 6.3") {
  struct Case {
    int n, i;
    std::vector<Tap> lc, ref;
  };
  const Case cases[] = {
      {40, 0, {{0, 0.78571f}, {1, 0.21429f}}, {{0, 1.0f}}},
      {40, 1, {{1, 0.64286f}, {2, 0.35714f}}, {{1, 0.79487f}, {2, 0.20513f}}},
      {40, 20, {{23, 0.06667f}, {24, 0.73333f}, {25, 0.2f}}, {{24, 0.89744f}, {25, 0.10256f}}},
      {40, 39, {{46, 0.21428f}, {47, 0.78572f}}, {{47, 1.0f}}},
      {30, 1, {{1, 0.25926f}, {2, 0.55556f}, {3, 0.18519f}}, {{1, 0.37931f}, {2, 0.62069f}}},
      {30, 15, {{23, 0.12f}, {24, 0.52f}, {25, 0.36f}}, {{24, 0.68966f}, {25, 0.31034f}}},
      {64, 1, {{0, 0.375f}, {1, 0.625f}}, {{0, 0.25397f}, {1, 0.74603f}}},
      {64, 32, {{23, 0.125f}, {24, 0.875f}}, {{23, 0.12698f}, {24, 0.87302f}}},
  };
  auto same = [](const std::vector<Tap>& got, const std::vector<Tap>& want) {
    REQUIRE(got.size() == want.size());
    for (size_t k = 0; k < got.size(); ++k) {
      CHECK(got[k].src == want[k].src);
      CHECK(got[k].w == doctest::Approx(want[k].w).epsilon(2e-4));
    }
  };
  for (const Case& c : cases) {
    CAPTURE(c.n);
    CAPTURE(c.i);
    same(PosAxisTaps(c.n, 48, PosInterp::HalfPixelAntialias)[size_t(c.i)], c.lc);
    same(PosAxisTaps(c.n, 48, PosInterp::AlignCorners)[size_t(c.i)], c.ref);
  }
  // The native grid is used unchanged by both.
  for (PosInterp m : {PosInterp::HalfPixelAntialias, PosInterp::AlignCorners}) {
    const auto t = PosAxisTaps(48, 48, m);
    for (int i = 0; i < 48; ++i) {
      REQUIRE(t[size_t(i)].size() == 1);
      CHECK(t[size_t(i)][0].src == i);
      CHECK(t[size_t(i)][0].w == doctest::Approx(1.0f));
    }
  }
}

TEST_CASE("patch sequence order and the 640x480 example of spec 6.1") {
  // First four entries are the top-left 2x2 block, then patch (0,2).
  const int32_t mw = 20;
  CHECK(patch_seq_index(0, 0, mw) == 0);
  CHECK(patch_seq_index(0, 1, mw) == 1);
  CHECK(patch_seq_index(1, 0, mw) == 2);
  CHECK(patch_seq_index(1, 1, mw) == 3);
  CHECK(patch_seq_index(0, 2, mw) == 4);
  for (int64_t s = 0; s < 1200; ++s) {
    int32_t py = 0, px = 0;
    patch_of_seq(s, mw, &py, &px);
    CHECK(patch_seq_index(py, px, mw) == s);
  }
  VisionHParams hp;
  hp.patch = 16;
  hp.merge = 2;
  Image img;
  img.width = 640;
  img.height = 480;
  img.rgb = random_pixels(640, 480, 1);
  for (Profile p : {Profile::LlamaCpp, Profile::Ref}) {
    PreprocessOptions po;
    po.profile = p;
    Preprocessed pre;
    REQUIRE(Preprocess(img, hp, po, &pre).ok());
    CHECK(pre.width == 640);
    CHECK(pre.height == 480);
    CHECK(pre.gw == 40);
    CHECK(pre.gh == 30);
    CHECK(pre.nx * pre.ny == 300);
    // No resampling: patch (py, px) pixel (ky, kx) is the source pixel.
    const int32_t py = 7, px = 13, ky = 5, kx = 11;
    const float* v = pre.patches.data() + patch_seq_index(py, px, pre.nx) * 768;
    for (int c = 0; c < 3; ++c)
      CHECK(v[(c * 16 + ky) * 16 + kx] ==
            doctest::Approx(img.pixel(px * 16 + kx, py * 16 + ky)[c] / 127.5 - 1.0).epsilon(1e-6));
  }
  // Positions: vision_start at 3 -> p0 = 4; token m = (4, 4 + m/20, 4 + m%20); text resumes at 24.
  std::vector<int32_t> pos(300 * 3);
  ImagePositions(4, 20, 15, pos.data());
  CHECK(pos[0] == 4);
  CHECK(pos[3 * 299 + 1] == 18);
  CHECK(pos[3 * 19 + 2] == 23);
  CHECK(pos[3 * 21 + 0] == 4);
  CHECK(pos[3 * 21 + 1] == 5);
  CHECK(pos[3 * 21 + 2] == 5);
}

TEST_CASE("vision RoPE: identity at (0, 0), rows drive the first quarter of pairs (spec 6.4)") {
  std::vector<float> c(32), s(32);
  VisionRopeCosSin(0, 0, 64, c.data(), s.data());
  for (int d = 0; d < 32; ++d) {
    CHECK(c[size_t(d)] == 1.0f);
    CHECK(s[size_t(d)] == 0.0f);
  }
  VisionRopeCosSin(0, 7, 64, c.data(), s.data());
  for (int d = 0; d < 16; ++d) CHECK(s[size_t(d)] == 0.0f);  // row 0: pairs 0..15 unrotated
  CHECK(s[16] == doctest::Approx(std::sin(7.0)));             // col 7, frequency 1
  CHECK(c[17] == doctest::Approx(std::cos(7.0 * std::pow(10000.0, -1.0 / 16))));
  VisionRopeCosSin(3, 0, 64, c.data(), s.data());
  CHECK(s[0] == doctest::Approx(std::sin(3.0)));
  CHECK(s[15] == doctest::Approx(std::sin(3.0 * std::pow(10000.0, -15.0 / 16))));
  for (int d = 16; d < 32; ++d) CHECK(s[size_t(d)] == 0.0f);
}

TEST_CASE("LC bilinear resize: identity, corners and truncation") {
  Image src;
  src.width = 3;
  src.height = 2;
  src.rgb = {0, 0, 0, 100, 100, 100, 200, 200, 200, 10, 10, 10, 110, 110, 110, 255, 255, 255};
  Image same;
  ResizeBilinearLC(src, 3, 2, &same);
  CHECK(same.rgb == src.rgb);
  Image up;
  ResizeBilinearLC(src, 5, 3, &up);  // align corners: rx = 0.5, ry = 0.5
  CHECK(up.pixel(0, 0)[0] == 0);
  CHECK(up.pixel(4, 2)[0] == 255);
  CHECK(up.pixel(1, 0)[0] == 50);        // halfway between 0 and 100
  CHECK(up.pixel(1, 1)[0] == 55);        // (0 + 100 + 10 + 110) / 4 = 55
  CHECK(up.pixel(3, 1)[0] == 166);       // (100 + 200 + 110 + 255) / 4 = 166.25 -> truncated
  // REF bicubic: a constant image stays constant; same size is a copy.
  Image flat;
  flat.width = 37;
  flat.height = 23;
  flat.rgb.assign(size_t(37) * 23 * 3, 77);
  Image r;
  ResizeBicubicRef(flat, 64, 96, &r);
  CHECK(r.width == 64);
  CHECK(r.height == 96);
  for (uint8_t v : r.rgb) REQUIRE(v == 77);
  ResizeBicubicRef(flat, 16, 8, &r);
  for (uint8_t v : r.rgb) REQUIRE(v == 77);
  ResizeBicubicRef(src, 3, 2, &r);
  CHECK(r.rgb == src.rgb);
}

// ---- fixture embeddings -----------------------------------------------------------

TEST_CASE("fixture embeddings: LC and REF profiles, fast and reference paths") {
  auto mp = load_fixture_mmproj();
  CHECK(mp->hp.n_embd == 64);
  CHECK(mp->hp.n_block == 2);
  CHECK(mp->hp.pos_grid == 8);
  CHECK(mp->hp.proj_dim == 256);
  CHECK(mp->file->tensors().size() == 34);
  ThreadPool tp(2);
  for (const char* name : kImages) {
    CAPTURE(name);
    const Image img = load_image(fixture(std::string("vision/") + name + ".png"));
    for (bool reference : {false, true}) {
      CAPTURE(reference);
      // LC: the fixtures' sizes pass llama.cpp's preprocessing unchanged.
      VisionOptions lc = VisionOptions::ForProfile(Profile::LlamaCpp);
      lc.reference = reference;
      ImageEmbed e;
      REQUIRE(EncodeImage(*mp, img, lc, tp, &e).ok());
      CHECK(e.width == img.width);
      CHECK(e.height == img.height);
      CHECK(e.nx == img.width / 32);
      CHECK(e.ny == img.height / 32);
      const auto want = read_f32(fixture(std::string("vision/") + name + ".emb.f32"));
      REQUIRE(e.data.size() == want.size());
      CHECK(max_token_rel(e.data, want, 256) <= 1e-4);
      const auto lcpp = read_f32(fixture(std::string("vision/") + name + ".llamacpp.emb.f32"));
      CHECK(max_token_rel(e.data, lcpp, 256) <= 5e-3);

      // REF encoder switches on the same pixels (REF preprocessing would
      // upscale these small images, so its minimum is lowered here).
      VisionOptions ref = VisionOptions::ForProfile(Profile::Ref);
      ref.pre.min_tokens = 8;
      ref.reference = reference;
      ImageEmbed r;
      REQUIRE(EncodeImage(*mp, img, ref, tp, &r).ok());
      const auto want_ref = read_f32(fixture(std::string("vision/") + name + ".ref.emb.f32"));
      REQUIRE(r.data.size() == want_ref.size());
      CHECK(max_token_rel(r.data, want_ref, 256) <= 1e-4);
    }
  }
}

TEST_CASE("the merger GELU switch is applied (tanh vs erf on the native grid)") {
  auto mp = load_fixture_mmproj();
  ThreadPool tp(1);
  const Image img = load_image(fixture("vision/sq128.png"));
  VisionOptions o = VisionOptions::ForProfile(Profile::LlamaCpp);
  ImageEmbed tanh_e, erf_e;
  REQUIRE(EncodeImage(*mp, img, o, tp, &tanh_e).ok());
  o.merger_act = MergerAct::GeluErf;
  REQUIRE(EncodeImage(*mp, img, o, tp, &erf_e).ok());
  const auto want_ref = read_f32(fixture("vision/sq128.ref.emb.f32"));  // sq128: only the GELU differs
  const double d = rel_err(tanh_e.data.data(), erf_e.data.data(), erf_e.data.size());
  CHECK(d > 5e-5);
  CHECK(rel_err(erf_e.data.data(), want_ref.data(), want_ref.size()) < d / 10);
}

TEST_CASE("sequence order after patch embedding (spec 6.4)") {
  auto mp = load_fixture_mmproj();
  ThreadPool tp(1);
  // 128x128 image: the four top-left patches and patch (0,2) get distinct
  // solid colours, the rest grey.
  Image img;
  img.width = img.height = 128;
  img.rgb.assign(size_t(128) * 128 * 3, 128);
  const uint8_t colours[5][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 0}, {0, 255, 255}};
  const int patch_yx[5][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}, {0, 2}};
  for (int k = 0; k < 5; ++k)
    for (int y = 0; y < 16; ++y)
      for (int x = 0; x < 16; ++x)
        std::memcpy(img.rgb.data() + ((size_t(patch_yx[k][0] * 16 + y) * 128) + size_t(patch_yx[k][1] * 16 + x)) * 3,
                    colours[k], 3);
  Preprocessed pre;
  PreprocessOptions po;
  po.profile = Profile::LlamaCpp;
  REQUIRE(Preprocess(img, mp->hp, po, &pre).ok());
  std::vector<float> embd;
  EncoderOptions eo;
  eo.hook = [&](const char* name, int32_t, const float* d, int64_t rows, int64_t cols) {
    if (std::string(name) == "patch_embd") embd.assign(d, d + rows * cols);
  };
  std::vector<float> out(static_cast<size_t>(16 * 256));
  REQUIRE(EncodeCpu(*mp, pre.patches.data(), pre.gw, pre.gh, eo, tp, out.data()).ok());
  REQUIRE(embd.size() == size_t(64 * 64));
  // Expected: bias + sum over the folded kernel of the solid colour.
  const int64_t K = mp->hp.patch_dim();
  const float* W = mp->patch_w_folded.data();
  for (int s = 0; s < 5; ++s) {
    CAPTURE(s);
    std::vector<float> want(64);
    for (int o = 0; o < 64; ++o) {
      double acc = mp->patch_b.data[o];
      for (int c = 0; c < 3; ++c) {
        const double v = colours[s][c] / 127.5 - 1.0;
        for (int k = 0; k < 256; ++k) acc += W[o * K + c * 256 + k] * v;
      }
      want[size_t(o)] = float(acc);
    }
    CHECK(rel_err(embd.data() + s * 64, want.data(), 64) < 1e-5);
  }
}

TEST_CASE("other encoder shapes and resampled images: fast path matches the reference path") {
  // Shapes unlike the fixture's (3 heads of 32, odd FF, 6x6 table, 3 blocks),
  // F16 and Q8_0 matrices; images that need resampling in both profiles.
  ThreadPool tp(2);
  for (uint32_t mt : {uint32_t(GGML_F16), uint32_t(GGML_Q8_0)}) {
    SynthMmprojConfig cfg;
    cfg.n_embd = 96;
    cfg.n_head = 3;
    cfg.n_ff = 160;
    cfg.n_block = 3;
    cfg.pos_grid = 6;
    cfg.proj_dim = 128;
    cfg.matrix_type = mt;
    cfg.seed = 11;
    const std::string path = synth_mmproj(std::string("shape-") + type_info(mt)->name, cfg);
    std::unique_ptr<Mmproj> mp;
    REQUIRE(LoadMmproj(path, true, Logger{}, &mp).ok());
    CHECK(mp->hp.head_dim == 32);
    Image img;
    img.width = 150;
    img.height = 97;
    img.rgb = random_pixels(150, 97, 5);
    for (Profile p : {Profile::LlamaCpp, Profile::Ref}) {
      CAPTURE(int(p));
      VisionOptions fast = VisionOptions::ForProfile(p), ref = fast;
      ref.reference = true;
      if (p == Profile::Ref) fast.pre.min_tokens = ref.pre.min_tokens = 16;  // 160x128: a bicubic stretch
      ImageEmbed a, b;
      REQUIRE(EncodeImage(*mp, img, fast, tp, &a).ok());
      REQUIRE(EncodeImage(*mp, img, ref, tp, &b).ok());
      CHECK(a.nx * a.ny == a.n_tokens());
      CHECK(a.width % 32 == 0);
      CHECK(a.height % 32 == 0);
      CHECK((a.width != 150 || a.height != 97));
      REQUIRE(a.data.size() == b.data.size());
      CHECK(max_token_rel(a.data, b.data, 128) <= 1e-4);
    }
  }
}

TEST_CASE("the fast path gives identical results with 1 and 3 threads") {
  auto mp = load_fixture_mmproj();
  const Image img = load_image(fixture("vision/wide160x96.png"));
  VisionOptions o = VisionOptions::ForProfile(Profile::LlamaCpp);
  ImageEmbed a, b;
  ThreadPool t1(1), t3(3);
  REQUIRE(EncodeImage(*mp, img, o, t1, &a).ok());
  REQUIRE(EncodeImage(*mp, img, o, t3, &b).ok());
  CHECK(a.data == b.data);  // each output element is computed in a fixed order
}

TEST_CASE("qwen35-embed-image writes the fixture format") {
  const std::string out = tmp_path("embed-wide");
  const std::string cmd = std::string(QWEN35_TOOLS_DIR) + "/qwen35-embed-image --mmproj " +
                          fixture("vision/tiny-vis.mmproj.gguf") + " --image " + fixture("vision/wide160x96.png") +
                          " -o " + out + " -t 2";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto got = read_f32(out + ".f32");
  const auto want = read_f32(fixture("vision/wide160x96.emb.f32"));  // default profile: LC
  REQUIRE(got.size() == want.size());
  CHECK(max_token_rel(got, want, 256) <= 1e-4);
  const auto js = read_file(out + ".json");
  const std::string j(js.begin(), js.end());
  for (const char* key : {"\"n_tokens\": 15", "\"n_embd\": 256", "\"nx\": 5", "\"ny\": 3",
                          "\"grid\": {\"nx\": 5, \"ny\": 3}", "\"preprocessed_size\": [160, 96]", "\"n_pos\": 5"})
    CHECK_MESSAGE(j.find(key) != std::string::npos, key);
  const std::string ref_cmd = std::string(QWEN35_TOOLS_DIR) + "/qwen35-embed-image --mmproj " +
                              fixture("vision/tiny-vis.mmproj.gguf") + " --image " +
                              fixture("vision/tall64x128.png") + " -o " + out + " --profile ref --image-min-tokens 8";
  REQUIRE(std::system(ref_cmd.c_str()) == 0);
  const auto got_ref = read_f32(out + ".f32");
  const auto want_ref = read_f32(fixture("vision/tall64x128.ref.emb.f32"));
  REQUIRE(got_ref.size() == want_ref.size());
  CHECK(max_token_rel(got_ref, want_ref, 256) <= 1e-4);
  // Bad input: a clear message and a non-zero exit.
  const std::string bad = std::string(QWEN35_TOOLS_DIR) + "/qwen35-embed-image --mmproj " +
                          fixture("vision/tiny-vis.mmproj.gguf") + " --image /no/such.png -o " + out + " 2>/dev/null";
  CHECK(std::system(bad.c_str()) != 0);
}

// ---- images ---------------------------------------------------------------------

TEST_CASE("image decoding: PNG, JPEG, BMP, PPM, PGM and raw pixels") {
  const int w = 37, h = 21;
  const auto px = random_pixels(w, h, 9);
  std::vector<uint8_t> png, bmp, jpg;
  REQUIRE(stbi_write_png_to_func(stbi_to_vector, &png, w, h, 3, px.data(), w * 3));
  REQUIRE(stbi_write_bmp_to_func(stbi_to_vector, &bmp, w, h, 3, px.data()));
  REQUIRE(stbi_write_jpg_to_func(stbi_to_vector, &jpg, w, h, 3, px.data(), 95));
  std::string ppm_head = "P6\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n";
  std::vector<uint8_t> ppm(ppm_head.begin(), ppm_head.end());
  ppm.insert(ppm.end(), px.begin(), px.end());
  for (auto* bytes : {&png, &bmp, &ppm}) {
    Image img;
    REQUIRE(ImageFromMemory(bytes->data(), bytes->size(), &img).ok());
    CHECK(img.width == w);
    CHECK(img.height == h);
    CHECK(img.rgb == px);
  }
  Image j;
  REQUIRE(ImageFromMemory(jpg.data(), jpg.size(), &j).ok());
  CHECK(j.width == w);
  CHECK(j.height == h);
  // Grey (PGM) is replicated to RGB; RGBA drops alpha.
  std::string pgm_head = "P5\n2 1\n255\n";
  std::vector<uint8_t> pgm(pgm_head.begin(), pgm_head.end());
  pgm.push_back(10);
  pgm.push_back(200);
  Image g;
  REQUIRE(ImageFromMemory(pgm.data(), pgm.size(), &g).ok());
  CHECK(g.rgb == std::vector<uint8_t>{10, 10, 10, 200, 200, 200});
  const uint8_t rgba[] = {1, 2, 3, 9, 4, 5, 6, 9, 0, 0, 7, 8, 9, 9, 10, 11, 12, 9, 0, 0};  // stride 10
  Image r;
  REQUIRE(ImageFromPixels(rgba, 2, 2, 4, 10, &r).ok());
  CHECK(r.rgb == std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  // The fixture PNGs through the file path.
  Image f = load_image(fixture("vision/tall64x128.png"));
  CHECK(f.width == 64);
  CHECK(f.height == 128);
}

TEST_CASE("bad images give clear errors") {
  Image img;
  // Missing file, empty file, garbage, truncated PNG.
  Status st = ImageFromFile("/no/such/image.png", &img);
  CHECK(st.code() == QWEN35_ERR_IO);
  CHECK(st.message().find("/no/such/image.png") != std::string::npos);
  const std::string empty = tmp_path("empty.png");
  write_bytes(empty, {});
  CHECK(ImageFromFile(empty, &img).code() == QWEN35_ERR_FORMAT);
  std::vector<uint8_t> junk(1000);
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = uint8_t(i * 31 + 7);
  st = ImageFromMemory(junk.data(), junk.size(), &img);
  CHECK(st.code() == QWEN35_ERR_FORMAT);
  CHECK(st.message().find("PNG") != std::string::npos);
  std::vector<uint8_t> png = read_file(fixture("vision/sq128.png"));
  std::vector<uint8_t> cut(png.begin(), png.begin() + png.size() / 2);
  CHECK(ImageFromMemory(cut.data(), cut.size(), &img).code() == QWEN35_ERR_FORMAT);
  std::vector<uint8_t> bad = png;
  for (size_t i = 100; i < bad.size(); i += 97) bad[i] ^= 0x5A;  // corrupt the compressed data (CRC/zlib errors)
  CHECK(ImageFromMemory(bad.data(), bad.size(), &img).code() == QWEN35_ERR_FORMAT);
  // Huge and zero dimensions are refused from the header, before decoding.
  const std::string huge_head = "P6\n30000 30000\n255\n";
  std::vector<uint8_t> huge(huge_head.begin(), huge_head.end());
  huge.resize(huge.size() + 64, 0);
  st = ImageFromMemory(huge.data(), huge.size(), &img);
  CHECK(st.code() != QWEN35_OK);
  CHECK(st.message().find("30000") != std::string::npos);
  const std::string zero_head = "P6\n0 10\n255\n";
  std::vector<uint8_t> zero(zero_head.begin(), zero_head.end());
  CHECK(ImageFromMemory(zero.data(), zero.size(), &img).code() != QWEN35_OK);
  const uint8_t one[3] = {1, 2, 3};
  CHECK(ImageFromPixels(one, 0, 1, 3, 0, &img).code() == QWEN35_ERR_INVALID_ARG);
  CHECK(ImageFromPixels(one, 1, 40000, 3, 0, &img).code() == QWEN35_ERR_INVALID_ARG);
  CHECK(ImageFromPixels(one, 1, 1, 2, 0, &img).code() == QWEN35_ERR_INVALID_ARG);
  CHECK(ImageFromPixels(one, 2, 1, 3, 3, &img).code() == QWEN35_ERR_INVALID_ARG);  // stride < row
  CHECK(ImageFromPixels(nullptr, 1, 1, 3, 0, &img).code() == QWEN35_ERR_INVALID_ARG);
}

// ---- mmproj validation ------------------------------------------------------------

TEST_CASE("bad mmproj files give clear errors") {
  auto expect = [](const std::string& path, qwen35_status code, const std::string& needle) {
    std::unique_ptr<Mmproj> mp;
    Status st = LoadMmproj(path, true, Logger{}, &mp);
    CHECK(st.code() == code);
    CHECK_MESSAGE(st.message().find(needle) != std::string::npos, st.message());
    CHECK(!mp);
  };
  SynthMmprojConfig base;
  SynthMmprojConfig c = base;
  c.omit = "clip.vision.projection_dim";
  expect(synth_mmproj("no-proj-dim", c), QWEN35_ERR_FORMAT, "clip.vision.projection_dim");
  c = base;
  c.omit = "v.blk.1.ffn_down.weight";
  expect(synth_mmproj("no-tensor", c), QWEN35_ERR_FORMAT, "v.blk.1.ffn_down.weight");
  c = base;
  c.projector_type = "mlp";
  expect(synth_mmproj("wrong-type", c), QWEN35_ERR_UNSUPPORTED, "mlp");
  c = base;
  c.deepstack = true;
  expect(synth_mmproj("deepstack", c), QWEN35_ERR_UNSUPPORTED, "DeepStack");
  c = base;
  c.n_head = 3;
  c.n_embd = 66;  // head dim 22: not a multiple of 4
  expect(synth_mmproj("odd-heads", c), QWEN35_ERR_UNSUPPORTED, "head dim");
  // Truncated file: the GGUF reader reports it.
  const std::vector<uint8_t> good = read_file(fixture("vision/tiny-vis.mmproj.gguf"));
  const std::string cut = tmp_path("cut.mmproj.gguf");
  write_bytes(cut, std::vector<uint8_t>(good.begin(), good.begin() + good.size() - 1000));
  std::unique_ptr<Mmproj> mp;
  CHECK(LoadMmproj(cut, true, Logger{}, &mp).code() == QWEN35_ERR_FORMAT);
  write_bytes(cut, std::vector<uint8_t>(good.begin(), good.begin() + 100));
  CHECK(LoadMmproj(cut, true, Logger{}, &mp).code() == QWEN35_ERR_FORMAT);
  // A text model is not a projector.
  Status st = LoadMmproj(fixture("models/tiny-a-f32.gguf"), true, Logger{}, &mp);
  CHECK(st.code() == QWEN35_ERR_UNSUPPORTED);
  CHECK(st.message().find("qwen35") != std::string::npos);
  CHECK(LoadMmproj("/no/such.gguf", true, Logger{}, &mp).code() == QWEN35_ERR_IO);
}

// ---- C API --------------------------------------------------------------------------

TEST_CASE("C API: load, images, encode, accessors and errors") {
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CPU;
  qwen35_model* model = nullptr;
  REQUIRE(qwen35_model_load(fixture("models/tiny-a-f32.gguf").c_str(), &mp, &model) == QWEN35_OK);

  qwen35_mmproj_params pp = qwen35_mmproj_default_params();
  CHECK(pp.struct_size == sizeof pp);
  CHECK(pp.use_mmap);
  CHECK(!pp.llamacpp_compat);
  pp.llamacpp_compat = true;
  pp.n_threads = 2;
  qwen35_mmproj* proj = nullptr;
  REQUIRE(qwen35_mmproj_load(fixture("vision/tiny-vis.mmproj.gguf").c_str(), model, &pp, &proj) == QWEN35_OK);

  qwen35_image* img = nullptr;
  REQUIRE(qwen35_image_load_file(fixture("vision/wide160x96.png").c_str(), &img) == QWEN35_OK);
  CHECK(qwen35_image_width(img) == 160);
  CHECK(qwen35_image_height(img) == 96);
  qwen35_image_embed* e = nullptr;
  REQUIRE(qwen35_image_encode(proj, img, &e) == QWEN35_OK);
  CHECK(qwen35_image_embed_n_tokens(e) == 15);
  CHECK(qwen35_image_embed_n_embd(e) == 256);
  int32_t nx = 0, ny = 0, W = 0, H = 0;
  qwen35_image_embed_grid(e, &nx, &ny, &W, &H);
  CHECK(nx == 5);
  CHECK(ny == 3);
  CHECK(W == 160);
  CHECK(H == 96);
  const auto want = read_f32(fixture("vision/wide160x96.emb.f32"));
  std::vector<float> got(qwen35_image_embed_data(e), qwen35_image_embed_data(e) + want.size());
  CHECK(max_token_rel(got, want, 256) <= 1e-4);

  // The same pixels from memory and as raw RGBA give the same embeddings.
  const auto png = read_file(fixture("vision/wide160x96.png"));
  qwen35_image* img2 = nullptr;
  REQUIRE(qwen35_image_load_memory(png.data(), png.size(), &img2) == QWEN35_OK);
  Image dec = load_image(fixture("vision/wide160x96.png"));
  std::vector<uint8_t> rgba(static_cast<size_t>(160) * 96 * 4);
  for (size_t i = 0; i < size_t(160) * 96; ++i) {
    std::memcpy(&rgba[4 * i], &dec.rgb[3 * i], 3);
    rgba[4 * i + 3] = 17;
  }
  qwen35_image* img3 = nullptr;
  REQUIRE(qwen35_image_from_pixels(rgba.data(), 160, 96, 4, 0, &img3) == QWEN35_OK);
  for (qwen35_image* other : {img2, img3}) {
    qwen35_image_embed* e2 = nullptr;
    REQUIRE(qwen35_image_encode(proj, other, &e2) == QWEN35_OK);
    CHECK(std::memcmp(qwen35_image_embed_data(e2), qwen35_image_embed_data(e), want.size() * 4) == 0);
    qwen35_image_embed_free(e2);
  }

  // Default (REF) profile: the 64-token minimum upscales the small image.
  qwen35_mmproj* proj_ref = nullptr;
  REQUIRE(qwen35_mmproj_load(fixture("vision/tiny-vis.mmproj.gguf").c_str(), nullptr, nullptr, &proj_ref) ==
          QWEN35_OK);
  qwen35_image_embed* er = nullptr;
  REQUIRE(qwen35_image_encode(proj_ref, img, &er) == QWEN35_OK);
  CHECK(qwen35_image_embed_n_tokens(er) >= 64);

  // Errors: NULLs, a projector that does not fit, an explicit CUDA request.
  qwen35_mmproj* no_proj = proj;
  CHECK(qwen35_mmproj_load(nullptr, nullptr, nullptr, &no_proj) == QWEN35_ERR_INVALID_ARG);
  CHECK(no_proj == nullptr);
  qwen35_image_embed* no_embed = e;
  CHECK(qwen35_image_encode(nullptr, img, &no_embed) == QWEN35_ERR_INVALID_ARG);
  CHECK(no_embed == nullptr);
  qwen35_image* no_img = img;
  CHECK(qwen35_image_load_file(nullptr, &no_img) == QWEN35_ERR_INVALID_ARG);
  CHECK(qwen35_image_load_file("/no/such.png", &no_img) == QWEN35_ERR_IO);
  CHECK(no_img == nullptr);
  SynthMmprojConfig narrow;
  narrow.proj_dim = 128;
  const std::string narrow_path = synth_mmproj("narrow", narrow);
  qwen35_mmproj* bad = nullptr;
  CHECK(qwen35_mmproj_load(narrow_path.c_str(), model, nullptr, &bad) == QWEN35_ERR_INVALID_ARG);
  CHECK(bad == nullptr);
  CHECK(std::string(qwen35_errmsg()).find("does not fit") != std::string::npos);
  CHECK(std::string(qwen35_errmsg()).find("256") != std::string::npos);
  qwen35_mmproj_params cuda = qwen35_mmproj_default_params();
  cuda.device = QWEN35_DEVICE_CUDA;
  // CUDA only on request: an error without a CUDA build or a usable GPU;
  // with one the projector loads (tests/gpu/test_cuda_vision.cpp checks it).
  const qwen35_status cuda_st = qwen35_mmproj_load(narrow_path.c_str(), nullptr, &cuda, &bad);
  if (CudaAvailable()) {
    CHECK(cuda_st == QWEN35_OK);
    qwen35_mmproj_free(bad);
    bad = nullptr;
  } else {
    CHECK(cuda_st == QWEN35_ERR_UNSUPPORTED);
    CHECK(bad == nullptr);
  }
  CHECK(qwen35_image_embed_n_tokens(nullptr) == 0);
  CHECK(qwen35_image_embed_data(nullptr) == nullptr);
  CHECK(qwen35_image_width(nullptr) == 0);
  qwen35_image_embed_grid(nullptr, &nx, &ny, &W, &H);
  CHECK(nx == 0);
  qwen35_mmproj_free(nullptr);
  qwen35_image_free(nullptr);
  qwen35_image_embed_free(nullptr);

  qwen35_image_embed_free(er);
  qwen35_mmproj_free(proj_ref);
  qwen35_image_free(img3);
  qwen35_image_free(img2);
  qwen35_image_embed_free(e);
  qwen35_image_free(img);
  qwen35_mmproj_free(proj);
  qwen35_model_free(model);
}
