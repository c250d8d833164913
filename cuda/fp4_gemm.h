// Blackwell prefill path: cuBLASLt block-scaled FP4 GEMM (E2M1 data,
// VEC16_UE4M3 scales) on weights repacked once at upload into cuBLASLt's
// layout (fp4_blockscale.h) and activations quantized to NVFP4 on the fly
// with a per-tensor scale. Used only on devices of compute capability 10+
// (QWEN35_CUDA_FP4_GEMM=0 turns it off); elsewhere prefill dequantizes to
// BF16 (gemm.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fp4_blockscale.h"

namespace qwen35::cuda {

struct Fp4Blas {
  const uint8_t* data = nullptr;    // [rows][cols/2], element 2i in the low nibble
  const uint8_t* scales = nullptr;  // blockscale layout of [rows][cols/16]
  int64_t rows = 0, cols = 0;
  float scale = 1.0f;               // per-tensor output scale
  bool present() const { return data != nullptr; }
  uint64_t data_bytes() const { return uint64_t(rows) * uint64_t(cols) / 2; }
  uint64_t scale_bytes() const { return blockscale_bytes(rows, cols); }
};

// GGUF NVFP4 rows (device memory, row_bytes apart) -> dst (writable buffers
// of data_bytes() / scale_bytes(); padding scales must be zero beforehand).
cudaError_t fp4blas_repack(const uint8_t* src, uint64_t row_bytes, const Fp4Blas& dst, cudaStream_t stream);

// Activations x [n, ldx] (F32, first K columns) -> NVFP4: codes xq
// [n][K/2], scales xs (blockscale layout for n rows, zero-filled padding)
// and, in work[0..1], the per-tensor scale g (amax / (6 * 448)) and the GEMM
// factor alpha = g * w_scale. work must hold 2 floats + 1 uint.
cudaError_t fp4blas_quantize(const float* x, int64_t ldx, int64_t n, int64_t K, float w_scale, uint8_t* xq,
                             uint8_t* xs, float* work, cudaStream_t stream);

}  // namespace qwen35::cuda
