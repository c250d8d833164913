// The vision encoder on a CUDA device (spec vision.md §4; CPU twin: the
// encoder of lib/vision/encoder.cpp, whose reference mode is the oracle).
//
// Weights are uploaded once, in the type the file stores them in. The
// projections are cuBLASLt GEMMs with F32 accumulation (gemm.h): F16 and
// BF16 matrices are multiplied as they are, with their input activations
// rounded to the same type by the kernel that produces them (as llama.cpp
// rounds the inputs of its F16 products, spec §4.8); F32 matrices use F32
// GEMMs; other types (Q8_0, ...) are dequantized to F32 into a scratch
// buffer before each product. QWEN35_CUDA_VISION_GEMM=f32 (read when the
// encoder is created) runs every projection in F32 (closest to the CPU
// reference). The folded patch kernel (W0 + W1, F32 on the host) is an F32
// GEMM. Activations and the residual stream are F32; LayerNorm, bias +
// GELU, 2-D RoPE and attention are the kernels of vision_kernels.h. The
// position table is resampled on the host (ResamplePositions, as the CPU
// encoder does) and the RoPE cos/sin tables are built on the host
// (VisionRopeCosSin, angles in double).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "backend.h"
#include "cuda_util.h"
#include "device_model.h"
#include "gemm.h"
#include "ggml_types.h"
#include "matmul.h"
#include "model.h"
#include "vision/device_encoder.h"
#include "vision/preprocess.h"
#include "vision_kernels.h"

