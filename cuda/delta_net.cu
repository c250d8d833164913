// Recurrent gated delta rule (see delta_net.h).
//
// The rows of a head's state M (one per value dimension) evolve
// independently given q, k, beta and g, so a head is split over blocks of
// kRowsPerBlock rows (more blocks in flight for decode). Within a block, row
// v of M lives in registers, split over TPR = dk/32 adjacent threads: thread
// `sub` holds the 32 contiguous elements 32*sub .. 32*sub+31 (vector loads
// and stores of the state). The batch rows are walked in order, in chunks
// of C rows whose inputs (q, k, the block's v values, the gate inputs) are
// copied into shared memory with cp.async while the previous chunk is
// walked; the chunk's q/k norms and gates are then computed in parallel, so
// the sequential walk reads shared memory only and needs no barrier per
// row. q and k keep one padding word per 32, so the TPR threads of a row
// read distinct banks. The state is loaded before the PDL wait.
#include "common.cuh"
#include "launch.cuh"
#include "delta_net.h"

namespace qwen35::cuda {

namespace {

constexpr int kMaxThreads = 256;  // kRowsPerBlock * dk / 32 for dk <= 256
constexpr int kRowsPerBlock = 32;

template <int TPR>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

__device__ __forceinline__ void cp_async4(float* smem, const float* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <int TPR>
__global__ void __launch_bounds__(kMaxThreads) delta_net_kernel(DeltaNetArgs p) {
  constexpr int DK = 32 * TPR;
  constexpr int PAD = 33;                   // shared-memory stride of each 32-element part
  constexpr int C = TPR >= 8 ? 8 : 16;      // rows per staged chunk (about 17 KiB of q/k per buffer)
  constexpr int QK = 2 * TPR * PAD;         // one row's q parts, then its k parts
  __shared__ float s_qk[2][C][QK];
  __shared__ float s_v[2][C][kRowsPerBlock];
  __shared__ float s_b[2][C], s_a[2][C];
  // Per row of the current chunk: q and k norm factors and the gates.
  __shared__ float s_rq[C], s_rk[C], s_beta[C], s_decay[C];
  const int64_t j = blockIdx.x;
  const int64_t Hk = p.Hk, dv = p.dv, kh = j % Hk;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, n_warps = blockDim.x / kWarp;
  const int64_t v0 = int64_t(blockIdx.y) * kRowsPerBlock;  // first state row of the block
  const int v_local = tid / TPR;
  const int64_t v_row = v0 + v_local;
  const int sub = tid % TPR;
  const float qscale = rsqrtf(float(DK));

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
  const float a_log = p.ssm_a[j], dtb = p.dt_bias[j];
  pdl_prologue();

  // Copies of the inputs of rows t0 .. t0+C-1 into buffer buf (one group).
  auto stage = [&](int64_t t0, int buf) {
    const int cn = int(min(int64_t(C), p.n - t0));
    for (int e = tid; e < cn * 2 * DK; e += blockDim.x) {
      const int r = e / (2 * DK), c = e % (2 * DK), which = c / DK, i = c % DK;
      const float* src = p.uc + (t0 + r) * p.ldu + (which ? Hk * DK : 0) + kh * DK + i;
      cp_async4(&s_qk[buf][r][(which * TPR + i / 32) * PAD + i % 32], src);
    }
    for (int e = tid; e < cn * kRowsPerBlock; e += blockDim.x) {
      const int r = e / kRowsPerBlock, c = e % kRowsPerBlock;
      cp_async4(&s_v[buf][r][c], p.uc + (t0 + r) * p.ldu + 2 * Hk * DK + j * dv + v0 + c);
    }
    for (int r = tid; r < cn; r += blockDim.x) {
      cp_async4(&s_b[buf][r], p.b + (t0 + r) * p.ldb + j);
      cp_async4(&s_a[buf][r], p.a + (t0 + r) * p.lda + j);
    }
    cp_async_commit();
  };

  const int my = sub * PAD;  // this thread's part of q and k
  stage(0, 0);
  int buf = 0;
  for (int64_t t0 = 0; t0 < p.n; t0 += C, buf ^= 1) {
    const int cn = int(min(int64_t(C), p.n - t0));
    if (t0 + C < p.n) {
      stage(t0 + C, buf ^ 1);  // its buffer was last read by the previous chunk
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // chunk t0 is in buf
    // The rows' L2 norms and gates, all at once (warps take rows).
    for (int r = warp; r < cn; r += n_warps) {
      float sq = 0.0f, sk = 0.0f;
      for (int i = lane; i < DK; i += kWarp) {
        const float q = s_qk[buf][r][(i / 32) * PAD + i % 32], k = s_qk[buf][r][(TPR + i / 32) * PAD + i % 32];
        sq = fmaf(q, q, sq);
        sk = fmaf(k, k, sk);
      }
      sq = warp_sum(sq);
      sk = warp_sum(sk);
      if (lane == 0) {
        s_rq[r] = qscale / fmaxf(sqrtf(sq), p.eps);
        s_rk[r] = 1.0f / fmaxf(sqrtf(sk), p.eps);
        s_beta[r] = sigmoid_f(s_b[buf][r]);
        s_decay[r] = expf(a_log * softplus_f(s_a[buf][r] + dtb));
      }
    }
    __syncthreads();
    for (int r = 0; r < cn; ++r) {
      const int64_t t = t0 + r;
      const float* qs = s_qk[buf][r];
      const float* ks = s_qk[buf][r] + TPR * PAD;
      const float v = s_v[buf][r][v_local];
      const float rq = s_rq[r], rk = s_rk[r], beta = s_beta[r], decay = s_decay[r];

      // m = (decayed M) k, with four independent partial sums.
      float m4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        M[i] *= decay;
        m4[i & 3] = fmaf(M[i], ks[my + i], m4[i & 3]);
      }
      const float m = group_sum<TPR>((m4[0] + m4[1]) + (m4[2] + m4[3])) * rk;
      const float d = beta * (v - m) * rk;  // the update uses k * rk
      float o4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        M[i] = fmaf(ks[my + i], d, M[i]);
        o4[i & 3] = fmaf(M[i], qs[my + i], o4[i & 3]);
      }
      const float o = group_sum<TPR>((o4[0] + o4[1]) + (o4[2] + o4[3])) * rq;
      if (sub == 0) p.out[t * p.Hv * dv + j * dv + v_row] = o;
      if (t == p.snapshot_row) {
        float4* sn = reinterpret_cast<float4*>(p.snapshot + (j * dv + v_row) * DK + 32 * sub);
#pragma unroll
        for (int i = 0; i < 8; ++i) sn[i] = make_float4(M[4 * i], M[4 * i + 1], M[4 * i + 2], M[4 * i + 3]);
      }
    }
    __syncthreads();  // buf and the norms are rewritten for the next chunks
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
  const dim3 grid(unsigned(a.Hv), unsigned(a.dv / kRowsPerBlock));
  const unsigned threads = unsigned(kRowsPerBlock * (a.dk / 32));
  switch (a.dk) {
    case 32: return launch(delta_net_kernel<1>, grid, dim3(threads), 0, stream, a);
    case 64: return launch(delta_net_kernel<2>, grid, dim3(threads), 0, stream, a);
    case 128: return launch(delta_net_kernel<4>, grid, dim3(threads), 0, stream, a);
    default: return launch(delta_net_kernel<8>, grid, dim3(threads), 0, stream, a);
  }
}

}  // namespace qwen35::cuda
