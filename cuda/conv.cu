// Causal conv + SiLU (see conv.h): one thread per channel walks the rows in
// order. Input row t' < 0 is window row K-1+t'.
#include "common.cuh"
#include "launch.cuh"
#include "conv.h"

namespace qwen35::cuda {

namespace {

__global__ void conv_silu_kernel(ConvArgs a) {
  pdl_prologue();
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  const int64_t K = a.K, C = a.C;
  const float* taps = a.taps + c * K;
  auto in = [&](int64_t tp) { return tp >= 0 ? a.u[tp * a.ldu + c] : a.window[(K - 1 + tp) * C + c]; };
  for (int64_t t = 0; t < a.n; ++t) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) acc = fmaf(taps[k], in(t - (K - 1) + k), acc);
    a.out[t * C + c] = silu_f(acc);
  }
  // The window after row r holds inputs r-K+2 .. r.
  if (a.snapshot_row >= 0 && a.snapshot_row < a.n)
    for (int64_t k = 0; k + 1 < K; ++k) a.snapshot[k * C + c] = in(a.snapshot_row - (K - 2) + k);
  // In place, ascending: slot k reads slot k + n (not yet overwritten) or a row.
  for (int64_t k = 0; k + 1 < K; ++k) a.window[k * C + c] = in(a.n - (K - 1) + k);
}

}  // namespace

cudaError_t conv_silu(const ConvArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  return launch(conv_silu_kernel, dim3(ceil_div(a.C, 128)), dim3(128), 0, stream, a);
}

}  // namespace qwen35::cuda
