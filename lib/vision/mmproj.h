// The vision projector ("mmproj") GGUF of Qwen3.5: hyper-parameters from the
// clip.* metadata and views of every weight (spec vision.md §1-2). Immutable
// after loading; shared by any number of encode calls.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "log.h"
#include "model.h"
#include "status.h"

namespace qwen35::vision {

class DeviceEncoder;  // device_encoder.h

struct VisionHParams {
  int32_t n_embd = 0;      // C: ViT width (clip.vision.embedding_length)
  int32_t n_ff = 0;        // FF: ViT MLP width
  int32_t n_block = 0;     // L: ViT blocks
  int32_t n_head = 0;      // NH
  int32_t head_dim = 0;    // DH = C / NH (a multiple of 4: 2-D RoPE uses DH/4 frequencies per axis)
  int32_t patch = 0;       // P: patch side in pixels
  int32_t merge = 0;       // M: spatial merge size (2: 2x2 patches -> one LLM token)
  int32_t image_size = 0;  // G * P: native size of the learned position grid (not a resize target)
  int32_t pos_grid = 0;    // G: side of the position table (G*G rows)
  int32_t proj_dim = 0;    // D: output width = the LLM's hidden size
  float eps = 1e-6f;       // LayerNorm epsilon
  float mean[3] = {0.5f, 0.5f, 0.5f};
  float std[3] = {0.5f, 0.5f, 0.5f};

  int32_t align() const { return patch * merge; }           // F: resize alignment (32)
  int32_t patch_dim() const { return 3 * patch * patch; }   // inputs per patch (one frame)
  int32_t merged_dim() const { return n_embd * merge * merge; }  // merger input width (4C)
};

struct VisionBlock {
  Vec ln1_w, ln1_b;        // [C]
  Weight qkv;              // [C, 3C]: rows [Q | K | V], head h owns rows DH*h.. of each
  Vec qkv_b;               // [3C]
  Weight out;              // [C, C]
  Vec out_b;               // [C]
  Vec ln2_w, ln2_b;        // [C]
  Weight up;               // [C, FF]
  Vec up_b;                // [FF]
  Weight down;             // [FF, C]
  Vec down_b;              // [C]
};

struct Mmproj {
  std::string path;
  std::unique_ptr<GgufFile> file;
  VisionHParams hp;
  Logger log;

  // The two temporal slices of the 3-D patch kernel summed once at load (a
  // still image is two identical frames, spec §2), as an F32 weight.
  std::vector<float> patch_w_folded;  // [C][3][P][P] = [C, 3*P*P]
  Weight patch_w;                     // view of patch_w_folded (F32, cols 3*P*P, rows C)
  Vec patch_b;                        // [C]
  Vec pos_embd;                       // [G*G, C]: row gy*G + gx
  std::vector<VisionBlock> blocks;    // L
  Vec post_ln_w, post_ln_b;           // [C]: merger LayerNorm (per patch, before the merge)
  Weight mm0;                         // [4C, 4C]
  Vec mm0_b;                          // [4C]
  Weight mm2;                         // [4C, D]
  Vec mm2_b;                          // [D]

  uint64_t host_bytes = 0;            // bytes allocated for converted weights
  std::string desc;                   // one-line description

  // Set once right after loading when the projector runs on a GPU
  // (CreateCudaVisionEncoder); null: the CPU encoder.
  std::shared_ptr<DeviceEncoder> device;
};

// Open and validate an mmproj file: keys, tensor names, shapes and types.
// Errors name the key or tensor and say what was expected.
Status LoadMmproj(const std::string& path, bool use_mmap, const Logger& log, std::unique_ptr<Mmproj>* out);
// Same, on a GGUF file that is already open.
Status LoadMmprojFromGguf(std::unique_ptr<GgufFile> file, const Logger& log, std::unique_ptr<Mmproj>* out);

// The projector must produce the text model's input width.
Status CheckMmprojFitsModel(const Mmproj& mp, const Model& model);

}  // namespace qwen35::vision
