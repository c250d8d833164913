// Q6_K decode kernels (the tied embedding / LM head of the 4B) on two
// layouts: Q6kRows32 (kernel 1: one thread per row) and Q6kTiled (kernel 2:
// tensor cores, F16 activations). Each has a repack from GGUF, a
// matrix-vector product for up to 8 activation rows, and row
// dequantization (GEMM path, embedding lookup). CPU twin: vec_dot_ref() /
// dequantize_row() in lib/quants.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fusion.h"
#include "matmul.h"
#include "q6k_rows32.h"
#include "q6k_tiled.h"

namespace qwen35::cuda {

// GGUF Q6_K rows r0 .. r0+nr-1 (device memory at src, row_bytes apart) ->
// the same rows of dst (buffers of ql_bytes() / qh_bytes() / sc_bytes() /
// d_bytes()). r0 and nr are multiples of 32, except that the last range
// may end at dst.rows; rows past dst.rows up to the group end are zeroed.
cudaError_t q6k_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q6kRows32& dst,
                       cudaStream_t stream);

// y[j][r] (= or +=) scale * W[r] . x[j] for j < n <= 8. Needs n*cols*4 bytes
// of shared memory, at most 96 KiB (q6k_matvec_fits; else use the GEMM path).
bool q6k_matvec_fits(const Q6kRows32& w, int n);
cudaError_t q6k_matvec(const Q6kRows32& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                       cudaStream_t stream);

// Rows r0 .. r0+nr-1 dequantized, [nr, cols] (the scale is not applied).
cudaError_t q6k_dequant_rows_f32(const Q6kRows32& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t q6k_dequant_rows_bf16(const Q6kRows32& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
// out[t] = row tokens[t] for t < n (rows with a negative id are left alone).
cudaError_t q6k_embedding_rows(const Q6kRows32& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                               cudaStream_t stream);

// ---- tiled layout (kernel 2) ----

// GGUF Q6_K rows r0 .. r0+nr-1 (device memory at src) -> the same rows of
// dst (buffers of lo_bytes() / hi_bytes() / sc_bytes() / d_bytes()). r0 is a
// multiple of 16 and nr too, except that the last range ends at dst.rows
// (padding rows of the last tile are zeroed).
cudaError_t q6kt_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q6kTiled& dst,
                        cudaStream_t stream);

// y[j][r] (= or +=) scale * W[r] . x[j] for j < n <= 8, on the tensor cores
// with x rounded to F16 per 16-column chunk (like the NVFP4 kernels). x rows
// 16-byte aligned, ldx % 4 == 0; needs tc_x_bytes(cols/16, n) <= 96 KiB of
// shared memory (q6kt_matvec_fits; else use the GEMM path).
bool q6kt_matvec_fits(const Q6kTiled& w, int n);

// Greedy decoding in the product's epilogue (the LM head): out[j] = the
// argmax of the stored row y[j] (NaN skipped, the first index among equal
// maxima, 0 when every value is NaN), what argmax_rows() computes from y,
// without another kernel. The blocks keep a packed 64-bit maximum per row
// (the value's order bits, then the inverted index); the last block to
// finish writes out and resets best and done.
struct HeadArgmax {
  unsigned long long* best = nullptr;  // [n] device, zero between calls
  int* done = nullptr;                 // device, zero between calls
  int32_t* out = nullptr;              // [n] device
};

// With argmax (not null): acc must be Store.
cudaError_t q6kt_matvec(const Q6kTiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                        cudaStream_t stream, const HeadArgmax* argmax = nullptr);

// The same product with the warps of a block sharing a tile by column
// slices (tiles_matvec.cuh, 1-8 warps per tile for `sms` multiprocessors):
// for Q6_K projections, whose few tiles (FFN down: 160) would leave most of
// the device idle at a warp per tile. Kernel 2's arithmetic; whole
// activation rows in shared memory (q6kt_sliced_fits).
int q6kt_slices(const Q6kTiled& w, int sms);
bool q6kt_sliced_fits(const Q6kTiled& w, int n);
cudaError_t q6kt_matvec_sliced(const Q6kTiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy,
                               Accum acc, int sms, cudaStream_t stream, const TilesFusion& f = {});

cudaError_t q6kt_dequant_rows_f32(const Q6kTiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t q6kt_dequant_rows_bf16(const Q6kTiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
cudaError_t q6kt_embedding_rows(const Q6kTiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                cudaStream_t stream);

}  // namespace qwen35::cuda
