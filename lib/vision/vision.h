// The vision path end to end: image -> preprocessing -> encoder -> LLM-space
// embeddings, and placing those embeddings in a text-model context with
// their M-RoPE positions (spec vision.md §5).
#pragma once

#include <cstdint>
#include <vector>

#include "context.h"
#include "model.h"
#include "status.h"
#include "threadpool.h"
#include "vision/encoder.h"
#include "vision/image.h"
#include "vision/mmproj.h"
#include "vision/preprocess.h"

namespace qwen35::vision {

// Every LC/REF switch of spec §8. ForProfile gives the consistent sets; the
// switches stay independent (e.g. REF encoder on pixels kept as they are).
struct VisionOptions {
  PreprocessOptions pre;     // token bounds, rounding, resampling, letterbox
  PosInterp pos_interp = PosInterp::AlignCorners;
  MergerAct merger_act = MergerAct::GeluErf;
  bool reference = false;    // plain-loop oracle encoder

  // Ref: transformers behaviour (the library default, spec §7 recommendation).
  // LlamaCpp: llama.cpp (May 2026) behaviour, matching its outputs.
  static VisionOptions ForProfile(Profile p);
};

// An encoded image: one LLM-input embedding per merged 2x2 patch cell.
// Immutable once built; reusable across turns and contexts.
struct ImageEmbed {
  int32_t n_embd = 0;            // D (= the text model's hidden size)
  int32_t nx = 0, ny = 0;        // merged grid: n_tokens = nx * ny
  int32_t width = 0, height = 0; // preprocessed (encoded) pixel size
  int32_t src_width = 0, src_height = 0;
  std::vector<float> data;       // [nx*ny, D], row m = merged cell (m / nx, m % nx)

  int32_t n_tokens() const { return nx * ny; }
  // How far the text position counter advances over the image (spec §5.2).
  int32_t n_pos() const { return nx > ny ? nx : ny; }
};

// Preprocess and encode one image. The ThreadPool runs the encoder.
Status EncodeImage(const Mmproj& mp, const Image& img, const VisionOptions& opt, ThreadPool& tp, ImageEmbed* out);

// ---- placement in the text model (spec §5) ------------------------------------

// Token ids of <|vision_start|> and <|vision_end|> in the model's vocabulary.
Status VisionTokenIds(const Model& model, int32_t* vision_start, int32_t* vision_end);

// M-RoPE positions of the nx*ny image rows when the first one sits at p0
// (the position right after <|vision_start|>): row m gets
// (t, h, w) = (p0, p0 + m / nx, p0 + m % nx). pos: [nx*ny, 3].
void ImagePositions(int32_t p0, int32_t nx, int32_t ny, int32_t* pos);

// Append only the image rows, assuming <|vision_start|> was just decoded
// (p0 = ctx.next_pos()); text resumes at p0 + max(nx, ny). On failure the
// context is unchanged.
Status DecodeImageRows(Context& ctx, const ImageEmbed& e, LogitsMode mode);

// Append <|vision_start|>, the image rows and <|vision_end|> as one atomic
// step: on any failure the context is truncated back to where it was. `mode`
// applies to the <|vision_end|> row (Last or All: its logits are kept as the
// last call's results; None: no logits).
Status DecodeImage(Context& ctx, const ImageEmbed& e, LogitsMode mode);

}  // namespace qwen35::vision
