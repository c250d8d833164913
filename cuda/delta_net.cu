// Recurrent gated delta rule (see delta_net.h).
//
// One block per value head. The head's state M (dv rows of dk) lives in
// registers for the whole call: row v is split over TPR = dk/32 adjacent
// threads, thread `sub` holding elements sub, sub+TPR, sub+2*TPR, ... (32
// of them), so the shared-memory reads of q and k hit distinct banks. The
// rows of the batch are walked in order with one barrier per row.
#include "common.cuh"
#include "delta_net.h"

namespace qwen35::cuda {

namespace {

// 32 state floats per thread need more than the 64 registers a 1024-thread
// block allows, so blocks are capped at 512 threads (dv * dk <= 16384).
constexpr int kMaxThreads = 512;

template <int TPR>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

template <int TPR>
__global__ void __launch_bounds__(kMaxThreads) delta_net_kernel(DeltaNetArgs p) {
  constexpr int DK = 32 * TPR;
  __shared__ float qs[2][DK], ks[2][DK];
  const int64_t j = blockIdx.x;
  const int64_t Hk = p.Hk, dv = p.dv, kh = j % Hk;
  const int tid = threadIdx.x, lane = tid % kWarp;
  const int64_t v_row = tid / TPR;
  const int sub = tid % TPR;
  const float qscale = rsqrtf(float(DK));

  float M[32];
  float* st = p.state + (j * dv + v_row) * DK;
#pragma unroll
  for (int i = 0; i < 32; ++i) M[i] = st[i * TPR + sub];

  const float a_log = p.ssm_a[j], dtb = p.dt_bias[j];
  for (int64_t t = 0; t < p.n; ++t) {
    const int buf = int(t & 1);
    const float* row = p.uc + t * p.ldu;
    for (int i = tid; i < DK; i += blockDim.x) {
      qs[buf][i] = row[kh * DK + i];
      ks[buf][i] = row[Hk * DK + kh * DK + i];
    }
    __syncthreads();
    // L2 norms of q and k, computed by every warp for itself.
    float sq = 0.0f, sk = 0.0f;
    for (int i = lane; i < DK; i += kWarp) {
      sq = fmaf(qs[buf][i], qs[buf][i], sq);
      sk = fmaf(ks[buf][i], ks[buf][i], sk);
    }
    const float rq = qscale / fmaxf(sqrtf(warp_sum(sq)), p.eps);
    const float rk = 1.0f / fmaxf(sqrtf(warp_sum(sk)), p.eps);
    const float beta = sigmoid_f(p.b[t * p.ldb + j]);
    const float decay = expf(a_log * softplus_f(p.a[t * p.lda + j] + dtb));
    const float v = row[2 * Hk * DK + j * dv + v_row];

    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      M[i] *= decay;
      m = fmaf(M[i], ks[buf][i * TPR + sub] * rk, m);
    }
    const float d = beta * (v - group_sum<TPR>(m));
    float o = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      M[i] = fmaf(ks[buf][i * TPR + sub] * rk, d, M[i]);
      o = fmaf(M[i], qs[buf][i * TPR + sub] * rq, o);
    }
    o = group_sum<TPR>(o);
    if (sub == 0) p.out[t * p.Hv * dv + j * dv + v_row] = o;
    if (t == p.snapshot_row) {
      float* sn = p.snapshot + (j * dv + v_row) * DK;
#pragma unroll
      for (int i = 0; i < 32; ++i) sn[i * TPR + sub] = M[i];
    }
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) st[i * TPR + sub] = M[i];
}

}  // namespace

bool delta_net_shape_supported(int64_t dk, int64_t dv) {
  if (dk != 32 && dk != 64 && dk != 128 && dk != 256) return false;
  return dv >= 1 && dv * (dk / 32) <= kMaxThreads && (dv * (dk / 32)) % kWarp == 0;
}

cudaError_t delta_net(const DeltaNetArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!delta_net_shape_supported(a.dk, a.dv)) return cudaErrorInvalidValue;
  const unsigned threads = unsigned(a.dv * (a.dk / 32));
  switch (a.dk) {
    case 32: delta_net_kernel<1><<<unsigned(a.Hv), threads, 0, stream>>>(a); break;
    case 64: delta_net_kernel<2><<<unsigned(a.Hv), threads, 0, stream>>>(a); break;
    case 128: delta_net_kernel<4><<<unsigned(a.Hv), threads, 0, stream>>>(a); break;
    default: delta_net_kernel<8><<<unsigned(a.Hv), threads, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

}  // namespace qwen35::cuda
