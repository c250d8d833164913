// Recurrent gated delta rule (see delta_net.h).
//
// The rows of a head's state M (one per value dimension) evolve
// independently given q, k, beta and g, so a head is split over blocks of
// kRowsPerBlock rows (more blocks in flight for decode). Within a block, row
// v of M lives in registers, split over TPR = dk/32 adjacent threads: thread
// `sub` holds the 32 contiguous elements 32*sub .. 32*sub+31 (vector loads
// and stores of the state); q and k sit in shared memory with one padding
// word per 32, so the TPR threads of a row read distinct banks. The batch rows are walked in order
// with one barrier per row; the next row's inputs are loaded while the
// current one is computed, and the norms of q and k and the gates of a
// chunk of rows are computed in parallel before the sequential walk.
#include "common.cuh"
#include "launch.cuh"
#include "delta_net.h"

namespace qwen35::cuda {

namespace {

constexpr int kMaxThreads = 256;  // kRowsPerBlock * dk / 32 for dk <= 256
constexpr int kRowsPerBlock = 32;
constexpr int kChunk = 128;  // batch rows whose norms and gates are computed ahead

template <int TPR>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

template <int TPR>
__global__ void __launch_bounds__(kMaxThreads) delta_net_kernel(DeltaNetArgs p, int rows_per_block) {
  constexpr int DK = 32 * TPR;
  constexpr int PAD = 33;  // shared-memory stride of each 32-element part
  __shared__ float qs[2][TPR * PAD], ks[2][TPR * PAD];
  // Per batch row of the current chunk: q and k norm factors and the gates.
  __shared__ float s_rq[kChunk], s_rk[kChunk], s_beta[kChunk], s_decay[kChunk];
  const int64_t j = blockIdx.x;
  const int64_t Hk = p.Hk, dv = p.dv, kh = j % Hk;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, n_warps = blockDim.x / kWarp;
  const int64_t v_row = int64_t(blockIdx.y) * rows_per_block + tid / TPR;
  const int sub = tid % TPR;
  const float qscale = rsqrtf(float(DK));
  const float a_log = p.ssm_a[j], dtb = p.dt_bias[j];

  // The state is loaded before waiting for the previous kernel: no kernel
  // of the step before this one writes it (it was last written by this
  // layer's previous launch or by a stream-ordered copy), so the load
  // overlaps the end of the input projection.
  float M[32];
  float4* st = reinterpret_cast<float4*>(p.state + (j * dv + v_row) * DK + 32 * sub);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 v = st[i];
    M[4 * i] = v.x;
    M[4 * i + 1] = v.y;
    M[4 * i + 2] = v.z;
    M[4 * i + 3] = v.w;
  }
  pdl_prologue();
  const int sq_at = (tid / 32) * PAD + tid % 32;  // where thread tid < DK stores q[tid], k[tid]
  const int my = sub * PAD;                       // this thread's part of q and k

