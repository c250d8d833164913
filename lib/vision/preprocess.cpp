// Built with -ffp-contract=off (lib/CMakeLists.txt): llama.cpp's resize is
// reproduced bit for bit only when its float32 lerps are not fused.
#include "vision/preprocess.h"

#include <algorithm>
#include <cmath>
#include <new>

namespace qwen35::vision {

void TokenBounds(const PreprocessOptions& opt, int32_t* min_tokens, int32_t* max_tokens) {
  const bool lc = opt.profile == Profile::LlamaCpp;
  *min_tokens = opt.min_tokens > 0 ? opt.min_tokens : (lc ? 8 : 64);
  *max_tokens = opt.max_tokens > 0 ? opt.max_tokens : (lc ? 4096 : 16384);
}

Status SmartResize(int32_t w, int32_t h, int32_t factor, int64_t min_px, int64_t max_px, Profile profile,
                   int32_t* out_w, int32_t* out_h) {
  if (w < 1 || h < 1) return Error(QWEN35_ERR_INVALID_ARG, "image size {}x{} is empty", w, h);
  if (min_px < 1 || max_px < min_px)
    return Error(QWEN35_ERR_INVALID_ARG, "bad pixel bounds [{}, {}]", min_px, max_px);
  const int64_t F = factor;
  int64_t H = 0, W = 0;
  if (profile == Profile::LlamaCpp) {
    // llama.cpp: float32 arithmetic, std::round (halves away from zero).
    const float f = float(F);
    auto round_f = [f, F](float x) { return int64_t(std::round(x / f)) * F; };
    auto ceil_f = [f, F](float x) { return int64_t(std::ceil(x / f)) * F; };
    auto floor_f = [f, F](float x) { return int64_t(std::floor(x / f)) * F; };
    H = std::max(F, round_f(float(h)));
    W = std::max(F, round_f(float(w)));
    if (H * W > max_px) {
      const float beta = std::sqrt(float(int64_t(h) * w) / float(max_px));
      H = std::max(F, floor_f(float(h) / beta));
      W = std::max(F, floor_f(float(w) / beta));
    } else if (H * W < min_px) {
      const float beta = std::sqrt(float(min_px) / float(int64_t(h) * w));
      H = ceil_f(float(h) * beta);
      W = ceil_f(float(w) * beta);
    }
  } else {
    // transformers: float64, Python round() (halves to even = nearbyint).
    if (double(std::max(w, h)) / double(std::min(w, h)) > 200.0)
      return Error(QWEN35_ERR_INVALID_ARG, "image {}x{} has an aspect ratio above 200", w, h);
    const double f = double(F);
    H = std::max(F, int64_t(std::nearbyint(double(h) / f)) * F);
    W = std::max(F, int64_t(std::nearbyint(double(w) / f)) * F);
    if (H * W > max_px) {
      const double beta = std::sqrt(double(h) * double(w) / double(max_px));
      H = std::max(F, int64_t(std::floor(double(h) / beta / f)) * F);
      W = std::max(F, int64_t(std::floor(double(w) / beta / f)) * F);
    } else if (H * W < min_px) {
      const double beta = std::sqrt(double(min_px) / (double(h) * double(w)));
      H = int64_t(std::ceil(double(h) * beta / f)) * F;
      W = int64_t(std::ceil(double(w) * beta / f)) * F;
    }
  }
  if (W < F || H < F || W > kMaxImageSide || H > kMaxImageSide)
    return Error(QWEN35_ERR_INVALID_ARG, "image {}x{} would be resized to {}x{}, outside [{}, {}] pixels a side", w, h,
                 W, H, F, kMaxImageSide);
  *out_w = int32_t(W);
  *out_h = int32_t(H);
  return Status::Ok();
}

void ResizeBilinearLC(const Image& src, int32_t nw, int32_t nh, Image* dst) {
  const int32_t w = src.width, h = src.height;
  dst->width = nw;
  dst->height = nh;
  dst->rgb.assign(size_t(nw) * size_t(nh) * 3, 0);
  const float rx = nw > 1 ? float(w - 1) / float(nw - 1) : 0.0f;
  const float ry = nh > 1 ? float(h - 1) / float(nh - 1) : 0.0f;
  auto lerp = [](float s, float e, float t) { return s + (e - s) * t; };
  for (int32_t y = 0; y < nh; ++y) {
    const float py = float(y) * ry;
    const int32_t y0 = std::min(int32_t(py), h - 1), y1 = std::min(y0 + 1, h - 1);
    const float fy = py - float(y0);
    for (int32_t x = 0; x < nw; ++x) {
      const float px = float(x) * rx;
      const int32_t x0 = std::min(int32_t(px), w - 1), x1 = std::min(x0 + 1, w - 1);
      const float fx = px - float(x0);
      uint8_t* o = dst->rgb.data() + (size_t(y) * size_t(nw) + size_t(x)) * 3;
      for (int c = 0; c < 3; ++c) {
        const float top = lerp(src.pixel(x0, y0)[c], src.pixel(x1, y0)[c], fx);
        const float bot = lerp(src.pixel(x0, y1)[c], src.pixel(x1, y1)[c], fx);
        o[c] = uint8_t(lerp(top, bot, fy));  // truncation, as llama.cpp
      }
    }
  }
}

namespace {

// ---- PIL BICUBIC -------------------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Fixed-point taps of one output axis (PIL precompute_coeffs +
// normalize_coeffs_8bpc): output i reads inputs first[i] .. first[i]+count[i]-1.
struct Coeffs {
  int32_t ksize = 0;
  std::vector<int32_t> first, count;
  std::vector<int32_t> k;  // [n_out][ksize]
};

Coeffs bicubic_coeffs(int32_t n_in, int32_t n_out) {
  Coeffs c;
  const double scale = double(n_in) / double(n_out);
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  c.ksize = int32_t(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(n_out));
  c.count.resize(size_t(n_out));
  c.k.assign(size_t(n_out) * size_t(c.ksize), 0);
  std::vector<double> w(static_cast<size_t>(c.ksize));
  for (int32_t i = 0; i < n_out; ++i) {
    const double center = (i + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int32_t xmin = int32_t(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int32_t xmax = int32_t(center + support + 0.5);
    if (xmax > n_in) xmax = n_in;
    xmax -= xmin;
    double ww = 0.0;
    for (int32_t x = 0; x < xmax; ++x) {
      w[size_t(x)] = bicubic_filter((x + xmin - center + 0.5) * ss);
      ww += w[size_t(x)];
    }
    for (int32_t x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[size_t(x)] / ww : w[size_t(x)];
      c.k[size_t(i) * size_t(c.ksize) + size_t(x)] =
          int32_t(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(i)] = xmin;
    c.count[size_t(i)] = xmax;
  }
  return c;
}

uint8_t clip8(int64_t v) {
  v >>= kPrecisionBits;
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

void ResizeBicubicRef(const Image& src, int32_t nw, int32_t nh, Image* dst) {
  // Horizontal pass (only if the width changes), then vertical.
  Image tmp;
  const Image* cur = &src;
  if (nw != src.width) {
    const Coeffs c = bicubic_coeffs(src.width, nw);
    tmp.width = nw;
    tmp.height = src.height;
    tmp.rgb.resize(size_t(nw) * size_t(src.height) * 3);
    for (int32_t y = 0; y < src.height; ++y)
      for (int32_t x = 0; x < nw; ++x) {
        const int32_t* k = c.k.data() + size_t(x) * size_t(c.ksize);
        int64_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
        for (int32_t j = 0; j < c.count[size_t(x)]; ++j) {
          const uint8_t* p = src.pixel(c.first[size_t(x)] + j, y);
          for (int ch = 0; ch < 3; ++ch) acc[ch] += int64_t(p[ch]) * k[j];
        }
        uint8_t* o = tmp.rgb.data() + (size_t(y) * size_t(nw) + size_t(x)) * 3;
        for (int ch = 0; ch < 3; ++ch) o[ch] = clip8(acc[ch]);
      }
    cur = &tmp;
  }
  if (nh == cur->height) {
    if (cur == &tmp) *dst = std::move(tmp);
    else *dst = src;
    return;
  }
  const Coeffs c = bicubic_coeffs(cur->height, nh);
  Image out;
  out.width = cur->width;
  out.height = nh;
  out.rgb.resize(size_t(cur->width) * size_t(nh) * 3);
  for (int32_t y = 0; y < nh; ++y) {
    const int32_t* k = c.k.data() + size_t(y) * size_t(c.ksize);
    for (int32_t x = 0; x < cur->width; ++x) {
      int64_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
      for (int32_t j = 0; j < c.count[size_t(y)]; ++j) {
        const uint8_t* p = cur->pixel(x, c.first[size_t(y)] + j);
        for (int ch = 0; ch < 3; ++ch) acc[ch] += int64_t(p[ch]) * k[j];
      }
      uint8_t* o = out.rgb.data() + (size_t(y) * size_t(cur->width) + size_t(x)) * 3;
      for (int ch = 0; ch < 3; ++ch) o[ch] = clip8(acc[ch]);
    }
  }
  *dst = std::move(out);
}

void Patchify(const Image& img, const VisionHParams& hp, float* out) {
  const int32_t P = hp.patch, gw = img.width / P, gh = img.height / P, mw = gw / 2;
  const int64_t K = hp.patch_dim();
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * hp.std[c]);
    shift[c] = hp.mean[c] / hp.std[c];
  }
  for (int32_t py = 0; py < gh; ++py)
    for (int32_t px = 0; px < gw; ++px) {
      float* v = out + patch_seq_index(py, px, mw) * K;
      for (int32_t ky = 0; ky < P; ++ky)
        for (int32_t kx = 0; kx < P; ++kx) {
          const uint8_t* p = img.pixel(px * P + kx, py * P + ky);
          for (int c = 0; c < 3; ++c) v[(c * P + ky) * P + kx] = float(p[c]) * scale[c] - shift[c];
        }
    }
}

Status Preprocess(const Image& img, const VisionHParams& hp, const PreprocessOptions& opt, Preprocessed* out) {
  QWEN35_TRY(CheckImageSize(img.width, img.height));
  if (img.rgb.size() != size_t(img.width) * size_t(img.height) * 3)
    return Error(QWEN35_ERR_INVALID_ARG, "image buffer does not match its {}x{} size", img.width, img.height);
  int32_t tmin = 0, tmax = 0;
  TokenBounds(opt, &tmin, &tmax);
  if (tmin < 1 || tmax < tmin)
    return Error(QWEN35_ERR_INVALID_ARG, "bad image token bounds [{}, {}]", tmin, tmax);
  const int64_t F = hp.align(), px_per_token = F * F;
  int32_t W = 0, H = 0;
  QWEN35_TRY(SmartResize(img.width, img.height, int32_t(F), tmin * px_per_token, tmax * px_per_token, opt.profile, &W,
                         &H));
  try {
    Image resized;
    const Image* use = &img;
    out->content_x = out->content_y = 0;
    out->content_w = W;
    out->content_h = H;
    if (W != img.width || H != img.height) {
      if (opt.profile == Profile::LlamaCpp) {
        // Fit inside W x H keeping the aspect ratio, centre on black.
        const float s = std::min(float(W) / float(img.width), float(H) / float(img.height));
        const int32_t nw = std::min(int32_t(std::ceil(float(img.width) * s)), W);
        const int32_t nh = std::min(int32_t(std::ceil(float(img.height) * s)), H);
        Image fitted;
        ResizeBilinearLC(img, nw, nh, &fitted);
        resized.width = W;
        resized.height = H;
        resized.rgb.assign(size_t(W) * size_t(H) * 3, 0);
        const int32_t ox = (W - nw) / 2, oy = (H - nh) / 2;
        for (int32_t y = 0; y < nh; ++y)
          std::copy(fitted.rgb.begin() + size_t(y) * size_t(nw) * 3, fitted.rgb.begin() + size_t(y + 1) * size_t(nw) * 3,
                    resized.rgb.begin() + (size_t(y + oy) * size_t(W) + size_t(ox)) * 3);
        out->content_x = ox;
        out->content_y = oy;
        out->content_w = nw;
        out->content_h = nh;
      } else {
        ResizeBicubicRef(img, W, H, &resized);
      }
      use = &resized;
    }
    out->width = W;
    out->height = H;
    out->gw = W / hp.patch;
    out->gh = H / hp.patch;
    out->nx = out->gw / 2;
    out->ny = out->gh / 2;
    out->patches.resize(size_t(out->gw) * size_t(out->gh) * size_t(hp.patch_dim()));
    Patchify(*use, hp, out->patches.data());
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory preprocessing a {}x{} image", W, H);
  }
  return Status::Ok();
}

}  // namespace qwen35::vision
