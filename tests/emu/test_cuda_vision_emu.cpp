// The whole CUDA vision encoder (cuda/vision_encoder.cpp: weight upload,
// buffer plan, GEMM shapes and strides, the merger's [np, C] -> [np/4, 4C]
// view, bias and residual order) run on the CPU: its kernels through the
// emulation of cuda_emu.h, the CUDA runtime and cuBLASLt through the CPU
// stand-ins of cuda_host_emu.cpp. Compared with the CPU encoder's reference
// mode and the fixture embeddings at the bars of tests/gpu/test_cuda_vision
// (which runs the same checks on a GPU). What this cannot check: cuBLASLt
// itself, the real memory model and launch limits.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "cuda_emu.h"
#include "ggml_types.h"
#include "vision/device_encoder.h"
#include "vision/encoder.h"
#include "vision/image.h"
#include "vision/preprocess.h"
#include "vision/synth_mmproj.h"

using namespace qwen35;
using namespace qwen35::vision;

namespace {

std::string fixture(const std::string& rel) { return std::string(QWEN35_FIXTURES_DIR) + "/" + rel; }

// A file in the build's test scratch directory (made if missing: this
// binary may run before any test that makes it).
std::string tmp_file(const std::string& name) {
  std::filesystem::create_directories(QWEN35_TEST_TMP);
  return std::string(QWEN35_TEST_TMP) + "/" + name;
}

// A synthetic projector file in the scratch directory, written under a
// name of this process's own and renamed into place, so that another run
// of this binary (whose file has the same bytes) never maps a half-written
// file.
std::string synth_mmproj_file(const std::string& name, const SynthMmprojConfig& cfg) {
  const std::string path = tmp_file(name + ".mmproj.gguf");
  const std::string part = path + ".part" + std::to_string(::getpid());
  const Status st = WriteSynthMmproj(cfg, part);
  REQUIRE_MESSAGE(st.ok(), st.message());
  REQUIRE(std::rename(part.c_str(), path.c_str()) == 0);
  return path;
}

std::vector<float> read_f32(const std::string& path) {
  std::vector<float> v;
  FILE* f = std::fopen(path.c_str(), "rb");
  REQUIRE_MESSAGE(f, path);
  float x;
  while (std::fread(&x, 4, 1, f) == 1) v.push_back(x);
  std::fclose(f);
  return v;
}

double max_token_rel(const std::vector<float>& a, const std::vector<float>& b, size_t n) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t r = 0; r * n < b.size(); ++r) {
    double num = 0, den = 0;
    for (size_t i = r * n; i < (r + 1) * n; ++i) {
      if (!std::isfinite(a[i])) return INFINITY;
      num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      den += double(b[i]) * b[i];
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-30)));
  }
  return worst;
}

// A w x h RGB image of a fixed byte pattern.
Image pattern_image(int w, int h) {
  Image img;
  std::vector<uint8_t> px(size_t(w) * size_t(h) * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 37 + (i / 288) * 11) & 255);
  REQUIRE(ImageFromPixels(px.data(), w, h, 3, 0, &img).ok());
  return img;
}

std::unique_ptr<Mmproj> load_mmproj(const std::string& path, bool f32_gemm) {
  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(path, true, Logger{}, &mp);
  REQUIRE_MESSAGE(st.ok(), st.message());
  if (f32_gemm) setenv("QWEN35_CUDA_VISION_GEMM", "f32", 1);
  st = CreateCudaVisionEncoder(*mp, nullptr, &mp->device);
  unsetenv("QWEN35_CUDA_VISION_GEMM");
  REQUIRE_MESSAGE(st.ok(), st.message());
  return mp;
}

// Device-encoder and CPU-reference embeddings of one image.
void encode_both(const Mmproj& mp, const Image& img, const PreprocessOptions& po, PosInterp pi, MergerAct ma,
                 std::vector<float>* gpu, std::vector<float>* cpu) {
  Preprocessed pre;
  Status st = Preprocess(img, mp.hp, po, &pre);
  REQUIRE_MESSAGE(st.ok(), st.message());
  EncoderOptions eo;
  eo.pos_interp = pi;
  eo.merger_act = ma;
  eo.reference = true;
  const size_t n_out = size_t(pre.nx) * size_t(pre.ny) * size_t(mp.hp.proj_dim);
  gpu->assign(n_out, NAN);
  cpu->assign(n_out, NAN);
  ThreadPool tp(1);
  st = EncodeCpu(mp, pre.patches.data(), pre.gw, pre.gh, eo, tp, cpu->data());
  REQUIRE_MESSAGE(st.ok(), st.message());
  st = mp.device->encode(mp, pre.patches.data(), pre.gw, pre.gh, eo, gpu->data());
  REQUIRE_MESSAGE(st.ok(), st.message());
}

}  // namespace