  // Inputs of row t: q, k (loaded by the first DK threads into shared
  // memory) and the value of this thread's state row.
  auto row_ptr = [&](int64_t t) { return p.uc + t * p.ldu; };
  float nq = 0.0f, nk = 0.0f, nv = 0.0f;
  auto prefetch = [&](int64_t t) {
    const float* row = row_ptr(t);
    if (tid < DK) {
      nq = row[kh * DK + tid];
      nk = row[Hk * DK + kh * DK + tid];
    }
    nv = row[2 * Hk * DK + j * dv + v_row];
  };
  prefetch(0);
  if (tid < DK) {
    qs[0][sq_at] = nq;
    ks[0][sq_at] = nk;
  }
  for (int64_t t0 = 0; t0 < p.n; t0 += kChunk) {
    const int64_t t1 = min(p.n, t0 + kChunk);
    // The rows' L2 norms and gates, all at once (warps take rows); visible
    // after the barrier that starts each row below.
    if (t0 > 0) __syncthreads();  // the previous chunk's values are no longer read
    for (int64_t t = t0 + warp; t < t1; t += n_warps) {
      const float* row = row_ptr(t);
      float sq = 0.0f, sk = 0.0f;
      for (int i = lane; i < DK; i += kWarp) {
        const float q = row[kh * DK + i], k = row[Hk * DK + kh * DK + i];
        sq = fmaf(q, q, sq);
        sk = fmaf(k, k, sk);
      }
      sq = warp_sum(sq);
      sk = warp_sum(sk);
      if (lane == 0) {
        s_rq[t - t0] = qscale / fmaxf(sqrtf(sq), p.eps);
        s_rk[t - t0] = 1.0f / fmaxf(sqrtf(sk), p.eps);
        s_beta[t - t0] = sigmoid_f(p.b[t * p.ldb + j]);
        s_decay[t - t0] = expf(a_log * softplus_f(p.a[t * p.lda + j] + dtb));
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int buf = int(t & 1);
      const float v = nv;
      __syncthreads();  // row t's q and k are in buf
      if (t + 1 < p.n) prefetch(t + 1);
      const float rq = s_rq[t - t0], rk = s_rk[t - t0], beta = s_beta[t - t0], decay = s_decay[t - t0];

      // m = (decayed M) k, with four independent partial sums.
      float m4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        M[i] *= decay;
        m4[i & 3] = fmaf(M[i], ks[buf][my + i], m4[i & 3]);
      }
      const float m = group_sum<TPR>((m4[0] + m4[1]) + (m4[2] + m4[3])) * rk;
      const float d = beta * (v - m) * rk;  // the update uses k * rk
      float o4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        M[i] = fmaf(ks[buf][my + i], d, M[i]);
        o4[i & 3] = fmaf(M[i], qs[buf][my + i], o4[i & 3]);
      }
      const float o = group_sum<TPR>((o4[0] + o4[1]) + (o4[2] + o4[3])) * rq;
      if (sub == 0) p.out[t * p.Hv * dv + j * dv + v_row] = o;
      if (t == p.snapshot_row) {
        float4* sn = reinterpret_cast<float4*>(p.snapshot + (j * dv + v_row) * DK + 32 * sub);
#pragma unroll
        for (int i = 0; i < 8; ++i) sn[i] = make_float4(M[4 * i], M[4 * i + 1], M[4 * i + 2], M[4 * i + 3]);
      }
      // Row t+1's q and k into the other buffer (last read during row t-1,
      // before this row's barrier).
      if (t + 1 < p.n && tid < DK) {
        qs[buf ^ 1][sq_at] = nq;
        ks[buf ^ 1][sq_at] = nk;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) st[i] = make_float4(M[4 * i], M[4 * i + 1], M[4 * i + 2], M[4 * i + 3]);
}

}  // namespace

bool delta_net_shape_supported(int64_t dk, int64_t dv) {
  // A block is kRowsPerBlock state rows of dk/32 threads, which also load q and k.
  return (dk == 32 || dk == 64 || dk == 128 || dk == 256) && dv >= kRowsPerBlock && dv % kRowsPerBlock == 0;
}

cudaError_t delta_net(const DeltaNetArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!delta_net_shape_supported(a.dk, a.dv)) return cudaErrorInvalidValue;
  const int rows = kRowsPerBlock;
  const dim3 grid(unsigned(a.Hv), unsigned(a.dv / rows));
  const unsigned threads = unsigned(rows * (a.dk / 32));
  cudaError_t e;
  switch (a.dk) {
    case 32: e = launch(delta_net_kernel<1>, grid, dim3(threads), 0, stream, a, rows); break;
    case 64: e = launch(delta_net_kernel<2>, grid, dim3(threads), 0, stream, a, rows); break;
    case 128: e = launch(delta_net_kernel<4>, grid, dim3(threads), 0, stream, a, rows); break;
    default: e = launch(delta_net_kernel<8>, grid, dim3(threads), 0, stream, a, rows); break;
  }
  return e;
}

}  // namespace qwen35::cuda
