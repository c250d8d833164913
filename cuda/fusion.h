// What a decode product may do around itself instead of a separate kernel:
// the delta net's gated RMSNorm as its prologue, the delta net's causal
// conv as its epilogue (the NVFP4 kernels of matvec_fp4.cu take them as
// flat fields of Fp4MatvecArgs, the tiles of ktiles.h as TilesFusion), and
// the whole set the tiled kernels take (tiles_matvec.cuh).
#pragma once

#include <cstdint>

namespace qwen35::cuda {

// The delta net's gated RMSNorm (spec §4.5.5) in a product's prologue: x is
// the delta rule's output; column c of head h = c / dv becomes
// rmsnorm(x_h) * w[c % dv] * silu(z[c]).
struct GatedNorm {
  const float* z = nullptr;  // [n, ldz]
  int64_t ldz = 0;
  const float* w = nullptr;  // [dv]
  int dv = 0;
  bool present() const { return z != nullptr; }
};

// The delta net's causal conv + SiLU (spec §4.5.2) in a product's epilogue
// (1 or 2 activation rows): outputs 0 .. channels-1 go through the conv,
// written over the product's outputs; the others are stored as they are.
struct ConvEpi {
  const float* taps = nullptr;  // [channels, k]
  float* window = nullptr;      // [k-1, channels], oldest row first; moves on by n rows
  int64_t channels = 0;
  int k = 0;
  int snapshot_row = -1;        // 0 <= snapshot_row < n: the window after that row ...
  float* snapshot = nullptr;    // ... copied here, [k-1, channels]
  bool present() const { return taps != nullptr; }
};

// Prologue and epilogue of a tiled decode product (ktiles.h). At most one
// of norm and gated; conv excludes accumulating, swiglu and more than 2
// rows; swiglu needs a paired stack and Store.
struct TilesFusion {
  const float* norm = nullptr;  // y = W (rmsnorm(x) * norm) (its 1/rms applied to the sums)
  float eps = 1e-6f;            // of the norm and the gated norm
  bool swiglu = false;          // y[j][i] = silu(gate_i . x_j) * (up_i . x_j), rows / 2 outputs
  GatedNorm gated;              // dv a multiple of 16, dv / 16 a power of two <= 32, cols % dv == 0
  ConvEpi conv;
};

// Whether the tiled kernels' prologue takes the gated norm of heads of dv
// columns on rows of `cols`: a head's 16-column chunks are dv / 16 aligned
// lanes of one warp (tc_load_x_impl in tc_common.cuh).
inline bool tiles_gated_fits(int64_t cols, int dv) {
  const int hc = dv / 16;
  return dv > 0 && dv % 16 == 0 && hc <= 32 && (hc & (hc - 1)) == 0 && cols % dv == 0;
}

}  // namespace qwen35::cuda
