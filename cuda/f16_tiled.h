// The tiled F16 layout of the tensor-core decode kernel (matvec_f16.cu), as
// host/device functions so that tests/test_fp4_layout.cpp checks it on the
// CPU.
//
// Like the other tiles (fp4_tiled.h): 16-row tiles, kgroups of 64 columns =
// 4 chunks of 16 (one mma.sync m16n8k16 k-step each). The weights are F16
// already, so a lane's A registers are the F16 pairs themselves:
//
//   codes: [tiles][kgroups][4 chunks][32 lanes][4 words]  (2,048 bytes)
//          word reg of lane L = 4g + t, chunk w: rows g + 8*(reg & 1) at
//          columns 16w + 2t + 8*(reg >> 1) (low half) and the next column
//
// exactly the GGUF bytes of the 16 x 64 elements, rearranged. Padding rows
// of the last tile: zero.
#pragma once

#include <cstdint>

#include "fp4_tiled.h"

namespace qwen35::cuda {

constexpr int kF16CodeBytes = 2048;  // per tile and kgroup

struct F16Tiled : TileShape {
  const uint8_t* codes = nullptr;
  QWEN35_HD bool present() const { return codes != nullptr; }
  QWEN35_HD uint64_t code_bytes() const { return units() * kF16CodeBytes; }
};

// Word reg of `lane` for chunk w of a tile-kgroup: row[r] is the GGUF F16
// row of tile row r at the kgroup's first column (null: a padding row).
QWEN35_HD uint32_t f16t_lane_word(const uint8_t* const* row, int lane, int w, int reg) {
  uint32_t word = 0;
  for (int hi = 0; hi < 2; ++hi) {
    int r, col;
    fp4_code_position(lane, w, 2 * reg + hi, &r, &col);
    const uint8_t* p = row[r] ? row[r] + 2 * col : nullptr;
    const uint32_t h = p ? uint32_t(p[0] | (p[1] << 8)) : 0u;
    word |= h << (16 * hi);
  }
  return word;
}

// The byte offset in a tile-kgroup of element (tile row ri, column cc).
QWEN35_HD int f16t_offset(int ri, int cc) {
  const int w = cc >> 4, c = cc & 15;
  const int lane = 4 * (ri & 7) + ((c & 7) >> 1), reg = (ri >> 3) | ((c >> 3) << 1);
  return 512 * w + 16 * lane + 4 * reg + 2 * (c & 1);
}

}  // namespace qwen35::cuda