TEST_CASE("emulated CUDA vision encoder: fixture images, LC and REF, F16 and F32 GEMMs") {
  for (bool f32_gemm : {false, true}) {
    CAPTURE(f32_gemm);
    auto mp = load_mmproj(fixture("vision/tiny-vis.mmproj.gguf"), f32_gemm);
    const double bar = f32_gemm ? 1e-4 : 5e-3;
    for (const std::string name : {"sq128", "wide160x96", "tall64x128"}) {
      CAPTURE(name);
      Image img;
      REQUIRE(ImageFromFile(fixture("vision/" + name + ".png"), &img).ok());
      PreprocessOptions po;
      po.profile = Profile::LlamaCpp;
      std::vector<float> gpu, cpu;
      encode_both(*mp, img, po, PosInterp::HalfPixelAntialias, MergerAct::GeluTanh, &gpu, &cpu);
      const double r_cpu = max_token_rel(gpu, cpu, 256);
      const double r_fix = max_token_rel(gpu, read_f32(fixture("vision/" + name + ".emb.f32")), 256);
      MESSAGE(name << std::string(f32_gemm ? " F32" : " native") << " LC: vs CPU reference " << r_cpu << ", vs fixture " << r_fix);
      CHECK(r_cpu <= bar);
      CHECK(r_fix <= bar);
      encode_both(*mp, img, po, PosInterp::AlignCorners, MergerAct::GeluErf, &gpu, &cpu);
      CHECK(max_token_rel(gpu, cpu, 256) <= bar);
      CHECK(max_token_rel(gpu, read_f32(fixture("vision/" + name + ".ref.emb.f32")), 256) <= bar);
    }
  }
}

TEST_CASE("emulated CUDA vision encoder: the F32 attention kernel (QWEN35_CUDA_VISION_ATTN_MMA=0) meets the same bars") {
  setenv("QWEN35_CUDA_VISION_ATTN_MMA", "0", 1);  // read when the encoder is created
  auto mp = load_mmproj(fixture("vision/tiny-vis.mmproj.gguf"), true);
  unsetenv("QWEN35_CUDA_VISION_ATTN_MMA");
  for (const std::string name : {"sq128", "wide160x96"}) {
    CAPTURE(name);
    Image img;
    REQUIRE(ImageFromFile(fixture("vision/" + name + ".png"), &img).ok());
    PreprocessOptions po;
    po.profile = Profile::LlamaCpp;
    std::vector<float> gpu, cpu;
    encode_both(*mp, img, po, PosInterp::HalfPixelAntialias, MergerAct::GeluTanh, &gpu, &cpu);
    const double r_cpu = max_token_rel(gpu, cpu, 256);
    MESSAGE(name << " F32 GEMMs, F32 attention kernel: vs CPU reference " << r_cpu);
    CHECK(r_cpu <= 1e-4);
    CHECK(max_token_rel(gpu, read_f32(fixture("vision/" + name + ".emb.f32")), 256) <= 1e-4);
  }
}

TEST_CASE("emulated CUDA vision encoder: BF16, F32 and Q8_0 weights, head sizes 64 and 128") {
  struct Case {
    uint32_t type;
    int32_t n_head;
    double bar;
  };
  for (const Case& c : {Case{GGML_F16, 4, 5e-3}, Case{GGML_BF16, 4, 4e-2}, Case{GGML_F32, 2, 1e-4},
                        Case{GGML_Q8_0, 4, 1e-4}}) {
    CAPTURE(c.type);
    CAPTURE(c.n_head);
    SynthMmprojConfig cfg;
    cfg.n_embd = 256;
    cfg.n_head = c.n_head;
    cfg.n_ff = 512;
    cfg.n_block = 1;
    cfg.proj_dim = 128;
    cfg.matrix_type = c.type;
    auto mp = load_mmproj(synth_mmproj_file("emu-vision-" + std::to_string(c.type), cfg), false);
    // 96x160: 6x10 patches, two 32-row attention tiles.
    const Image img = pattern_image(96, 160);
    PreprocessOptions po;
    po.profile = Profile::LlamaCpp;
    std::vector<float> gpu, cpu;
    encode_both(*mp, img, po, PosInterp::AlignCorners, MergerAct::GeluErf, &gpu, &cpu);
    const double r = max_token_rel(gpu, cpu, size_t(cfg.proj_dim));
    MESSAGE("type " << c.type << ", head size " << cfg.n_embd / c.n_head << ": max token rel " << r);
    CHECK(r <= c.bar);
  }
}

