// Q4_K decode products on the tensor cores (matvec_q4k.cu), on weights
// repacked once into the tiled layout of q4k_tiled.h: a repack from GGUF, a
// matrix-vector product for up to 8 activation rows, row dequantization
// (the GEMM path of batches) and embedding rows. CPU twin: vec_dot_ref() /
// dequantize_row() in lib/quants.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fusion.h"
#include "matmul.h"
#include "q4k_tiled.h"

namespace qwen35::cuda {

// GGUF Q4_K rows r0 .. r0+nr-1 (device memory at src, row_bytes apart, row
// r0 first) -> the same rows of dst (buffers of code_bytes() / sm_bytes() /
// dm_bytes()). r0 is a multiple of 16 and so is nr, except that the last
// range ends at dst.rows (the padding rows of the last tile are zeroed).
cudaError_t q4kt_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q4kTiled& dst,
                        cudaStream_t stream);

// Warps per tile for a device with `sms` multiprocessors (tiles_matvec.cuh).
int q4kt_slices(const Q4kTiled& w, int sms);

// y[j][r] (= or +=) scale * W[r] . x[j] for j < n <= 8, with x rounded to
// F16 per 16-column chunk; the sub-block minimum is applied through the sum
// of each chunk's F16 values. x rows 16-byte aligned, ldx % 4 == 0; a block
// keeps whole activation rows in shared memory (q4kt_matvec_fits).
bool q4kt_matvec_fits(const Q4kTiled& w, int n);
cudaError_t q4kt_matvec(const Q4kTiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                        int sms, cudaStream_t stream, const TilesFusion& f = {});

// Rows r0 .. r0+nr-1 dequantized, [nr, cols] (the scale is not applied):
// the same values as dequantize_row.
cudaError_t q4kt_dequant_rows_f32(const Q4kTiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream);
cudaError_t q4kt_dequant_rows_bf16(const Q4kTiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream);
// out[t] = row tokens[t] for t < n (tokens: device; rows with a negative id
// are left alone), the scale not applied.
cudaError_t q4kt_embedding_rows(const Q4kTiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                cudaStream_t stream);

}  // namespace qwen35::cuda
