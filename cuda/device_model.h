// The model's weights on one CUDA device: every tensor uploaded once into a
// single allocation, with views that mirror lib/model.h. Shared (read-only)
// by every context created on the model; owned through
// Model::device_weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_util.h"
#include "matmul.h"
#include "model.h"

namespace qwen35::cuda {

struct DevLayer {
  bool is_attn = false;
  const float* attn_norm = nullptr;  // [D]
  const float* post_norm = nullptr;  // [D]
  // full attention
  MatView wq, wk, wv, wo;            // [D, 2*Hq*Dh], [D, Hkv*Dh] x2, [Hq*Dh, D]
  const float* q_norm = nullptr;     // [Dh]
  const float* k_norm = nullptr;     // [Dh]
  // gated delta net
  MatView wqkv, wgate, wbeta, walpha, ssm_out;
  const float* conv1d = nullptr;     // [Cconv, Kc]
  const float* dt_bias = nullptr;    // [Hv]
  const float* ssm_a = nullptr;      // [Hv]
  const float* ssm_norm = nullptr;   // [dv]
  // FFN
  MatView ffn_gate, ffn_up, ffn_down;
};

struct DevMtp {
  DevLayer block;
  MatView eh_proj;                   // [2D, D]
  const float* enorm = nullptr;
  const float* hnorm = nullptr;
  const float* shared_head_norm = nullptr;
  MatView embed;                     // token_embd unless the file has a dedicated one
  MatView head;                      // the main LM head unless dedicated
};

struct DeviceModel {
  int device = 0;
  std::string device_name;
  int cc_major = 0, cc_minor = 0;
  uint64_t bytes = 0;                // weights on the device

  MatView token_embd;                // [D, V]
  MatView output;                    // [D, V] LM head (token_embd when tied)
  const float* output_norm = nullptr;
  std::vector<DevLayer> layers;
  std::unique_ptr<DevMtp> mtp;

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
