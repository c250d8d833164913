// C API: vision projector, images, image embeddings and placing them in a
// context (the "Vision" section of qwen35.h).
#include <cstring>
#include <exception>
#include <new>

#include "bindings/c/handles.h"
#include "log.h"
#include "threadpool.h"
#include "vision/device_encoder.h"

using namespace qwen35;
using namespace qwen35::vision;

namespace {

// The encoder switches of the params: the llamacpp_compat preset, then each
// switch that is not 0 ("as the preset says") overrides its item.
Status options_from_params(const qwen35_mmproj_params& p, VisionOptions* out) {
  VisionOptions o = VisionOptions::ForProfile(p.llamacpp_compat ? Profile::LlamaCpp : Profile::Ref);
  switch (raw_enum(p.preprocess)) {
    case QWEN35_VISION_PREPROCESS_PRESET: break;
    case QWEN35_VISION_PREPROCESS_REF: o.pre.profile = Profile::Ref; break;
    case QWEN35_VISION_PREPROCESS_LC: o.pre.profile = Profile::LlamaCpp; break;
    default: return Error(QWEN35_ERR_INVALID_ARG, "qwen35_mmproj_load: bad preprocess {}", raw_enum(p.preprocess));
  }
  switch (raw_enum(p.pos_interp)) {
    case QWEN35_VISION_POS_INTERP_PRESET: break;
    case QWEN35_VISION_POS_INTERP_ALIGN_CORNERS: o.pos_interp = PosInterp::AlignCorners; break;
    case QWEN35_VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS: o.pos_interp = PosInterp::HalfPixelAntialias; break;
    default: return Error(QWEN35_ERR_INVALID_ARG, "qwen35_mmproj_load: bad pos_interp {}", raw_enum(p.pos_interp));
  }
  switch (raw_enum(p.merger_gelu)) {
    case QWEN35_VISION_GELU_PRESET: break;
    case QWEN35_VISION_GELU_ERF: o.merger_act = MergerAct::GeluErf; break;
    case QWEN35_VISION_GELU_TANH: o.merger_act = MergerAct::GeluTanh; break;
    default: return Error(QWEN35_ERR_INVALID_ARG, "qwen35_mmproj_load: bad merger_gelu {}", raw_enum(p.merger_gelu));
  }
  if (p.image_min_tokens < 0 || p.image_max_tokens < 0)
    return Error(QWEN35_ERR_INVALID_ARG, "qwen35_mmproj_load: image_min_tokens {} / image_max_tokens {} must be >= 0",
                 p.image_min_tokens, p.image_max_tokens);
  o.pre.min_tokens = p.image_min_tokens;
  o.pre.max_tokens = p.image_max_tokens;
  // Check the bounds now (with the profile's defaults filled in) rather than
  // on every encode.
  int32_t tmin = 0, tmax = 0;
  TokenBounds(o.pre, &tmin, &tmax);
  if (tmax < tmin)
    return Error(QWEN35_ERR_INVALID_ARG,
                 "qwen35_mmproj_load: image token bounds [{}, {}] are empty (image_min_tokens {}, image_max_tokens {}; "
                 "0 = the preprocessing profile's default)",
                 tmin, tmax, p.image_min_tokens, p.image_max_tokens);
  o.reference = p.reference;
  *out = o;
  return Status();
}

}  // namespace

extern "C" {

qwen35_mmproj_params qwen35_mmproj_default_params(void) {
  qwen35_mmproj_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.use_mmap = true;
  p.n_threads = ThreadPool::default_threads();
  p.llamacpp_compat = false;
  p.device = QWEN35_DEVICE_AUTO;
  // Every switch follows the llamacpp_compat preset.
  p.preprocess = QWEN35_VISION_PREPROCESS_PRESET;
  p.pos_interp = QWEN35_VISION_POS_INTERP_PRESET;
  p.merger_gelu = QWEN35_VISION_GELU_PRESET;
  p.image_min_tokens = 0;
  p.image_max_tokens = 0;
  p.reference = false;
  return p;
}

qwen35_status qwen35_mmproj_load(const char* path, const qwen35_model* model, const qwen35_mmproj_params* params,
                                 qwen35_mmproj** out) {
  if (out) *out = nullptr;
  if (!path || !out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_mmproj_load: path and out must not be NULL");
  const qwen35_mmproj_params p = read_params(params, qwen35_mmproj_default_params());
  if (p.n_threads < 0 || p.n_threads > 256)
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("qwen35_mmproj_load: n_threads {} is out of range", p.n_threads));
  const int dev = raw_enum(p.device);
  if (dev != QWEN35_DEVICE_AUTO && dev != QWEN35_DEVICE_CPU && dev != QWEN35_DEVICE_CUDA)
    return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("qwen35_mmproj_load: bad device {}", dev));
  VisionOptions opt;
  if (Status st = options_from_params(p, &opt); !st.ok()) return set_error(st);
  const Logger log = model ? model->m->log : default_logger();
  std::unique_ptr<qwen35_mmproj> h(new (std::nothrow) qwen35_mmproj());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  Status st = guarded("loading the mmproj", [&] { return LoadMmproj(path, p.use_mmap, log, &h->mp); });
  if (st.ok() && model) st = CheckMmprojFitsModel(*h->mp, *model->m).prefix(std::string("'") + path + "': ");
  // CUDA when asked for, or under AUTO when the model runs on CUDA (the
  // projector follows the model; the CUDA encoder passed tests/gpu on an
  // H100, docs/cuda.md). AUTO falls back to the CPU encoder if the upload
  // fails (logged); an explicit CUDA request fails instead.
  const bool want_cuda = p.device == QWEN35_DEVICE_CUDA ||
                         (p.device == QWEN35_DEVICE_AUTO && model && model->m->device == QWEN35_DEVICE_CUDA);
  if (st.ok() && want_cuda) {
    Status up = guarded("uploading the mmproj", [&] {
      return CreateCudaVisionEncoder(*h->mp, model ? model->m.get() : nullptr, &h->mp->device);
    });
    if (!up.ok() && p.device == QWEN35_DEVICE_AUTO) {
      log.warn("vision projector stays on the CPU: {}", up.message());
      h->mp->device.reset();
    } else {
      st = up;
    }
  }
  if (!st.ok()) return set_error(st);
  h->opt = opt;
  h->n_threads = p.n_threads > 0 ? p.n_threads : ThreadPool::default_threads();
  log.info("{}", h->mp->desc);
  if (h->mp->device) log.info("{}", h->mp->device->describe());
  *out = h.release();
  return QWEN35_OK;
}

