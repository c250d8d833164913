// Device code shared by the NVFP4 decode kernels (matvec_fp4.cu) and the
// fused FFN (ffn_fp4.cu): the epilogues, the split-K combine, one kgroup's
// arithmetic, the finish of a tile group, and kernel 3's ring of bulk-copied
// weight stages. Included by .cu files only (functions in an anonymous
// namespace: one copy per kernel file).
#pragma once

#ifndef QWEN35_CUDA_EMU  // (the emulation in tests/emu has no clusters)
#include <cooperative_groups.h>
#endif

#include "common.cuh"
#include "matvec_fp4.h"
#include "tc_common.cuh"

namespace qwen35::cuda {

namespace {

#ifndef QWEN35_CUDA_EMU
namespace cg = cooperative_groups;
#endif

// ---- matrix-vector product ---------------------------------------------------------

// The finished results of one lane (both kernels): acc[e] is tile row
// g + 8*(e/2) for activation row 2t + e%2, through the epilogue.
__device__ __forceinline__ void fp4_store_outputs(const Fp4MatvecArgs& a, int64_t tile, int g, int t,
                                                  const float* acc) {
  const Fp4Tiled& w = a.w;
  if (a.epilogue == Fp4Epilogue::Conv) {
    // Activation rows 0 and 1 are in lane t = 0 (n <= 2): it walks them in order.
    if (t != 0) return;
    const int64_t C = a.conv_channels, Kc = a.conv_k;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t r = tile * kFp4TileRows + g + 8 * half;
      if (r >= w.rows) continue;
      const float v0 = acc[2 * half], v1 = acc[2 * half + 1];
      if (r >= C) {
        a.y[r] = v0;
        if (a.n > 1) a.y[a.ldy + r] = v1;
        continue;
      }
      conv_silu_channel(a.conv_taps, a.conv_window, C, Kc, a.n, r, v0, v1, a.y, a.ldy, a.conv_snapshot_row,
                        a.conv_snapshot);
    }
    return;
  }
  if (a.epilogue == Fp4Epilogue::SwiGLU) {
    // Rows g (gate) and g+8 (up) of the tile are the pair for output 8*tile + g.
    const int64_t out = 8 * tile + g;
    if (out < w.rows) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 2 * t + e;
        if (j < a.n) a.y[j * a.ldy + out] = silu_f(acc[e]) * acc[2 + e];
      }
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t row = tile * kFp4TileRows + g + 8 * (e >> 1);
    const int j = 2 * t + (e & 1);
    if (row < w.rows && j < a.n) {
      float* out = a.y + j * a.ldy + row;
      // (Through L2: in a chain launch another multiprocessor may have
      // written this row of the residual stream since this one cached it.)
      *out = a.epilogue == Fp4Epilogue::Add ? __ldcg(out) + acc[e] : acc[e];
    }
  }
}

// Split-K combine through global memory (kernels 1 to 3, the fused FFN):
// each block of tile group `group` writes the sums of its slice `split` to
// a.partial, the last block to arrive (counted in a.counters, left at zero)
// adds all of them in split order into acc. False in the other blocks: they
// are done.
__device__ __forceinline__ bool fp4_combine_global(const Fp4MatvecArgs& a, int splits, int64_t group, int split,
                                                   int64_t tile, bool active, int g, int t, float* acc, bool& is_last) {
  const int64_t tiles = a.w.tiles();
  float* part = a.partial + ((int64_t(split) * tiles + tile) * kFp4TileRows) * kMatvecMaxCols;
  if (active) {
#pragma unroll
    for (int e = 0; e < 4; ++e) part[(g + 8 * (e >> 1)) * kMatvecMaxCols + 2 * t + (e & 1)] = acc[e];
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&a.counters[group], 1) == splits - 1;
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  if (active) {
    // The partials of rows g and g+8 (activation rows 2t, 2t+1), added in
    // split order; loads issued 8 splits at a time (this is the kernel's tail).
    acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
    const float* base = a.partial + (tile * kFp4TileRows + g) * kMatvecMaxCols + 2 * t;
    const int64_t split_stride = tiles * kFp4TileRows * kMatvecMaxCols;
    for (int s0 = 0; s0 < splits; s0 += 8) {
      float2 lo[8], hi[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (s0 + k < splits) {
          lo[k] = __ldcg(reinterpret_cast<const float2*>(base + (s0 + k) * split_stride));
          hi[k] = __ldcg(reinterpret_cast<const float2*>(base + (s0 + k) * split_stride + 8 * kMatvecMaxCols));
        }
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (s0 + k < splits) {
          acc[0] += lo[k].x;
          acc[1] += lo[k].y;
          acc[2] += hi[k].x;
          acc[3] += hi[k].y;
        }
      }
    }
  }
  if (threadIdx.x == 0) a.counters[group] = 0;
  return true;
}

