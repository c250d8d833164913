// The CUDA vision encoder (cuda/vision_encoder.cpp) against the CPU encoder
// in reference mode (the oracle: plain loops, F32) and the fixture
// embeddings (../shared/fixtures/vision, README.md). Every case skips
// without a usable GPU.
//
// Bars (per-token relative L2, the fixture README's measure):
//  * F32 GEMMs (QWEN35_CUDA_VISION_GEMM=f32, F32 weights, dequantized Q8_0):
//    1e-4, the README's bar for float32 activations throughout (only the
//    summation order differs from the CPU).
//  * F16 weights multiplied as F16 (the default; the real file is F16): the
//    GEMM inputs are rounded to F16 as llama.cpp rounds them (spec §4.8), so
//    the README's bar for half-precision activations, 5e-3.
//  * BF16 weights multiplied as BF16: inputs rounded to 8 significant bits
//    (F16: 11), so about 8x the F16 error: 4e-2.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "qwen35/qwen35.h"
#include "test_util.h"
#include "vision/device_encoder.h"
#include "vision/synth_mmproj.h"
#include "vision/vision.h"

using namespace qwen35;
using namespace qwen35::vision;
using namespace qwen35::test;

namespace {

const char* kImages[] = {"sq128", "wide160x96", "tall64x128"};

std::unique_ptr<Mmproj> load_mmproj(const std::string& path) {
  std::unique_ptr<Mmproj> mp;
  Status st = LoadMmproj(path, true, Logger{}, &mp);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return mp;
}

Image load_image(const std::string& path) {
  Image img;
  Status st = ImageFromFile(path, &img);
  REQUIRE_MESSAGE(st.ok(), st.message());
  return img;
}

// The CUDA encoder attached to `mp` with QWEN35_CUDA_VISION_GEMM as given
// (read when the encoder is created).
void attach_cuda(Mmproj& mp, bool f32_gemm) {
  if (f32_gemm) setenv("QWEN35_CUDA_VISION_GEMM", "f32", 1);
  else unsetenv("QWEN35_CUDA_VISION_GEMM");
  Status st = CreateCudaVisionEncoder(mp, nullptr, &mp.device);
  unsetenv("QWEN35_CUDA_VISION_GEMM");
  REQUIRE_MESSAGE(st.ok(), st.message());
  REQUIRE(bool(mp.device));
  MESSAGE(mp.device->describe());
}

// GPU and CPU-reference embeddings of one image (EncodeImage sends
// reference requests to the CPU oracle even when a device encoder is attached).
struct Pair {
  ImageEmbed gpu, cpu;
};
Pair encode_both(const Mmproj& mp, const Image& img, VisionOptions opt) {
  ThreadPool tp(2);
  Pair p;
  opt.reference = false;  // the device encoder
  Status st = EncodeImage(mp, img, opt, tp, &p.gpu);
  REQUIRE_MESSAGE(st.ok(), st.message());
  opt.reference = true;  // the CPU oracle
  st = EncodeImage(mp, img, opt, tp, &p.cpu);
  REQUIRE_MESSAGE(st.ok(), st.message());
  CHECK(p.gpu.nx == p.cpu.nx);
  CHECK(p.gpu.ny == p.cpu.ny);
  CHECK(p.gpu.n_embd == p.cpu.n_embd);
  return p;
}

}  // namespace

