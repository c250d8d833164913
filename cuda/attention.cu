// Attention kernels (see attention.h).
//
// Split kernel (decode): every (row, head) is split into `splits`
// contiguous key ranges; one block per (head, row, split) runs an online
// softmax over its range (each of its warps takes every 4th key) and writes
// the unnormalized partial result. A second kernel merges the splits in a
// fixed order and applies the gate, so results are deterministic and do not
// depend on timing. The split count is fixed per launch, and the key ranges
// are derived on the device from n_past, so the same launch serves every
// decode step (CUDA graphs).
//
// Tiled kernel (batches): the split kernel reads every key once per query
// row; the tiled one reads each key tile once per tile of 16 or 32 query
// rows of a head, from shared memory (F32, converted once), and computes
// the scores and the weighted values as small register-blocked products
// (flash attention on the CUDA cores, F32 throughout).
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

// The keys a warp walks: j0 + warp, j0 + warp + kAttnWarps, ... below j1.
// Cache rows are read kKeysAhead keys ahead of the arithmetic (raw F16 in
// registers), so the loads of later keys are in flight while the online
// softmax of earlier ones runs; the arithmetic is the same, in the same
// order, as reading each row when it is used.
template <int EPL>
struct KeyStream {
  static constexpr int kAhead = EPL >= 16 ? 2 : 4;
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
    for (int p = 0; p < kAhead; ++p) fetch(p, j + int64_t(p) * kAttnWarps, jc, kb, vb, kvd);
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

// Online softmax of one warp over its keys j = j0 + warp + kAttnWarps*i
// < j1 (ks already holds the first kAhead of them). Keys below jc come from
// the cache (through ks), the others (j - jc < kFusedAttnRows) from the
// new rows nk/nv (F32, already F16-rounded); nk/nv may be null if jc >= j1.
template <int EPL>
__device__ __forceinline__ void attend_keys(KeyStream<EPL>& ks, const float* q, int64_t j0, int64_t j1, int64_t jc,
                                            int warp, int lane, const uint16_t* kb, const uint16_t* vb, int64_t kvd,
                                            const float (*nk)[EPL * kWarp], const float (*nv)[EPL * kWarp], float& m,
                                            float& l, float* acc) {
  constexpr int A = KeyStream<EPL>::kAhead;
  for (int64_t jb = j0 + warp; jb < j1; jb += int64_t(A) * kAttnWarps) {
#pragma unroll
    for (int p = 0; p < A; ++p) {
      const int64_t j = jb + int64_t(p) * kAttnWarps;
      if (j >= j1) break;
      float kf[EPL], vf[EPL];
      if (j < jc) {
        half2_row_to_float<EPL>(ks.k[p], kf);
        half2_row_to_float<EPL>(ks.v[p], vf);
        ks.fetch(p, j + int64_t(A) * kAttnWarps, jc, kb, vb, kvd);  // the slot's next key
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
  const uint16_t* kb = a.k_cache + g * Dh + lane * EPL;
  const uint16_t* vb = a.v_cache + g * Dh + lane * EPL;
  KeyStream<EPL> ks;
  ks.start(j0 + warp, j1, kb, vb, kvd);

  float q[EPL];
  const float* qh = a.q + t * a.n_head * Dh + h * Dh + lane * EPL;
#pragma unroll
  for (int e = 0; e < EPL; ++e) q[e] = qh[e] * a.scale;

  float m = -INFINITY, l = 0.0f, acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) acc[e] = 0.0f;
  attend_keys<EPL>(ks, q, j0, j1, j1, warp, lane, kb, vb, kvd, nullptr, nullptr, m, l, acc);
  write_split_partial<EPL>(a, (t * a.n_head + h) * a.splits + s, warp, lane, m, l, acc, sm, sl, so);
}

// One block per (head, row): merge the splits, normalize, gate.
__global__ void attention_merge_kernel(AttnArgs a) {
  pdl_prologue();
  merge_splits<false>(a, blockIdx.y, blockIdx.x, a.head_dim);
}

// ---- fused decode kernel ----------------------------------------------------------
//
// The part kernel's online softmax over the block's key range, preceded by
// the work of qkv_norm_rope() that this block needs (its query head; the
// batch's new keys and values, rounded to F16 exactly as the cache stores
// them) and followed by the merge in the last block of the (row, head).
template <int EPL>
__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_fused_kernel(FusedAttnArgs f) {
  constexpr int Dh = EPL * kWarp;
  const AttnArgs& a = f.attn;
  const QkvRopeArgs& r = f.rope;
  __shared__ float buf[Dh], sq[Dh], red[32];
  __shared__ float snk[kFusedAttnRows][Dh], snv[kFusedAttnRows][Dh];  // keys/values n_past .. n_past + t
  __shared__ float sm[kAttnWarps], sl[kAttnWarps];
  __shared__ float so[kAttnWarps][Dh];
  __shared__ int s_last;
  const int64_t h = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
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
  KeyStream<EPL> ks;
  ks.start(j0 + warp, min(j1, n_past), kb, vb, kvd);
  pdl_prologue();

  head_rmsnorm(r.qg + t * r.ldqg + h * 2 * Dh, r.q_norm, Dh, r.eps, buf, red);
  auto cs_of = [&](int64_t row) { return r.rope_cs ? r.rope_cs + row * r.rope.n_rot : nullptr; };
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) sq[i] = rope_element(buf, i, r.pos + 3 * t, r.rope, cs_of(t));
  const bool writer = h % group == 0 && s == 0;  // writes row t's key and value of KV head g
  for (int64_t u = 0; u <= t; ++u) {
    __syncthreads();  // buf is no longer read
    head_rmsnorm(r.k + u * r.ldk + g * Dh, r.k_norm, Dh, r.eps, buf, red);
    for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) {
      const __half kh = __float2half_rn(rope_element(buf, i, r.pos + 3 * u, r.rope, cs_of(u)));
      const __half vh = __float2half_rn(r.v[u * r.ldv + g * Dh + i]);
      snk[u][i] = __half2float(kh);
      snv[u][i] = __half2float(vh);
      if (writer && u == t) {
        r.k_cache[(n_past + t) * kvd + g * Dh + i] = __half_as_ushort(kh);
        r.v_cache[(n_past + t) * kvd + g * Dh + i] = __half_as_ushort(vh);
      }
    }
  }
  __syncthreads();

  float q[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) q[e] = sq[lane * EPL + e] * a.scale;
  float m = -INFINITY, l = 0.0f, acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) acc[e] = 0.0f;
  attend_keys<EPL>(ks, q, j0, j1, n_past, warp, lane, kb, vb, kvd, snk, snv, m, l, acc);
  // Merge the warps of this block (as the part kernel).
  write_split_partial<EPL>(a, (t * a.n_head + h) * a.splits + s, warp, lane, m, l, acc, sm, sl, so);