// The activation rows and their prologue (norm or gated norm) of a product,
// as the streaming kernels' shared helpers take them (tc_common.cuh). A:
// Fp4MatvecArgs, or a persistent stage (the same fields).
template <typename A>
__host__ __device__ __forceinline__ TcInput tc_input(const A& a) {
  TcInput in;
  in.x = a.x;
  in.ldx = a.ldx;
  in.n = a.n;
  in.norm = a.norm;
  in.gate_z = a.gate_z;
  in.ldz = a.ldz;
  in.gate_w = a.gate_w;
  in.gate_dv = a.gate_dv;
  in.eps = a.eps;
  return in;
}

// One kgroup (64 columns, four mma) of a lane's tile rows: codes c4 and
// scales s2 as loaded, activation chunks at xb / multipliers at mp.
// kLean: the activation rows have one multiplier for the whole slice
// (tc_load_x_impl<true>), applied by the caller to the finished sums.
// kN = 1: one activation row, so acc[1] and acc[3] (rows 2t + 1 >= 1),
// which nothing stores, are left out (4 of a chunk's ~24 instructions).
template <bool kLean = false, int kN = 0>
__device__ __forceinline__ void fp4_kgroup(float* acc, uint4 c4, uint2 s2, int i, const uint16_t* xb, const float* mp,
                                           int n) {
  const uint32_t words[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
  for (int wd = 0; wd < 4; ++wd) {
    const int c = 4 * i + wd;
    uint32_t ar[4];
    fp4_unpack_word(words[wd], ar);
    const uint2 bv = *reinterpret_cast<const uint2*>(xb + c * n * 16);
    float d[4];
    mma_f16(d, ar, bv.x, bv.y);
    const uint32_t sw = wd < 2 ? s2.x : s2.y;
    const float2 sc = e4m3x2_to_float2(sw >> (16 * (wd & 1)));  // tile rows g, g+8
    if constexpr (kLean) {
      acc[0] = fmaf(d[0], sc.x, acc[0]);
      acc[2] = fmaf(d[2], sc.y, acc[2]);
      if constexpr (kN != 1) {
        acc[1] = fmaf(d[1], sc.x, acc[1]);
        acc[3] = fmaf(d[3], sc.y, acc[3]);
      }
    } else {
      const float2 m = *reinterpret_cast<const float2*>(mp + c * kMatvecMaxCols);  // rows 2t, 2t+1
      acc[0] = fmaf(d[0], sc.x * m.x, acc[0]);
      acc[2] = fmaf(d[2], sc.y * m.x, acc[2]);
      if constexpr (kN != 1) {
        acc[1] = fmaf(d[1], sc.x * m.y, acc[1]);
        acc[3] = fmaf(d[3], sc.y * m.y, acc[3]);
      }
    }
  }
}

// fp4_kgroup for the FP8 arrangement (fp4_tiled.h; tuning fp4_fp8): the
// kgroup's two chunk pairs, one k32 mma each per activation row (kN = 1 or
// 2). xs: the slice's activations as tc_load_x_impl's kFp8 = 1 (B fragments,
// [pairs][kN][256 bytes]) or, kCompact, 2 ([chunks][kN][48 bytes]: the lane
// loads its column's four bytes and puts them in the register of its
// sub-block, zero in the other); mp: the chunk multipliers ([nch][8]).
// The lane's D columns are sub-block blk = (lane & 3) / 2's terms (both
// added here; the other lanes of the quad hold the rest, added once at the
// end: fp8_quad_sum), so its scales are that chunk's. acc[j] (row g) and
// acc[2 + j] (row g+8) for activation row j.
template <int kN, bool kCompact = false>
__device__ __forceinline__ void fp8_kgroup(float* acc, uint4 c4, uint2 s2, int i, const uint8_t* xs, const float* mp,
                                           int lane) {
  static_assert(kN == 1 || kN == 2, "one or two activation rows");
  const int blk = (lane & 3) >> 1;
  // The lane's B column (fp8_b_byte): term bt (3: the zero column) of sub-block bb, columns 4 (lane & 3) ...
  const int bt = (lane >> 2) & 3, bb = lane >> 4;
  const uint8_t* xb = kCompact ? xs + bb * kN * 48 + (bt == 3 ? 0 : bt) * 16 + 4 * (lane & 3) : xs + lane * 8;
  const uint32_t m0 = bt != 3 && bb == 0 ? ~0u : 0u, m1 = bt != 3 && bb == 1 ? ~0u : 0u;
  const uint32_t words[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
  for (int pr = 0; pr < 2; ++pr) {
    uint32_t ar[4];
    fp8_unpack_word(words[2 * pr], ar);          // chunk 2pr: registers 0 (row g), 1 (row g+8)
    fp8_unpack_word(words[2 * pr + 1], ar + 2);  // chunk 2pr+1: registers 2, 3
    const float2 sc = e4m3x2_to_float2((pr == 0 ? s2.x : s2.y) >> (16 * blk));  // rows g, g+8 of chunk 2pr + blk
    const int c = 4 * i + 2 * pr + blk;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      uint2 bv;
      if constexpr (kCompact) {
        const uint32_t v = *reinterpret_cast<const uint32_t*>(xb + ((4 * i + 2 * pr) * kN + j) * 48);
        bv = make_uint2(v & m0, v & m1);
      } else {
        bv = *reinterpret_cast<const uint2*>(xb + ((2 * i + pr) * kN + j) * 256);
      }
      float d[4];
      mma_e4m3(d, ar, bv.x, bv.y);
      const float m = mp[c * kMatvecMaxCols + j];
      acc[j] = fmaf(d[0] + d[1], sc.x * m, acc[j]);
      acc[2 + j] = fmaf(d[2] + d[3], sc.y * m, acc[2 + j]);
    }
  }
}

// The FP8 stream's sums of the quad's four lanes (their terms and
// sub-blocks), in every lane of the quad: then lane t = 0 holds what the
// F16 arithmetic leaves there (rows g, g+8 for activation rows 0 and 1).
// The same bits in every lane (the butterfly adds the same pairs).
__device__ __forceinline__ void fp8_quad_sum(float* acc) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    acc[e] += __shfl_xor_sync(0xFFFFFFFFu, acc[e], 1);
    acc[e] += __shfl_xor_sync(0xFFFFFFFFu, acc[e], 2);
  }
}

