// Causal depthwise convolution + SiLU of the delta net with its window state
// (spec §4.5.2). CPU twin: conv_silu_step() in lib/cpu/ops.h, applied row by
// row with the window shifted after each row. The rows run in parallel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qwen35::cuda {

struct ConvArgs {
  int64_t n = 0;        // rows, in order
  int64_t C = 0;        // channels
  int64_t K = 0;        // kernel width (tap K-1 multiplies the current row)
  const float* u = nullptr;    // [n, ldu] pre-conv inputs
  int64_t ldu = 0;
  const float* taps = nullptr; // [C, K]
  float* window = nullptr;     // [K-1, C] the previous K-1 inputs, oldest first; updated
  float* out = nullptr;        // [n, C] silu(conv)
  // >= 0: also write the window as it is after row snapshot_row here.
  int64_t snapshot_row = -1;
  float* snapshot = nullptr;   // [K-1, C]
};

// Kernel widths the batch kernel handles: 1 <= K <= 17 (the window rows
// are read by the first block of rows only; see conv.cu).
bool conv_width_supported(int64_t K);

cudaError_t conv_silu(const ConvArgs& a, cudaStream_t stream);

}  // namespace qwen35::cuda
