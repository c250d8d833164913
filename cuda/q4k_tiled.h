// The tiled Q4_K layout of the tensor-core decode kernel (matvec_q4k.cu), as
// host/device functions so that tests/test_fp4_layout.cpp checks the packing
// and the decoding on the CPU.
//
// Like the other tiles (fp4_tiled.h): 16-row tiles, kgroups of 64 columns =
// 4 chunks of 16 (one mma.sync m16n8k16 k-step each) = 2 Q4_K sub-blocks of
// 32. Lane L = 4g + t holds, per chunk w, the 8 codes of rows g and g+8 at
// columns 2t, 2t+1, 2t+8, 2t+9 (code p = 2*reg + hi at fp4_code_position):
//
//   codes: [tiles][kgroups][32 lanes][4 words]  one word per chunk; code p
//          at bit 4*reg + 16*hi (a shift and one mask put a register's two
//          codes under the F16 exponent 0x6400: 1024 + q)
//   sm:    [tiles][kgroups][8 g][8 bytes]       the 6-bit sub-block scales
//          and mins: sc(g, s0), sc(g+8, s0), sc(g, s1), sc(g+8, s1), then
//          the four m in the same order (s0, s1: the kgroup's sub-blocks)
//   dm:    [tiles][kgroups/4][8 g][4] F16       d(g), d(g+8), dmin(g),
//          dmin(g+8) of the 256-column block
//
// 592 bytes per tile-kgroup against the GGUF's 576 (the 6-bit scales take a
// byte each). Value of an element: d*sc * q - dmin*m as in GGUF Q4_K (spec
// §6.3). Padding rows of the last tile: all zero.
#pragma once

#include <cstdint>

#include "fp4_tiled.h"

namespace qwen35::cuda {

constexpr int kQ4kCodeBytes = 512;  // per tile and kgroup
constexpr int kQ4kSmBytes = 64;     // per tile and kgroup
constexpr int kQ4kDmBytes = 64;     // per tile and 4 kgroups

struct Q4kTiled : TileShape {
  const uint8_t* codes = nullptr;
  const uint8_t* sm = nullptr;
  const uint16_t* dm = nullptr;
  QWEN35_HD bool present() const { return codes != nullptr; }
  QWEN35_HD uint64_t code_bytes() const { return units() * kQ4kCodeBytes; }
  QWEN35_HD uint64_t sm_bytes() const { return units() * kQ4kSmBytes; }
  QWEN35_HD uint64_t dm_bytes() const { return units() / 4 * kQ4kDmBytes; }
  QWEN35_HD uint64_t bytes() const { return code_bytes() + sm_bytes() + dm_bytes(); }
};

// Q4_K's 6-bit scale and min of sub-block j (0..7) from the block's 12
// packed bytes (as lib/quants.h q4k_scale_min).
QWEN35_HD void q4kt_scale_min(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = uint8_t(scales[j] & 63);
    *m = uint8_t(scales[j + 4] & 63);
  } else {
    *sc = uint8_t((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4));
    *m = uint8_t((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Code of column col (0..255) of a GGUF Q4_K block (144 bytes: d, dmin,
// scales[12], qs[128]): sub-block j = col / 32 in the low (j even) or high
// nibbles of qs[32 * (j / 2) .. + 31].
QWEN35_HD uint32_t q4kt_gguf_code(const uint8_t* block, int col) {
  const int j = col / 32;
  const uint8_t b = block[16 + 32 * (j / 2) + col % 32];
  return (j & 1) ? uint32_t(b >> 4) : uint32_t(b & 0x0F);
}

// The code word of `lane` for chunk w of a tile-kgroup: block[r] is the
// 256-column GGUF block of tile row r holding the kgroup (null: padding),
// kg4 = kgroup % 4 (its 64 columns in the block).
QWEN35_HD uint32_t q4kt_lane_word(const uint8_t* const* block, int kg4, int lane, int w) {
  uint32_t word = 0;
  for (int p = 0; p < 8; ++p) {
    int r, col;
    fp4_code_position(lane, w, p, &r, &col);
    const uint32_t q = block[r] ? q4kt_gguf_code(block[r], 64 * kg4 + col) : 0u;
    word |= q << (4 * (p >> 1) + 16 * (p & 1));
  }
  return word;
}

// The 8 scale / min bytes of rows g and g+8 of a tile-kgroup.
QWEN35_HD void q4kt_g_sm(const uint8_t* const* block, int kg4, int g, uint8_t* out8) {
  for (int s = 0; s < 2; ++s)
    for (int up = 0; up < 2; ++up) {
      uint8_t sc = 0, m = 0;
      if (const uint8_t* b = block[g + 8 * up]) q4kt_scale_min(b + 4, 2 * kg4 + s, &sc, &m);
      out8[2 * s + up] = sc;
      out8[4 + 2 * s + up] = m;
    }
}

// d(g), d(g+8), dmin(g), dmin(g+8) (F16 bits) of a 256-column block.
QWEN35_HD void q4kt_g_dm(const uint8_t* const* block, int g, uint16_t* out4) {
  for (int up = 0; up < 2; ++up) {
    const uint8_t* b = block[g + 8 * up];
    out4[up] = b ? uint16_t(b[0] | (b[1] << 8)) : uint16_t(0);
    out4[2 + up] = b ? uint16_t(b[2] | (b[3] << 8)) : uint16_t(0);
  }
}

// A-register reg (0..3) of a chunk's code word: the F16x2 bit pattern of
// (1024 + code) in each half; the kernel subtracts 1024 (one HSUB2).
QWEN35_HD uint32_t q4kt_reg(uint32_t word, int reg) { return ((word >> (4 * reg)) & 0x000F000Fu) | 0x64006400u; }

// Where element (tile row ri, column cc of the kgroup) lives: the lane and
// chunk of its code word, and its bit there.
QWEN35_HD void q4kt_position(int ri, int cc, int* lane, int* w, int* bit) {
  const int c = cc & 15;
  *w = cc >> 4;
  *lane = 4 * (ri & 7) + ((c & 7) >> 1);
  const int reg = (ri >> 3) | ((c >> 3) << 1), hi = c & 1;
  *bit = 4 * reg + 16 * hi;
}

}  // namespace qwen35::cuda