namespace qwen35::cuda {

namespace {

using vision::EncoderOptions;
using vision::MergerAct;
using vision::Mmproj;
using vision::VisionBlock;
using vision::VisionHParams;

constexpr size_t kArenaAlign = 256;
constexpr size_t kGemmWorkspace = size_t(32) << 20;

// Makes `device` current for a scope and restores the previous one.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != device) cudaSetDevice(device);
  }
  ~DeviceScope() {
    int cur = -1;
    if (prev_ >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = -1;
};

// A projection matrix on the device and how it is multiplied.
struct VisWeight {
  MatView view;                  // device bytes in the file's type
  GemmType gemm = GemmType::F32;
  ActType act = ActType::F32;    // type of the GEMM's input activations
  bool dequant = false;          // dequantized to F32 scratch before each product
};

struct VisBlock {
  const float *ln1_w, *ln1_b, *qkv_b, *out_b, *ln2_w, *ln2_b, *up_b, *down_b;
  VisWeight qkv, out, up, down;
};

class CudaVisionEncoder final : public vision::DeviceEncoder {
 public:
  ~CudaVisionEncoder() override {
    DeviceScope ds(device_);
    if (stream_) cudaStreamDestroy(stream_);
    gemm_.reset();
    // Free the device memory here, with the device current.
    for (DeviceBuffer* b : {&arena_, &x_, &qkv_, &attn_, &up_, &act_, &patches_, &rope_, &out_, &wscratch_})
      b->reset();
  }

  Status init(const Mmproj& mp, int device);
  Status encode(const Mmproj& mp, const float* patches, int32_t gw, int32_t gh, const EncoderOptions& opt,
                float* out) override;
  std::string describe() const override { return desc_; }
  uint64_t device_bytes() const override { return arena_.bytes(); }

 private:
  Status upload_weights(const Mmproj& mp);
  Status reserve(int64_t np);
  // y (= or +=) W x, x in w.act's type with row stride ldx (elements).
  Status mm(const VisWeight& w, const void* x, int64_t ldx, int64_t n, float* y, int64_t ldy, bool add);
  Status block(const VisBlock& b, int64_t np);
  Status merger(int64_t np, const EncoderOptions& opt);
  Status hook(const EncoderOptions& opt, const char* name, int32_t layer, const float* d, int64_t rows, int64_t cols);

  int device_ = 0;
  bool all_f32_ = false;  // QWEN35_CUDA_VISION_GEMM=f32
  bool mma_attn_ = true;  // the tensor-core attention (QWEN35_CUDA_VISION_ATTN_MMA=0: the F32 kernel)
  VisionHParams hp_;
  std::string desc_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  std::mutex mu_;  // one encode at a time (the scratch buffers are shared)

  DeviceBuffer arena_;  // every weight and vector
  VisWeight patch_w_;
  const float* patch_b_ = nullptr;
  std::vector<VisBlock> blocks_;
  const float *post_ln_w_ = nullptr, *post_ln_b_ = nullptr, *mm0_b_ = nullptr, *mm2_b_ = nullptr;
  VisWeight mm0_, mm2_;

  // Scratch, grown to the largest image seen (np = patches).
  int64_t cap_np_ = 0;
  DeviceBuffer x_;         // [np, C] F32 residual stream
  DeviceBuffer qkv_;       // [np, 3C] F32
  DeviceBuffer attn_;      // [np, C] F32 attention output
  DeviceBuffer up_;        // [np, max(FF, C)] F32: MLP up / merger mm.0 output ([np/4, 4C])
  DeviceBuffer act_;       // [np, max(FF, C)] GEMM inputs, in the next weight's activation type
  DeviceBuffer patches_;   // [np, 3*P*P] F32
  DeviceBuffer rope_;      // cos [np, DH/2] | sin [np, DH/2]
  DeviceBuffer out_;       // [np/4, D] F32
  DeviceBuffer wscratch_;  // the largest dequantized weight (F32), when some weight needs it
};

Status CudaVisionEncoder::upload_weights(const Mmproj& mp) {
  // Pass 1 sizes the arena, pass 2 copies: one list of (host bytes, size).
  struct Item {
    const void* src;
    size_t bytes;
    size_t off;
  };
  std::vector<Item> items;
  size_t total = 0;
  auto add = [&](const void* src, size_t bytes) {
    items.push_back({src, bytes, total});
    total += (bytes + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
    return items.size() - 1;
  };
  auto add_vec = [&](const qwen35::Vec& v) { return add(v.data, size_t(v.n) * sizeof(float)); };
  auto add_w = [&](const Weight& w) { return add(w.data, size_t(w.rows) * w.row_bytes); };

  const size_t i_patch_w = add_w(mp.patch_w), i_patch_b = add_vec(mp.patch_b);
  struct BlockIdx {
    size_t ln1_w, ln1_b, qkv, qkv_b, out, out_b, ln2_w, ln2_b, up, up_b, down, down_b;
  };
  std::vector<BlockIdx> bi;
  for (const VisionBlock& b : mp.blocks)
    bi.push_back({add_vec(b.ln1_w), add_vec(b.ln1_b), add_w(b.qkv), add_vec(b.qkv_b), add_w(b.out), add_vec(b.out_b),
                  add_vec(b.ln2_w), add_vec(b.ln2_b), add_w(b.up), add_vec(b.up_b), add_w(b.down),
                  add_vec(b.down_b)});
  const size_t i_post_w = add_vec(mp.post_ln_w), i_post_b = add_vec(mp.post_ln_b), i_mm0 = add_w(mp.mm0),
               i_mm0_b = add_vec(mp.mm0_b), i_mm2 = add_w(mp.mm2), i_mm2_b = add_vec(mp.mm2_b);

  QWEN35_TRY(arena_.alloc(total, "the vision projector's weights"));
  uint8_t* base = arena_.as<uint8_t>();
  for (const Item& it : items)
    QWEN35_CUDA_TRY(cudaMemcpy(base + it.off, it.src, it.bytes, cudaMemcpyHostToDevice),
                    "uploading the vision projector's weights");
  auto vec = [&](size_t i) { return reinterpret_cast<const float*>(base + items[i].off); };

  size_t scratch_elems = 0;
  Status bad = Status::Ok();
  auto weight = [&](const Weight& w, size_t i) {
    VisWeight v;
    v.view.type = w.type;
    v.view.rows = w.rows;
    v.view.cols = w.cols;
    v.view.row_bytes = w.row_bytes;
    v.view.data = base + items[i].off;
    v.view.scale = w.scale;
    if (w.type == GGML_F32) {
      v.gemm = GemmType::F32;
    } else if (!all_f32_ && w.type == GGML_F16) {
      v.gemm = GemmType::F16;
      v.act = ActType::F16;
    } else if (!all_f32_ && w.type == GGML_BF16) {
      v.gemm = GemmType::BF16;
      v.act = ActType::BF16;
    } else if (device_type_supported(w.type) && w.cols % 32 == 0) {
      v.dequant = true;
      scratch_elems = std::max(scratch_elems, size_t(w.rows) * size_t(w.cols));
    } else if (bad.ok()) {
      const TypeInfo* ti = type_info(w.type);
      bad = Error(QWEN35_ERR_UNSUPPORTED, "the CUDA vision encoder cannot multiply '{}' ({}, {} columns)", w.name,
                  ti && ti->name ? ti->name : "unknown type", w.cols);
    }
    return v;
  };
  patch_w_ = weight(mp.patch_w, i_patch_w);
  patch_b_ = vec(i_patch_b);
  for (size_t l = 0; l < mp.blocks.size(); ++l) {
    const VisionBlock& b = mp.blocks[l];
    const BlockIdx& x = bi[l];
    VisBlock d;
    d.ln1_w = vec(x.ln1_w), d.ln1_b = vec(x.ln1_b), d.qkv_b = vec(x.qkv_b), d.out_b = vec(x.out_b);
    d.ln2_w = vec(x.ln2_w), d.ln2_b = vec(x.ln2_b), d.up_b = vec(x.up_b), d.down_b = vec(x.down_b);
    d.qkv = weight(b.qkv, x.qkv);
    d.out = weight(b.out, x.out);
    d.up = weight(b.up, x.up);
    d.down = weight(b.down, x.down);
    blocks_.push_back(d);
  }
  post_ln_w_ = vec(i_post_w), post_ln_b_ = vec(i_post_b), mm0_b_ = vec(i_mm0_b), mm2_b_ = vec(i_mm2_b);
  mm0_ = weight(mp.mm0, i_mm0);
  mm2_ = weight(mp.mm2, i_mm2);
  QWEN35_TRY(bad);
  if (scratch_elems) QWEN35_TRY(wscratch_.alloc(scratch_elems * sizeof(float), "dequantized vision weights"));
  // cudaMemcpy from pageable memory may return before the data has landed.
  QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "uploading the vision projector's weights");
  return Status::Ok();
}

Status CudaVisionEncoder::init(const Mmproj& mp, int device) {
  device_ = device;
  hp_ = mp.hp;
  if (!vision_attention_supported(hp_.head_dim))
    return Error(QWEN35_ERR_UNSUPPORTED, "the CUDA vision encoder supports head sizes 32, 64 and 128, not {}",
                 hp_.head_dim);
  if (const char* g = std::getenv("QWEN35_CUDA_VISION_GEMM"); g && std::string(g) == "f32") all_f32_ = true;
  // Default since run 10 (H100): a 1280x960 image in 0.099 s against 0.257 s
  // with the F32 attention, the same embeddings within 5e-4 of the CPU.
  if (const char* a = std::getenv("QWEN35_CUDA_VISION_ATTN_MMA"); a && std::string(a) == "0") mma_attn_ = false;
  DeviceScope ds(device_);
  QWEN35_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating the vision stream");
  gemm_ = std::make_unique<Gemm>();
  QWEN35_TRY(gemm_->init(kGemmWorkspace));
  QWEN35_TRY(upload_weights(mp));
  cudaDeviceProp prop{};
  QWEN35_CUDA_TRY(cudaGetDeviceProperties(&prop, device_), "reading the device properties");
  desc_ = fmt::format("CUDA vision encoder on device {} ({}): {:.1f} MiB of weights, {} GEMMs", device_, prop.name,
                      double(arena_.bytes()) / (1 << 20), all_f32_ ? "F32" : "native-type");
  return Status::Ok();
}

Status CudaVisionEncoder::reserve(int64_t np) {
  if (np <= cap_np_) return Status::Ok();
  // The buffers are reallocated one after another (each alloc frees the old
  // one first): until all of them are, none is known to fit any image.
  cap_np_ = 0;
  const size_t C = size_t(hp_.n_embd), wide = std::max<size_t>(size_t(hp_.n_ff), C), n = size_t(np);
  QWEN35_TRY(x_.alloc(n * C * 4, "the vision residual stream"));
  QWEN35_TRY(qkv_.alloc(n * 3 * C * 4, "the vision QKV"));
  QWEN35_TRY(attn_.alloc(n * C * 4, "the vision attention output"));
  QWEN35_TRY(up_.alloc(n * wide * 4, "the vision MLP activations"));
  QWEN35_TRY(act_.alloc(n * wide * 4, "the vision GEMM inputs"));
  QWEN35_TRY(patches_.alloc(n * size_t(hp_.patch_dim()) * 4, "the image patches"));
  QWEN35_TRY(rope_.alloc(n * size_t(hp_.head_dim) * 4, "the vision RoPE tables"));
  QWEN35_TRY(out_.alloc(n / 4 * size_t(hp_.proj_dim) * 4, "the image embeddings"));
  // The zero fills ran on the legacy stream, which the encoder's
  // non-blocking stream is not ordered after.
  QWEN35_CUDA_TRY(cudaDeviceSynchronize(), "allocating the vision scratch");
  cap_np_ = np;
  return Status::Ok();
}

Status CudaVisionEncoder::mm(const VisWeight& w, const void* x, int64_t ldx, int64_t n, float* y, int64_t ldy,
                             bool add) {
  const void* A = w.view.data;
  if (w.dequant) {
    QWEN35_CUDA_TRY(dequant_rows_f32(w.view, 0, w.view.rows, wscratch_.as<float>(), stream_),
                    "dequantizing a vision weight");
    A = wscratch_.as<float>();
  }
  return gemm_->run(w.gemm, A, w.view.rows, w.view.cols, x, ldx, n, y, ldy, w.view.scale, add, stream_);
}

Status CudaVisionEncoder::hook(const EncoderOptions& opt, const char* name, int32_t layer, const float* d,
                               int64_t rows, int64_t cols) {
  if (!opt.hook) return Status::Ok();
  std::vector<float> h(size_t(rows * cols));
  QWEN35_CUDA_TRY(cudaMemcpyAsync(h.data(), d, h.size() * 4, cudaMemcpyDeviceToHost, stream_), "reading a hook");
  QWEN35_CUDA_TRY(cudaStreamSynchronize(stream_), "reading a hook");
  opt.hook(name, layer, h.data(), rows, cols);
  return Status::Ok();
}

// §4.4, pre-norm: x += out(attn(rope(qkv(LN1(x))))); x += down(gelu(up(LN2(x)))).
Status CudaVisionEncoder::block(const VisBlock& b, int64_t np) {
  const int64_t C = hp_.n_embd, FF = hp_.n_ff, DH = hp_.head_dim, half = DH / 2;
  float* x = x_.as<float>();
  float* qkv = qkv_.as<float>();
  float* attn = attn_.as<float>();
  float* up = up_.as<float>();
  void* act = act_.as<void>();
  const float* cs = rope_.as<float>();
  const float* sn = cs + np * half;

  QWEN35_CUDA_TRY(vision_layer_norm(x, C, b.ln1_w, b.ln1_b, np, C, hp_.eps, act, C, b.qkv.act, stream_), "LayerNorm 1");
  QWEN35_TRY(mm(b.qkv, act, C, np, qkv, 3 * C, false));
  QWEN35_CUDA_TRY(vision_bias_act(qkv, 3 * C, b.qkv_b, np, 3 * C, VisionAct::None, qkv, 3 * C, ActType::F32, stream_),
                  "QKV bias");
  QWEN35_CUDA_TRY(vision_rope(qkv, 3 * C, np, hp_.n_head, DH, C, cs, sn, stream_), "vision RoPE");
  const float scale = 1.0f / std::sqrt(float(DH));
  // The tensor-core kernel when enabled (it falls back where the device's
  // shared memory is too small).
  cudaError_t ae = cudaErrorNotSupported;
  if (mma_attn_) ae = vision_attention_mma(qkv, 3 * C, C, 2 * C, np, hp_.n_head, DH, scale, attn, C, stream_);
  if (ae == cudaErrorNotSupported) ae = vision_attention(qkv, 3 * C, C, 2 * C, np, hp_.n_head, DH, scale, attn, C, stream_);
  QWEN35_CUDA_TRY(ae, "vision attention");
  const void* o_in = attn;
  if (b.out.act != ActType::F32) {
    QWEN35_CUDA_TRY(vision_bias_act(attn, C, nullptr, np, C, VisionAct::None, act, C, b.out.act, stream_),
                    "converting the attention output");
    o_in = act;
  }
  QWEN35_TRY(mm(b.out, o_in, C, np, x, C, true));
  QWEN35_CUDA_TRY(vision_bias_act(x, C, b.out_b, np, C, VisionAct::None, x, C, ActType::F32, stream_),
                  "output projection bias");

  QWEN35_CUDA_TRY(vision_layer_norm(x, C, b.ln2_w, b.ln2_b, np, C, hp_.eps, act, C, b.up.act, stream_), "LayerNorm 2");
  QWEN35_TRY(mm(b.up, act, C, np, up, FF, false));
  // The ViT MLP always uses the tanh GELU (clip.use_gelu, spec §4.4).
  QWEN35_CUDA_TRY(vision_bias_act(up, FF, b.up_b, np, FF, VisionAct::GeluTanh, act, FF, b.down.act, stream_),
                  "MLP bias + GELU");
  QWEN35_TRY(mm(b.down, act, FF, np, x, C, true));
  QWEN35_CUDA_TRY(vision_bias_act(x, C, b.down_b, np, C, VisionAct::None, x, C, ActType::F32, stream_), "MLP bias");
  return Status::Ok();
}

// §4.5: LayerNorm per patch; four consecutive patches (one 2x2 block in
// sequence order) are one [4C] row, so the [np, C] result is [np/4, 4C].
Status CudaVisionEncoder::merger(int64_t np, const EncoderOptions& opt) {
  const int64_t C = hp_.n_embd, C4 = hp_.merged_dim(), N = np / 4, D = hp_.proj_dim;
  void* act = act_.as<void>();
  float* z = up_.as<float>();  // [N, 4C]
  float* out = out_.as<float>();
  QWEN35_CUDA_TRY(vision_layer_norm(x_.as<float>(), C, post_ln_w_, post_ln_b_, np, C, hp_.eps, act, C, mm0_.act, stream_),
                  "merger LayerNorm");
  QWEN35_TRY(mm(mm0_, act, C4, N, z, C4, false));
  const VisionAct a = opt.merger_act == MergerAct::GeluErf ? VisionAct::GeluErf : VisionAct::GeluTanh;
  QWEN35_CUDA_TRY(vision_bias_act(z, C4, mm0_b_, N, C4, a, act, C4, mm2_.act, stream_), "merger bias + GELU");
  QWEN35_TRY(mm(mm2_, act, C4, N, out, D, false));
  QWEN35_CUDA_TRY(vision_bias_act(out, D, mm2_b_, N, D, VisionAct::None, out, D, ActType::F32, stream_),
                  "merger output bias");
  return Status::Ok();
}

Status CudaVisionEncoder::encode(const Mmproj& mp, const float* patches, int32_t gw, int32_t gh,
                                 const EncoderOptions& opt, float* out) {
  if (gw < 2 || gh < 2 || gw % 2 || gh % 2)
    return Error(QWEN35_ERR_INVALID_ARG, "patch grid {}x{} must be even and at least 2x2", gw, gh);
  const int64_t np = int64_t(gw) * gh, N = np / 4, C = hp_.n_embd, half = hp_.head_dim / 2;
  // Host-side tables first (no lock needed): the resampled position table
  // [np, C] and the RoPE cos/sin [np, DH/2] each, in sequence order.
  std::vector<float> pe, rope;
  try {
    pe.resize(size_t(np * C));
    rope.resize(size_t(np * 2 * half));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the vision position tables");
  }
  vision::ResamplePositions(mp, gh, gw, opt.pos_interp, pe.data());
  for (int64_t s = 0; s < np; ++s) {
    int32_t row = 0, col = 0;
    vision::patch_of_seq(s, gw / 2, &row, &col);
    vision::VisionRopeCosSin(row, col, hp_.head_dim, rope.data() + s * half, rope.data() + (np + s) * half);
  }

  std::lock_guard<std::mutex> lock(mu_);
  DeviceScope ds(device_);
  QWEN35_TRY(reserve(np));
  float* x = x_.as<float>();
  // x = PE; then x += Wpatch . patches (+ bias): §4.1 + §4.2 in one product.
  QWEN35_CUDA_TRY(cudaMemcpyAsync(x, pe.data(), pe.size() * 4, cudaMemcpyHostToDevice, stream_),
                  "uploading the position table");
  QWEN35_CUDA_TRY(cudaMemcpyAsync(rope_.as<float>(), rope.data(), rope.size() * 4, cudaMemcpyHostToDevice, stream_),
                  "uploading the RoPE tables");
  QWEN35_CUDA_TRY(cudaMemcpyAsync(patches_.as<float>(), patches, size_t(np) * size_t(hp_.patch_dim()) * 4,
                                  cudaMemcpyHostToDevice, stream_),
                  "uploading the patches");
  QWEN35_TRY(mm(patch_w_, patches_.as<float>(), hp_.patch_dim(), np, x, C, true));
  QWEN35_CUDA_TRY(vision_bias_act(x, C, patch_b_, np, C, VisionAct::None, x, C, ActType::F32, stream_), "patch bias");
  QWEN35_TRY(hook(opt, "pos_added", -1, x, np, C));
  for (size_t l = 0; l < blocks_.size(); ++l) {
    QWEN35_TRY(block(blocks_[l], np));
    QWEN35_TRY(hook(opt, "block", int32_t(l), x, np, C));
  }
  QWEN35_TRY(merger(np, opt));
  const size_t out_bytes = size_t(N) * size_t(hp_.proj_dim) * 4;
  QWEN35_CUDA_TRY(cudaMemcpyAsync(out, out_.as<float>(), out_bytes, cudaMemcpyDeviceToHost, stream_),
                  "reading the image embeddings");
  QWEN35_CUDA_TRY(cudaStreamSynchronize(stream_), "the vision encoder");
  QWEN35_TRY(hook(opt, "output", -1, out_.as<float>(), N, hp_.proj_dim));
  return Status::Ok();
}

}  // namespace

}  // namespace qwen35::cuda

namespace qwen35::vision {

Status CreateCudaVisionEncoder(const Mmproj& mp, const Model* model, std::shared_ptr<DeviceEncoder>* out) {
  out->reset();
  if (!CudaAvailable()) return Error(QWEN35_ERR_UNSUPPORTED, "no usable CUDA device for the vision encoder");
  int device = 0;
  if (model && model->device == QWEN35_DEVICE_CUDA && model->device_weights)
    device = static_cast<const cuda::DeviceModel*>(model->device_weights.get())->device;
  auto enc = std::make_shared<cuda::CudaVisionEncoder>();
  QWEN35_TRY(enc->init(mp, device));
  *out = std::move(enc);
  return Status::Ok();
}

}  // namespace qwen35::vision
