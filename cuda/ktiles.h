// A weight in one of the tiled k-quant layouts of the tensor-core decode
// kernel (tiles_matvec.cuh): Q8_0 (q8_tiled.h, matvec_q8.cu), Q4_K
// (q4k_tiled.h, matvec_q4k.cu), Q6_K (q6k_tiled.h, matvec_q6k.cu: the LM
// head's layout, here for projections) or F16 (f16_tiled.h, matvec_f16.cu),
// and the kernels' entry points by type, so that the upload and the
// backend need not know the formats.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ggml_types.h"
#include "fusion.h"
#include "matmul.h"
#include "matvec_f16.h"
#include "matvec_q4k.h"
#include "matvec_q6k.h"
#include "matvec_q8.h"

namespace qwen35::cuda {

struct KTiles {
  uint32_t type = 0;  // GGML_Q8_0, GGML_Q4_K, GGML_Q6_K or GGML_F16; 0: none
  Q8Tiled q8;
  Q4kTiled q4k;
  Q6kTiled q6k;
  F16Tiled f16;
  bool present() const {
    switch (type) {
      case GGML_Q8_0: return q8.present();
      case GGML_Q4_K: return q4k.present();
      case GGML_Q6_K: return q6k.present();
      case GGML_F16: return f16.present();
      default: return false;
    }
  }
  // The shape every layout has (rows, cols, scale, paired).
  const TileShape& shape() const {
    switch (type) {
      case GGML_Q8_0: return q8;
      case GGML_Q4_K: return q4k;
      case GGML_Q6_K: return q6k;
      default: return f16;
    }
  }
  TileShape& shape() { return const_cast<TileShape&>(static_cast<const KTiles*>(this)->shape()); }
  int64_t rows() const { return shape().rows; }
  int64_t cols() const { return shape().cols; }
  float scale() const { return shape().scale; }
  bool paired() const { return shape().paired; }
};

// Whether a weight of this type and row length has a tiled layout.
bool ktiles_supported(uint32_t type, int64_t cols);
// The layout of a rows x cols weight (no memory yet) and its bytes; paired:
// a [gate; up] stack in the pairs of tiles_paired_row (rows % 16 == 0),
// repacked in one range, whose product may end in SwiGLU.
KTiles ktiles_plan(uint32_t type, int64_t rows, int64_t cols, float scale, bool paired = false);
uint64_t ktiles_bytes(const KTiles& t);
// Points the layout's arrays into `bytes` of device memory at base (256-byte aligned).
void ktiles_place(KTiles* t, uint8_t* base);
// GGUF rows r0 .. r0+nr-1 at src (row r0 first) into the tiles (r0 and nr
// multiples of 16, except a last range ending at the last row).
cudaError_t ktiles_repack(const KTiles& t, const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr,
                          cudaStream_t stream);

// Warps of a block sharing a tile (column slices) on `sms` multiprocessors.
int ktiles_slices(const KTiles& t, int sms);
// y = W x for n <= 8 activation rows, with what f fuses (fusion.h): the
// RMS norm (W rmsnorm(x) and the norm's weights) or the delta net's gated
// norm in the prologue; SwiGLU (a paired stack, Store: y[j][i] =
// silu(gate_i . x_j) * (up_i . x_j), rows/2 outputs) or the causal conv
// (n <= 2, Store, outputs < conv.channels) in the epilogue.
bool ktiles_matvec_fits(const KTiles& t, int n);
// Whether the gated norm of heads of dv columns can be the prologue.
bool ktiles_gated_fits(const KTiles& t, int dv);
cudaError_t ktiles_matvec(const KTiles& t, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                          int sms, cudaStream_t stream, const TilesFusion& f = {});
cudaError_t ktiles_dequant_rows_f32(const KTiles& t, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t ktiles_dequant_rows_bf16(const KTiles& t, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
cudaError_t ktiles_embedding_rows(const KTiles& t, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                  cudaStream_t stream);

}  // namespace qwen35::cuda
