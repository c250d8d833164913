// Q6_K kernels on the Q6kRows32 layout (see matvec_q6k.h, q6k_rows32.h).
//
// The matrix-vector product gives each thread one row: x is in shared
// memory and every thread of a warp reads the same x element at once (a
// broadcast), while the warp's weight loads are contiguous 512 + 256 + 64
// bytes per 32 columns. 6-bit codes become floats with the 2^23 trick
// (exact), so there is no integer conversion in the loop.
#include "common.cuh"
#include "launch.cuh"
#include "matvec_q6k.h"

namespace qwen35::cuda {

namespace {

constexpr int kThreads = 256;

// One thread per (row, chunk) of rows r0 .. r1-1; src holds row r0 first.
__global__ void q6k_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                  Q6kRows32 dst, uint8_t* __restrict__ ql, uint8_t* __restrict__ qh,
                                  int8_t* __restrict__ sc, uint16_t* __restrict__ d) {
  const int64_t chunks = dst.chunks();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= (r1 - r0) * chunks) return;
  const int64_t r = r0 + i / chunks, c = i % chunks;
  const int64_t u = dst.unit(r, c);
  uint32_t l4[4] = {0, 0, 0, 0}, h2[2] = {0, 0};
  int8_t s[2] = {0, 0};
  uint16_t dd = 0;
  if (r < dst.rows)
    q6k_pack_unit(src + uint64_t(r - r0) * row_bytes + uint64_t(c / 8) * 210, int(c % 8), l4, h2, s, &dd);
  reinterpret_cast<uint4*>(ql)[u] = make_uint4(l4[0], l4[1], l4[2], l4[3]);
  reinterpret_cast<uint2*>(qh)[u] = make_uint2(h2[0], h2[1]);
  sc[2 * u] = s[0];
  sc[2 * u + 1] = s[1];
  if (c % 8 == 0) d[dst.d_index(r, c)] = dd;
}

__device__ __forceinline__ float code_value(uint32_t q) { return __int_as_float(0x4B000000u | q) - 8388640.0f; }

__global__ void __launch_bounds__(kThreads) q6k_matvec_kernel(Q6kRows32 w, const float* __restrict__ x, int64_t ldx,
                                                               int n, float* __restrict__ y, int64_t ldy, bool add) {
  pdl_prologue();
  extern __shared__ __align__(16) float xs[];  // [n][K]
  const int64_t K = w.cols, chunks = w.chunks();
  for (int j = 0; j < n; ++j)
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) xs[j * K + k] = x[j * ldx + k];
  __syncthreads();
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= w.groups() * 32) return;
  float acc[kMatvecMaxCols];
#pragma unroll
  for (int j = 0; j < kMatvecMaxCols; ++j) acc[j] = 0.0f;
  const uint4* qlp = reinterpret_cast<const uint4*>(w.ql);
  const uint2* qhp = reinterpret_cast<const uint2*>(w.qh);
  const uint16_t* scp = reinterpret_cast<const uint16_t*>(w.sc);
  float dv = 0.0f;
#pragma unroll 2
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t u = w.unit(r, c);
    const uint4 q = __ldg(qlp + u);
    const uint2 h = __ldg(qhp + u);
    const uint32_t s = __ldg(scp + u);
    if (c % 8 == 0) dv = __half2float(__ushort_as_half(__ldg(w.d + w.d_index(r, c))));
    const uint32_t l4[4] = {q.x, q.y, q.z, q.w}, h2[2] = {h.x, h.y};
    const float sub_scale[2] = {dv * float(int8_t(s & 0xFFu)), dv * float(int8_t(s >> 8))};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float v[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = code_value(q6k_rows32_code(l4, h2, 16 * half + i));
#pragma unroll
      for (int j = 0; j < kMatvecMaxCols; ++j) {
        if (j < n) {
          const float4* xv = reinterpret_cast<const float4*>(xs + j * K + 32 * c + 16 * half);
          float p = 0.0f;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float4 xx = xv[i];
            p = fmaf(v[4 * i], xx.x, p);
            p = fmaf(v[4 * i + 1], xx.y, p);
            p = fmaf(v[4 * i + 2], xx.z, p);
            p = fmaf(v[4 * i + 3], xx.w, p);
          }
          acc[j] = fmaf(p, sub_scale[half], acc[j]);
        }
      }
    }
  }
  if (r >= w.rows) return;
