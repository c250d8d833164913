// Device-side helpers shared by the kernels: number formats of the GGUF
// weight types, warp and block reductions, dynamic shared memory, cp.async.
// Included by .cu files only. With QWEN35_CUDA_EMU the CUDA built-ins come
// from the CPU emulation of tests/emu (cuda_emu.h), which runs the kernels
// that use no inline PTX other than the helpers below.
#pragma once

#ifdef QWEN35_CUDA_EMU
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace qwen35::cuda {

constexpr int kWarp = 32;

// ---- number formats (spec qwen35-text.md §6) ---------------------------------

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

// E2M1 code (bit 3 sign, bits 0-2 magnitude) -> value.
__device__ __forceinline__ float e2m1_to_f32(uint32_t code) {
  // Magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}: for e = bits 1-2 > 0 the value
  // is 2^(e-1) * (1 + m/2); for e = 0 it is m/2.
  const uint32_t m = code & 1u, e = (code >> 1) & 3u;
  const float mag = e ? __int_as_float(int((e + 126u) << 23)) * (1.0f + 0.5f * float(m)) : 0.5f * float(m);
  return (code & 8u) ? -mag : mag;
}

// UE4M3 scale byte as llama.cpp decodes it: 0x00 and 0x7F are 0, bit 7 is
// ignored otherwise, E = 0 is subnormal (M * 2^-9).
__device__ __forceinline__ float ue4m3_to_f32(uint32_t code) {
  code &= 0xFFu;
  if (code == 0x00u || code == 0x7Fu) return 0.0f;
  const uint32_t E = (code >> 3) & 0x0Fu, M = code & 7u;
  if (E == 0) return float(M) * (1.0f / 512.0f);
  // (1 + M/8) * 2^(E-7): build the float directly.
  return __uint_as_float(((E + 120u) << 23) | (M << 20));
}

// E8M0 exponent byte -> 2^(e-127) (e = 0 is 2^-127, 0xFF is NaN).
__device__ __forceinline__ float e8m0_to_f32(uint32_t e) {
  e &= 0xFFu;
  if (e == 0) return __uint_as_float(0x00400000u);  // 2^-127, subnormal
  if (e == 0xFF) return __uint_as_float(0x7FC00000u);
  return __uint_as_float(e << 23);
}

// ---- reductions ----------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024). Every
// thread gets the result. `scratch` holds 32 floats; it may be reused right
// after the call returns (a barrier ends the function).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < nw ? scratch[lane] : 0.0f;
  t = warp_sum(t);
  return t;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < nw ? scratch[lane] : -INFINITY;
  return warp_max(t);
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Channel r of the delta net's causal conv + SiLU (spec §4.5.2) in a
// product's epilogue, the product's outputs for this channel being v0 (row
// 0) and v1 (row 1) of n <= 2 rows: y[j][r] = silu(sum_k taps[r][k] *
// in(j - (kc-1) + k)), in(t) = v_t for t >= 0, else row kc-1+t of the
// window [kc-1, C]; the window moves on by n rows, and with 0 <=
// snapshot_row < n its state after that row goes to snapshot.
__device__ __forceinline__ void conv_silu_channel(const float* taps, float* window, int64_t C, int64_t kc, int n,
                                                  int64_t r, float v0, float v1, float* y, int64_t ldy,
                                                  int snapshot_row, float* snapshot) {
  auto in = [&](int64_t tp) { return tp >= 0 ? (tp == 0 ? v0 : v1) : window[(kc - 1 + tp) * C + r]; };
  const float* tr = taps + r * kc;
  for (int j = 0; j < n; ++j) {
    float s = 0.0f;
    for (int64_t k = 0; k < kc; ++k) s = fmaf(tr[k], in(j - (kc - 1) + k), s);
    y[j * ldy + r] = silu_f(s);
  }
  if (snapshot_row >= 0 && snapshot_row < n)
    for (int64_t k = 0; k + 1 < kc; ++k) snapshot[k * C + r] = in(snapshot_row - (kc - 2) + k);
  for (int64_t k = 0; k + 1 < kc; ++k) window[k * C + r] = in(n - (kc - 1) + k);
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// ---- shared memory ---------------------------------------------------------------

// The block's dynamic shared memory (16-byte aligned).
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#ifdef QWEN35_CUDA_EMU
  return static_cast<T*>(::qwen35::emu::dynamic_smem());
#else
  extern __shared__ __align__(16) unsigned char qwen35_dynamic_smem[];
  return reinterpret_cast<T*>(qwen35_dynamic_smem);
#endif
}

// Asynchronous global -> shared copies (sm_80+): issued per thread, grouped
// by cp_async_commit(); cp_async_wait<N>() waits until at most N of the
// calling thread's committed groups are in flight. Other threads see the
// data only after a barrier that follows their writers' waits.
__device__ __forceinline__ void cp_async4(float* smem, const float* gmem) {
#ifdef QWEN35_CUDA_EMU
  ::qwen35::emu::async_copy(smem, gmem, 4);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef QWEN35_CUDA_EMU
  ::qwen35::emu::async_commit();
#else
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef QWEN35_CUDA_EMU
  ::qwen35::emu::async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

}  // namespace qwen35::cuda
