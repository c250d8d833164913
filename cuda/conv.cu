// Causal conv + SiLU (see conv.h).
//
// Every (row, channel) output depends only on the pre-conv inputs u of rows
// t-K+1 .. t (input row t' < 0 is window row K-1+t'), never on other
// outputs, so the rows are independent: a block covers kConvChannels
// channels of kConvRows consecutive rows, one thread per channel walking its
// rows. Only the first row block reads the window (rows t < K-1, which needs
// K-1 <= kConvRows), and the same threads write the snapshot and the updated
// window after their reads, so no other thread sees the window change.
#include "common.cuh"
#include "launch.cuh"
#include "conv.h"

namespace qwen35::cuda {

namespace {

constexpr int kConvChannels = 128;
constexpr int kConvRows = 16;

// The window after the batch (and the snapshot): the first row block's
// threads, after their own reads of the window.
__device__ __forceinline__ void conv_update_window(const ConvArgs& a, int64_t c) {
  const int64_t K = a.K, C = a.C;
  auto in = [&](int64_t tp) { return tp >= 0 ? a.u[tp * a.ldu + c] : a.window[(K - 1 + tp) * C + c]; };
  // The window after row r holds inputs r-K+2 .. r.
  if (a.snapshot_row >= 0 && a.snapshot_row < a.n)
    for (int64_t k = 0; k + 1 < K; ++k) a.snapshot[k * C + c] = in(a.snapshot_row - (K - 2) + k);
  // In place, ascending: slot k reads slot k + n (not yet overwritten) or a row.
  for (int64_t k = 0; k + 1 < K; ++k) a.window[k * C + c] = in(a.n - (K - 1) + k);
}

// Any width K: every output reads its K inputs.
__global__ void __launch_bounds__(kConvChannels) conv_silu_kernel(ConvArgs a) {
  pdl_prologue();
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  const int64_t K = a.K, C = a.C;
  const float* taps = a.taps + c * K;
  auto in = [&](int64_t tp) { return tp >= 0 ? a.u[tp * a.ldu + c] : a.window[(K - 1 + tp) * C + c]; };
  const int64_t t0 = int64_t(blockIdx.y) * kConvRows, t1 = min(a.n, t0 + kConvRows);
  for (int64_t t = t0; t < t1; ++t) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) acc = fmaf(taps[k], in(t - (K - 1) + k), acc);
    a.out[t * C + c] = silu_f(acc);
  }
  if (blockIdx.y == 0) conv_update_window(a, c);
}

// Width K known at compile time (the model's 4): the block's inputs (its
// rows and the K-1 before them) are loaded once into registers, all loads
// issued before the arithmetic; the same products in the same order as
// conv_silu_kernel.
template <int K>
__global__ void __launch_bounds__(kConvChannels) conv_silu_k_kernel(ConvArgs a) {
  pdl_prologue();
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  const int64_t C = a.C;
  const int64_t t0 = int64_t(blockIdx.y) * kConvRows, t1 = min(a.n, t0 + kConvRows);
  float tap[K];
#pragma unroll
  for (int k = 0; k < K; ++k) tap[k] = a.taps[c * K + k];
  float x[K - 1 + kConvRows];  // x[i] = input row t0 - (K-1) + i
#pragma unroll
  for (int i = 0; i < K - 1 + kConvRows; ++i) {
    const int64_t tp = t0 - (K - 1) + i;
    x[i] = 0.0f;
    if (tp < t1) x[i] = tp >= 0 ? a.u[tp * a.ldu + c] : a.window[(K - 1 + tp) * C + c];
  }
#pragma unroll
  for (int r = 0; r < kConvRows; ++r) {
    if (t0 + r < t1) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) acc = fmaf(tap[k], x[r + k], acc);
      a.out[(t0 + r) * C + c] = silu_f(acc);
    }
  }
  if (blockIdx.y == 0) conv_update_window(a, c);
}

}  // namespace

bool conv_width_supported(int64_t K) { return K >= 1 && K - 1 <= kConvRows; }

cudaError_t conv_silu(const ConvArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!conv_width_supported(a.K)) return cudaErrorInvalidValue;
  const dim3 grid(ceil_div(a.C, kConvChannels), ceil_div(a.n, kConvRows));
  if (a.K == 4) return launch(conv_silu_k_kernel<4>, grid, dim3(kConvChannels), 0, stream, a);
  return launch(conv_silu_kernel, grid, dim3(kConvChannels), 0, stream, a);
}

}  // namespace qwen35::cuda