TEST_CASE("CUDA vision encoder: fixture images, LC and REF, F16 and F32 GEMMs, vs the CPU reference and fixtures") {
  QWEN35_REQUIRE_GPU();
  for (bool f32_gemm : {false, true}) {
    CAPTURE(f32_gemm);
    auto mp = load_mmproj(fixture("vision/tiny-vis.mmproj.gguf"));
    attach_cuda(*mp, f32_gemm);
    const double bar = f32_gemm ? 1e-4 : 5e-3;
    for (const std::string name : kImages) {
      CAPTURE(name);
      const Image img = load_image(fixture("vision/" + name + ".png"));
      const Pair lc = encode_both(*mp, img, VisionOptions::ForProfile(Profile::LlamaCpp));
      const double r_cpu = max_token_rel(lc.gpu.data, lc.cpu.data, 256);
      const double r_fix = max_token_rel(lc.gpu.data, read_f32(fixture("vision/" + name + ".emb.f32")), 256);
      MESSAGE(name << std::string(f32_gemm ? " F32" : " native") << " LC: vs CPU reference " << r_cpu << ", vs fixture " << r_fix);
      CHECK(r_cpu <= bar);
      CHECK(r_fix <= bar);
      VisionOptions ref = VisionOptions::ForProfile(Profile::Ref);
      ref.pre.min_tokens = 8;  // keep the fixture pixels as they are (see test_vision)
      const Pair rf = encode_both(*mp, img, ref);
      const double r_ref = max_token_rel(rf.gpu.data, read_f32(fixture("vision/" + name + ".ref.emb.f32")), 256);
      CHECK(max_token_rel(rf.gpu.data, rf.cpu.data, 256) <= bar);
      CHECK(r_ref <= bar);
    }
  }
}

TEST_CASE("CUDA vision encoder: the F32 attention kernel (QWEN35_CUDA_VISION_ATTN_MMA=0) meets the F32 bar") {
  QWEN35_REQUIRE_GPU();
  setenv("QWEN35_CUDA_VISION_ATTN_MMA", "0", 1);  // read when the encoder is created
  auto mp = load_mmproj(fixture("vision/tiny-vis.mmproj.gguf"));
  attach_cuda(*mp, true);
  unsetenv("QWEN35_CUDA_VISION_ATTN_MMA");
  for (const std::string name : kImages) {
    CAPTURE(name);
    const Image img = load_image(fixture("vision/" + name + ".png"));
    const Pair lc = encode_both(*mp, img, VisionOptions::ForProfile(Profile::LlamaCpp));
    const double r_cpu = max_token_rel(lc.gpu.data, lc.cpu.data, 256);
    MESSAGE(name << " F32 GEMMs, F32 attention kernel: vs CPU reference " << r_cpu);
    CHECK(r_cpu <= 1e-4);
    CHECK(max_token_rel(lc.gpu.data, read_f32(fixture("vision/" + name + ".emb.f32")), 256) <= 1e-4);
  }
}

TEST_CASE("CUDA vision encoder: per-layer residuals follow the CPU reference (hooks)") {
  QWEN35_REQUIRE_GPU();
  auto mp = load_mmproj(fixture("vision/tiny-vis.mmproj.gguf"));
  attach_cuda(*mp, true);
  Preprocessed pre;
  const Image img = load_image(fixture("vision/wide160x96.png"));
  const VisionOptions vo = VisionOptions::ForProfile(Profile::LlamaCpp);
  REQUIRE(Preprocess(img, mp->hp, vo.pre, &pre).ok());
  std::vector<std::vector<float>> gpu, cpu;
  auto hook_into = [](std::vector<std::vector<float>>* dst) {
    return [dst](const char* name, int32_t, const float* d, int64_t rows, int64_t cols) {
      if (std::string(name) == "pos_added" || std::string(name) == "block" || std::string(name) == "output")
        dst->emplace_back(d, d + rows * cols);
    };
  };
  EncoderOptions eo;
  eo.pos_interp = vo.pos_interp;
  eo.merger_act = vo.merger_act;
  eo.reference = true;
  eo.hook = hook_into(&cpu);
  const int64_t n_out = int64_t(pre.nx) * pre.ny * mp->hp.proj_dim;
  std::vector<float> out_cpu(static_cast<size_t>(n_out)), out_gpu(static_cast<size_t>(n_out));
  ThreadPool tp(2);
  REQUIRE(EncodeCpu(*mp, pre.patches.data(), pre.gw, pre.gh, eo, tp, out_cpu.data()).ok());
  eo.hook = hook_into(&gpu);
  REQUIRE(mp->device->encode(*mp, pre.patches.data(), pre.gw, pre.gh, eo, out_gpu.data()).ok());
  REQUIRE(gpu.size() == cpu.size());
  REQUIRE(gpu.size() == size_t(mp->hp.n_block) + 2);
  for (size_t i = 0; i < gpu.size(); ++i) {
    CAPTURE(i);
    const double r = max_token_rel(gpu[i], cpu[i], i + 1 == gpu.size() ? size_t(mp->hp.proj_dim) : size_t(mp->hp.n_embd));
    MESSAGE("stage " << i << " (pos_added, blocks, output): max token rel " << r);
    CHECK(r <= 1e-4);
  }
  CHECK(max_token_rel(out_gpu, out_cpu, size_t(mp->hp.proj_dim)) <= 1e-4);
}

