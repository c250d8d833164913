// The tiled Q8_0 layout of the tensor-core decode kernel (matvec_q8.cu), as
// host/device functions so that tests/test_fp4_layout.cpp checks the packing
// and the decoding on the CPU.
//
// Like the NVFP4 tiles (fp4_tiled.h): 16-row tiles, kgroups of 64 columns =
// 4 chunks of 16 (one mma.sync m16n8k16 k-step each) = 2 Q8_0 blocks. Lane
// L = 4g + t holds, per chunk w, the 8 codes of rows g and g+8 at columns
// 2t, 2t+1, 2t+8, 2t+9 (code p = 2*reg + hi at fp4_code_position), as bytes
// q + 128:
//
//   codes:  [tiles][kgroups][2 halves][32 lanes][16 bytes]  (1,024 bytes)
//           half h holds chunks 2h and 2h+1: byte 8*(w%2) + p of lane L
//   scales: [tiles][kgroups][8 g][4] F16 (64 bytes): the Q8_0 block scales
//           d of rows g, g+8 of block 0 (columns 0-31), then of block 1
//
// 1,088 bytes per tile-kgroup, exactly the GGUF bytes of its 16 x 64
// elements (32 blocks of 34 bytes), rearranged. A register's two codes
// become F16 with one byte permute (each code under the exponent byte
// 0x64: the F16 number 1024 + code) and one F16 subtraction of 1152 (= q,
// exactly). Value of an element: d * q as in GGUF Q8_0 (spec §6.2).
// Padding rows of the last tile: code 128 (q = 0), d = 0.
#pragma once

#include <cstdint>

#include "fp4_tiled.h"

namespace qwen35::cuda {

constexpr int kQ8CodeBytes = 1024;  // per tile and kgroup
constexpr int kQ8ScaleBytes = 64;   // per tile and kgroup

struct Q8Tiled : TileShape {
  const uint8_t* codes = nullptr;
  const uint16_t* scales = nullptr;
  QWEN35_HD bool present() const { return codes != nullptr; }
  QWEN35_HD uint64_t code_bytes() const { return units() * kQ8CodeBytes; }
  QWEN35_HD uint64_t scale_bytes() const { return units() * kQ8ScaleBytes; }
};

// The 16 code bytes of `lane` in half h of a tile-kgroup, from the GGUF
// Q8_0 blocks (34 bytes: F16 d, int8 qs[32]) of the 16 tile rows, each row
// pointing at the first of the kgroup's two blocks (null: a padding row).
QWEN35_HD void q8t_lane_bytes(const uint8_t* const* row, int lane, int h, uint8_t* out16) {
  for (int i = 0; i < 16; ++i) {
    const int w = 2 * h + i / 8, p = i % 8;
    int r, col;
    fp4_code_position(lane, w, p, &r, &col);
    const uint8_t* b = row[r];
    const int8_t q = b ? int8_t(b[34 * (col / 32) + 2 + col % 32]) : int8_t(0);
    out16[i] = uint8_t(int(q) + 128);
  }
}

// The 4 scales (F16 bits) of rows g and g+8 of a tile-kgroup.
QWEN35_HD void q8t_g_scales(const uint8_t* const* row, int g, uint16_t* out4) {
  for (int b = 0; b < 2; ++b)
    for (int up = 0; up < 2; ++up) {
      const uint8_t* p = row[g + 8 * up];
      out4[2 * b + up] = p ? uint16_t(p[34 * b] | (p[34 * b + 1] << 8)) : uint16_t(0);
    }
}

// A-register reg (0..3) of one chunk from its two code words (word reg / 2):
// the F16x2 bit pattern of (1024 + code) in each half; the kernel subtracts
// 1152 from both (one HSUB2). On the device one byte permute.
QWEN35_HD uint32_t q8t_reg(uint32_t word, int reg) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(word, 0x64646464u, (reg & 1) ? 0x4342u : 0x4140u);
#else
  const uint32_t lo = (reg & 1) ? (word >> 16) & 0xFFu : word & 0xFFu;
  const uint32_t hi = (reg & 1) ? (word >> 24) & 0xFFu : (word >> 8) & 0xFFu;
  return lo | (hi << 16) | 0x64006400u;
#endif
}

// Where element (tile row ri, column cc of the kgroup) lives: its code
// byte within the tile-kgroup's 1,024 and its scale's index among the 32.
QWEN35_HD int q8t_code_offset(int ri, int cc) {
  const int w = cc >> 4, c = cc & 15;
  const int g = ri & 7, t = (c & 7) >> 1, reg = (ri >> 3) | ((c >> 3) << 1), hi = c & 1;
  return 512 * (w >> 1) + 16 * (4 * g + t) + 8 * (w & 1) + 2 * reg + hi;
}
QWEN35_HD int q8t_scale_index(int ri, int cc) { return 4 * (ri & 7) + 2 * (cc >> 5) + (ri >> 3); }

}  // namespace qwen35::cuda
