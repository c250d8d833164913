// The Q6_K layout of the decode kernels (matvec_q6k.cu): rows interleaved in
// groups of 32 so that one thread owns one row and a warp's loads are
// contiguous, with exactly the bytes of the GGUF blocks:
//
//   ql: [groups][K/32 chunks][32 rows][16 bytes]  low 4 bits, element i of
//       the chunk in byte i/2 (low nibble for even i)
//   qh: [groups][K/32][32][8 bytes]               high 2 bits, element i in
//       byte i/4 at bit 2*(i%4)
//   sc: [groups][K/32][32][2]                     int8 scales of the chunk's
//       two sub-blocks of 16
//   d:  [groups][K/256][32][2]                    F16 super-scale per block
//
// Value of element i of chunk c: d * sc[i/16] * (q - 32), q = low | high << 4,
// as in GGUF Q6_K (spec §6.4). Host/device functions, tested on the CPU in
// tests/test_fp4_layout.cpp.
#pragma once

#include <cstdint>

#include "fp4_tiled.h"  // QWEN35_HD

namespace qwen35::cuda {

struct Q6kRows32 {
  const uint8_t* ql = nullptr;
  const uint8_t* qh = nullptr;
  const int8_t* sc = nullptr;
  const uint16_t* d = nullptr;
  int64_t rows = 0, cols = 0;  // cols a multiple of 256
  float scale = 1.0f;
  QWEN35_HD bool present() const { return ql != nullptr; }
  QWEN35_HD int64_t groups() const { return (rows + 31) / 32; }
  QWEN35_HD int64_t chunks() const { return cols / 32; }
  QWEN35_HD uint64_t ql_bytes() const { return uint64_t(groups()) * uint64_t(chunks()) * 32 * 16; }
  QWEN35_HD uint64_t qh_bytes() const { return uint64_t(groups()) * uint64_t(chunks()) * 32 * 8; }
  QWEN35_HD uint64_t sc_bytes() const { return uint64_t(groups()) * uint64_t(chunks()) * 32 * 2; }
  QWEN35_HD uint64_t d_bytes() const { return uint64_t(groups()) * uint64_t(cols / 256) * 32 * 2; }
  // Index of row r's unit for chunk c (ql: x16 bytes, qh: x8, sc: x2).
  QWEN35_HD int64_t unit(int64_t r, int64_t c) const { return ((r / 32) * chunks() + c) * 32 + (r % 32); }
  QWEN35_HD int64_t d_index(int64_t r, int64_t c) const { return ((r / 32) * (cols / 256) + c / 8) * 32 + (r % 32); }
};

// The 6-bit code (0..63) and the scale-byte index of element e (0..255) of a
// GGUF Q6_K block (210 bytes).
QWEN35_HD uint32_t q6k_gguf_code(const uint8_t* block, int e) {
  const int h = e / 128, r = e % 128, c = r / 32, l = r % 32;
  const uint8_t qlb = block[64 * h + 32 * (c & 1) + l];
  const uint32_t low4 = c < 2 ? (qlb & 0x0Fu) : (qlb >> 4);
  const uint32_t high2 = (block[128 + 32 * h + l] >> (2 * c)) & 3u;
  return low4 | (high2 << 4);
}

// Code of element i (0..31) from a row's ql (16 bytes) and qh (8 bytes) words.
QWEN35_HD uint32_t q6k_rows32_code(const uint32_t* ql4, const uint32_t* qh2, int i) {
  const uint32_t low4 = (ql4[i / 8] >> (4 * (i % 8))) & 0x0Fu;
  const uint32_t high2 = (qh2[i / 16] >> (2 * (i % 16))) & 3u;
  return low4 | (high2 << 4);
}

// The packed unit of chunk c (0..7 within the block) of a row from its GGUF
// Q6_K block: low and high bit words, the two sub-block scales, and d.
QWEN35_HD void q6k_pack_unit(const uint8_t* block, int c, uint32_t* l4, uint32_t* h2, int8_t* sc, uint16_t* d) {
  l4[0] = l4[1] = l4[2] = l4[3] = 0;
  h2[0] = h2[1] = 0;
  const int e0 = 32 * c;
  for (int k = 0; k < 32; ++k) {
    const uint32_t q = q6k_gguf_code(block, e0 + k);
    l4[k / 8] |= (q & 0x0Fu) << (4 * (k % 8));
    h2[k / 16] |= (q >> 4) << (2 * (k % 16));
  }
  sc[0] = int8_t(block[192 + e0 / 16]);
  sc[1] = int8_t(block[192 + e0 / 16 + 1]);
  *d = uint16_t(block[208] | (block[209] << 8));
}

}  // namespace qwen35::cuda
