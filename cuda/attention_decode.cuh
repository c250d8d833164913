// Device pieces of decode attention over the KV cache (spec §4.4.4): the
// split kernel's online softmax and merge, and the fused decode block (q/k
// norm, RoPE, cache write, attention, merge), shared by the attention
// kernels (attention.cu) and the attention stage of a projection chain
// (chain_fp4.cu), so that both compute the same bits. Included by .cu files
// only.
#pragma once

#include "attention.h"
#include "common.cuh"
#include "launch.cuh"
#include "rope.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kAttnWarps = 4;

// Merge the kAttnWarps warps of a block (each with its running maximum m,
// sum l and unnormalized output acc, online softmax) into split partial
// `part` of part_m / part_l / part_o. Every thread of the block calls it.
template <int EPL>
__device__ __forceinline__ void write_split_partial(const AttnArgs& a, int64_t part, int warp, int lane, float m,
                                                    float l, const float* acc, float* sm, float* sl,
                                                    float (*so)[EPL * kWarp]) {
  constexpr int Dh = EPL * kWarp;
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

// Merge the splits of (row t, head h) in split order, normalize, gate and
// write the output. kL2: read the partials through L2 only (__ldcg), for a
// block that merges what other blocks of the same launch wrote.
template <bool kL2>
__device__ __forceinline__ float part_load(const float* p) {
  if constexpr (kL2) return __ldcg(p);
  else return *p;
}

// At most this many key splits (the merge keeps their statistics in shared
// memory).
constexpr int kMaxMergeSplits = 32;

// The partials are read in few round trips: every split's maximum and sum at
// once (one thread each), then each output element's kMergeBatch splits at a
// time (independent loads in flight). The arithmetic is the one-split-at-a-
// time loop's: the same products, added in split order. Every thread of the
// block calls it.
constexpr int kMergeBatch = 8;
template <bool kL2>
__device__ __forceinline__ void merge_splits(const AttnArgs& a, int64_t t, int64_t h, int64_t Dh) {
  __shared__ float s_m[kMaxMergeSplits], s_l[kMaxMergeSplits], s_w[kMaxMergeSplits];
  const int64_t base = (t * a.n_head + h) * a.splits;
  const int S = a.splits;  // <= kMaxMergeSplits (checked by the launchers)
  __syncthreads();         // the shared arrays are free (a caller may loop)
  if (threadIdx.x < S) {
    s_m[threadIdx.x] = part_load<kL2>(a.part_m + base + threadIdx.x);
    s_l[threadIdx.x] = part_load<kL2>(a.part_l + base + threadIdx.x);
  }
  __syncthreads();
  float M = -INFINITY;
  for (int s = 0; s < S; ++s) M = fmaxf(M, s_m[s]);
  if (threadIdx.x < S) s_w[threadIdx.x] = s_m[threadIdx.x] == -INFINITY ? 0.0f : __expf(s_m[threadIdx.x] - M);
  __syncthreads();
  float L = 0.0f;
  for (int s = 0; s < S; ++s)
    if (s_m[s] != -INFINITY) L += s_l[s] * s_w[s];
  const float inv = 1.0f / L;
  const float* gate = a.gate + t * a.ldgate + h * a.gate_stride;
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) {
    float v = 0.0f;
    for (int s0 = 0; s0 < S; s0 += kMergeBatch) {
      float o[kMergeBatch];
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u)
        o[u] = s0 + u < S ? part_load<kL2>(a.part_o + (base + s0 + u) * Dh + i) : 0.0f;
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u)
        if (s0 + u < S && s_m[s0 + u] != -INFINITY) v += o[u] * s_w[s0 + u];
    }
    a.o[t * a.n_head * Dh + h * Dh + i] = v * inv * sigmoid_f(gate[i]);
  }
}

// The keys a warp walks: j0 + warp, j0 + warp + ST, ... below j1 (ST: the
// block's warps, kAttnWarps; 1 for a warp that walks a split alone).
// Cache rows are read kKeysAhead keys ahead of the arithmetic (raw F16 in
// registers), so the loads of later keys are in flight while the online
// softmax of earlier ones runs; the arithmetic is the same, in the same
// order, as reading each row when it is used.
template <int EPL>
constexpr int kKeysAhead = EPL >= 16 ? 2 : 4;
template <int EPL, int A = kKeysAhead<EPL>, int ST = kAttnWarps>
struct KeyStream {
  static constexpr int kAhead = A;
  static constexpr int kStride = ST;
  __half2 k[kAhead][EPL / 2], v[kAhead][EPL / 2];

