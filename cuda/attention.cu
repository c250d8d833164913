// Attention kernels (see attention.h).
//
// Every (row, head) is split into `splits` contiguous key ranges; one block
// per (head, row, split) runs an online softmax over its range (each of its
// warps takes every 4th key) and writes the unnormalized partial result.
// A second kernel merges the splits in a fixed order and applies the gate,
// so results are deterministic and do not depend on timing. The split count
// is fixed per launch, and the key ranges are derived on the device from
// n_past, so the same launch serves every decode step (CUDA graphs).
#include "attention.h"
#include "common.cuh"
#include "launch.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kAttnWarps = 4;

// Lane l holds elements l*EPL .. l*EPL+EPL-1 of a head (EPL = Dh/32, even).
template <int EPL>
__device__ __forceinline__ void load_f16_row(const uint16_t* p, float* out) {
  const __half2* h2 = reinterpret_cast<const __half2*>(p);
#pragma unroll
  for (int e = 0; e < EPL / 2; ++e) {
    const float2 f = __half22float2(h2[e]);
    out[2 * e] = f.x;
    out[2 * e + 1] = f.y;
  }
}

template <int EPL>
__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_part_kernel(AttnArgs a) {
  pdl_prologue();
  constexpr int Dh = EPL * kWarp;
  __shared__ float sm[kAttnWarps], sl[kAttnWarps];
  __shared__ float so[kAttnWarps][Dh];
  const int64_t h = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t group = a.n_head / a.n_head_kv, g = h / group;
  const int64_t kvd = a.n_head_kv * Dh;
  const int64_t n_kv = int64_t(*a.n_past) + t + 1;
  const int64_t chunk = (n_kv + a.splits - 1) / a.splits;
  const int64_t j0 = s * chunk, j1 = min(n_kv, j0 + chunk);

  float q[EPL];
  const float* qh = a.q + t * a.n_head * Dh + h * Dh + lane * EPL;
#pragma unroll
  for (int e = 0; e < EPL; ++e) q[e] = qh[e] * a.scale;

  float m = -INFINITY, l = 0.0f, acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) acc[e] = 0.0f;
  const uint16_t* kb = a.k_cache + g * Dh + lane * EPL;
  const uint16_t* vb = a.v_cache + g * Dh + lane * EPL;
  for (int64_t j = j0 + warp; j < j1; j += kAttnWarps) {
    float kv[EPL];
    load_f16_row<EPL>(kb + j * kvd, kv);
    float d = 0.0f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) d = fmaf(q[e], kv[e], d);
    d = warp_sum(d);
    const float m_new = fmaxf(m, d);
    const float c = __expf(m - m_new), p = __expf(d - m_new);
    l = l * c + p;
    load_f16_row<EPL>(vb + j * kvd, kv);
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[e] = fmaf(p, kv[e], acc[e] * c);
    m = m_new;
  }
  // Merge the warps of this block.
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < EPL; ++e) so[warp][lane * EPL + e] = acc[e];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm[w]);
  const int64_t part = (t * a.n_head + h) * a.splits + s;
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) L += sm[w] == -INFINITY ? 0.0f : sl[w] * __expf(sm[w] - M);
    a.part_m[part] = M;
    a.part_l[part] = L;
  }
  for (int i = threadIdx.x; i < Dh; i += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w)
      if (sm[w] != -INFINITY) v += so[w][i] * __expf(sm[w] - M);
    a.part_o[part * Dh + i] = v;
  }
}

// One block per (head, row): merge the splits, normalize, gate.
__global__ void attention_merge_kernel(AttnArgs a) {
  pdl_prologue();
  const int64_t h = blockIdx.x, t = blockIdx.y, Dh = a.head_dim;
  const int64_t base = (t * a.n_head + h) * a.splits;
  float M = -INFINITY;
  for (int s = 0; s < a.splits; ++s) M = fmaxf(M, a.part_m[base + s]);
  float L = 0.0f;
  for (int s = 0; s < a.splits; ++s)
    if (a.part_m[base + s] != -INFINITY) L += a.part_l[base + s] * __expf(a.part_m[base + s] - M);
  const float inv = 1.0f / L;
  const float* gate = a.gate + t * a.ldgate + h * a.gate_stride;
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const float ms = a.part_m[base + s];
      if (ms != -INFINITY) v += a.part_o[(base + s) * Dh + i] * __expf(ms - M);
    }
    a.o[t * a.n_head * Dh + h * Dh + i] = v * inv * sigmoid_f(gate[i]);
  }
}

}  // namespace

bool attention_head_dim_supported(int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256 || head_dim == 512;
}

cudaError_t attention(const AttnArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!attention_head_dim_supported(a.head_dim) || a.splits < 1 || a.n_head % a.n_head_kv != 0)
    return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.n_head), unsigned(a.n), unsigned(a.splits));
  cudaError_t e;
  switch (a.head_dim) {
    case 64: e = launch(attention_part_kernel<2>, grid, dim3(kAttnWarps * kWarp), 0, stream, a); break;
    case 128: e = launch(attention_part_kernel<4>, grid, dim3(kAttnWarps * kWarp), 0, stream, a); break;
    case 256: e = launch(attention_part_kernel<8>, grid, dim3(kAttnWarps * kWarp), 0, stream, a); break;
    default: e = launch(attention_part_kernel<16>, grid, dim3(kAttnWarps * kWarp), 0, stream, a); break;
  }
  if (e != cudaSuccess) return e;
  return launch(attention_merge_kernel, dim3(unsigned(a.n_head), unsigned(a.n)), dim3(128), 0, stream, a);
}

}  // namespace qwen35::cuda