  // The last block of (t, h) to get here merges the splits (as the merge kernel).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&f.counters[t * a.n_head + h], 1) == a.splits - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  merge_splits<true>(a, t, h, Dh);
  if (threadIdx.x == 0) f.counters[t * a.n_head + h] = 0;
}

// ---- tiled kernel ------------------------------------------------------------------
//
// Block: kTiledThreads threads = 16 row groups x 8 column groups (rg =
// tid / 8, cg = tid % 8; the 8 threads of a row group are adjacent lanes of
// one warp). A block takes query rows t0 .. t0 + BQ - 1 of head h (BQ = 16 *
// RPT; thread rows RPT*rg + a) and walks the key tiles of kTiledKeys keys
// that any of its rows sees, keeping per row the running maximum m, the sum
// l and the unnormalized output o (online softmax, as in the split kernel):
//   scores:  thread (rg, cg) computes rows RPT*rg + a, keys cg + 8i (i < 4)
//            from float4s of q and k (k rows padded by 4 floats: the 8 keys
//            of a quarter warp fall on distinct banks);
//   softmax: maxima and sums over the 8 threads of a row group (shuffles);
//            the probabilities go to shared memory, read back by the same
//            row group only (__syncwarp);
//   values:  thread (rg, cg) accumulates rows RPT*rg + a, dimension pairs
//            2*(cg + 8i), i < Dh/16.
// Keys past the last one the tile's rows see are loaded as zeros and masked,
// so no uninitialized cache row is read into a result.
constexpr int kTiledThreads = 128;
constexpr int kTiledKeys = 32;

template <int DH, int RPT>
struct TiledLayout {  // in floats
  static constexpr int BQ = 16 * RPT;         // query rows per block
  static constexpr int QS = DH + 4;           // row stride of q and k
  static constexpr int PS = kTiledKeys + 1;   // row stride of the probabilities
  static constexpr int k_off = BQ * QS;
  static constexpr int v_off = k_off + kTiledKeys * QS;
  static constexpr int p_off = v_off + kTiledKeys * DH;
  static constexpr size_t bytes = size_t(p_off + BQ * PS) * sizeof(float);
};

__device__ __forceinline__ void unpack_f16x8(const uint4 w, float* f) {
  const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    f[2 * e] = __half2float(__ushort_as_half(uint16_t(u[e] & 0xFFFFu)));
    f[2 * e + 1] = __half2float(__ushort_as_half(uint16_t(u[e] >> 16)));
  }
}

