// Recurrent gated delta rule (see delta_net.h).
//
// The rows of a head's state M (one per value dimension) evolve
// independently given q, k, beta and g, so a head is split over blocks of
// kRowsPerBlock rows. Within a block, row v of M lives in registers, split
// over TPR = dk/EPT adjacent threads of EPT elements each (EPT = 8, 16 or
// 32, chosen at launch): thread `sub` holds the float4 groups sub,
// sub + TPR, sub + 2*TPR, ... of the row, so the TPR threads of a row read
// consecutive 16-byte words of q and k (no bank conflicts, coalesced state
// loads). Fewer elements per thread mean more threads (more warps to hide
// the latency of the per-row dependency chain) and shorter chains, at the
// cost of deeper shuffle reductions. The batch rows are walked in order, in
// chunks of C rows whose inputs (q, k, the block's v values, the gate
// inputs) are copied into shared memory with cp.async while the previous
// chunk is walked; the chunk's q/k norms and gates are then computed in
// parallel, so the sequential walk reads shared memory only and needs no
// barrier per row. The state is loaded before the PDL wait.
#include <algorithm>

#include "common.cuh"
#include "delta_net.h"
#include "delta_rule.cuh"
#include "launch.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kRowsPerBlock = 32;

template <int DK, int EPT>
__global__ void __launch_bounds__(kRowsPerBlock * DK / EPT) delta_net_kernel(DeltaNetArgs p) {
  constexpr int TPR = DK / EPT;        // threads per state row
  constexpr int NV = EPT / 4;          // float4 groups per thread
  constexpr int C = DK >= 256 ? 8 : 16;  // rows per staged chunk (16 KiB of q/k per buffer)
  static_assert(TPR >= 1 && TPR <= 32 && EPT % 4 == 0, "a state row is split within one warp");
  // Per staged row: q (DK floats), then k (DK floats).
  __shared__ __align__(16) float s_qk[2][C][2 * DK];
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
  // overlaps the end of the input projection. M[4i..4i+3] is float4 group
  // sub + TPR*i of the row.
  float M[EPT];
  float4* st = reinterpret_cast<float4*>(p.state + (j * dv + v_row) * DK);
  delta_load_row<TPR, NV>(M, st, sub);
  const float a_log = p.ssm_a[j], dtb = p.dt_bias[j];
  pdl_prologue();

  // Copies of the inputs of rows t0 .. t0+C-1 into buffer buf (one group).
  auto stage = [&](int64_t t0, int buf) {
    const int cn = int(min(int64_t(C), p.n - t0));
    for (int e = tid; e < cn * 2 * DK; e += blockDim.x) {
      const int r = e / (2 * DK), c = e % (2 * DK), which = c / DK, i = c % DK;
      const float* src = p.uc + (t0 + r) * p.ldu + (which ? Hk * DK : 0) + kh * DK + i;
      cp_async4(&s_qk[buf][r][c], src);
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
      float sq, sk;
      delta_qk_squares<DK>(s_qk[buf][r], s_qk[buf][r] + DK, lane, &sq, &sk);
      if (lane == 0)
        delta_gates(sq, sk, s_b[buf][r], s_a[buf][r], a_log, dtb, qscale, p.eps, &s_rq[r], &s_rk[r], &s_beta[r],
                    &s_decay[r]);
    }
    __syncthreads();
    for (int r = 0; r < cn; ++r) {
      const int64_t t = t0 + r;
      const float4* q4 = reinterpret_cast<const float4*>(s_qk[buf][r]);
      const float4* k4 = reinterpret_cast<const float4*>(s_qk[buf][r] + DK);
      const float o = delta_row<TPR, NV>(M, q4, k4, sub, s_v[buf][r][v_local], s_rq[r], s_rk[r], s_beta[r], s_decay[r]);
      if (sub == 0) p.out[t * p.Hv * dv + j * dv + v_row] = o;
      if (t == p.snapshot_row)
        delta_store_row<TPR, NV>(M, reinterpret_cast<float4*>(p.snapshot + (j * dv + v_row) * DK), sub);
    }
    __syncthreads();  // buf and the norms are rewritten for the next chunks
  }
  delta_store_row<TPR, NV>(M, st, sub);
}

template <int DK>
cudaError_t launch_dk(const DeltaNetArgs& a, cudaStream_t stream) {
  const dim3 grid(unsigned(a.Hv), unsigned(a.dv / kRowsPerBlock));
  // 8, 16 or 32 elements per thread, at most 32 threads (one warp) per row.
  const int ept = std::max(a.elems_per_thread, DK / 32);
  if (ept >= 32) return launch(delta_net_kernel<DK, 32>, grid, dim3(kRowsPerBlock * DK / 32), 0, stream, a);
  if (ept >= 16) return launch(delta_net_kernel<DK, 16>, grid, dim3(kRowsPerBlock * DK / 16), 0, stream, a);
  return launch(delta_net_kernel<DK, 8>, grid, dim3(kRowsPerBlock * DK / 8), 0, stream, a);
}

}  // namespace

bool delta_net_shape_supported(int64_t dk, int64_t dv) {
  // A block is kRowsPerBlock state rows, each split over threads of one warp.
  return (dk == 32 || dk == 64 || dk == 128 || dk == 256) && dv >= kRowsPerBlock && dv % kRowsPerBlock == 0;
}

cudaError_t delta_net(const DeltaNetArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!delta_net_shape_supported(a.dk, a.dv)) return cudaErrorInvalidValue;
  switch (a.dk) {
    case 32: return launch_dk<32>(a, stream);
    case 64: return launch_dk<64>(a, stream);
    case 128: return launch_dk<128>(a, stream);
    default: return launch_dk<256>(a, stream);
  }
}

}  // namespace qwen35::cuda
