// Element-wise and gather kernels (see elementwise.h).
#include <algorithm>
#include <atomic>

#include "common.cuh"
#include "launch.cuh"
#include "dequant.cuh"
#include "elementwise.h"

namespace qwen35::cuda {

namespace {

// One thread per (row, chunk of 32).
template <uint32_t T>
__global__ void embedding_kernel(const uint8_t* __restrict__ W, uint64_t row_bytes, int64_t rows, int64_t cols,
                                 const int32_t* __restrict__ tokens, int64_t n, float* __restrict__ out, int64_t ldo) {
  pdl_prologue();
  const int64_t nchunks = cols / 32;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * nchunks) return;
  const int64_t t = i / nchunks;
  const int c = int(i % nchunks);
  const int32_t tok = tokens[t];
  if (tok < 0 || tok >= rows) return;
  float w[32];
  Chunk<T>::load(W + uint64_t(tok) * row_bytes, c, w);
  float* o = out + t * ldo + 32 * int64_t(c);
#pragma unroll
  for (int k = 0; k < 32; ++k) o[k] = w[k];
}

__global__ void swiglu_kernel(float* __restrict__ g, int64_t ldg, const float* __restrict__ u, int64_t ldu, int64_t n,
                              int64_t F) {
  pdl_prologue();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * F) return;
  const int64_t t = i / F, k = i % F;
  float* gp = g + t * ldg + k;
  *gp = silu_f(*gp) * u[t * ldu + k];
}

// Row blockIdx.y (and every gridDim.y-th after it), V consecutive columns
// per thread: V = 4 moves 16-byte words of g and u and 8 bytes of y (the
// launcher checks the alignment), V = 1 any layout. The same value per
// element either way.
template <int V>
__global__ void swiglu_bf16_kernel(const float* __restrict__ g, int64_t ldg, const float* __restrict__ u, int64_t ldu,
                                   int64_t n, int64_t F, uint16_t* __restrict__ y, int64_t ldy) {
  pdl_prologue();
  const int64_t k = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (k >= F) return;
  auto one = [](float gv, float uv) { return __bfloat16_as_ushort(__float2bfloat16_rn(silu_f(gv) * uv)); };
  for (int64_t t = blockIdx.y; t < n; t += gridDim.y) {
    if constexpr (V == 4) {
      const float4 gv = *reinterpret_cast<const float4*>(g + t * ldg + k);
      const float4 uv = *reinterpret_cast<const float4*>(u + t * ldu + k);
      ushort4 o;
      o.x = one(gv.x, uv.x);
      o.y = one(gv.y, uv.y);
      o.z = one(gv.z, uv.z);
      o.w = one(gv.w, uv.w);
      *reinterpret_cast<ushort4*>(y + t * ldy + k) = o;
    } else {
      y[t * ldy + k] = one(g[t * ldg + k], u[t * ldu + k]);
    }
  }
}

// Argmax in two levels: blocks (blockIdx.x of kArgmaxBlocks) scan
// contiguous parts of row blockIdx.y and write their best (value, index);
// the last block of the row (counted in the scratch) reduces those. The
// order "larger value, then lower index" is total, so the result is that of
// a sequential scan with ">" whatever the order of the reductions. NaNs
// never win; an all-NaN row gives token 0.
constexpr int kArgmaxBlocks = 64;
constexpr int kArgmaxThreads = 256;

struct ArgmaxPart {
  float v;
  int32_t i;
};

__device__ __forceinline__ bool argmax_better(float v, int32_t i, float bv, int32_t bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  return v > bv || (v == bv && i < bi);
}

// The block's best pair (valid in every thread).
__device__ ArgmaxPart argmax_block(float best, int32_t bi) {
  __shared__ float sv[32];
  __shared__ int32_t si[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xFFFFFFFFu, best, o);
    const int32_t oi = __shfl_xor_sync(0xFFFFFFFFu, bi, o);
    if (argmax_better(ov, oi, best, bi)) {
      best = ov;
      bi = oi;
    }
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  __syncthreads();  // sv/si may still be read by a previous call
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = bi;
  }
  __syncthreads();
  best = lane < nw ? sv[lane] : -INFINITY;
  bi = lane < nw ? si[lane] : -1;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xFFFFFFFFu, best, o);
    const int32_t oi = __shfl_xor_sync(0xFFFFFFFFu, bi, o);
    if (argmax_better(ov, oi, best, bi)) {
      best = ov;
      bi = oi;
    }
  }
  return {best, bi};
}