  // Slot p <- key j's cache rows if j < jc (the keys read from the cache).
  __device__ __forceinline__ void fetch(int p, int64_t j, int64_t jc, const uint16_t* kb, const uint16_t* vb,
                                        int64_t kvd) {
    if (j >= jc) return;
    const __half2* kp = reinterpret_cast<const __half2*>(kb + j * kvd);
    const __half2* vp = reinterpret_cast<const __half2*>(vb + j * kvd);
#pragma unroll
    for (int e = 0; e < EPL / 2; ++e) {
      k[p][e] = kp[e];
      v[p][e] = vp[e];
    }
  }
  // The first kAhead keys of the warp.
  __device__ __forceinline__ void start(int64_t j, int64_t jc, const uint16_t* kb, const uint16_t* vb, int64_t kvd) {
#pragma unroll
    for (int p = 0; p < kAhead; ++p) fetch(p, j + int64_t(p) * ST, jc, kb, vb, kvd);
  }
};

template <int EPL>
__device__ __forceinline__ void half2_row_to_float(const __half2* h, float* out) {
#pragma unroll
  for (int e = 0; e < EPL / 2; ++e) {
    const float2 f = __half22float2(h[e]);
    out[2 * e] = f.x;
    out[2 * e + 1] = f.y;
  }
}

// Online softmax of one warp over its keys j = j0 + warp + ST*i < j1 (ks
// already holds the first kAhead of them). Keys below jc come from the
// cache (through ks), the others (j - jc < kFusedAttnRows) from the new
// rows nk/nv (F32, already F16-rounded); nk/nv may be null if jc >= j1.
template <int EPL, int KA, int ST>
__device__ __forceinline__ void attend_keys(KeyStream<EPL, KA, ST>& ks, const float* q, int64_t j0, int64_t j1,
                                            int64_t jc, int warp, int lane, const uint16_t* kb, const uint16_t* vb,
                                            int64_t kvd, const float (*nk)[EPL * kWarp],
                                            const float (*nv)[EPL * kWarp], float& m, float& l, float* acc) {
  constexpr int A = KA;
  for (int64_t jb = j0 + warp; jb < j1; jb += int64_t(A) * ST) {
#pragma unroll
    for (int p = 0; p < A; ++p) {
      const int64_t j = jb + int64_t(p) * ST;
      if (j >= j1) break;
      float kf[EPL], vf[EPL];
      if (j < jc) {
        half2_row_to_float<EPL>(ks.k[p], kf);
        half2_row_to_float<EPL>(ks.v[p], vf);
        ks.fetch(p, j + int64_t(A) * ST, jc, kb, vb, kvd);  // the slot's next key
      } else {
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
          kf[e] = nk[j - jc][lane * EPL + e];
          vf[e] = nv[j - jc][lane * EPL + e];
        }
      }
      float d = 0.0f;
#pragma unroll
      for (int e = 0; e < EPL; ++e) d = fmaf(q[e], kf[e], d);
      d = warp_sum(d);
      const float m_new = fmaxf(m, d);
      const float c = __expf(m - m_new), pr = __expf(d - m_new);
      l = l * c + pr;
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[e] = fmaf(pr, vf[e], acc[e] * c);
      m = m_new;
    }
  }
}

// ---- the fused decode block ---------------------------------------------------------
//
// The split kernel's online softmax over the block's key range, preceded by
// the work of qkv_norm_rope() that this block needs (its query head; the
// batch's new keys and values, rounded to F16 exactly as the cache stores
// them) and followed by the merge in the last block of the (row, head).

// Its shared memory (a static array of the kernel, or carved out of a
// chain's dynamic shared memory).
template <int EPL>
struct FusedAttnSmem {
  static constexpr int Dh = EPL * kWarp;
  float buf[Dh], sq[Dh], red[32];
  float nk[kFusedAttnRows][Dh], nv[kFusedAttnRows][Dh];  // keys/values n_past .. n_past + t
  float m[kAttnWarps], l[kAttnWarps];
  float o[kAttnWarps][Dh];
  int last;
};