#pragma unroll
  for (int j = 0; j < kMatvecMaxCols; ++j) {
    if (j < n) {
      float* out = y + j * ldy + r;
      const float val = acc[j] * w.scale;
      *out = add ? *out + val : val;
    }
  }
}

// Element values of row r, chunk c (32 floats, scale not applied).
__device__ void q6k_load_chunk(const Q6kRows32& w, int64_t r, int64_t c, float* out) {
  const int64_t u = w.unit(r, c);
  const uint4 q = reinterpret_cast<const uint4*>(w.ql)[u];
  const uint2 h = reinterpret_cast<const uint2*>(w.qh)[u];
  const uint32_t l4[4] = {q.x, q.y, q.z, q.w}, h2[2] = {h.x, h.y};
  const float dv = __half2float(__ushort_as_half(w.d[w.d_index(r, c)]));
  const float s0 = dv * float(w.sc[2 * u]), s1 = dv * float(w.sc[2 * u + 1]);
  for (int i = 0; i < 32; ++i) out[i] = (i < 16 ? s0 : s1) * float(int(q6k_rows32_code(l4, h2, i)) - 32);
}

template <typename Out>
__global__ void q6k_dequant_kernel(Q6kRows32 w, int64_t r0, int64_t nr, const int32_t* __restrict__ tokens,
                                   Out* __restrict__ dst, int64_t ldo) {
  pdl_prologue();
  const int64_t chunks = w.chunks();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nr * chunks) return;
  const int64_t t = i / chunks, c = i % chunks;
  const int64_t r = tokens ? int64_t(tokens[t]) : r0 + t;
  if (r < 0 || r >= w.rows) return;
  float v[32];
  q6k_load_chunk(w, r, c, v);
  Out* o = dst + t * ldo + 32 * c;
  for (int k = 0; k < 32; ++k) {
    if constexpr (sizeof(Out) == 4) o[k] = v[k];
    else o[k] = __bfloat16_as_ushort(__float2bfloat16_rn(v[k]));
  }
}

}  // namespace

cudaError_t q6k_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q6kRows32& dst,
                       cudaStream_t stream) {
  if (dst.cols % 256 != 0 || r0 % 32 != 0 || nr <= 0) return cudaErrorInvalidValue;
  // The last range also zeroes the padding rows of its group.
  const int64_t r1 = r0 + nr >= dst.rows ? dst.groups() * 32 : r0 + nr;
  if (r1 % 32 != 0) return cudaErrorInvalidValue;
  const int64_t threads = (r1 - r0) * dst.chunks();
  q6k_repack_kernel<<<ceil_div(threads, 256), 256, 0, stream>>>(
      src, row_bytes, r0, r1, dst, const_cast<uint8_t*>(dst.ql), const_cast<uint8_t*>(dst.qh),
      const_cast<int8_t*>(dst.sc), const_cast<uint16_t*>(dst.d));
  return cudaGetLastError();
}

bool q6k_matvec_fits(const Q6kRows32& w, int n) {
  // x in shared memory, within what every target offers a block (sm_120: 99 KiB).
  return n >= 1 && n <= kMatvecMaxCols && uint64_t(n) * uint64_t(w.cols) * 4 <= 96 * 1024;
}

cudaError_t q6k_matvec(const Q6kRows32& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                       cudaStream_t stream) {
  if (!q6k_matvec_fits(w, n)) return cudaErrorInvalidValue;
  const size_t smem = size_t(n) * size_t(w.cols) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(q6k_matvec_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  return launch(q6k_matvec_kernel, dim3(ceil_div(w.groups() * 32, kThreads)), dim3(kThreads), smem, stream, w, x, ldx, n, y, ldy,
                                                                                     acc == Accum::Add);
}

cudaError_t q6k_dequant_rows_f32(const Q6kRows32& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  return launch(q6k_dequant_kernel<float>, dim3(ceil_div(nr * w.chunks(), 256)), dim3(256), 0, stream, w, r0, nr, nullptr, dst, w.cols);
}

cudaError_t q6k_dequant_rows_bf16(const Q6kRows32& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  return launch(q6k_dequant_kernel<uint16_t>, dim3(ceil_div(nr * w.chunks(), 256)), dim3(256), 0, stream, w, r0, nr, nullptr, dst, w.cols);
}

cudaError_t q6k_embedding_rows(const Q6kRows32& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(q6k_dequant_kernel<float>, dim3(ceil_div(n * w.chunks(), 256)), dim3(256), 0, stream, w, 0, n, tokens, out, ldo);
}

}  // namespace qwen35::cuda
