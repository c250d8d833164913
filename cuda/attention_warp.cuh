// Decode attention over the KV cache by one warp per (row, head, key split):
// the attention stage of the persistent decode kernel (persist_fp4.cu).
// It does what the fused decode block does (attention_decode.cuh: q/k norm,
// RoPE, the new rows' keys and values rounded to F16 and written to the
// cache, the online softmax over the split's keys, the merge of the splits
// by the last unit of a (row, head), the output gate), with a warp instead
// of a block of four: a split is one warp's keys, walked in order, and the
// norms' sums are warp sums. So the outputs agree with the fused kernel's
// to rounding, not bit for bit; a row's bits do not depend on the other
// rows of the step (an MTP verify step's first row is a plain step's row).
// Its inputs come through L2: the input projection wrote them in the same
// launch. Included by .cu files only.
#pragma once

#include "attention_decode.cuh"

namespace qwen35::cuda {

namespace {

// The fewest keys a split takes: at short contexts the first splits take
// the keys and the others are empty (they write an empty partial and
// leave), instead of every split taking one or two keys and its own
// prologue.
constexpr int64_t kWarpAttnMinKeys = 16;

// Shared memory of a warp's unit (floats): the normalized head, the rotated
// query, the step's new keys and values (F16-rounded).
__host__ __device__ constexpr int64_t warp_attn_smem_floats(int64_t head_dim) {
  return (2 + 2 * kFusedAttnRows) * head_dim;
}

// buf <- rmsnorm(src) * w over one head of Dh = EPL * 32 values (src
// through L2). The whole warp calls it.
template <int EPL>
__device__ __forceinline__ void warp_head_rmsnorm(const float* src, const float* w, float eps, float* buf, int lane) {
  constexpr int Dh = EPL * kWarp;
  float ss = 0.0f;
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const float v = __ldcg(src + lane + e * kWarp);
    buf[lane + e * kWarp] = v;
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  const float scale = rsqrtf(ss / float(Dh) + eps);
#pragma unroll
  for (int e = 0; e < EPL; ++e) buf[lane + e * kWarp] = buf[lane + e * kWarp] * scale * w[lane + e * kWarp];
  __syncwarp();
}

// The last unit of (row t, head h): the splits merged in split order (as
// merge_splits: maxima, weights, the sum, each output element's partials),
// normalized, gated, stored. Partials through L2 (other warps wrote them).
template <int EPL>
__device__ __forceinline__ void warp_merge_splits(const AttnArgs& a, int64_t t, int64_t h, int lane) {
  constexpr int Dh = EPL * kWarp;
  constexpr int kBatch = 4;  // splits whose partial outputs are loaded at once
  const int64_t base = (t * a.n_head + h) * a.splits;
  const int S = a.splits;
  float M = -INFINITY;
  for (int s = lane; s < S; s += kWarp) M = fmaxf(M, __ldcg(a.part_m + base + s));
  M = warp_max(M);
  float L = 0.0f, v[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) v[e] = 0.0f;
  for (int s0 = 0; s0 < S; s0 += kWarp) {
    // Lane k holds split s0 + k's maximum, weight and sum.
    const int mine = s0 + lane;
    const float m = mine < S ? __ldcg(a.part_m + base + mine) : -INFINITY;
    const float l = mine < S ? __ldcg(a.part_l + base + mine) : 0.0f;
    const float w = m == -INFINITY ? 0.0f : __expf(m - M);
    const int count = min(kWarp, S - s0);
    for (int k0 = 0; k0 < count; k0 += kBatch) {
      float o[kBatch][EPL];
      float wk[kBatch];
      bool live[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int k = k0 + b;
        wk[b] = __shfl_sync(0xFFFFFFFFu, w, k % kWarp);
        const float mk = __shfl_sync(0xFFFFFFFFu, m, k % kWarp), lk = __shfl_sync(0xFFFFFFFFu, l, k % kWarp);
        live[b] = k < count && mk != -INFINITY;
        if (live[b]) L += lk * wk[b];
#pragma unroll
        for (int e = 0; e < EPL; ++e)
          o[b][e] = live[b] ? __ldcg(a.part_o + (base + s0 + k) * Dh + lane + e * kWarp) : 0.0f;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
#pragma unroll
        for (int e = 0; e < EPL; ++e)
          if (live[b]) v[e] += o[b][e] * wk[b];
    }
  }
  const float inv = 1.0f / L;
  const float* gate = a.gate + t * a.ldgate + h * a.gate_stride;
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const int64_t i = lane + e * kWarp;
    a.o[t * a.n_head * Dh + h * Dh + i] = v[e] * inv * sigmoid_f(__ldcg(gate + i));
  }
}

// Unit u = (t n_head + h) splits + s of an attention stage: row t, query
// head h, key split s (keys s chunk .. (s + 1) chunk - 1 of row t's n_past +
// t + 1, chunk = max(kWarpAttnMinKeys, ceil(keys / splits))). wait() is
// called after the split's first cache rows are requested (rows below
// n_past: written by earlier steps) and before the stage's inputs are read.
// The warp's shared memory: warp_attn_smem_floats(Dh) floats at sm.
// Returns whether this unit merged its (row, head).
template <int EPL, typename Wait>
__device__ __forceinline__ bool warp_attention_unit(const FusedAttnArgs& f, int64_t u, float* sm, int lane,
                                                    Wait&& wait) {
  constexpr int Dh = EPL * kWarp;
  const AttnArgs& a = f.attn;
  const QkvRopeArgs& r = f.rope;
  const int64_t S = a.splits, s = u % S, h = (u / S) % a.n_head, t = u / (S * a.n_head);
  const int64_t group = a.n_head / a.n_head_kv, g = h / group;
  const int64_t kvd = a.n_head_kv * Dh;
  const int64_t n_past = int64_t(*a.n_past);
  const int64_t n_kv = n_past + t + 1;
  const int64_t chunk = max(kWarpAttnMinKeys, (n_kv + S - 1) / S);
  const int64_t j0 = min(n_kv, s * chunk), j1 = min(n_kv, j0 + chunk);
  const uint16_t* kb = a.k_cache + g * Dh + lane * EPL;
  const uint16_t* vb = a.v_cache + g * Dh + lane * EPL;
  float* buf = sm;                                            // [Dh]
  float* sq = sm + Dh;                                        // [Dh]
  auto* nk = reinterpret_cast<float(*)[Dh]>(sm + 2 * Dh);     // [kFusedAttnRows][Dh]
  auto* nv = nk + kFusedAttnRows;                             // [kFusedAttnRows][Dh]
  const int64_t part = (t * a.n_head + h) * S + s;

  KeyStream<EPL, kKeysAhead<EPL>, 1> ks;
  if (j0 < j1) ks.start(j0, min(j1, n_past), kb, vb, kvd);
  wait();
  if (j0 < j1) {
    // The query head, normalized and rotated; the new rows' keys and values
    // up to row t (F16-rounded as the cache stores them); split 0 of the
    // KV head's first query head writes row t's to the cache.
    const float* cs = r.rope_cs ? r.rope_cs + t * r.rope.n_rot : nullptr;  // (row t's rotation table)
    warp_head_rmsnorm<EPL>(r.qg + t * r.ldqg + h * 2 * Dh, r.q_norm, r.eps, buf, lane);
#pragma unroll
    for (int e = 0; e < EPL; ++e)
      sq[lane + e * kWarp] = rope_element(buf, lane + e * kWarp, r.pos + 3 * t, r.rope, cs);
    const bool writer = h % group == 0 && s == 0;
    for (int64_t w = 0; w <= t; ++w) {
      __syncwarp();  // buf is no longer read
      warp_head_rmsnorm<EPL>(r.k + w * r.ldk + g * Dh, r.k_norm, r.eps, buf, lane);
#pragma unroll
      for (int e = 0; e < EPL; ++e)
        new_kv_element<true>(r, buf, lane + e * kWarp, w, g, Dh, kvd, n_past, writer && w == t, nk[w], nv[w]);
    }
    __syncwarp();
    float q[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) q[e] = sq[lane * EPL + e] * a.scale;
    float m = -INFINITY, l = 0.0f, acc[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[e] = 0.0f;
    attend_keys<EPL>(ks, q, j0, j1, n_past, 0, lane, kb, vb, kvd, nk, nv, m, l, acc);
    if (lane == 0) {
      a.part_m[part] = m;
      a.part_l[part] = l;
    }
#pragma unroll
    for (int e = 0; e < EPL; ++e) a.part_o[part * Dh + lane * EPL + e] = acc[e];
  } else if (lane == 0) {  // no keys: an empty partial (the merge skips it)
    a.part_m[part] = -INFINITY;
    a.part_l[part] = 0.0f;
  }

  // The last unit of (t, h) merges the splits.
  __threadfence();
  __syncwarp();
  int last = 0;
  if (lane == 0) last = atomicAdd(&f.counters[t * a.n_head + h], 1) == S - 1;
  if (!__shfl_sync(0xFFFFFFFFu, last, 0)) return false;
  __threadfence();
  warp_merge_splits<EPL>(a, t, h, lane);
  if (lane == 0) f.counters[t * a.n_head + h] = 0;
  return true;
}

}  // namespace

}  // namespace qwen35::cuda