template <int DH, int RPT>
__global__ void __launch_bounds__(kTiledThreads) attention_tiled_kernel(AttnArgs a) {
  using L = TiledLayout<DH, RPT>;
  constexpr int BQ = L::BQ, BK = kTiledKeys, QS = L::QS, PS = L::PS, DP = DH / 16;
  float* sq = dynamic_smem<float>();  // [BQ, QS] scaled queries
  float* sk = sq + L::k_off;          // [BK, QS] keys
  float* sv = sq + L::v_off;          // [BK, DH] values
  float* sp = sq + L::p_off;          // [BQ, PS] probabilities
  pdl_prologue();
  const int tid = threadIdx.x, rg = tid / 8, cg = tid % 8;
  const int64_t h = blockIdx.x, Hq = a.n_head, g = h / (Hq / a.n_head_kv), kvd = a.n_head_kv * DH;
  const int64_t t0 = (int64_t(gridDim.y) - 1 - blockIdx.y) * BQ;  // the longest tiles start first
  const int64_t n_past = *a.n_past;
  const int64_t kv_end = n_past + min(t0 + BQ, a.n);  // keys [0, kv_end) are seen by some row

  for (int e = tid; e < BQ * DH / 4; e += kTiledThreads) {
    const int r = e / (DH / 4), c4 = e % (DH / 4);
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t0 + r < a.n) {
      v = reinterpret_cast<const float4*>(a.q + (t0 + r) * Hq * DH + h * DH)[c4];
      v.x *= a.scale;
      v.y *= a.scale;
      v.z *= a.scale;
      v.w *= a.scale;
    }
    reinterpret_cast<float4*>(sq + r * QS)[c4] = v;
  }

  float o[RPT][2 * DP], m[RPT], l[RPT];
  int64_t last[RPT];  // the last key row RPT*rg + a sees (rows past the batch: as the last row)
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    last[r] = n_past + min(t0 + RPT * rg + r, a.n - 1);
#pragma unroll
    for (int e = 0; e < 2 * DP; ++e) o[r][e] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < kv_end; j0 += BK) {
    __syncthreads();  // the previous tile is no longer read (and the queries are stored)
    for (int e = tid; e < BK * DH / 8; e += kTiledThreads) {
      const int r = e / (DH / 8), c8 = e % (DH / 8);
      const int64_t key = j0 + r;
      float kf[8], vf[8];
      if (key < kv_end) {
        unpack_f16x8(reinterpret_cast<const uint4*>(a.k_cache + key * kvd + g * DH)[c8], kf);
        unpack_f16x8(reinterpret_cast<const uint4*>(a.v_cache + key * kvd + g * DH)[c8], vf);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) kf[i] = vf[i] = 0.0f;
      }
      float4* kd = reinterpret_cast<float4*>(sk + r * QS + 8 * c8);
      float4* vd = reinterpret_cast<float4*>(sv + r * DH + 8 * c8);
      kd[0] = make_float4(kf[0], kf[1], kf[2], kf[3]);
      kd[1] = make_float4(kf[4], kf[5], kf[6], kf[7]);
      vd[0] = make_float4(vf[0], vf[1], vf[2], vf[3]);
      vd[1] = make_float4(vf[4], vf[5], vf[6], vf[7]);
    }
    __syncthreads();

    // Scores of rows RPT*rg + r, keys cg + 8i.
    float s[RPT][4];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[r][i] = 0.0f;
#pragma unroll 4
    for (int d4 = 0; d4 < DH / 4; ++d4) {
      float4 qv[RPT];
#pragma unroll
      for (int r = 0; r < RPT; ++r) qv[r] = reinterpret_cast<const float4*>(sq + (RPT * rg + r) * QS)[d4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 kv = reinterpret_cast<const float4*>(sk + (cg + 8 * i) * QS)[d4];
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
          s[r][i] = fmaf(qv[r].x, kv.x, s[r][i]);
          s[r][i] = fmaf(qv[r].y, kv.y, s[r][i]);
          s[r][i] = fmaf(qv[r].z, kv.z, s[r][i]);
          s[r][i] = fmaf(qv[r].w, kv.w, s[r][i]);
        }
      }
    }

    // Online softmax. The first tile holds key 0, which every row sees, so
    // m is finite from then on (and exp(m_old - m_new) is 0 the first time).
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (j0 + cg + 8 * i > last[r]) s[r][i] = -INFINITY;
        mx = fmaxf(mx, s[r][i]);
      }
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, off));
      const float m_new = fmaxf(m[r], mx);
      const float c = expf(m[r] - m_new);
      float ps = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float p = expf(s[r][i] - m_new);
        sp[(RPT * rg + r) * PS + cg + 8 * i] = p;
        ps += p;
      }
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) ps += __shfl_xor_sync(0xFFFFFFFFu, ps, off);
      l[r] = l[r] * c + ps;
      m[r] = m_new;
