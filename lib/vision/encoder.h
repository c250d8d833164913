// The vision transformer and patch merger on the CPU (spec vision.md §4).
//
// The encoder's input is device independent: normalized patch vectors in
// sequence order plus the patch grid size. A GPU encoder slots in by
// implementing EncodeCpu's contract for its device (same input, same output
// rows) and being picked by EncodeImage (vision.h) when the projector lives
// on that device; EncodeCpu with reference = true is the oracle it is tested
// against, as the fast CPU path is.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "status.h"
#include "threadpool.h"
#include "vision/mmproj.h"

namespace qwen35::vision {

// Resampling of the learned position table to the patch grid (spec §4.2).
enum class PosInterp {
  AlignCorners,        // REF (transformers): align-corners bilinear
  HalfPixelAntialias,  // LC (llama.cpp May 2026): half-pixel bilinear + antialias
};
// Activation between the merger's two linear layers (spec §4.5).
enum class MergerAct {
  GeluErf,   // REF: exact GELU
  GeluTanh,  // LC: tanh approximation
};

// One source row and its weight.
struct Tap {
  int32_t src;
  float w;
};
// Per output index 0..n_out-1 of one axis: the taps into the n_src table rows.
std::vector<std::vector<Tap>> PosAxisTaps(int32_t n_out, int32_t n_src, PosInterp mode);

// 2-D vision RoPE of the patch at (row, col) (§4.3): cos and sin of the
// head_dim/2 rotation pairs (d, d + head_dim/2). Pairs below head_dim/4 turn
// by row * 10000^(-d/(head_dim/4)), the others by col with the same
// frequencies. Angles in double, stored as F32.
void VisionRopeCosSin(int32_t row, int32_t col, int32_t head_dim, float* cos_out, float* sin_out);

// Called with named intermediates ("patch_embd", "pos_added", "block" for
// each layer, "merger_norm", "output"), rows x cols floats in sequence order.
using DebugHook = std::function<void(const char* name, int32_t layer, const float* data, int64_t rows, int64_t cols)>;

struct EncoderOptions {
  PosInterp pos_interp = PosInterp::AlignCorners;
  MergerAct merger_act = MergerAct::GeluErf;
  bool reference = false;  // plain-loop F32 oracle instead of the tiled kernels
  DebugHook hook;          // optional
};

// Position embeddings for a gh x gw patch grid, in sequence order: [gh*gw, C].
void ResamplePositions(const Mmproj& mp, int32_t gh, int32_t gw, PosInterp mode, float* out);

// patches: [gh*gw, 3*P*P] normalized, sequence order (gw, gh even).
// out: [(gh/2)*(gw/2), D] embeddings, row-major over the merged grid.
Status EncodeCpu(const Mmproj& mp, const float* patches, int32_t gw, int32_t gh, const EncoderOptions& opt,
                 ThreadPool& tp, float* out);

}  // namespace qwen35::vision
