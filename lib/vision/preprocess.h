// Image preprocessing (spec vision.md §3): target size ("smart resize"),
// resampling, normalization and the patch sequence order.
//
// Two profiles where llama.cpp and transformers differ (spec §8):
//   Ref       transformers: 64..16384 tokens, float64 with half-to-even
//             rounding, bicubic stretch (PIL BICUBIC, antialiased), no padding.
//   LlamaCpp  llama.cpp (May 2026): 8..4096 tokens, float32 with halves away
//             from zero, aspect-preserving align-corners bilinear (no
//             antialias, truncating) plus a centred black letterbox.
#pragma once

#include <cstdint>
#include <vector>

#include "status.h"
#include "vision/image.h"
#include "vision/mmproj.h"

namespace qwen35::vision {

enum class Profile { Ref, LlamaCpp };

struct PreprocessOptions {
  Profile profile = Profile::Ref;
  int32_t min_tokens = 0;  // 0: profile default (Ref 64, LlamaCpp 8)
  int32_t max_tokens = 0;  // 0: profile default (Ref 16384, LlamaCpp 4096)
};

// Token bounds of a profile after applying the overrides (one token = F*F pixels).
void TokenBounds(const PreprocessOptions& opt, int32_t* min_tokens, int32_t* max_tokens);

// Target size W x H (multiples of `factor`) for a w x h input (spec §3.2).
// Ref also refuses aspect ratios above 200.
Status SmartResize(int32_t w, int32_t h, int32_t factor, int64_t min_px, int64_t max_px, Profile profile,
                   int32_t* out_w, int32_t* out_h);

struct Preprocessed {
  int32_t width = 0, height = 0;  // W x H actually encoded
  int32_t gw = 0, gh = 0;         // patch grid (W/P, H/P)
  int32_t nx = 0, ny = 0;         // merged grid (gw/2, gh/2): one LLM token per cell
  int32_t content_x = 0, content_y = 0, content_w = 0, content_h = 0;  // image area inside the letterbox
  std::vector<float> patches;     // [gw*gh][3*P*P] normalized, patch sequence order (§3.5)
};

Status Preprocess(const Image& img, const VisionHParams& hp, const PreprocessOptions& opt, Preprocessed* out);

// llama.cpp's bilinear resize (align-corners mapping, truncation to u8,
// float32 lerps; spec §3.3 LC) of src to nw x nh.
void ResizeBilinearLC(const Image& src, int32_t nw, int32_t nh, Image* dst);
// PIL's BICUBIC resize (a = -0.5, support widened when shrinking, 22-bit
// fixed-point weights, horizontal pass then vertical, u8 in between).
void ResizeBicubicRef(const Image& src, int32_t nw, int32_t nh, Image* dst);

// Patch sequence order (§3.5): sequence index s of patch (py, px) on a grid
// mw merged cells wide, and back.
inline int64_t patch_seq_index(int32_t py, int32_t px, int32_t mw) {
  return ((int64_t(py >> 1) * mw + (px >> 1)) * 2 + (py & 1)) * 2 + (px & 1);
}
inline void patch_of_seq(int64_t s, int32_t mw, int32_t* py, int32_t* px) {
  const int64_t m = s >> 2;
  *py = int32_t(m / mw) * 2 + int32_t((s >> 1) & 1);
  *px = int32_t(m % mw) * 2 + int32_t(s & 1);
}

// Normalized patch vectors of an image whose size is a multiple of 2P, in
// sequence order: out[s][c*P*P + ky*P + kx] = (u8/255 - mean[c]) / std[c].
void Patchify(const Image& img, const VisionHParams& hp, float* out);

}  // namespace qwen35::vision
