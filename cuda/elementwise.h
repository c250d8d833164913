// Small element-wise and gather kernels: embedding rows, SwiGLU, argmax.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "matmul.h"

namespace qwen35::cuda {

// out[t] = dequantized row tokens[t] of `emb` (cols elements) for t < n;
// rows with a negative token id are left untouched (they hold input
// embeddings written by the caller). tokens is a device array.
cudaError_t embedding_rows(const MatView& emb, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                           cudaStream_t stream);

// g[t][i] = silu(g[t][i]) * u[t][i] for t < n, i < F (row strides ldg, ldu).
cudaError_t swiglu(float* g, int64_t ldg, const float* u, int64_t ldu, int64_t n, int64_t F, cudaStream_t stream);
// y[t][i] = silu(g[t][i]) * u[t][i] rounded to BF16 (as convert_rows_bf16
// rounds; y: BF16 bits, row stride ldy), g unchanged.
cudaError_t swiglu_bf16(const float* g, int64_t ldg, const float* u, int64_t ldu, int64_t n, int64_t F, uint16_t* y,
                        int64_t ldy, cudaStream_t stream);

// out[t] = index of the largest of x[t][0..V) (the lowest index on ties;
// NaNs never win; 0 for a row of NaNs) for t < n rows with stride ldx. Two
// levels of parallel reductions; `scratch` (argmax_scratch_bytes(n), device
// memory) must be zero before the first call and is left zero.
size_t argmax_scratch_bytes(int64_t n);
cudaError_t argmax_rows(const float* x, int64_t ldx, int64_t n, int64_t V, int32_t* out, void* scratch,
                        cudaStream_t stream);

// Programmatic Dependent Launch of the decode kernels (launch.cuh),
// process-wide; on by default.
bool pdl_enabled();
void set_pdl(bool on);

// Run a trivial kernel on the current device and wait for it: fails with
// cudaErrorNoKernelImageForDevice when this build has no code for the GPU.
cudaError_t probe_device();

// F16 <-> F32 conversion of n elements (state serialization of the KV cache).
cudaError_t f16_to_f32(const uint16_t* src, int64_t n, float* dst, cudaStream_t stream);
cudaError_t f32_to_f16(const float* src, int64_t n, uint16_t* dst, cudaStream_t stream);

}  // namespace qwen35::cuda