// Scratch per row: [counter (int, padded to 8 bytes) | kArgmaxBlocks parts].
// Each row's counter sits at the same place whatever the row count, so a
// call with fewer rows never reads another call's parts as a counter.
constexpr size_t kArgmaxRowBytes = 8 + kArgmaxBlocks * sizeof(ArgmaxPart);

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* __restrict__ x, int64_t ldx, int64_t V,
                                                                 uint8_t* __restrict__ scratch,
                                                                 int32_t* __restrict__ out) {
  pdl_prologue();
  __shared__ bool is_last;
  const int64_t row = blockIdx.y;
  const float* xr = x + row * ldx;
  const int64_t per = (V + kArgmaxBlocks - 1) / kArgmaxBlocks;
  const int64_t i0 = int64_t(blockIdx.x) * per, i1 = min(V, i0 + per);
  float best = -INFINITY;
  int32_t bi = -1;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const float v = xr[i];
    if (v > best) {  // NaN compares false; ascending i: ties keep the first
      best = v;
      bi = int32_t(i);
    }
  }
  ArgmaxPart p = argmax_block(best, bi);
  int* counter = reinterpret_cast<int*>(scratch + row * kArgmaxRowBytes);
  ArgmaxPart* rp = reinterpret_cast<ArgmaxPart*>(scratch + row * kArgmaxRowBytes + 8);
  if (threadIdx.x == 0) rp[blockIdx.x] = p;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(counter, 1) == kArgmaxBlocks - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  best = -INFINITY;
  bi = -1;
  for (int b = threadIdx.x; b < kArgmaxBlocks; b += blockDim.x) {
    const float v = __ldcg(&rp[b].v);
    const int32_t i = __ldcg(&rp[b].i);
    if (argmax_better(v, i, best, bi)) {
      best = v;
      bi = i;
    }
  }
  p = argmax_block(best, bi);
  if (threadIdx.x == 0) {
    out[row] = p.i < 0 ? 0 : p.i;
    *counter = 0;
  }
}

__global__ void noop_kernel() {}

std::atomic<bool> g_pdl{true};

__global__ void f16_to_f32_kernel(const uint16_t* __restrict__ src, int64_t n, float* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __half2float(__ushort_as_half(src[i]));
}

__global__ void f32_to_f16_kernel(const float* __restrict__ src, int64_t n, uint16_t* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __half_as_ushort(__float2half_rn(src[i]));
}

}  // namespace

bool pdl_enabled() { return g_pdl.load(std::memory_order_relaxed); }
void set_pdl(bool on) { g_pdl.store(on, std::memory_order_relaxed); }

cudaError_t probe_device() {
  const cudaError_t e = launch_plain(noop_kernel, dim3(1), dim3(32), 0, nullptr);
  if (e != cudaSuccess) return e;
  return cudaDeviceSynchronize();
}

cudaError_t f16_to_f32(const uint16_t* src, int64_t n, float* dst, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch_plain(f16_to_f32_kernel, dim3(ceil_div(n, 256)), dim3(256), 0, stream, src, n, dst);
}

cudaError_t f32_to_f16(const float* src, int64_t n, uint16_t* dst, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch_plain(f32_to_f16_kernel, dim3(ceil_div(n, 256)), dim3(256), 0, stream, src, n, dst);
}

cudaError_t embedding_rows(const MatView& emb, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                           cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (emb.cols % 32 != 0) return cudaErrorInvalidValue;
  const unsigned blocks = ceil_div(n * (emb.cols / 32), 128);
  cudaError_t e = cudaErrorInvalidValue;
  dispatch_type(emb.type, [&](auto tag) {
    constexpr uint32_t T = decltype(tag)::value;
    e = launch(embedding_kernel<T>, dim3(blocks), dim3(128), 0, stream, emb.data, emb.row_bytes, emb.rows, emb.cols,
               tokens, n, out, ldo);
  });
  return e;
}

cudaError_t swiglu(float* g, int64_t ldg, const float* u, int64_t ldu, int64_t n, int64_t F, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(swiglu_kernel, dim3(ceil_div(n * F, 256)), dim3(256), 0, stream, g, ldg, u, ldu, n, F);
}

cudaError_t swiglu_bf16(const float* g, int64_t ldg, const float* u, int64_t ldu, int64_t n, int64_t F, uint16_t* y,
                        int64_t ldy, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const dim3 block(256);
  const unsigned rows = unsigned(std::min<int64_t>(n, 65535));
  const bool vec = F % 4 == 0 && ldg % 4 == 0 && ldu % 4 == 0 && ldy % 4 == 0 &&
                   ((reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(u)) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(y) & 7u) == 0;
  if (vec)
    return launch(swiglu_bf16_kernel<4>, dim3(ceil_div(F / 4, 256), rows), block, 0, stream, g, ldg, u, ldu, n, F, y,
                  ldy);
  return launch(swiglu_bf16_kernel<1>, dim3(ceil_div(F, 256), rows), block, 0, stream, g, ldg, u, ldu, n, F, y, ldy);
}

size_t argmax_scratch_bytes(int64_t n) { return size_t(std::max<int64_t>(n, 1)) * kArgmaxRowBytes; }

cudaError_t argmax_rows(const float* x, int64_t ldx, int64_t n, int64_t V, int32_t* out, void* scratch,
                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (n > 65535 || !scratch) return cudaErrorInvalidValue;
  return launch(argmax_kernel, dim3(kArgmaxBlocks, unsigned(n)), dim3(kArgmaxThreads), 0, stream, x, ldx, V,
                static_cast<uint8_t*>(scratch), out);
}

}  // namespace qwen35::cuda