TEST_CASE("CUDA vision encoder: other matrix types and head sizes vs the CPU reference") {
  QWEN35_REQUIRE_GPU();
  struct Case {
    uint32_t type;
    int32_t n_embd, n_head;
    double bar;
  };
  // Head sizes 64 (the real model) and 128; C = 256 so that F16/BF16/Q8_0
  // rows are whole blocks. 14x10 patches: several 32-row attention tiles.
  for (const Case& c : {Case{GGML_F16, 256, 4, 5e-3}, Case{GGML_F16, 256, 2, 5e-3}, Case{GGML_BF16, 256, 4, 4e-2},
                        Case{GGML_F32, 256, 4, 1e-4}, Case{GGML_Q8_0, 256, 4, 1e-4}}) {
    CAPTURE(c.type);
    CAPTURE(c.n_head);
    SynthMmprojConfig cfg;
    cfg.n_embd = c.n_embd;
    cfg.n_head = c.n_head;
    cfg.n_ff = 512;
    cfg.n_block = 2;
    cfg.proj_dim = 256;
    cfg.matrix_type = c.type;
    const std::string path = tmp_path("cuda-vision-" + std::to_string(c.type) + "-" + std::to_string(c.n_head) +
                                      ".mmproj.gguf");
    Status st = WriteSynthMmproj(cfg, path);
    REQUIRE_MESSAGE(st.ok(), st.message());
    auto mp = load_mmproj(path);
    attach_cuda(*mp, false);
    std::vector<uint8_t> px(224 * 160 * 3);
    for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 37 + (i / 672) * 11) & 255);
    Image img;
    REQUIRE(ImageFromPixels(px.data(), 224, 160, 3, 0, &img).ok());
    VisionOptions vo = VisionOptions::ForProfile(Profile::Ref);
    vo.pre.min_tokens = 8;
    const Pair p = encode_both(*mp, img, vo);
    const double r = max_token_rel(p.gpu.data, p.cpu.data, size_t(cfg.proj_dim));
    MESSAGE("type " << c.type << ", head size " << c.n_embd / c.n_head << ": max token rel " << r);
    CHECK(r <= c.bar);
  }
}

TEST_CASE("CUDA vision encoder through the C API: device = CUDA, repeatable, images of several sizes") {
  QWEN35_REQUIRE_GPU();
  qwen35_mmproj_params pc = qwen35_mmproj_default_params();
  pc.device = QWEN35_DEVICE_CPU;
  pc.llamacpp_compat = true;
  qwen35_mmproj_params pg = pc;
  pg.device = QWEN35_DEVICE_CUDA;
  const std::string path = fixture("vision/tiny-vis.mmproj.gguf");
  qwen35_mmproj *cpu = nullptr, *gpu = nullptr;
  REQUIRE(qwen35_mmproj_load(path.c_str(), nullptr, &pc, &cpu) == QWEN35_OK);
  REQUIRE_MESSAGE(qwen35_mmproj_load(path.c_str(), nullptr, &pg, &gpu) == QWEN35_OK, qwen35_errmsg());
  // Small, large, small: the scratch grows and is reused.
  for (const std::string name : {"tall64x128", "wide160x96", "sq128", "tall64x128"}) {
    CAPTURE(name);
    qwen35_image* img = nullptr;
    REQUIRE(qwen35_image_load_file(fixture("vision/" + name + ".png").c_str(), &img) == QWEN35_OK);
    qwen35_image_embed *ec = nullptr, *eg = nullptr, *eg2 = nullptr;
    REQUIRE(qwen35_image_encode(cpu, img, &ec) == QWEN35_OK);
    REQUIRE_MESSAGE(qwen35_image_encode(gpu, img, &eg) == QWEN35_OK, qwen35_errmsg());
    REQUIRE(qwen35_image_encode(gpu, img, &eg2) == QWEN35_OK);
    const int32_t n = qwen35_image_embed_n_tokens(eg), d = qwen35_image_embed_n_embd(eg);
    REQUIRE(n == qwen35_image_embed_n_tokens(ec));
    REQUIRE(d == qwen35_image_embed_n_embd(ec));
    const float* g = qwen35_image_embed_data(eg);
    const float* g2 = qwen35_image_embed_data(eg2);
    const float* c = qwen35_image_embed_data(ec);
    const std::vector<float> vg(g, g + size_t(n) * size_t(d)), vc(c, c + size_t(n) * size_t(d));
    CHECK(max_token_rel(vg, vc, size_t(d)) <= 5e-3);
    CHECK(std::equal(g, g + size_t(n) * size_t(d), g2));  // same input, same bits
    const auto want = read_f32(fixture("vision/" + name + ".emb.f32"));
    CHECK(max_token_rel(vg, want, size_t(d)) <= 5e-3);
    qwen35_image_embed_free(eg2);
    qwen35_image_embed_free(eg);
    qwen35_image_embed_free(ec);
    qwen35_image_free(img);
  }
  qwen35_mmproj_free(gpu);
  qwen35_mmproj_free(cpu);
}