// Kernels 2 and 3 and the fused FFN after the stream of slice `split` of
// tile group `group`: the encoding's scale, the slices combined (last block
// of the tile group, in split order), the RMS norm's factor, the epilogue.
// Every thread of the block calls it; true (in every thread) in the block
// that stored the tile group's outputs.
//
// kCluster (kernel 3): the `splits` blocks of a tile group form one thread
// block cluster (cluster dims 1 x splits, so the rank is blockIdx.y); each
// block leaves its sums in its own shared memory (`red`, 16 x 8 floats per
// warp) and the rank-0 block adds all of them in split order through
// distributed shared memory: the same sums in the same order as the global
// combine, without its global round trips (fence, counter, partial loads).
template <int W, bool kCluster = false>
__device__ __forceinline__ bool fp4_finish(const Fp4MatvecArgs& a, int splits, int64_t group, int split, int64_t tile,
                                           bool active, int g, int t, float* acc,
                                           const float (*ss_part)[kMatvecMaxCols], bool& is_last,
                                           float* red = nullptr) {
  const Fp4Tiled& w = a.w;
  const int n = a.n;
  // The 2^-14 of the A encoding and the tensor scale.
#pragma unroll
  for (int e = 0; e < 4; ++e) acc[e] *= 16384.0f * w.scale;

  if constexpr (kCluster) {
#ifndef QWEN35_CUDA_EMU
    if (splits > 1) {
      cg::cluster_group cluster = cg::this_cluster();
      const int idx = g * kMatvecMaxCols + 2 * t;  // row g (e = 0, 1); row g + 8 (e = 2, 3) is 8 rows on
      if (active) {
        red[idx] = acc[0];
        red[idx + 1] = acc[1];
        red[idx + 8 * kMatvecMaxCols] = acc[2];
        red[idx + 8 * kMatvecMaxCols + 1] = acc[3];
      }
      cluster.sync();  // every block's sums are in its shared memory
      const bool leader = split == 0;
      if (leader && active) {
        acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
        for (int r = 0; r < splits; ++r) {
          const float* rr = cluster.map_shared_rank(red, r);
          acc[0] += rr[idx];
          acc[1] += rr[idx + 1];
          acc[2] += rr[idx + 8 * kMatvecMaxCols];
          acc[3] += rr[idx + 8 * kMatvecMaxCols + 1];
        }
      }
      cluster.sync();  // the remote reads are done before any block exits
      if (!leader) return false;
    }
#endif
  } else if (splits > 1 && !fp4_combine_global(a, splits, group, split, tile, active, g, t, acc, is_last)) {
    return false;
  }
  if (!active) return true;
  if (a.norm) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = 2 * t + (e & 1);
      if (j < n) acc[e] *= tc_rnorm<W>(ss_part, j, w.cols, a.eps);
    }
  }
  fp4_store_outputs(a, tile, g, t, acc);
  return true;
}

