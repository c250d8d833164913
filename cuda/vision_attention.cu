// Full bidirectional attention of the vision encoder (see vision_kernels.h):
// a tiled (flash) kernel on the CUDA cores, all in F32. CPU twin: the
// encoder's attention_ref (scores, softmax_ref(), weighted sum of V).
#include <cmath>

#include "common.cuh"
#include "launch.cuh"
#include "vision_kernels.h"

namespace qwen35::cuda {

namespace {

constexpr int kBQ = 32;        // query rows per block
constexpr int kBK = 32;        // keys per tile (one per lane in the softmax step)
constexpr int kThreads = 256;  // 8 warps; warp w keeps the statistics of rows 4w .. 4w+3

template <int DH>
constexpr size_t attn_smem_bytes() {
  // Qs [BQ][DH+1] | Ks [BK][DH+1] | Vs [BK][DH] | Ps [BQ][BK+1] | alpha [BQ]
  return sizeof(float) * (size_t(kBQ) * (DH + 1) + size_t(kBK) * (DH + 1) + size_t(kBK) * DH +
                          size_t(kBQ) * (kBK + 1) + kBQ);
}

// Block (x, h): query rows 32x .. 32x+31 of head h. Thread t owns query row
// r = t / 8: it computes the scores of keys c0 + 8j (c0 = t % 8, j < 4) of
// each tile and accumulates output dimensions c0 + 8j (j < DH/8). Padded
// rows of Q and K/V (past n) are zeros; padded keys are masked to -inf.
template <int DH>
__global__ void __launch_bounds__(kThreads)
    vision_attention_kernel(const float* __restrict__ qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                            float scale, float* __restrict__ o, int64_t ldo) {
  pdl_prologue();
  constexpr int QP = DH + 1, KP = DH + 1, PP = kBK + 1, OD = DH / 8;
  float* Qs = dynamic_smem<float>();  // [BQ][QP] scaled queries (padded rows: no bank conflicts)
  float* Ks = Qs + kBQ * QP;          // [BK][KP]
  float* Vs = Ks + kBK * KP;          // [BK][DH]
  float* Ps = Vs + kBK * DH;          // [BQ][PP] scores, then probabilities
  float* alpha = Ps + kBQ * PP;       // [BQ] rescale of the running output for this tile

  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int r = tid / 8, c0 = tid % 8;
  const int64_t q0 = int64_t(blockIdx.x) * kBQ, h = blockIdx.y;
  const float* qh = qkv + h * DH;
  const float* kh = qkv + k_offset + h * DH;
  const float* vh = qkv + v_offset + h * DH;

  for (int e = tid; e < kBQ * DH; e += kThreads) {
    const int rr = e / DH, d = e % DH;
    const int64_t i = q0 + rr;
    Qs[rr * QP + d] = i < n ? qh[i * ld + d] * scale : 0.0f;
  }
  float acc[OD];
#pragma unroll
  for (int j = 0; j < OD; ++j) acc[j] = 0.0f;
  // Running max and denominator of rows 4*warp + i (the same in every lane).
  float m_run[4], l_run[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m_run[i] = -INFINITY;
    l_run[i] = 0.0f;
  }

  for (int64_t k0 = 0; k0 < n; k0 += kBK) {
    __syncthreads();  // Qs is written (first tile); the previous tile's Ks, Vs, Ps are no longer read
    for (int e = tid; e < kBK * DH; e += kThreads) {
      const int kr = e / DH, d = e % DH;
      const int64_t j = k0 + kr;
      Ks[kr * KP + d] = j < n ? kh[j * ld + d] : 0.0f;
      Vs[kr * DH + d] = j < n ? vh[j * ld + d] : 0.0f;
    }
    __syncthreads();
    // Scores of row r against keys c0 + 8j.
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 8
    for (int d = 0; d < DH; ++d) {
      const float q = Qs[r * QP + d];
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j] = fmaf(q, Ks[(c0 + 8 * j) * KP + d], s[j]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) Ps[r * PP + c0 + 8 * j] = k0 + c0 + 8 * j < n ? s[j] : -INFINITY;
    __syncthreads();
    // Online softmax: warp w updates rows 4w .. 4w+3, lane = key. Key k0 is
    // always valid, so every row's new maximum is finite.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = 4 * warp + i;
      const float sc = Ps[row * PP + lane];
      const float m_new = fmaxf(m_run[i], warp_max(sc));
      const float p = expf(sc - m_new);
      const float a = expf(m_run[i] - m_new);
      l_run[i] = l_run[i] * a + warp_sum(p);
      m_run[i] = m_new;
      Ps[row * PP + lane] = p;
      if (lane == 0) alpha[row] = a;
    }
    __syncthreads();
    // O[r] = O[r] * alpha + P[r] V.
    const float a = alpha[r];
#pragma unroll
    for (int j = 0; j < OD; ++j) acc[j] *= a;
#pragma unroll 4
    for (int kk = 0; kk < kBK; ++kk) {
      const float p = Ps[r * PP + kk];
#pragma unroll
      for (int j = 0; j < OD; ++j) acc[j] = fmaf(p, Vs[kk * DH + c0 + 8 * j], acc[j]);
    }
  }
  // Row r's statistics live in this thread's own warp (r / 4 == warp).
  float l = l_run[0];
#pragma unroll
  for (int i = 1; i < 4; ++i)
    if (r % 4 == i) l = l_run[i];
  const int64_t i = q0 + r;
  if (i < n) {
    const float inv = 1.0f / l;
    float* orow = o + i * ldo + h * DH;
#pragma unroll
    for (int j = 0; j < OD; ++j) orow[c0 + 8 * j] = acc[j] * inv;
  }
}

template <int DH>
cudaError_t launch_attention(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                             int64_t n_head, float scale, float* o, int64_t ldo, cudaStream_t stream) {
  constexpr size_t smem = attn_smem_bytes<DH>();
  if (smem > max_dynamic_smem()) return cudaErrorInvalidConfiguration;
  const cudaError_t e = allow_dynamic_smem(vision_attention_kernel<DH>, smem);
  if (e != cudaSuccess) return e;
  return launch(vision_attention_kernel<DH>, dim3(ceil_div(n, kBQ), unsigned(n_head)), dim3(kThreads), smem, stream,
                qkv, ld, k_offset, v_offset, n, scale, o, ldo);
}

}  // namespace

bool vision_attention_supported(int64_t head_dim) { return head_dim == 32 || head_dim == 64 || head_dim == 128; }

cudaError_t vision_attention(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                             int64_t n_head, int64_t head_dim, float scale, float* o, int64_t ldo,
                             cudaStream_t stream) {
  if (n <= 0 || n_head <= 0) return cudaSuccess;
  switch (head_dim) {
    case 32: return launch_attention<32>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    case 64: return launch_attention<64>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    case 128: return launch_attention<128>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qwen35::cuda
