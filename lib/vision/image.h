// Decoded images: 8-bit RGB pixels, row-major, top row first (spec vision.md
// §3.1). Decoding policy (llama.cpp's): grey is replicated to RGB, an alpha
// channel is dropped (no compositing), 16-bit samples are reduced to 8 bits,
// EXIF orientation is not applied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace qwen35::vision {

// Limits checked before any pixel is decoded, so a hostile header cannot
// make us allocate gigabytes.
constexpr int32_t kMaxImageSide = 32768;
constexpr int64_t kMaxImagePixels = int64_t(1) << 27;   // 134 Mpixel (384 MiB of RGB)
constexpr uint64_t kMaxImageFileBytes = uint64_t(1) << 30;

struct Image {
  int32_t width = 0;
  int32_t height = 0;
  std::vector<uint8_t> rgb;  // [height][width][3]

  const uint8_t* pixel(int32_t x, int32_t y) const { return rgb.data() + (size_t(y) * size_t(width) + size_t(x)) * 3; }
};

// Encoded PNG, JPEG, BMP or PPM/PGM from a file or from memory.
Status ImageFromFile(const std::string& path, Image* out);
Status ImageFromMemory(const void* data, size_t size, Image* out);
// Raw pixels: channels 3 (RGB) or 4 (RGBA, alpha dropped); stride in bytes
// between rows (0: width * channels).
Status ImageFromPixels(const uint8_t* pixels, int32_t width, int32_t height, int32_t channels, int32_t stride,
                       Image* out);

// Width and height acceptable for an image (both >= 1, within the limits).
Status CheckImageSize(int64_t width, int64_t height);

}  // namespace qwen35::vision