TEST_CASE("emulated CUDA vision encoder: faults: an allocation or launch that fails gives an error and the encoder goes on") {
  // A synthetic projector (F16, 1 block); images of 64x64 (16 patches) and
  // 96x160 (60 patches: the scratch grows).
  SynthMmprojConfig cfg;
  cfg.n_embd = 256;
  cfg.n_head = 4;
  cfg.n_ff = 512;
  cfg.n_block = 1;
  cfg.proj_dim = 128;
  const std::string path = synth_mmproj_file("emu-vision-faults", cfg);
  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(path, true, Logger{}, &mp);
  REQUIRE_MESSAGE(st.ok(), st.message());
  auto image = [&](int w, int h) {
    const Image img = pattern_image(w, h);
    PreprocessOptions po;
    po.profile = Profile::LlamaCpp;
    Preprocessed pre;
    REQUIRE(Preprocess(img, mp->hp, po, &pre).ok());
    return pre;
  };
  const Preprocessed small = image(64, 64), big = image(96, 160);
  EncoderOptions eo;
  auto encode = [&](const Preprocessed& pre, std::vector<float>* out) {
    out->assign(size_t(pre.nx) * size_t(pre.ny) * size_t(mp->hp.proj_dim), NAN);
    return mp->device->encode(*mp, pre.patches.data(), pre.gw, pre.gh, eo, out->data());
  };
  const int64_t live0 = emu::live_allocations();
  // Creating the encoder: every allocation made to fail.
  const int64_t a0 = emu::fault_calls(emu::Fault::Alloc);
  REQUIRE(CreateCudaVisionEncoder(*mp, nullptr, &mp->device).ok());
  const int64_t allocs = emu::fault_calls(emu::Fault::Alloc) - a0;
  mp->device.reset();
  CHECK(emu::live_allocations() == live0);
  for (int64_t k = 0; k < allocs; ++k) {
    CAPTURE(k);
    emu::arm_fault(emu::Fault::Alloc, k);
    st = CreateCudaVisionEncoder(*mp, nullptr, &mp->device);
    emu::arm_fault(emu::Fault::Alloc, -1);
    CHECK(st.code() == QWEN35_ERR_OUT_OF_MEMORY);
    CHECK(mp->device == nullptr);
    CHECK(emu::live_allocations() == live0);
  }
  // Encoding: the reference embeddings, then faults in the scratch's growth
  // (the big image after the small one) and in the launches; after each
  // failure both images encode to the reference bits.
  REQUIRE(CreateCudaVisionEncoder(*mp, nullptr, &mp->device).ok());
  std::vector<float> want_small, want_big, got;
  REQUIRE(encode(small, &want_small).ok());
  const int64_t g0 = emu::fault_calls(emu::Fault::Alloc), l0 = emu::fault_calls(emu::Fault::Launch);
  REQUIRE(encode(big, &want_big).ok());
  const int64_t grow = emu::fault_calls(emu::Fault::Alloc) - g0, launches = emu::fault_calls(emu::Fault::Launch) - l0;
  MESSAGE("the big image: " << grow << " allocations, " << launches << " launches");
  REQUIRE(grow > 0);
  for (emu::Fault f : {emu::Fault::Alloc, emu::Fault::Launch}) {
    const int64_t count = f == emu::Fault::Alloc ? grow : launches;
    for (int64_t k = 0; k < count; k += f == emu::Fault::Alloc ? 1 : std::max<int64_t>(1, count / 6)) {
      CAPTURE(int(f));
      CAPTURE(k);
      // A fresh encoder that has seen the small image only (its scratch
      // fits 16 patches), so that the big one grows it.
      mp->device.reset();
      REQUIRE(CreateCudaVisionEncoder(*mp, nullptr, &mp->device).ok());
      REQUIRE(encode(small, &got).ok());
      emu::arm_fault(f, k);
      st = encode(big, &got);
      emu::arm_fault(f, -1);
      CHECK(st.code() == (f == emu::Fault::Alloc ? QWEN35_ERR_OUT_OF_MEMORY : QWEN35_ERR_BACKEND));
      CHECK(!st.message().empty());
      REQUIRE(encode(small, &got).ok());
      CHECK(got == want_small);
      REQUIRE(encode(big, &got).ok());
      CHECK(got == want_big);
    }
  }
  mp->device.reset();
  CHECK(emu::live_allocations() == live0);
  CHECK(emu::take_bad_frees() == 0);
  CHECK(emu::take_bad_copies() == 0);
  CHECK(emu::take_capture_violations() == 0);
}
