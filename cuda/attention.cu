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
#include "attention_decode.cuh"
#include "common.cuh"
#include "launch.cuh"
#include "rope.cuh"

namespace qwen35::cuda {

namespace {

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

template <int EPL>
__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_fused_kernel(FusedAttnArgs f) {
  __shared__ FusedAttnSmem<EPL> sh;
  fused_attention_block<EPL>(f, blockIdx.x, blockIdx.y, blockIdx.z, sh);
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

bool attention_fused_supported(const FusedAttnArgs& f) {
  const AttnArgs& a = f.attn;
  return a.n >= 0 && a.n <= kFusedAttnRows && attention_head_dim_supported(a.head_dim) && a.splits >= 1 &&
         a.splits <= kMaxMergeSplits && a.n_head_kv > 0 && a.n_head % a.n_head_kv == 0 && !a.tiled && f.counters &&
         f.rope.head_dim == a.head_dim && f.rope.n_head == a.n_head && f.rope.n_head_kv == a.n_head_kv &&
         f.rope.rope.n_rot <= a.head_dim && f.rope.k_cache == a.k_cache && f.rope.v_cache == a.v_cache &&
         f.rope.n_past == a.n_past;
}

cudaError_t attention_fused(const FusedAttnArgs& f, cudaStream_t stream) {
  const AttnArgs& a = f.attn;
  if (a.n <= 0) return cudaSuccess;
  if (!attention_fused_supported(f)) return cudaErrorInvalidValue;
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
