// Operand layouts of cuBLASLt's block-scaled FP4 GEMM (Blackwell, sm_100+):
// CUDA_R_4F_E2M1 data with CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3 scales,
// as host/device functions so tests/test_fp4_layout.cpp checks them on the
// CPU (the GEMM itself only runs on Blackwell).
//
// Data: a row-major [rows][K] matrix of E2M1 codes (the "TN" operands: each
// row K-contiguous), two codes per byte, element 2i in the low nibble.
// Scales: one E4M3 byte per 16 elements of a row, in cuBLAS's tiled
// layout: the [rows][K/16] scale matrix is cut into 128 x 4 tiles (rows
// padded to 128, scale columns to 4), tiles stored row-tile by row-tile
// with the column tiles innermost, 512 bytes each; inside a tile, scale
// (r, c) is at (r % 32) * 16 + (r / 32) * 4 + c.
#pragma once

#include <cstdint>

#include "fp4_tiled.h"  // QWEN35_HD

namespace qwen35::cuda {

QWEN35_HD int64_t blockscale_rows_padded(int64_t rows) { return (rows + 127) / 128 * 128; }
QWEN35_HD int64_t blockscale_cols_padded(int64_t k) { return (k / 16 + 3) / 4 * 4; }
QWEN35_HD uint64_t blockscale_bytes(int64_t rows, int64_t k) {
  return uint64_t(blockscale_rows_padded(rows)) * uint64_t(blockscale_cols_padded(k));
}

// Byte offset of the scale of row r, 16-element block c, for a K-wide operand.
QWEN35_HD uint64_t blockscale_offset(int64_t r, int64_t c, int64_t k) {
  const int64_t col_tiles = blockscale_cols_padded(k) / 4;
  return uint64_t((r / 128) * col_tiles + c / 4) * 512 + uint64_t((r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4);
}

// E2M1 code nearest to v: magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}, |v| > 6
// saturates, ties go to the even code, small negatives round to +0.
QWEN35_HD uint8_t e2m1_nearest(float v) {
  const float a = v < 0.0f ? -v : v;
  uint8_t m;
  if (a <= 0.25f) m = 0;
  else if (a < 0.75f) m = 1;
  else if (a <= 1.25f) m = 2;
  else if (a < 1.75f) m = 3;
  else if (a <= 2.5f) m = 4;
  else if (a < 3.5f) m = 5;
  else if (a <= 5.0f) m = 6;
  else m = 7;
  return uint8_t(m | ((v < 0.0f && m != 0) ? 8u : 0u));
}

// Positive value -> E4M3 byte, rounded to nearest (ties to even), saturating
// at 448; values below the smallest subnormal (2^-9) round to 0 or 2^-9.
QWEN35_HD uint8_t e4m3_from_positive(float v) {
  if (!(v > 0.0f)) return 0;
  if (v >= 448.0f) return 0x7E;
  // Scale into the integer grid of the value's binade: subnormals (v < 2^-6)
  // have steps of 2^-9, normals of 2^(e-3).
  int e = 0;
  float m = v;
  while (m >= 2.0f) {
    m *= 0.5f;
    ++e;
  }
  while (m < 1.0f && e > -6) {
    m *= 2.0f;
    --e;
  }
  // v = m * 2^e with 1 <= m < 2 (or e = -6 and m < 1: subnormal).
  const float steps = m * 8.0f;  // units of 2^(e-3)
  float r = steps - float(int(steps)) == 0.5f ? float(int(steps)) + float(int(steps) & 1) : float(int(steps + 0.5f));
  int mant = int(r);
  if (mant >= 16) {  // rounded up into the next binade
    mant = 8;
    ++e;
  }
  if (mant >= 8) {  // normal: exponent field e + 7
    const int E = e + 7;
    if (E > 15 || (E == 15 && mant - 8 > 6)) return 0x7E;
    return uint8_t((E << 3) | (mant - 8));
  }
  return uint8_t(mant);  // subnormal (e == -6): M * 2^-9
}

// One 16-element block (sub-block s of a GGUF NVFP4 block of 36 bytes) in
// cuBLASLt's packing: out[k] = codes of elements 2k (low) and 2k+1 (high);
// returns the (normalized) scale byte. GGUF holds element j < 8 of the
// sub-block in the low nibble of qs[8s+j] and j+8 in its high nibble.
QWEN35_HD uint8_t fp4blas_pack_block(const uint8_t* gguf_block, int s, uint8_t* out) {
  const uint8_t* qs = gguf_block + 4 + 8 * s;
  for (int k = 0; k < 8; ++k) {
    const int e0 = 2 * k, e1 = 2 * k + 1;
    const uint8_t c0 = e0 < 8 ? uint8_t(qs[e0] & 0x0F) : uint8_t(qs[e0 - 8] >> 4);
    const uint8_t c1 = e1 < 8 ? uint8_t(qs[e1] & 0x0F) : uint8_t(qs[e1 - 8] >> 4);
    out[k] = uint8_t(c0 | (c1 << 4));
  }
  return fp4_normalize_scale(gguf_block[s]);
}

QWEN35_HD float e4m3_value(uint8_t b) {
  const int E = (b >> 3) & 0x0F, M = b & 7;
  if (E == 0) return float(M) / 512.0f;
  float v = 1.0f + float(M) / 8.0f;
  for (int i = 7; i < E; ++i) v *= 2.0f;
  for (int i = E; i < 7; ++i) v *= 0.5f;
  return v;
}

}  // namespace qwen35::cuda
