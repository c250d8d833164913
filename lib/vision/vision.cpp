#include "vision/vision.h"

#include <new>

#include "tokenizer.h"
#include "vision/device_encoder.h"

namespace qwen35::vision {

VisionOptions VisionOptions::ForProfile(Profile p) {
  VisionOptions o;
  o.pre.profile = p;
  if (p == Profile::LlamaCpp) {
    o.pos_interp = PosInterp::HalfPixelAntialias;
    o.merger_act = MergerAct::GeluTanh;
  } else {
    o.pos_interp = PosInterp::AlignCorners;
    o.merger_act = MergerAct::GeluErf;
  }
  return o;
}

Status EncodeImage(const Mmproj& mp, const Image& img, const VisionOptions& opt, ThreadPool& tp, ImageEmbed* out) {
  Preprocessed pre;
  QWEN35_TRY(Preprocess(img, mp.hp, opt.pre, &pre));
  ImageEmbed e;
  e.n_embd = mp.hp.proj_dim;
  e.nx = pre.nx;
  e.ny = pre.ny;
  e.width = pre.width;
  e.height = pre.height;
  e.src_width = img.width;
  e.src_height = img.height;
  try {
    e.data.resize(size_t(e.n_tokens()) * size_t(e.n_embd));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for {} image embeddings", e.n_tokens());
  }
  EncoderOptions eo;
  eo.pos_interp = opt.pos_interp;
  eo.merger_act = opt.merger_act;
  eo.reference = opt.reference;
  // A projector with a device encoder (weights uploaded at load) runs there;
  // the reference switch always runs the CPU oracle.
  if (mp.device && !opt.reference)
    QWEN35_TRY(mp.device->encode(mp, pre.patches.data(), pre.gw, pre.gh, eo, e.data.data()));
  else
    QWEN35_TRY(EncodeCpu(mp, pre.patches.data(), pre.gw, pre.gh, eo, tp, e.data.data()));
  *out = std::move(e);
  return Status::Ok();
}

Status VisionTokenIds(const Model& model, int32_t* vision_start, int32_t* vision_end) {
  if (!model.vocab) return Error(QWEN35_ERR_UNSUPPORTED, "the model has no tokenizer, so no <|vision_start|> token");
  *vision_start = model.vocab->find("<|vision_start|>");
  *vision_end = model.vocab->find("<|vision_end|>");
  if (*vision_start < 0 || *vision_end < 0)
    return Error(QWEN35_ERR_UNSUPPORTED, "the model's vocabulary lacks <|vision_start|> or <|vision_end|>");
  return Status::Ok();
}

void ImagePositions(int32_t p0, int32_t nx, int32_t ny, int32_t* pos) {
  for (int32_t m = 0; m < nx * ny; ++m) {
    pos[3 * m] = p0;
    pos[3 * m + 1] = p0 + m / nx;
    pos[3 * m + 2] = p0 + m % nx;
  }
}

namespace {

Status CheckEmbedFits(const Context& ctx, const ImageEmbed& e, int32_t extra_rows) {
  if (e.n_tokens() < 1 || e.data.size() != size_t(e.n_tokens()) * size_t(e.n_embd))
    return Error(QWEN35_ERR_INVALID_ARG, "the image embedding is empty or inconsistent");
  if (e.n_embd != ctx.model().hp.n_embd)
    return Error(QWEN35_ERR_INVALID_ARG, "image embeddings are {} wide but the model's hidden size is {}", e.n_embd,
                 ctx.model().hp.n_embd);
  const int64_t need = int64_t(e.n_tokens()) + extra_rows;
  if (ctx.n_past() + need > ctx.n_ctx())
    return Error(QWEN35_ERR_CONTEXT_FULL, "the image needs {} rows but the context holds {} of {}", need, ctx.n_past(),
                 ctx.n_ctx());
  return Status::Ok();
}

}  // namespace

Status DecodeImageRows(Context& ctx, const ImageEmbed& e, LogitsMode mode) {
  QWEN35_TRY(CheckEmbedFits(ctx, e, 0));
  const int32_t p0 = ctx.next_pos();
  std::vector<int32_t> pos;
  try {
    pos.resize(size_t(e.n_tokens()) * 3);
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for image positions");
  }
  ImagePositions(p0, e.nx, e.ny, pos.data());
  return ctx.decode_embd(e.data.data(), e.n_tokens(), pos.data(), p0 + e.n_pos(), mode);
}

Status DecodeImage(Context& ctx, const ImageEmbed& e, LogitsMode mode) {
  int32_t vs = -1, ve = -1;
  QWEN35_TRY(VisionTokenIds(ctx.model(), &vs, &ve));
  QWEN35_TRY(CheckEmbedFits(ctx, e, 2));
  const int32_t before = ctx.n_past();
  Status st = ctx.decode(&vs, 1, LogitsMode::None);
  if (st.ok()) st = DecodeImageRows(ctx, e, LogitsMode::None);
  if (st.ok()) st = ctx.decode(&ve, 1, mode);
  if (!st.ok() && ctx.n_past() != before) {
    Status ts = ctx.truncate(before);
    if (!ts.ok())
      return Error(st.code(), "{} (and undoing the partial image failed: {})", st.message(), ts.message());
  }
  return st;
}

}  // namespace qwen35::vision
