// The tiled Q6_K layout of the tensor-core LM head (matvec_q6k.cu, kernel 2),
// as host/device functions so that tests/test_fp4_layout.cpp checks the
// packing and the decoding on the CPU.
//
// Like the NVFP4 tiles (fp4_tiled.h): 16-row tiles, kgroups of 64 columns =
// 4 chunks of 16 (one mma.sync m16n8k16 k-step, one Q6_K sub-block), and
// lane L = 4g + t holds, per chunk w, the 8 codes of rows g and g+8 at
// columns 2t, 2t+1, 2t+8, 2t+9 (code p = 2*reg + hi at fp4_code_position).
// The bytes are exactly those of the GGUF blocks, rearranged:
//
//   lo: [tiles][kgroups][32 lanes][4 words]  low 4 bits; code p of chunk w in
//       word w at bit 4*(p/2) + 16*(p%2)
//   hi: [tiles][kgroups][32 lanes][2 words]  high 2 bits; code p of chunk w
//       in word w/2 at bit q6kt_hi_bit(p) + 8*(w%2)
//   sc: [tiles][kgroups][8 g][8 bytes]       int8 sub-block scales; byte
//       fp4_scale_byte(row, w) for tile row `row`
//   d:  [tiles][kgroups/4][8 g][2]           F16 super-scale of rows g, g+8
//
// so that register reg of chunk w is, with three shifts and masks,
// 0x6400 | q in each half: the F16 number 1024 + q (q = low | high << 4),
// and one F16 subtraction of 1056 gives q - 32 exactly. Value of an element:
// d * sc * (q - 32) as in GGUF Q6_K (spec §6.4).
#pragma once

#include <cstdint>

#include "fp4_tiled.h"
#include "q6k_rows32.h"  // q6k_gguf_code

namespace qwen35::cuda {

struct Q6kTiled : TileShape {
  const uint8_t* lo = nullptr;
  const uint8_t* hi = nullptr;
  const int8_t* sc = nullptr;
  const uint16_t* d = nullptr;
  QWEN35_HD bool present() const { return lo != nullptr; }
  QWEN35_HD uint64_t lo_bytes() const { return units() * 512; }
  QWEN35_HD uint64_t hi_bytes() const { return units() * 256; }
  QWEN35_HD uint64_t sc_bytes() const { return units() * 64; }
  QWEN35_HD uint64_t d_bytes() const { return units() / 4 * 32; }
  QWEN35_HD uint64_t bytes() const { return lo_bytes() + hi_bytes() + sc_bytes() + d_bytes(); }
};

// Bit of the high 2 bits of code p (chunk w even; +8 for w odd) in a hi word.
QWEN35_HD int q6kt_hi_bit(int p) {
  const int reg = p >> 1;
  return (reg == 0 ? 4 : reg == 1 ? 6 : reg == 2 ? 2 : 0) + 16 * (p & 1);
}

// The lo word and this chunk's half of the hi word of `lane` for chunk w
// of a tile-kgroup, from the GGUF Q6_K blocks (210 bytes) of the 16 tile
// rows that hold it (null for padding rows); kg4 = kgroup % 4 (the 64
// columns of the 256-column block).
QWEN35_HD void q6kt_lane_words(const uint8_t* const* block, int kg4, int lane, int w, uint32_t* lo, uint32_t* hi) {
  *lo = 0;
  *hi = 0;
  for (int p = 0; p < 8; ++p) {
    int row, col;
    fp4_code_position(lane, w, p, &row, &col);
    if (!block[row]) continue;
    const uint32_t q = q6k_gguf_code(block[row], 64 * kg4 + col);
    *lo |= (q & 0x0Fu) << (4 * (p >> 1) + 16 * (p & 1));
    *hi |= (q >> 4) << (q6kt_hi_bit(p) + 8 * (w & 1));
  }
}

// The 8 scale bytes of rows g and g+8 of a tile-kgroup (sc bytes 8g .. 8g+7).
QWEN35_HD void q6kt_g_scales(const uint8_t* const* block, int kg4, int g, int8_t* out8) {
  for (int up = 0; up < 2; ++up) {
    const uint8_t* b = block[g + 8 * up];
    for (int w = 0; w < 4; ++w)
      out8[fp4_scale_byte(g + 8 * up, w) - 8 * g] = b ? int8_t(b[192 + (64 * kg4 + 16 * w) / 16]) : int8_t(0);
  }
}

// d of rows g (low half) and g+8 (high half).
QWEN35_HD uint32_t q6kt_g_d(const uint8_t* const* block, int g) {
  auto d = [](const uint8_t* b) { return b ? uint32_t(b[208] | (b[209] << 8)) : 0u; };
  return d(block[g]) | (d(block[g + 8]) << 16);
}

// Register reg (0..3) of chunk w: 1024 + q in each F16 half.
QWEN35_HD uint32_t q6kt_reg(uint32_t lo, uint32_t hi, int w, int reg) {
  const int s = q6kt_hi_bit(2 * reg) + 8 * (w & 1) - 4;  // move the high bits to bits 4-5 (and 20-21)
  const uint32_t h = s >= 0 ? hi >> s : hi << -s;
  return 0x64006400u | ((lo >> (4 * reg)) & 0x000F000Fu) | (h & 0x00300030u);
}

// Code p of chunk w (for dequantization).
QWEN35_HD uint32_t q6kt_code(uint32_t lo, uint32_t hi, int w, int p) {
  const uint32_t low = (lo >> (4 * (p >> 1) + 16 * (p & 1))) & 0x0Fu;
  const uint32_t high = (hi >> (q6kt_hi_bit(p) + 8 * (w & 1))) & 3u;
  return low | (high << 4);
}

// Where column c (0..63) of tile row i lives: lane, chunk w, code p.
QWEN35_HD void q6kt_position(int i, int c, int* lane, int* w, int* p) {
  const int g = i & 7, rh = i >> 3, cc = c & 15;
  const int t = (cc & 7) >> 1, hi = cc & 1, reg = rh + 2 * (cc >> 3);
  *lane = 4 * g + t;
  *w = c >> 4;
  *p = 2 * reg + hi;
}

}  // namespace qwen35::cuda
