// Generic matrix-vector products and row dequantization for every GGUF
// weight type (see matmul.h).
#include "dequant.cuh"
#include "launch.cuh"
#include "matmul.h"

namespace qwen35::cuda {

namespace {

constexpr int kMatvecWarps = 8;  // rows per block

// One warp per output row; lane l takes chunks l, l+32, ... of the row and
// the lanes' partial sums are combined by a butterfly. x is read straight
// from global memory (it is small and stays in L1/L2).
template <uint32_t T>
__global__ void __launch_bounds__(kMatvecWarps * kWarp)
    matvec_generic_kernel(const uint8_t* __restrict__ W, uint64_t row_bytes, int64_t rows, int64_t cols, float scale,
                          const float* __restrict__ x, int64_t ldx, int n, float* __restrict__ y, int64_t ldy,
                          bool add) {
  pdl_prologue();
  const int lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x) * kMatvecWarps + threadIdx.x / kWarp;
  if (r >= rows) return;
  const uint8_t* row = W + uint64_t(r) * row_bytes;
  const int nchunks = int(cols / 32);
  float acc[kMatvecMaxCols];
#pragma unroll
  for (int j = 0; j < kMatvecMaxCols; ++j) acc[j] = 0.0f;
  for (int c = lane; c < nchunks; c += kWarp) {
    float w[32];
    Chunk<T>::load(row, c, w);
#pragma unroll
    for (int j = 0; j < kMatvecMaxCols; ++j) {
      if (j < n) {
        const float4* xv = reinterpret_cast<const float4*>(x + j * ldx + 32 * int64_t(c));
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float4 v = xv[i];
          s = fmaf(w[4 * i], v.x, s);
          s = fmaf(w[4 * i + 1], v.y, s);
          s = fmaf(w[4 * i + 2], v.z, s);
          s = fmaf(w[4 * i + 3], v.w, s);
        }
        acc[j] += s;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMatvecMaxCols; ++j) {
    if (j < n) {
      const float v = warp_sum(acc[j]) * scale;
      if (lane == 0) {
        float* out = y + j * ldy + r;
        *out = add ? *out + v : v;
      }
    }
  }
}

// One thread per (row, chunk): 32 outputs.
template <uint32_t T, typename Out>
__global__ void dequant_rows_kernel(const uint8_t* __restrict__ W, uint64_t row_bytes, int64_t r0, int64_t nr,
                                    int64_t cols, Out* __restrict__ dst) {
  const int64_t nchunks = cols / 32;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nr * nchunks) return;
  const int64_t r = i / nchunks;
  const int c = int(i % nchunks);
  float w[32];
  Chunk<T>::load(W + uint64_t(r0 + r) * row_bytes, c, w);
  Out* o = dst + r * cols + 32 * int64_t(c);
  if constexpr (sizeof(Out) == 4) {
    float4* o4 = reinterpret_cast<float4*>(o);
#pragma unroll
    for (int k = 0; k < 8; ++k) o4[k] = make_float4(w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]);
  } else {
    // BF16, round to nearest even (exact for NVFP4, MXFP4, BF16).
    uint4* o4 = reinterpret_cast<uint4*>(o);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      uint32_t p[4];
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(w[8 * k + 2 * m]));
        const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(w[8 * k + 2 * m + 1]));
        p[m] = lo | (hi << 16);
      }
      o4[k] = make_uint4(p[0], p[1], p[2], p[3]);
    }
  }
}

__global__ void convert_rows_bf16_kernel(const float* __restrict__ src, int64_t lds, int64_t n, int64_t cols,
                                         uint16_t* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * cols) return;
  const int64_t t = i / cols, k = i % cols;
  dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[t * lds + k]));
}

template <typename Out>
cudaError_t dequant_rows(const MatView& w, int64_t r0, int64_t nr, Out* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  if (w.cols % 32 != 0 || r0 < 0 || r0 + nr > w.rows) return cudaErrorInvalidValue;
  const int64_t total = nr * (w.cols / 32);
  const unsigned blocks = ceil_div(total, 256);
  cudaError_t e = cudaSuccess;
  bool ok = dispatch_type(w.type, [&](auto tag) {
    constexpr uint32_t T = decltype(tag)::value;
    e = launch_plain(dequant_rows_kernel<T, Out>, dim3(blocks), dim3(256), 0, stream, w.data, w.row_bytes, r0, nr,
                     w.cols, dst);
  });
  return ok ? e : cudaErrorInvalidValue;
}

}  // namespace

bool device_type_supported(uint32_t type) {
  return dispatch_type(type, [](auto) {});
}

cudaError_t matvec_generic(const MatView& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                           cudaStream_t stream) {
  if (n < 1 || n > kMatvecMaxCols || w.cols % 32 != 0 || ldx % 4 != 0 ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return cudaErrorInvalidValue;
  const unsigned blocks = ceil_div(w.rows, kMatvecWarps);
  cudaError_t e = cudaErrorInvalidValue;
  dispatch_type(w.type, [&](auto tag) {
    constexpr uint32_t T = decltype(tag)::value;
    e = launch(matvec_generic_kernel<T>, dim3(blocks), dim3(kMatvecWarps * kWarp), 0, stream, w.data, w.row_bytes,
               w.rows, w.cols, w.scale, x, ldx, n, y, ldy, acc == Accum::Add);
  });
  return e;
}

cudaError_t dequant_rows_f32(const MatView& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return dequant_rows<float>(w, r0, nr, dst, stream);
}

cudaError_t dequant_rows_bf16(const MatView& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return dequant_rows<uint16_t>(w, r0, nr, dst, stream);
}

cudaError_t convert_rows_bf16(const float* src, int64_t lds, int64_t n, int64_t cols, uint16_t* dst,
                              cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch_plain(convert_rows_bf16_kernel, dim3(ceil_div(n * cols, 256)), dim3(256), 0, stream, src, lds, n, cols,
                     dst);
}

}  // namespace qwen35::cuda