// ---- kernel 3's ring of weight stages ----------------------------------------------

constexpr int kBulkStageKg = 4;
constexpr int kBulkStageBytes = kBulkStageKg * (kFp4CodeBytes + kFp4ScaleBytes);  // 2304

// Dynamic shared memory of kernel 3: the rings, the barriers, the x slice.
constexpr size_t bulk_ring_bytes(int warps, int stages) { return size_t(warps) * stages * (kBulkStageBytes + 8); }

constexpr int kBulkWarps = 4;

// One warp's run of kernel 3: the weights of its (tile, column slice), a
// contiguous run of nkg kgroups in the tiled layout, which lane 0 moves
// with cp.async.bulk in stages of kBulkStageKg kgroups into the warp's ring
// of S slots (`ring`, S x kBulkStageBytes of shared memory), each slot
// completing on its mbarrier (`bars`, S, initialized with count 1). seq0
// counts the stages the warp put through its ring before this run (0 in
// kernel 3; a block of the fused FFN runs several tasks): stage st goes to
// slot (seq0 + st) % S, in that slot's phase (seq0 + st) / S.
struct BulkRun {
  uint8_t* ring;
  uint64_t* bars;
  const uint8_t* codes;
  const uint8_t* scales;
  int nkg, nst;
  uint32_t seq0;
};

__device__ __forceinline__ BulkRun bulk_run(uint8_t* ring, uint64_t* bars, const Fp4Tiled& w, int64_t tile,
                                            int64_t kg0, int nkg, uint32_t seq0) {
  const int64_t first = tile * w.kgroups() + kg0;
  return BulkRun{ring, bars, w.codes + first * kFp4CodeBytes, w.scales + first * kFp4ScaleBytes, nkg,
                 (nkg + kBulkStageKg - 1) / kBulkStageKg, seq0};
}

