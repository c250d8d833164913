// Device pieces of the recurrent gated delta rule (spec §4.5.3-4.5.4),
// shared by the delta-rule kernel (delta_net.cu) and the delta-rule stage of
// a projection chain (chain_fp4.cu), so that both compute the same bits.
// Included by .cu files only.
#pragma once

#include "common.cuh"

namespace qwen35::cuda {

namespace {

// Sum over the TPR adjacent threads of a state row (within a warp).
template <int TPR>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// A thread's share of a state row: float4 groups sub, sub + TPR, ... (NV
// of them) of `row`, into or out of its registers M.
template <int TPR, int NV>
__device__ __forceinline__ void delta_load_row(float* M, const float4* row, int sub) {
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const float4 v = row[sub + TPR * i];
    M[4 * i] = v.x;
    M[4 * i + 1] = v.y;
    M[4 * i + 2] = v.z;
    M[4 * i + 3] = v.w;
  }
}
template <int TPR, int NV>
__device__ __forceinline__ void delta_store_row(const float* M, float4* row, int sub) {
#pragma unroll
  for (int i = 0; i < NV; ++i) row[sub + TPR * i] = make_float4(M[4 * i], M[4 * i + 1], M[4 * i + 2], M[4 * i + 3]);
}

// A whole warp: the sums of squares of a row's q and k (DK floats each),
// lanes strided over the elements; every lane gets the sums.
template <int DK>
__device__ __forceinline__ void delta_qk_squares(const float* q, const float* k, int lane, float* sq, float* sk) {
  float a = 0.0f, b = 0.0f;
  for (int i = lane; i < DK; i += kWarp) {
    a = fmaf(q[i], q[i], a);
    b = fmaf(k[i], k[i], b);
  }
  *sq = warp_sum(a);
  *sk = warp_sum(b);
}

// A row's scalars: the q and k norm factors (q's with the 1/sqrt(dk) scale),
// beta = sigmoid(b) and the decay exp(ssm_a * softplus(a + dt_bias)).
__device__ __forceinline__ void delta_gates(float sq, float sk, float b, float a, float a_log, float dtb, float qscale,
                                            float eps, float* rq, float* rk, float* beta, float* decay) {
  *rq = qscale / fmaxf(sqrtf(sq), eps);
  *rk = 1.0f / fmaxf(sqrtf(sk), eps);
  *beta = sigmoid_f(b);
  *decay = expf(a_log * softplus_f(a + dtb));
}

// One row of the recurrence for a thread's share of a state row: M holds
// float4 groups sub, sub + TPR, ... (NV of them) of the row; q4 and k4 the
// row's q and k. Decays M, applies the delta update with value v, and
// returns the row's output (the same in the TPR threads of the row).
template <int TPR, int NV>
__device__ __forceinline__ float delta_row(float* M, const float4* q4, const float4* k4, int sub, float v, float rq,
                                           float rk, float beta, float decay) {
  // m = (decayed M) k, with four independent partial sums.
  float m4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const float4 k = k4[sub + TPR * i];
    const float kk[4] = {k.x, k.y, k.z, k.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      M[4 * i + e] *= decay;
      m4[e] = fmaf(M[4 * i + e], kk[e], m4[e]);
    }
  }
  const float m = group_sum<TPR>((m4[0] + m4[1]) + (m4[2] + m4[3])) * rk;
  const float d = beta * (v - m) * rk;  // the update uses k * rk
  float o4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const float4 k = k4[sub + TPR * i], q = q4[sub + TPR * i];
    const float kk[4] = {k.x, k.y, k.z, k.w}, qq[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      M[4 * i + e] = fmaf(kk[e], d, M[4 * i + e]);
      o4[e] = fmaf(M[4 * i + e], qq[e], o4[e]);
    }
  }
  return group_sum<TPR>((o4[0] + o4[1]) + (o4[2] + o4[3])) * rq;
}

}  // namespace

}  // namespace qwen35::cuda
