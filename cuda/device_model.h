// The model's weights on one CUDA device, uploaded once into a single
// allocation and shared (read-only) by every context on the model; owned
// through Model::device_weights.
//
// Projections that read the same input are stacked by rows into one
// DevLinear so one kernel computes them all (attention: q|gate, k, v; delta
// net: qkv, z, beta, alpha; FFN: gate, up). NVFP4 stacks are repacked into
// the tiled layout of the tensor-core decode kernel (fp4_tiled.h), Q8_0,
// Q4_K, Q6_K and F16 projections and Q8_0 / Q4_K / F16 embeddings into
// their tiles (ktiles.h) and a Q6_K embedding / LM head into the tiled or
// row-interleaved layout (q6k_tiled.h, q6k_rows32.h); everything else stays
// in its GGUF layout for the generic kernels.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_util.h"
#include "fp4_gemm.h"
#include "matmul.h"
#include "matvec_fp4.h"
#include "matvec_q6k.h"
#include "ktiles.h"
#include "model.h"

namespace qwen35::cuda {

// y[n, rows] = W x for W = parts stacked by rows; part i writes output
// columns offsets[i] .. offsets[i] + parts[i].rows - 1.
struct DevLinear {
  int64_t rows = 0;             // total outputs
  int64_t cols = 0;             // inputs
  bool gate_up = false;         // parts are [gate, up] of a SwiGLU FFN
  std::vector<MatView> parts;   // GGUF layout (empty when fp4 holds the weights)
  std::vector<int64_t> offsets;
  Fp4Tiled fp4;                 // the whole stack in the tiled layout, or absent
  Fp4Blas blas;                 // and in cuBLASLt's FP4 layout (Blackwell prefill), or absent
  KTiles stack;                 // the whole stack in k-quant tiles (parts' MatViews without data), or absent
  std::vector<KTiles> tiles;    // else per part: a part in k-quant tiles (its MatView has no data), or absent
  bool present() const { return fp4.present() || !parts.empty(); }
  // Part i's tiles, or null (it is in the GGUF layout, or the stack holds it).
  const KTiles* part_tiles(size_t i) const { return i < tiles.size() && tiles[i].present() ? &tiles[i] : nullptr; }
};

// A token embedding / LM head matrix: GGUF layout, Q6kRows32, Q6kTiled or
// tiles of ktiles.h (one of them).
struct DevEmbed {
  MatView gguf;
  Q6kRows32 q6k;
  Q6kTiled q6kt;
  KTiles tiles;
  bool repacked() const { return q6k.present() || q6kt.present() || tiles.present(); }
  int64_t rows() const {
    return q6k.present() ? q6k.rows : q6kt.present() ? q6kt.rows : tiles.present() ? tiles.rows() : gguf.rows;
  }
  int64_t cols() const {
    return q6k.present() ? q6k.cols : q6kt.present() ? q6kt.cols : tiles.present() ? tiles.cols() : gguf.cols;
  }
  float scale() const {
    return q6k.present() ? q6k.scale : q6kt.present() ? q6kt.scale : tiles.present() ? tiles.scale() : gguf.scale;
  }
};

struct DevLayer {
  bool is_attn = false;
  const float* attn_norm = nullptr;  // [D]
  const float* post_norm = nullptr;  // [D]
  DevLinear in_proj;    // attention: [Hq*(q|gate) 2*Hq*Dh | k Hkv*Dh | v Hkv*Dh]
                        // delta net: [qkv Cconv | z Cv | beta Hv | alpha Hv]
  DevLinear out_proj;   // attention output / ssm_out -> [D]
  DevLinear gate_up;    // [gate F | up F]
  DevLinear down;       // [F] -> [D]
  const float* q_norm = nullptr;     // [Dh]
  const float* k_norm = nullptr;     // [Dh]
  const float* conv1d = nullptr;     // [Cconv, Kc]
  const float* dt_bias = nullptr;    // [Hv]
  const float* ssm_a = nullptr;      // [Hv]
  const float* ssm_norm = nullptr;   // [dv]
};

struct DevMtp {
  DevLayer block;
  DevLinear eh_proj;                 // [2D] -> [D]
  const float* enorm = nullptr;
  const float* hnorm = nullptr;
  const float* shared_head_norm = nullptr;
  const DevEmbed* embed = nullptr;   // the main embedding unless the file has a dedicated one
  const DevEmbed* head = nullptr;    // the main LM head unless dedicated
  DevEmbed own_embed, own_head;
};

struct DeviceModel {
  int device = 0;
  std::string device_name;
  int cc_major = 0, cc_minor = 0;
  int sms = 0;                       // multiprocessors
  uint64_t bytes = 0;                // weights on the device
  bool fast = false;                 // repacked layouts in use
  bool fp4_gemm = false;             // Fp4Blas copies for the Blackwell prefill GEMM

  DevEmbed token_embd;               // [D, V]
  DevEmbed output_own;               // a separate LM head (untied models)
  const DevEmbed* output = nullptr;  // the LM head
  const float* output_norm = nullptr;
  std::vector<DevLayer> layers;
  std::unique_ptr<DevMtp> mtp;

  // Sizes of the split-K scratch the decode kernels need.
  uint64_t fp4_partial_floats = 0;
  uint64_t fp4_counter_ints = 0;

  DeviceBuffer arena;                // every tensor
  ~DeviceModel();
};

// The device model of a model uploaded by UploadModelToCuda (or null).
inline const DeviceModel* device_model(const Model& m) {
  return m.device == QWEN35_DEVICE_CUDA ? static_cast<const DeviceModel*>(m.device_weights.get()) : nullptr;
}

// Why the CUDA kernels cannot run this model's shapes or types ("" if they can).
std::string unsupported_reason(const Model& m);

}  // namespace qwen35::cuda
