// NVFP4 matrix-vector products on the tensor cores for decode (up to 8
// activation rows), on weights repacked once into the tiled layout of
// fp4_tiled.h. CPU twin: vec_dot_ref() / dequantize_row() in lib/quants.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fp4_tiled.h"
#include "matmul.h"

namespace qwen35::cuda {

// A weight (or a row-stack of weights) in the tiled layout.
struct Fp4Tiled {
  const uint8_t* codes = nullptr;   // [tiles][kgroups][512]
  const uint8_t* scales = nullptr;  // [tiles][kgroups][64]
  // [tiles][kgroups][512], optional: the codes in the FP8 arrangement (fp4_tiled.h), which kernel 3 reads for
  // one or two rows with tuning fp4_fp8; only where the device has FP8 tensor cores (sm_89 and later).
  const uint8_t* codes8 = nullptr;
  int64_t rows = 0;                 // output rows (Plain) or SwiGLU outputs (GateUp)
  int64_t cols = 0;                 // K, a multiple of 64
  Fp4Pairing pairing = Fp4Pairing::Plain;
  float scale = 1.0f;               // per-tensor output scale
  QWEN35_HD bool present() const { return codes != nullptr; }
  QWEN35_HD int64_t tiles() const { return fp4_tiles(pairing, rows); }
  QWEN35_HD int64_t kgroups() const { return cols / kFp4GroupCols; }
  QWEN35_HD uint64_t code_bytes() const { return uint64_t(tiles()) * uint64_t(kgroups()) * kFp4CodeBytes; }
  QWEN35_HD uint64_t scale_bytes() const { return uint64_t(tiles()) * uint64_t(kgroups()) * kFp4ScaleBytes; }
};

// Repack GGUF NVFP4 rows (device memory) into the tiled layout `dst` (whose
// codes/scales point to writable buffers of code_bytes()/scale_bytes()).
// Plain: `a` holds dst.rows rows. GateUp: `a` (gate) and `b` (up) hold
// dst.rows rows each. With dst.codes8, the codes in the FP8 arrangement too.
cudaError_t fp4_repack(const uint8_t* a, const uint8_t* b, uint64_t row_bytes, const Fp4Tiled& dst,
                       cudaStream_t stream);

// Rows r0 .. r0+nr-1 of the tiled weight as BF16 (F32) rows, [nr, cols]. For
// GateUp, rows 0..rows-1 are the gate rows and rows..2*rows-1 the up rows.
cudaError_t fp4_dequant_rows_bf16(const Fp4Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
cudaError_t fp4_dequant_rows_f32(const Fp4Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);

enum class Fp4Epilogue {
  Store,   // y = W x
  Add,     // y += W x (residual)
  SwiGLU,  // GateUp: y[i] = silu(gate_i . x) * (up_i . x)
  Conv,    // n <= 2: outputs < conv_channels through the delta net's causal
           // conv + SiLU (spec §4.5.2), updating its window; others stored
};

struct Fp4MatvecArgs {
  Fp4Tiled w;
  int n = 1;                        // activation rows, 1..8
  const float* x = nullptr;         // [n, ldx] F32
  int64_t ldx = 0;
  const float* norm = nullptr;      // optional: x is first RMS-normalized with this weight [cols]
  float eps = 1e-6f;
  // Optional gated RMSNorm prologue (the delta net's, spec §4.5.5): x is
  // the delta rule's output; column c of head h = c / gate_dv becomes
  // rmsnorm(x_h) * gate_w[c % gate_dv] * silu(gate_z[c]). gate_dv must be a
  // multiple of 64 and cols <= 128 * gate_dv (fp4_gated_supported).
  const float* gate_z = nullptr;    // [n, ldz]
  int64_t ldz = 0;
  const float* gate_w = nullptr;    // [gate_dv]
  int gate_dv = 0;
  float* y = nullptr;               // [n, ldy]
  int64_t ldy = 0;
  Fp4Epilogue epilogue = Fp4Epilogue::Store;
  // K is split over `splits` blocks per tile group when that helps fill the
  // GPU; their partial sums meet in `partial` and the last block of a group
  // (counted in `counters`, which must start at zero and are left at zero)
  // adds them in a fixed order.
  float* partial = nullptr;         // fp4_partial_floats() floats
  int* counters = nullptr;          // fp4_counter_ints() ints
  // Conv epilogue: taps [C, K], window [K-1, C] (oldest first), and the
  // window after row conv_snapshot_row copied to conv_snapshot.
  const float* conv_taps = nullptr;
  float* conv_window = nullptr;
  int64_t conv_channels = 0;
  int conv_k = 0;
  int conv_snapshot_row = -1;
  float* conv_snapshot = nullptr;
  // Kernel 3 with tuning fp4_prefetch: the weights of the projection that
  // runs next in the step (codes null: none). Each block asks L2 for its
  // share of them once its own stream is done, so the next launch's bulk
  // copies hit L2 even where its blocks could not start early (PDL) for
  // want of room beside this launch's.
  Fp4Tiled next;
};

// Split count chosen for a weight on a device with `sms` multiprocessors;
// with align_kg > 1 the column slices are multiples of align_kg kgroups.
int fp4_splits(const Fp4Tiled& w, int sms, int align_kg = 1);
bool fp4_gated_supported(const Fp4Tiled& w, int gate_dv);
uint64_t fp4_partial_floats(const Fp4Tiled& w, int sms);
uint64_t fp4_counter_ints(const Fp4Tiled& w);

cudaError_t fp4_matvec(const Fp4MatvecArgs& a, int sms, cudaStream_t stream);

// How kernel 3 splits a weight's columns: `splits` slices of kg_per
// kgroups (multiples of align), for about blocks_per_sm blocks per
// multiprocessor; with `cluster`, at most 8 slices where that fits the
// shared memory (cluster false otherwise).
struct Fp4BulkGeometry {
  int64_t kg_per = 1;
  int splits = 1;
  bool cluster = false;
};
Fp4BulkGeometry fp4_bulk_geometry(const Fp4Tiled& w, int sms, int align, int blocks_per_sm, bool cluster);
// Kernel 3 can run these arguments: complete, consistent, and aligned for
// its 16-byte loads and bulk copies (shared memory not checked).
bool fp4_bulk_supported(const Fp4MatvecArgs& a);

}  // namespace qwen35::cuda
