// Random-weight vision projector GGUF files in the Qwen3.5 mmproj layout
// (spec vision.md §1-2), any shape: for tests (encoder shapes other than the
// fixture's, broken files) and for timing the encoder at the real size.
// Weights are deterministic in (seed, tensor name).
#pragma once

#include <cstdint>
#include <string>

#include "ggml_types.h"
#include "status.h"

namespace qwen35::vision {

struct SynthMmprojConfig {
  int32_t n_embd = 64;       // C
  int32_t n_ff = 128;        // FF
  int32_t n_block = 2;       // L
  int32_t n_head = 2;        // NH
  int32_t patch = 16;        // P
  int32_t pos_grid = 8;      // G (image_size = G * P)
  int32_t proj_dim = 256;    // D
  uint32_t matrix_type = GGML_F16;  // every >= 2-D weight except the position table (F32)
  uint64_t seed = 1;
  // Test hooks for broken files.
  std::string omit;                            // leave out this key or tensor
  std::string projector_type = "qwen3vl_merger";
  bool deepstack = false;                      // add a v.deepstack.* tensor
};

// "tiny" (the fixture's shapes) or "4b" (Qwen3.5-4B: C 1024, 24 blocks, ...).
Status SynthMmprojPreset(const std::string& name, SynthMmprojConfig* cfg);
Status WriteSynthMmproj(const SynthMmprojConfig& cfg, const std::string& path);

}  // namespace qwen35::vision