#pragma unroll
      for (int e = 0; e < 2 * DP; ++e) o[r][e] *= c;
    }
    __syncwarp();  // the row group's probabilities are in sp

    for (int j = 0; j < BK; ++j) {
      float p[RPT];
#pragma unroll
      for (int r = 0; r < RPT; ++r) p[r] = sp[(RPT * rg + r) * PS + j];
#pragma unroll
      for (int i = 0; i < DP; ++i) {
        const float2 vv = reinterpret_cast<const float2*>(sv + j * DH)[cg + 8 * i];
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
          o[r][2 * i] = fmaf(p[r], vv.x, o[r][2 * i]);
          o[r][2 * i + 1] = fmaf(p[r], vv.y, o[r][2 * i + 1]);
        }
      }
    }
    __syncwarp();  // sp is rewritten by the next tile
  }

#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    const int64_t t = t0 + RPT * rg + r;
    if (t >= a.n) continue;
    const float inv = 1.0f / l[r];
    const float* gate = a.gate + t * a.ldgate + h * a.gate_stride;
    float* out = a.o + t * Hq * DH + h * DH;
#pragma unroll
    for (int i = 0; i < DP; ++i) {
      const int d = 2 * (cg + 8 * i);
      out[d] = o[r][2 * i] * inv * sigmoid_f(gate[d]);
      out[d + 1] = o[r][2 * i + 1] * inv * sigmoid_f(gate[d + 1]);
    }
  }
}

// Rows per thread: 2 (32-row tiles) up to Dh 256, 1 for Dh 512 (registers
// and shared memory).
template <int DH>
constexpr int tiled_rpt() {
  return DH >= 512 ? 1 : 2;
}

template <int DH>
bool tiled_fits() {
  return TiledLayout<DH, tiled_rpt<DH>()>::bytes <= max_dynamic_smem();
}

template <int DH>
cudaError_t launch_tiled(const AttnArgs& a, cudaStream_t stream) {
  constexpr int RPT = tiled_rpt<DH>();
  using L = TiledLayout<DH, RPT>;
  const cudaError_t e = allow_dynamic_smem(attention_tiled_kernel<DH, RPT>, L::bytes);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned(a.n_head), ceil_div(a.n, L::BQ));
  return launch(attention_tiled_kernel<DH, RPT>, grid, dim3(kTiledThreads), L::bytes, stream, a);
}

}  // namespace

bool attention_head_dim_supported(int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256 || head_dim == 512;
}

cudaError_t attention(const AttnArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  if (!attention_head_dim_supported(a.head_dim) || a.splits < 1 || a.splits > kMaxMergeSplits ||
      a.n_head % a.n_head_kv != 0)
    return cudaErrorInvalidValue;
  if (a.tiled && a.tensor_cores && attention_mma_supported(a.head_dim)) return attention_mma(a, stream);
  if (a.tiled) {
    switch (a.head_dim) {
      case 64: if (tiled_fits<64>()) return launch_tiled<64>(a, stream); break;
      case 128: if (tiled_fits<128>()) return launch_tiled<128>(a, stream); break;
      case 256: if (tiled_fits<256>()) return launch_tiled<256>(a, stream); break;
      default: if (tiled_fits<512>()) return launch_tiled<512>(a, stream); break;
    }
  }
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

cudaError_t attention_fused(const FusedAttnArgs& f, cudaStream_t stream) {
  const AttnArgs& a = f.attn;
  if (a.n <= 0) return cudaSuccess;
  if (a.n > kFusedAttnRows || !attention_head_dim_supported(a.head_dim) || a.splits < 1 ||
      a.splits > kMaxMergeSplits || a.n_head % a.n_head_kv != 0 || a.tiled || !f.counters || f.rope.head_dim != a.head_dim ||
      f.rope.n_head != a.n_head || f.rope.n_head_kv != a.n_head_kv || f.rope.rope.n_rot > a.head_dim ||
      f.rope.k_cache != a.k_cache || f.rope.v_cache != a.v_cache || f.rope.n_past != a.n_past)
    return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.n_head), unsigned(a.n), unsigned(a.splits));
  const dim3 block(kAttnWarps * kWarp);
  switch (a.head_dim) {
    case 64: return launch(attention_fused_kernel<2>, grid, block, 0, stream, f);
    case 128: return launch(attention_fused_kernel<4>, grid, block, 0, stream, f);
    case 256: return launch(attention_fused_kernel<8>, grid, block, 0, stream, f);
    default: return launch(attention_fused_kernel<16>, grid, block, 0, stream, f);
  }
}

}  // namespace qwen35::cuda
