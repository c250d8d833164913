// Random-weight qwen35 GGUF files of any shape, for tests and benchmarks
// (qwen35-synth). Weights are deterministic in (seed, tensor name).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ggml_types.h"
#include "status.h"

namespace qwen35 {

struct SynthConfig {
  int32_t n_vocab = 4096;
  int32_t n_ctx_train = 32768;
  int32_t n_embd = 256;
  int32_t n_layer = 4;        // main layers
  int32_t n_mtp = 1;          // 0 or 1 MTP layer
  int32_t n_ff = 512;
  int32_t n_head = 2;
  int32_t n_head_kv = 1;
  int32_t head_dim = 256;
  int32_t n_rot = 64;
  std::vector<int32_t> sections = {11, 11, 10, 0};
  float rope_base = 1e7f;
  float eps = 1e-6f;
  int32_t ssm_conv = 4;
  int32_t ssm_state = 64;     // dk
  int32_t ssm_heads_k = 2;    // Hk
  int32_t ssm_heads_v = 4;    // Hv
  int32_t ssm_dv = 64;        // dv
  int32_t full_attn_interval = 4;

  uint32_t matrix_type = GGML_NVFP4;  // every blk.* matrix
  uint32_t embd_type = GGML_Q6_K;     // token_embd (also the LM head when tied)
  bool untied = false;                // write a separate output.weight
  uint32_t output_type = GGML_Q6_K;
  bool mixed = false;                 // cycle matrix types NVFP4/Q4_K/Q6_K/Q8_0/F16/F32/BF16/MXFP4 per tensor
  bool mtp_mirror = false;            // MTP reproduces the main model exactly (spec: MTP tests)
  uint64_t seed = 1;
  std::string vocab_from;             // copy the tokenizer from this GGUF (padded to n_vocab)
  int n_threads = 0;                  // 0: all cores
};

// Presets: "tiny" (the fixture shapes) and "4b" (Qwen3.5-4B).
Status SynthPreset(const std::string& name, SynthConfig* cfg);
Status WriteSynthModel(const SynthConfig& cfg, const std::string& path);

}  // namespace qwen35