void qwen35_mmproj_free(qwen35_mmproj* mmproj) { delete mmproj; }

qwen35_device qwen35_mmproj_device(const qwen35_mmproj* mmproj) {
  return mmproj && mmproj->mp && mmproj->mp->device ? QWEN35_DEVICE_CUDA : QWEN35_DEVICE_CPU;
}

qwen35_status qwen35_image_load_file(const char* path, qwen35_image** out) {
  if (out) *out = nullptr;
  if (!path || !out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_image_load_file: path and out must not be NULL");
  std::unique_ptr<qwen35_image> h(new (std::nothrow) qwen35_image());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  Status st = guarded("loading an image", [&] { return ImageFromFile(path, &h->img); });
  if (!st.ok()) return set_error(st);
  *out = h.release();
  return QWEN35_OK;
}

qwen35_status qwen35_image_load_memory(const void* data, size_t size, qwen35_image** out) {
  if (out) *out = nullptr;
  if (!data || !out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_image_load_memory: data and out must not be NULL");
  std::unique_ptr<qwen35_image> h(new (std::nothrow) qwen35_image());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  Status st = guarded("decoding an image", [&] { return ImageFromMemory(data, size, &h->img); });
  if (!st.ok()) return set_error(st);
  *out = h.release();
  return QWEN35_OK;
}

qwen35_status qwen35_image_from_pixels(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels,
                                       int32_t stride, qwen35_image** out) {
  if (out) *out = nullptr;
  if (!out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_image_from_pixels: out must not be NULL");
  std::unique_ptr<qwen35_image> h(new (std::nothrow) qwen35_image());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  Status st = guarded("copying pixels", [&] { return ImageFromPixels(pixels, width, height, channels, stride, &h->img); });
  if (!st.ok()) return set_error(st);
  *out = h.release();
  return QWEN35_OK;
}

void qwen35_image_free(qwen35_image* image) { delete image; }
int32_t qwen35_image_width(const qwen35_image* image) { return image ? image->img.width : 0; }
int32_t qwen35_image_height(const qwen35_image* image) { return image ? image->img.height : 0; }

qwen35_status qwen35_image_encode(qwen35_mmproj* mmproj, const qwen35_image* image, qwen35_image_embed** out) {
  if (out) *out = nullptr;
  if (!mmproj || !image || !out)
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_image_encode: mmproj, image and out must not be NULL");
  std::unique_ptr<qwen35_image_embed> h(new (std::nothrow) qwen35_image_embed());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  Status st = guarded("encoding an image", [&] {
    // A pool per call keeps one mmproj usable from several threads at once.
    ThreadPool tp(mmproj->n_threads);
    return EncodeImage(*mmproj->mp, image->img, mmproj->opt, tp, &h->e);
  });
  if (!st.ok()) return set_error(st);
  *out = h.release();
  return QWEN35_OK;
}

void qwen35_image_embed_free(qwen35_image_embed* embed) { delete embed; }
int32_t qwen35_image_embed_n_tokens(const qwen35_image_embed* embed) { return embed ? embed->e.n_tokens() : 0; }
int32_t qwen35_image_embed_n_embd(const qwen35_image_embed* embed) { return embed ? embed->e.n_embd : 0; }

void qwen35_image_embed_grid(const qwen35_image_embed* embed, int32_t* nx, int32_t* ny, int32_t* width,
                             int32_t* height) {
  if (nx) *nx = embed ? embed->e.nx : 0;
  if (ny) *ny = embed ? embed->e.ny : 0;
  if (width) *width = embed ? embed->e.width : 0;
  if (height) *height = embed ? embed->e.height : 0;
}

const float* qwen35_image_embed_data(const qwen35_image_embed* embed) {
  return embed ? embed->e.data.data() : nullptr;
}

qwen35_status qwen35_context_decode_image(qwen35_context* ctx, const qwen35_image_embed* embed) {
  if (!ctx) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_decode_image: ctx is NULL");
  clear_error(ctx);
  if (!embed) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_context_decode_image: embed is NULL", ctx);
  Status st = guarded("decoding an image", [&] { return DecodeImage(*ctx->ctx, embed->e, LogitsMode::Last); });
  return st.ok() ? QWEN35_OK : set_error(st, ctx);
}

}  // extern "C"