// Element i of new row u's key (the normalized head in buf, rotated for
// row u) and value of KV head g, rounded to F16 as the cache stores them:
// into nk / nv, and with `write` into cache row n_past + u. kL2: the value
// through L2 (written earlier in the same launch).
template <bool kL2>
__device__ __forceinline__ void new_kv_element(const QkvRopeArgs& r, const float* buf, int64_t i, int64_t u,
                                               int64_t g, int64_t Dh, int64_t kvd, int64_t n_past, bool write,
                                               float* nk, float* nv) {
  const float* cs = r.rope_cs ? r.rope_cs + u * r.rope.n_rot : nullptr;
  const __half kh = __float2half_rn(rope_element(buf, i, r.pos + 3 * u, r.rope, cs));
  const float* vp = r.v + u * r.ldv + g * Dh + i;
  const __half vh = __float2half_rn(kL2 ? __ldcg(vp) : *vp);
  nk[i] = __half2float(kh);
  nv[i] = __half2float(vh);
  if (write) {
    r.k_cache[(n_past + u) * kvd + g * Dh + i] = __half_as_ushort(kh);
    r.v_cache[(n_past + u) * kvd + g * Dh + i] = __half_as_ushort(vh);
  }
}

// Block (head h, row t, split s) of the fused decode attention, with
// kAttnWarps warps. Waits for the previous kernel (pdl_prologue) after
// requesting its first cache rows. Returns whether this block merged the
// splits of (t, h), i.e. wrote its outputs. KA: cache rows read ahead per
// warp (fewer registers; the same arithmetic).
template <int EPL, int KA = kKeysAhead<EPL>>
__device__ __forceinline__ bool fused_attention_block(const FusedAttnArgs& f, int64_t h, int64_t t, int64_t s,
                                                      FusedAttnSmem<EPL>& sh) {
  constexpr int Dh = EPL * kWarp;
  const AttnArgs& a = f.attn;
  const QkvRopeArgs& r = f.rope;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t group = a.n_head / a.n_head_kv, g = h / group;
  const int64_t kvd = a.n_head_kv * Dh;
  const int64_t n_past = int64_t(*a.n_past);
  const int64_t n_kv = n_past + t + 1;
  const int64_t chunk = (n_kv + a.splits - 1) / a.splits;
  const int64_t j0 = s * chunk, j1 = min(n_kv, j0 + chunk);
  const uint16_t* kb = a.k_cache + g * Dh + lane * EPL;
  const uint16_t* vb = a.v_cache + g * Dh + lane * EPL;

  // The warp's first cache rows, before waiting for the previous kernel:
  // rows below n_past were written by earlier steps (the previous kernel
  // only produced this step's projections; n_past was copied before the
  // step's first kernel), so these loads overlap its end and the prologue.
  KeyStream<EPL, KA> ks;
  ks.start(j0 + warp, min(j1, n_past), kb, vb, kvd);
  pdl_prologue();

  head_rmsnorm(r.qg + t * r.ldqg + h * 2 * Dh, r.q_norm, Dh, r.eps, sh.buf, sh.red);
  const float* cs = r.rope_cs ? r.rope_cs + t * r.rope.n_rot : nullptr;  // (row t's rotation table)
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) sh.sq[i] = rope_element(sh.buf, i, r.pos + 3 * t, r.rope, cs);
  const bool writer = h % group == 0 && s == 0;  // writes row t's key and value of KV head g
  for (int64_t u = 0; u <= t; ++u) {
    __syncthreads();  // buf is no longer read
    head_rmsnorm(r.k + u * r.ldk + g * Dh, r.k_norm, Dh, r.eps, sh.buf, sh.red);
    for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x)
      new_kv_element<false>(r, sh.buf, i, u, g, Dh, kvd, n_past, writer && u == t, sh.nk[u], sh.nv[u]);
  }
  __syncthreads();

  float q[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) q[e] = sh.sq[lane * EPL + e] * a.scale;
  float m = -INFINITY, l = 0.0f, acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) acc[e] = 0.0f;
  attend_keys<EPL>(ks, q, j0, j1, n_past, warp, lane, kb, vb, kvd, sh.nk, sh.nv, m, l, acc);
  // Merge the warps of this block (as the part kernel).
  write_split_partial<EPL>(a, (t * a.n_head + h) * a.splits + s, warp, lane, m, l, acc, sh.m, sh.l, sh.o);

  // The last block of (t, h) to get here merges the splits (as the merge kernel).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) sh.last = atomicAdd(&f.counters[t * a.n_head + h], 1) == a.splits - 1;
  __syncthreads();
  if (!sh.last) return false;
  __threadfence();
  merge_splits<true>(a, t, h, Dh);
  if (threadIdx.x == 0) f.counters[t * a.n_head + h] = 0;
  return true;
}

}  // namespace

}  // namespace qwen35::cuda