// Lane 0: request stage st (kgroups 4st .. 4st+3 of the run) into its slot.
template <int S>
__device__ __forceinline__ void bulk_issue(const BulkRun& r, int st) {
  const int k0 = st * kBulkStageKg, nk = min(kBulkStageKg, r.nkg - k0);
  const uint32_t slot = (r.seq0 + uint32_t(st)) % S;
  uint8_t* dst = r.ring + slot * kBulkStageBytes;
  const uint32_t bar = smem_addr(r.bars + slot);
  mbar_expect_tx(bar, uint32_t(nk) * (kFp4CodeBytes + kFp4ScaleBytes));
  bulk_copy_g2s(smem_addr(dst), r.codes + size_t(k0) * kFp4CodeBytes, uint32_t(nk) * kFp4CodeBytes, bar);
  bulk_copy_g2s(smem_addr(dst + kBulkStageKg * kFp4CodeBytes), r.scales + size_t(k0) * kFp4ScaleBytes,
                uint32_t(nk) * kFp4ScaleBytes, bar);
}

// Lane 0: the run's first S stages (weights are never written by a kernel,
// so they may be requested before the PDL wait).
template <int S>
__device__ __forceinline__ void bulk_start(const BulkRun& r) {
  for (int i = 0; i < S && i < r.nst; ++i) bulk_issue<S>(r, i);
}

// The whole warp: waits for each stage, takes its lane's codes and scales,
// has lane 0 call refill(st) once the stage's slot is free (the refill
// issues the next request into it, if any: fence_proxy_async_smem first),
// and (unless skip_math) adds the stage's kgroups into acc (fp4_kgroup; xb,
// mp, kN as there).
// kFp8 (1, 2): the codes are in the FP8 arrangement, xb the slice's
// activations as tc_load_x_impl's kFp8 (fp8_kgroup).
template <int S, bool kLean, int kN, int kFp8 = 0, typename Refill>
__device__ __forceinline__ void bulk_stream_refill(const BulkRun& r, float* acc, const uint16_t* xb, const float* mp,
                                                   int n, int lane, int g, bool skip_math, Refill&& refill) {
  for (int st = 0; st < r.nst; ++st) {
    const uint32_t q = r.seq0 + uint32_t(st);
    const uint8_t* src = r.ring + (q % S) * kBulkStageBytes;
    mbar_wait(smem_addr(r.bars + q % S), (q / S) & 1u);
    const int k0 = st * kBulkStageKg, nk = min(kBulkStageKg, r.nkg - k0);
    uint4 c4[kBulkStageKg];
    uint2 s2[kBulkStageKg];
#pragma unroll
    for (int k = 0; k < kBulkStageKg; ++k) {
      if (k < nk) {
        c4[k] = *reinterpret_cast<const uint4*>(src + k * kFp4CodeBytes + lane * 16);
        s2[k] = *reinterpret_cast<const uint2*>(src + kBulkStageKg * kFp4CodeBytes + k * kFp4ScaleBytes + g * 8);
      }
    }
    // The slot is free once every lane has its values.
    __syncwarp();
    if (lane == 0) refill(st);
    if (skip_math) continue;
#pragma unroll
    for (int k = 0; k < kBulkStageKg; ++k) {
      if (k < nk) {
        if constexpr (kFp8 != 0)
          fp8_kgroup<kN, kFp8 == 2>(acc, c4[k], s2[k], k0 + k, reinterpret_cast<const uint8_t*>(xb), mp, lane);
        else
          fp4_kgroup<kLean, kN>(acc, c4[k], s2[k], k0 + k, xb, mp, n);
      }
    }
  }
}

// bulk_stream_refill over one run: each freed slot takes the run's stage S
// ahead.
template <int S, bool kLean, int kN = 0, int kFp8 = 0>
__device__ __forceinline__ void bulk_stream(const BulkRun& r, float* acc, const uint16_t* xb, const float* mp, int n,
                                            int lane, int g, bool skip_math) {
  bulk_stream_refill<S, kLean, kN, kFp8>(r, acc, xb, mp, n, lane, g, skip_math, [&](int st) {
    if (st + S < r.nst) {
      fence_proxy_async_smem();
      bulk_issue<S>(r, st + S);
    }
  });
}

}  // namespace

}  // namespace qwen35::cuda