TEST_CASE("CUDA vision encoder: AUTO follows a model on CUDA and gives the explicit CUDA encoder's bits") {
  QWEN35_REQUIRE_GPU();
  qwen35_model_params mparams = qwen35_model_default_params();
  mparams.device = QWEN35_DEVICE_CUDA;
  qwen35_model* model = nullptr;
  REQUIRE_MESSAGE(qwen35_model_load(fixture("models/tiny-a-f32.gguf").c_str(), &mparams, &model) == QWEN35_OK,
                  qwen35_errmsg());
  REQUIRE(qwen35_model_device(model) == QWEN35_DEVICE_CUDA);
  const std::string path = fixture("vision/tiny-vis.mmproj.gguf");
  qwen35_mmproj_params pa = qwen35_mmproj_default_params();
  pa.llamacpp_compat = true;
  qwen35_mmproj_params pg = pa;
  pg.device = QWEN35_DEVICE_CUDA;
  qwen35_mmproj *autop = nullptr, *gpu = nullptr;
  REQUIRE_MESSAGE(qwen35_mmproj_load(path.c_str(), model, &pa, &autop) == QWEN35_OK, qwen35_errmsg());
  REQUIRE_MESSAGE(qwen35_mmproj_load(path.c_str(), nullptr, &pg, &gpu) == QWEN35_OK, qwen35_errmsg());
  CHECK(qwen35_mmproj_device(autop) == QWEN35_DEVICE_CUDA);
  CHECK(qwen35_mmproj_device(gpu) == QWEN35_DEVICE_CUDA);
  qwen35_image* img = nullptr;
  REQUIRE(qwen35_image_load_file(fixture("vision/sq128.png").c_str(), &img) == QWEN35_OK);
  qwen35_image_embed *ea = nullptr, *eg = nullptr;
  REQUIRE_MESSAGE(qwen35_image_encode(autop, img, &ea) == QWEN35_OK, qwen35_errmsg());
  REQUIRE(qwen35_image_encode(gpu, img, &eg) == QWEN35_OK);
  const size_t n = size_t(qwen35_image_embed_n_tokens(ea)) * size_t(qwen35_image_embed_n_embd(ea));
  REQUIRE(n == size_t(qwen35_image_embed_n_tokens(eg)) * size_t(qwen35_image_embed_n_embd(eg)));
  CHECK(std::equal(qwen35_image_embed_data(ea), qwen35_image_embed_data(ea) + n, qwen35_image_embed_data(eg)));
  qwen35_image_embed_free(eg);
  qwen35_image_embed_free(ea);
  qwen35_image_free(img);
  qwen35_mmproj_free(gpu);
  qwen35_mmproj_free(autop);
  qwen35_model_free(model);
}
