#include "vision/image.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

// stb_image (Debian libstb-dev) is compiled here, as static functions: a
// static libqwen35 must not define global stbi_* symbols that could clash
// with an embedder's own copy. Only the formats the API documents.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STBI_NO_STDIO          // we read files ourselves (clear I/O errors)
#define STBI_NO_LINEAR         // no float (HDR) paths
#define STBI_NO_HDR
#define STBI_MAX_DIMENSIONS 32768  // = kMaxImageSide; a second line of defence
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wall"
#pragma GCC diagnostic ignored "-Wextra"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wshadow"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

namespace qwen35::vision {

Status CheckImageSize(int64_t width, int64_t height) {
  if (width < 1 || height < 1)
    return Error(QWEN35_ERR_INVALID_ARG, "image size {}x{} is empty (width and height must be at least 1)", width,
                 height);
  if (width > kMaxImageSide || height > kMaxImageSide || width * height > kMaxImagePixels)
    return Error(QWEN35_ERR_INVALID_ARG, "image size {}x{} is too large (at most {} pixels a side and {} pixels)", width,
                 height, kMaxImageSide, kMaxImagePixels);
  return Status::Ok();
}

Status ImageFromMemory(const void* data, size_t size, Image* out) {
  if (!data || size == 0) return Error(QWEN35_ERR_INVALID_ARG, "no image data");
  if (size > kMaxImageFileBytes || size > size_t(INT32_MAX))
    return Error(QWEN35_ERR_INVALID_ARG, "encoded image of {} bytes is too large", size);
  const auto* bytes = static_cast<const stbi_uc*>(data);
  int w = 0, h = 0, comp = 0;
  // Read only the header first: reject huge or empty images before decoding.
  if (!stbi_info_from_memory(bytes, int(size), &w, &h, &comp))
    return Error(QWEN35_ERR_FORMAT, "not a readable image (PNG, JPEG, BMP, PPM/PGM are supported): {}",
                 stbi_failure_reason() ? stbi_failure_reason() : "unknown format");
  QWEN35_TRY(CheckImageSize(w, h));
  int dw = 0, dh = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> px(stbi_load_from_memory(bytes, int(size), &dw, &dh, &comp, 3),
                                                stbi_image_free);
  if (!px)
    return Error(QWEN35_ERR_FORMAT, "cannot decode the {}x{} image: {}", w, h,
                 stbi_failure_reason() ? stbi_failure_reason() : "corrupt data");
  if (dw != w || dh != h)
    return Error(QWEN35_ERR_FORMAT, "image header says {}x{} but {}x{} pixels were decoded", w, h, dw, dh);
  try {
    out->rgb.assign(px.get(), px.get() + size_t(w) * size_t(h) * 3);
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for a {}x{} image", w, h);
  }
  out->width = w;
  out->height = h;
  return Status::Ok();
}

Status ImageFromFile(const std::string& path, Image* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return Error(QWEN35_ERR_IO, "cannot open image '{}': {}", path, std::strerror(errno));
  std::unique_ptr<FILE, int (*)(FILE*)> guard(f, std::fclose);
  std::vector<uint8_t> data;
  uint8_t chunk[1 << 16];
  size_t k;
  while ((k = std::fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (data.size() + k > kMaxImageFileBytes)
      return Error(QWEN35_ERR_INVALID_ARG, "image file '{}' is larger than {} bytes", path, kMaxImageFileBytes);
    try {
      data.insert(data.end(), chunk, chunk + k);
    } catch (const std::bad_alloc&) {
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory reading '{}'", path);
    }
  }
  if (std::ferror(f)) return Error(QWEN35_ERR_IO, "read error on image '{}'", path);
  if (data.empty()) return Error(QWEN35_ERR_FORMAT, "image file '{}' is empty", path);
  Status st = ImageFromMemory(data.data(), data.size(), out);
  if (!st.ok()) return st.prefix("'" + path + "': ");
  return Status::Ok();
}

Status ImageFromPixels(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels, int32_t stride,
                       Image* out) {
  if (!pixels) return Error(QWEN35_ERR_INVALID_ARG, "pixels must not be NULL");
  QWEN35_TRY(CheckImageSize(width, height));
  if (channels != 3 && channels != 4)
    return Error(QWEN35_ERR_INVALID_ARG, "{} channels: raw pixels must be RGB (3) or RGBA (4)", channels);
  const int64_t row = int64_t(width) * channels;
  if (stride == 0) stride = int32_t(row);
  if (stride < row)
    return Error(QWEN35_ERR_INVALID_ARG, "stride {} is smaller than a row of {} pixels x {} channels", stride, width,
                 channels);
  try {
    out->rgb.resize(size_t(width) * size_t(height) * 3);
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for a {}x{} image", width, height);
  }
  for (int32_t y = 0; y < height; ++y) {
    const uint8_t* s = pixels + size_t(y) * size_t(stride);
    uint8_t* d = out->rgb.data() + size_t(y) * size_t(width) * 3;
    if (channels == 3) {
      std::memcpy(d, s, size_t(width) * 3);
    } else {
      for (int32_t x = 0; x < width; ++x) {
        d[3 * x] = s[4 * x];
        d[3 * x + 1] = s[4 * x + 1];
        d[3 * x + 2] = s[4 * x + 2];
      }
    }
  }
  out->width = width;
  out->height = height;
  return Status::Ok();
}

}  // namespace qwen35::vision
