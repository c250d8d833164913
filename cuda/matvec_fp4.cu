// NVFP4 decode kernels on the tensor cores (see matvec_fp4.h, fp4_tiled.h).
//
// Both kernels: a block of warps takes one row tile (16 rows) per warp and
// one slice of the columns. Per 64 columns each lane loads 16 bytes of codes
// and 8 of scales, runs four mma.sync m16n8k16 (one per NVFP4 sub-block,
// fresh accumulators) and an F32 FMA with the sub-block scales. Activation
// row j is column j of the mma's B operand (F16 in shared memory), so 1..8
// rows cost the same and each row's result does not depend on the others.
// With several column slices the partial sums meet in global memory and the
// last block of the tile group adds them in a fixed order. Fused: RMSNorm or
// the delta net's gated RMSNorm as prologue, residual add / SwiGLU / causal
// conv epilogues.
//
// Kernel 1 (QWEN35_CUDA_FP4_KERNEL=1): 4 warps; the block first normalizes
// the activation rows (a pass over the whole row), finds each row's largest
// value over its slice and writes the slice scaled by one power of two per
// row, then streams with 4 kgroups in flight per warp.
// Kernel 2 (default, tuning.h): W warps, P kgroups in flight per warp, the
// first ones requested before the PDL wait; the activation slice is scaled
// per 16-column chunk (no reductions before the conversion) and the RMS
// norm's factor is applied to the results.
// Kernel 3 (QWEN35_CUDA_FP4_KERNEL=3): kernel 2 with the weights moved by
// bulk copies into a ring of shared-memory stages instead of registers.
#include <algorithm>

#include "common.cuh"
#include "fp4_kernels.cuh"
#include "launch.cuh"
#include "matvec_fp4.h"
#include "tc_common.cuh"
#include "tuning.h"

namespace qwen35::cuda {

namespace {

constexpr int kWarps = 4;           // row tiles per block
constexpr int kPrefetch = 4;        // kgroups loaded ahead per warp
constexpr int kMaxSplits = 16;
constexpr int64_t kMaxSliceKgroups = 96;  // 8 rows x 96 x 64 F16 = 96 KiB of shared memory
constexpr int kMaxGatedHeads = 128;  // heads of the gated-norm prologue per slice

// ---- repack ---------------------------------------------------------------------

// One thread per (tile, kgroup, lane). kFp8: only the codes, in the FP8 arrangement.
template <bool kFp8>
__global__ void fp4_repack_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b, uint64_t row_bytes,
                                  Fp4Tiled dst, uint8_t* __restrict__ codes, uint8_t* __restrict__ scales) {
  const int64_t kg_n = dst.kgroups();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= dst.tiles() * kg_n * 32) return;
  const int lane = int(i % 32);
  const int64_t kg = (i / 32) % kg_n, tile = i / 32 / kg_n;
  const uint8_t* block[kFp4TileRows];
  for (int r = 0; r < kFp4TileRows; ++r) {
    bool second = false;
    const int64_t src = fp4_source_row(dst.pairing, tile, r, &second);
    block[r] = src < dst.rows ? (second ? b : a) + uint64_t(src) * row_bytes + uint64_t(kg) * 36 : nullptr;
  }
  uint32_t words[4];
  if constexpr (kFp8) {
    fp8_lane_words(block, lane, words);
    reinterpret_cast<uint4*>(codes)[i] = make_uint4(words[0], words[1], words[2], words[3]);
    return;
  }
  fp4_lane_words(block, lane, words);
  reinterpret_cast<uint4*>(codes)[i] = make_uint4(words[0], words[1], words[2], words[3]);
  if ((lane & 3) == 0) {
    const int g = lane >> 2;
    fp4_g_scales(block, g, scales + (tile * kg_n + kg) * kFp4ScaleBytes + 8 * g);
  }
}

// ---- dequantization to rows (the GEMM path) ---------------------------------------

// F32 value of an F16 bit pattern times 2^14 (the A-register encoding).
__device__ __forceinline__ float fp4_half_value(uint32_t h16) {
  return __half2float(__ushort_as_half(uint16_t(h16))) * 16384.0f;
}

// One warp per (tile, kgroup): decode into shared memory, then write the
// 16 x 64 block (F32: row by row; BF16: four rows per 16-byte store pass).
template <typename Out>
__global__ void fp4_dequant_kernel(Fp4Tiled w, int64_t r0, int64_t nr, Out* __restrict__ dst) {
  __shared__ float tile_buf[kWarps][kFp4TileRows][kFp4GroupCols + 1];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t kg_n = w.kgroups();
  const int64_t unit = int64_t(blockIdx.x) * kWarps + warp;
  if (unit >= w.tiles() * kg_n) return;  // whole warp
  const int64_t tile = unit / kg_n, kg = unit % kg_n;
  const uint4 c = reinterpret_cast<const uint4*>(w.codes)[unit * 32 + lane];
  const uint8_t* s = w.scales + unit * kFp4ScaleBytes;
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
  for (int wd = 0; wd < 4; ++wd) {
    uint32_t a[4];
    fp4_unpack_word(words[wd], a);
    for (int p = 0; p < 8; ++p) {
      int row, col;
      fp4_code_position(lane, wd, p, &row, &col);
      const float v = fp4_half_value((a[p >> 1] >> (16 * (p & 1))) & 0xFFFFu);
      tile_buf[warp][row][col] = v * ue4m3_to_f32(s[fp4_scale_byte(row, wd)]);
    }
  }
  __syncwarp();
  if constexpr (sizeof(Out) == 2) {
    // BF16: 16-byte stores, lane l writes columns 8(l%8) .. 8(l%8)+7 of
    // tile row 4p + l/8 in pass p (the launcher checks the alignment).
#pragma unroll
    for (int p = 0; p < kFp4TileRows / 4; ++p) {
      const int row = 4 * p + lane / 8, col0 = 8 * (lane % 8);
      bool second = false;
      const int64_t src = fp4_source_row(w.pairing, tile, row, &second);
      if (src >= w.rows) continue;
      const int64_t out_row = (second ? w.rows : 0) + src - r0;
      if (out_row < 0 || out_row >= nr) continue;
      uint32_t h[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(tile_buf[warp][row][col0 + 2 * e]));
        const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(tile_buf[warp][row][col0 + 2 * e + 1]));
        h[e] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst + out_row * w.cols + kg * kFp4GroupCols + col0) = make_uint4(h[0], h[1], h[2], h[3]);
    }
  } else {
    for (int row = 0; row < kFp4TileRows; ++row) {
      bool second = false;
      const int64_t src = fp4_source_row(w.pairing, tile, row, &second);
      if (src >= w.rows) continue;
      const int64_t out_row = (second ? w.rows : 0) + src - r0;
      if (out_row < 0 || out_row >= nr) continue;
      Out* o = dst + out_row * w.cols + kg * kFp4GroupCols;
      for (int col = lane; col < kFp4GroupCols; col += kWarp) {
        o[col] = tile_buf[warp][row][col];
      }
    }
  }
}

// ---- kernel 1 ------------------------------------------------------------------------

// Slice column k of activation row xr after the prologue: RMS-normalized
// (rnorm, norm weights), gated-normalized (z row zr), or as it is.
__device__ __forceinline__ float prologue_value(const Fp4MatvecArgs& a, const float* xr, const float* zr, int64_t c0,
                                                int64_t k, float rnorm, const float* head_scale) {
  if (zr) return xr[c0 + k] * head_scale[k / a.gate_dv] * a.gate_w[(c0 + k) % a.gate_dv] * silu_f(zr[c0 + k]);
  return xr[c0 + k] * rnorm * (a.norm ? a.norm[c0 + k] : 1.0f);
}

__global__ void __launch_bounds__(kWarps * kWarp) fp4_matvec_kernel(Fp4MatvecArgs a, int splits, int64_t kg_per) {
  pdl_prologue();
  uint8_t* smem_raw = dynamic_smem<uint8_t>();
  __shared__ float red[32];
  __shared__ int exps[kMatvecMaxCols];
  __shared__ float head_scale[kMaxGatedHeads];
  __shared__ bool is_last;
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem_raw);  // [n][slice cols] F16, permuted
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const Fp4Tiled& w = a.w;
  const int64_t kg_n = w.kgroups(), K = w.cols, tiles = w.tiles();
  const int64_t kg0 = int64_t(blockIdx.y) * kg_per, kg1 = min(kg_n, kg0 + kg_per);
  const int64_t c0 = kg0 * kFp4GroupCols, slice = (kg1 - kg0) * kFp4GroupCols;

  // 1. x slice -> shared F16, per row scaled by 2^-e.
  for (int j = 0; j < a.n; ++j) {
    const float* xr = a.x + j * a.ldx;
    float rnorm = 1.0f;
    if (a.norm) {
      float ss = 0.0f;
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) ss = fmaf(xr[k], xr[k], ss);
      rnorm = rsqrtf(block_sum(ss, red) / float(K) + a.eps);
    }
    const float* zr = a.gate_z ? a.gate_z + j * a.ldz : nullptr;
    if (zr) {  // per-head norm factors of the gated norm (slices hold whole heads)
      const int dv = a.gate_dv;
      for (int64_t h = warp; h < slice / dv; h += kWarps) {
        float ss = 0.0f;
        for (int i = lane; i < dv; i += kWarp) ss = fmaf(xr[c0 + h * dv + i], xr[c0 + h * dv + i], ss);
        ss = warp_sum(ss);
        if (lane == 0) head_scale[h] = rsqrtf(ss / float(dv) + a.eps);
      }
      __syncthreads();
    }
    float amax = 0.0f;
    for (int64_t k = threadIdx.x; k < slice; k += blockDim.x)
      amax = fmaxf(amax, fabsf(prologue_value(a, xr, zr, c0, k, rnorm, head_scale)));
    amax = block_max(amax, red);
    // Clamped so that 2^-e and 2^(e+14) stay normal floats.
    const int e = amax > 0.0f ? max(-100, min(100, ilogbf(amax) - 14)) : 0;
    if (threadIdx.x == 0) exps[j] = e;
    const float inv = pow2f(-e);
    for (int64_t k = threadIdx.x; k < slice; k += blockDim.x)
      xs[j * slice + fp4_x_index(int(k))] =
          __half_as_ushort(__float2half_rn(prologue_value(a, xr, zr, c0, k, rnorm, head_scale) * inv));
    __syncthreads();  // head_scale is rewritten for the next row
  }
  __syncthreads();

  // 2. Stream the tile.
  const int64_t tile = int64_t(blockIdx.x) * kWarps + warp;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (tile < tiles) {
    const uint4* cp = reinterpret_cast<const uint4*>(w.codes) + (tile * kg_n) * 32 + lane;
    const uint2* sp = reinterpret_cast<const uint2*>(w.scales) + (tile * kg_n) * 8 + g;
    const uint16_t* xb = xs + g * slice + t * 4;
    const bool has_col = g < a.n;
    for (int64_t kg = kg0; kg < kg1; kg += kPrefetch) {
      uint4 cbuf[kPrefetch];
      uint2 sbuf[kPrefetch];
#pragma unroll
      for (int p = 0; p < kPrefetch; ++p) {
        if (kg + p < kg1) {
          cbuf[p] = __ldg(cp + (kg + p) * 32);
          sbuf[p] = __ldg(sp + (kg + p) * 8);
        }
      }
#pragma unroll
      for (int p = 0; p < kPrefetch; ++p) {
        if (kg + p >= kg1) break;
        const uint32_t words[4] = {cbuf[p].x, cbuf[p].y, cbuf[p].z, cbuf[p].w};
        const int64_t chunk0 = (kg + p - kg0) * 4;
#pragma unroll
        for (int wd = 0; wd < 4; ++wd) {
          uint32_t ar[4];
          fp4_unpack_word(words[wd], ar);
          uint32_t b0 = 0, b1 = 0;
          if (has_col) {
            const uint2 bv = *reinterpret_cast<const uint2*>(xb + (chunk0 + wd) * 16);
            b0 = bv.x;
            b1 = bv.y;
          }
          float d[4];
          mma_f16(d, ar, b0, b1);
          const uint32_t sw = wd < 2 ? sbuf[p].x : sbuf[p].y;
          const float2 sc = e4m3x2_to_float2(sw >> (16 * (wd & 1)));  // (row g, row g+8)
          acc[0] = fmaf(d[0], sc.x, acc[0]);
          acc[1] = fmaf(d[1], sc.x, acc[1]);
          acc[2] = fmaf(d[2], sc.y, acc[2]);
          acc[3] = fmaf(d[3], sc.y, acc[3]);
        }
      }
    }
  }
  // acc[e]: row g + 8*(e/2), activation row 2t + (e%2). Undo the x scaling,
  // the 2^-14 of the A encoding and apply the tensor scale.
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int j = 2 * t + (e & 1);
    acc[e] *= j < a.n ? pow2f(exps[j] + 14) * w.scale : 0.0f;
  }

  // 3. Combine the slices (if split) and write.
  if (splits > 1 && !fp4_combine_global(a, splits, blockIdx.x, blockIdx.y, tile, tile < tiles, g, t, acc, is_last))
    return;
  if (tile < tiles) fp4_store_outputs(a, tile, g, t, acc);
}


// ---- kernel 2: streaming -----------------------------------------------------------------
//
// A block of W warps takes W row tiles (one per warp) and one column slice
// (blockIdx.y of `splits`). Each warp keeps P kgroups of weights in flight
// in registers: the first P are requested before waiting for the previous
// kernel, the rest one per kgroup consumed. The activation slice is
// converted per 16-column chunk (tc_load_x) while those loads are under way;
// the RMS norm's 1/rms (the same in every block) is applied to the result.

constexpr int kStreamMaxSplits = 32;
constexpr int kMaxClusterSplits = 8;  // kernel 3's cluster combine: the portable cluster size
constexpr int64_t kStreamMaxSliceKg = 80;  // 8 rows: 80 x 64 x (8+1) x 4 B = 90 KiB of shared memory

// Column slice (kgroups per block) of kernel 2 with `warps` warps per block,
// aiming at bps blocks per multiprocessor; every slice is nonempty.
int64_t stream_kg_per(const Fp4Tiled& w, int sms, int align_kg, int warps, int bps) {
  const int64_t groups = (w.tiles() + warps - 1) / warps;
  const int64_t target = int64_t(bps) * std::max(sms, 1);
  int64_t s = (target + groups / 2) / groups;
  s = std::max<int64_t>(1, std::min<int64_t>({s, kStreamMaxSplits, w.kgroups()}));
  s = std::max<int64_t>(s, (w.kgroups() + kStreamMaxSliceKg - 1) / kStreamMaxSliceKg);
  const int64_t per = (w.kgroups() + s - 1) / s;
  return (per + align_kg - 1) / align_kg * align_kg;
}

template <int W, int P>
__global__ void __launch_bounds__(W * kWarp) fp4_stream_kernel(Fp4MatvecArgs a, int splits, int64_t kg_per) {
  uint8_t* smem_raw = dynamic_smem<uint8_t>();
  __shared__ float ss_part[W][kMatvecMaxCols];
  __shared__ bool is_last;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const Fp4Tiled& w = a.w;
  const int n = a.n;
  const int64_t kg_n = w.kgroups(), tiles = w.tiles();
  const int64_t kg0 = int64_t(blockIdx.y) * kg_per;
  const int nkg = int(min(kg_n, kg0 + kg_per) - kg0);  // >= 1
  const int nch = 4 * nkg;                             // 16-column chunks of the slice
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem_raw);                           // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(smem_raw + size_t(nch) * size_t(n) * 32);  // [nch][8]
  const int64_t tile = int64_t(blockIdx.x) * W + warp;
  const bool active = tile < tiles;

  // 1. The first P kgroups of this warp's weights.
  const uint4* cp = reinterpret_cast<const uint4*>(w.codes) + (tile * kg_n + kg0) * 32 + lane;
  const uint2* sp = reinterpret_cast<const uint2*>(w.scales) + (tile * kg_n + kg0) * 8 + g;
  uint4 cb[P];
  uint2 sb[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    cb[p] = make_uint4(0, 0, 0, 0);
    sb[p] = make_uint2(0, 0);
    if (active && p < nkg) {
      cb[p] = ld_stream(cp + p * 32);
      sb[p] = ld_stream(sp + p * 8);
    }
  }
  pdl_wait_and_trigger();

  // 2. The activation slice (and the rows' sums of squares for the norm).
  const TcInput in = tc_input(a);
  tc_load_x(in, kg0 * kFp4GroupCols, nch, xs, mult);
  if (a.norm) tc_row_squares<W>(in, w.cols, ss_part);
  __syncthreads();

  // 3. Stream: kgroup i of the slice is 4 chunks (one mma each).
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (active) {
    const uint16_t* xb = xs + tc_b_row(g, n) * 16 + t * 4;  // + chunk * n * 16
    const float* mp = mult + 2 * t;            // + chunk * 8
    for (int i0 = 0; i0 < nkg; i0 += P) {
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = i0 + p;
        if (i < nkg) {
          const uint4 c4 = cb[p];
          const uint2 s2 = sb[p];
          if (i + P < nkg) {
            cb[p] = ld_stream(cp + (i + P) * 32);
            sb[p] = ld_stream(sp + (i + P) * 8);
          }
          fp4_kgroup(acc, c4, s2, i, xb, mp, n);
        }
      }
    }
  }
  fp4_finish<W>(a, splits, blockIdx.x, blockIdx.y, tile, active, g, t, acc, ss_part, is_last);
}

// ---- kernel 3: bulk copies into shared memory ---------------------------------------
//
// Kernel 2's arithmetic, but the weights travel through shared memory: each
// warp's (tile, slice) run of codes and scales is contiguous in the tiled
// layout, so lane 0 moves it with cp.async.bulk in stages of 4 kgroups
// (2 KiB of codes + 256 B of scales) into a ring of S stages per warp,
// completing on one mbarrier per stage. All S stages are requested before
// the PDL wait and each consumed stage is requested again for the stage S
// ahead. The bytes in flight are bounded by shared memory instead of
// registers: S = 4 keeps 9 KiB per warp in flight (kernel 2 with P = 4:
// 2.3 KiB), for fewer registers (launch bounds of 6 blocks of 4 warps per
// multiprocessor; it uses 70-77, kernel 2 needs 127). Blocks of 4 warps (8
// were slower on the H100). kN = 1 or 2 compiles the activation row count in
// (decode and MTP verification), which turns the per-mma shared-memory
// address arithmetic into immediates; kN = 0 reads it at run time.
// Lean mode (tuning fp4_lean) scales each activation row once for the whole
// slice instead of per 16-column chunk, which saves a shared-memory load
// and four multiplications per mma. skip_math (tuning fp4_probe, wrong
// results) leaves out the arithmetic of the stream: a measuring probe of
// what the weight traffic and the rest cost without it.

// Kernel 3's run-time flags (tuning fp4_probe, fp4_late_pdl, fp4_prefetch, fp4_x_l1).
constexpr int kBulkSkipMath = 1, kBulkLateTrigger = 2, kBulkPrefetchNext = 4, kBulkPrefetchEarly = 8;
constexpr int kBulkSkipX = 16, kBulkSkipCombine = 32;  // (probes: no activation load; no combine or stores)
constexpr int kBulkXL1 = 64;  // the activation rows into L1 before their two passes (with the RMS norm)

// Block b of nb asks L2 for its share of `bytes` at p (fp4_prefetch_share).
__device__ __forceinline__ void prefetch_share(const uint8_t* p, uint64_t bytes, int64_t b, int64_t nb) {
  uint64_t off = 0, n = 0;
  fp4_prefetch_share(bytes, b, nb, &off, &n);
  if (n > 0) bulk_prefetch_l2(p + off, uint32_t(n));
}

template <int S, bool kLean, int kN, bool kCluster, bool kFp8>
__global__ void __launch_bounds__(kBulkWarps * kWarp, 6)
    fp4_bulk_kernel(Fp4MatvecArgs a, int splits, int64_t kg_per, int flags) {
  constexpr int W = kBulkWarps;
  static_assert(!kFp8 || (!kLean && (kN == 1 || kN == 2)), "the FP8 arithmetic: 1 or 2 rows, per-chunk scales");
  const bool skip_math = flags & kBulkSkipMath, late_trigger = flags & kBulkLateTrigger;
  const bool skip_x = flags & kBulkSkipX, skip_combine = flags & kBulkSkipCombine;
  const bool prefetch_next = (flags & kBulkPrefetchNext) && a.next.codes;
  const bool prefetch_early = prefetch_next && (flags & kBulkPrefetchEarly);
  uint8_t* smem_raw = dynamic_smem<uint8_t>();  // 16-byte aligned, as the bulk copies need
  __shared__ float ss_part[W][kMatvecMaxCols];
  __shared__ int rmax[kMatvecMaxCols];
  __shared__ bool is_last;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const Fp4Tiled& w = a.w;
  const int n = kN > 0 ? kN : a.n;
  const int64_t kg_n = w.kgroups(), tiles = w.tiles();
  const int64_t kg0 = int64_t(blockIdx.y) * kg_per;
  const int nkg = int(min(kg_n, kg0 + kg_per) - kg0);  // >= 1
  const int nch = 4 * nkg;
  // This block's share of the next projection's codes (warp 0) and scales
  // (warp 1): after the block's own stream, or (early) right after its own
  // first stages are requested.
  auto prefetch = [&] {
    if (lane != 0 || warp >= 2) return;
    const Fp4Tiled& nx = a.next;
    const uint64_t units = uint64_t(nx.tiles()) * uint64_t(nx.kgroups());
    const int64_t b = int64_t(blockIdx.y) * gridDim.x + blockIdx.x, nb = int64_t(gridDim.x) * gridDim.y;
    if (warp == 0) prefetch_share(nx.codes, units * kFp4CodeBytes, b, nb);
    else prefetch_share(nx.scales, units * kFp4ScaleBytes, b, nb);
  };
  uint8_t* ring = smem_raw + size_t(warp) * S * kBulkStageBytes;                   // [S][2304] this warp's
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem_raw + size_t(W) * S * kBulkStageBytes) + warp * S;  // [S]
  uint8_t* xbase = smem_raw + bulk_ring_bytes(W, S);
  uint16_t* xs = reinterpret_cast<uint16_t*>(xbase);  // [nch][n][16] F16 (kFp8: [nch/2][n][256 bytes])
  float* mult = reinterpret_cast<float*>(xbase + size_t(nch) * size_t(n) * (kFp8 ? 128 : 32));  // [nch][8]
  const int64_t tile = int64_t(blockIdx.x) * W + warp;
  const bool active = tile < tiles;
  Fp4Tiled wr = w;
  if constexpr (kFp8) wr.codes = w.codes8;
  const BulkRun run = bulk_run(ring, bars, wr, tile, kg0, nkg, 0u);

  // 1. The first S stages.
  if (active && lane == 0) {
    for (int i = 0; i < S; ++i) mbar_init(smem_addr(bars + i), 1);
    bulk_start<S>(run);
  }
  __syncwarp();
  if (prefetch_early) prefetch();
  // PDL: wait for the previous kernel; let the next one launch now, or
  // (late_trigger) only once this block has streamed its weights.
  pdl_wait();
  if (!late_trigger) pdl_trigger();

  // 2. The activation slice, as kernel 2.
  TcInput in = tc_input(a);
  in.n = n;  // a compile-time constant for kN > 0
  if (!skip_x) {
    if ((flags & kBulkXL1) && a.norm) tc_prefetch_rows_l1(in, w.cols);
    tc_load_x_impl<kLean, false, false, kFp8 ? 1 : 0>(in, kg0 * kFp4GroupCols, nch, xs, mult, rmax);
    if (a.norm) tc_row_squares<W>(in, w.cols, ss_part);
  }
  __syncthreads();

  // 3. Stream the stages.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (active) {
    const uint16_t* xb = kFp8 ? xs : xs + tc_b_row(g, n) * 16 + t * 4;
    const float* mp = kFp8 ? mult : mult + 2 * t;
    bulk_stream<S, kLean, kN, kFp8 ? 1 : 0>(run, acc, xb, mp, n, lane, g, skip_math);
    if constexpr (kFp8) fp8_quad_sum(acc);
    if constexpr (kLean) {
      const float2 m = *reinterpret_cast<const float2*>(mp);  // rows 2t, 2t+1: the same for every chunk
      acc[0] *= m.x;
      acc[1] *= m.y;
      acc[2] *= m.x;
      acc[3] *= m.y;
    }
  }
  if (late_trigger) pdl_trigger();
  if (prefetch_next && !prefetch_early) prefetch();
  if (skip_combine) {
    if (acc[0] == 1.2345f) a.y[0] = acc[1];  // (keeps the stream's sums live)
    return;
  }
  // Cluster combine: this warp's sums go to the start of its ring (every
  // bulk copy it issued has completed: it waited for all its stages).
  fp4_finish<W, kCluster>(a, splits, blockIdx.x, blockIdx.y, tile, active, g, t, acc, ss_part, is_last,
                          reinterpret_cast<float*>(ring));
}

template <int W, int P>
cudaError_t launch_stream(const Fp4MatvecArgs& a, int splits, int64_t kg_per, cudaStream_t stream) {
  static SmemOptIn opt_in;
  const size_t smem = tc_x_bytes(int(4 * kg_per), a.n);
  const cudaError_t e = opt_in.ensure(fp4_stream_kernel<W, P>, smem);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned((a.w.tiles() + W - 1) / W), unsigned(splits));
  return launch(fp4_stream_kernel<W, P>, grid, dim3(W * kWarp), smem, stream, a, splits, kg_per);
}

template <int S, bool kLean, int kN, bool kCluster, bool kFp8 = false>
cudaError_t launch_bulk(const Fp4MatvecArgs& a, int splits, int64_t kg_per, int flags, cudaStream_t stream) {
  static SmemOptIn opt_in;
  auto kernel = fp4_bulk_kernel<S, kLean, kN, kCluster, kFp8>;
  const size_t smem = bulk_ring_bytes(kBulkWarps, S) + (kFp8 ? tc_x8_bytes : tc_x_bytes)(int(4 * kg_per), a.n);
  const cudaError_t e = opt_in.ensure(kernel, smem);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned((a.w.tiles() + kBulkWarps - 1) / kBulkWarps), unsigned(splits));
  // With the cluster combine: one cluster per tile group (its `splits` blocks).
  const dim3 cluster(1, kCluster ? unsigned(splits) : 1u, 1);
  return launch_clustered(kernel, grid, dim3(kBulkWarps * kWarp), smem, stream, cluster, a, splits, kg_per, flags);
}

// Kernel 3's instances: 1, 2 or any number of activation rows; the global
// or the cluster combine.
template <int S, bool kLean, bool kCluster>
cudaError_t launch_bulk_rows(const Fp4MatvecArgs& a, int splits, int64_t kg_per, int flags, cudaStream_t stream) {
  if (a.n == 1) return launch_bulk<S, kLean, 1, kCluster>(a, splits, kg_per, flags, stream);
  if (a.n == 2) return launch_bulk<S, kLean, 2, kCluster>(a, splits, kg_per, flags, stream);
  return launch_bulk<S, kLean, 0, kCluster>(a, splits, kg_per, flags, stream);
}

// The FP8 arithmetic (one or two rows, 4 stages, per-chunk scales).
cudaError_t launch_bulk_fp8(const Fp4MatvecArgs& a, int splits, int64_t kg_per, int flags, bool cluster,
                            cudaStream_t stream) {
#ifdef QWEN35_CUDA_EMU
  // (No clusters in the emulation: as launch_bulk_combine.)
  if (cluster && (!a.partial || !a.counters)) return cudaErrorNotSupported;
#else
  if (cluster)
    return a.n == 1 ? launch_bulk<4, false, 1, true, true>(a, splits, kg_per, flags, stream)
                    : launch_bulk<4, false, 2, true, true>(a, splits, kg_per, flags, stream);
#endif
  return a.n == 1 ? launch_bulk<4, false, 1, false, true>(a, splits, kg_per, flags, stream)
                  : launch_bulk<4, false, 2, false, true>(a, splits, kg_per, flags, stream);
}

template <int S, bool kLean>
cudaError_t launch_bulk_combine(const Fp4MatvecArgs& a, int splits, int64_t kg_per, int flags, bool cluster,
                                cudaStream_t stream) {
#ifdef QWEN35_CUDA_EMU
  // No clusters in the emulation: the global combine adds the same slices
  // in the same order (the cluster's geometry, so the same sums).
  if (cluster && (!a.partial || !a.counters)) return cudaErrorNotSupported;
  return launch_bulk_rows<S, kLean, false>(a, splits, kg_per, flags, stream);
#else
  return cluster ? launch_bulk_rows<S, kLean, true>(a, splits, kg_per, flags, stream)
                 : launch_bulk_rows<S, kLean, false>(a, splits, kg_per, flags, stream);
#endif
}

// Kernel 2 can run these arguments (else kernel 1 does).
bool stream_supported(const Fp4MatvecArgs& a) {
  if (!tc_input_aligned(tc_input(a))) return false;
  if (a.gate_z) {
    const int hc = a.gate_dv / 16;
    if (hc < 1 || hc > 32 || (hc & (hc - 1)) != 0) return false;
  }
  return true;
}

}  // namespace

cudaError_t fp4_repack(const uint8_t* a, const uint8_t* b, uint64_t row_bytes, const Fp4Tiled& dst,
                       cudaStream_t stream) {
  if (dst.cols % kFp4GroupCols != 0 || (dst.pairing == Fp4Pairing::GateUp && (dst.rows % 8 != 0 || !b)))
    return cudaErrorInvalidValue;
  const int64_t threads = dst.tiles() * dst.kgroups() * 32;
  const cudaError_t e = launch_plain(fp4_repack_kernel<false>, dim3(ceil_div(threads, 256)), dim3(256), 0, stream, a,
                                     b, row_bytes, dst, const_cast<uint8_t*>(dst.codes), const_cast<uint8_t*>(dst.scales));
  if (e != cudaSuccess || !dst.codes8) return e;
  return launch_plain(fp4_repack_kernel<true>, dim3(ceil_div(threads, 256)), dim3(256), 0, stream, a, b, row_bytes,
                      dst, const_cast<uint8_t*>(dst.codes8), static_cast<uint8_t*>(nullptr));
}

template <typename Out>
static cudaError_t fp4_dequant(const Fp4Tiled& w, int64_t r0, int64_t nr, Out* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  // The BF16 kernel stores 16-byte words (the column count is a multiple of
  // the 64-column kgroup).
  if (sizeof(Out) == 2 && (reinterpret_cast<uintptr_t>(dst) & 15u) != 0) return cudaErrorInvalidValue;
  const int64_t units = w.tiles() * w.kgroups();
  return launch_plain(fp4_dequant_kernel<Out>, dim3(ceil_div(units, kWarps)), dim3(kWarps * kWarp), 0, stream, w, r0,
                     nr, dst);
}

cudaError_t fp4_dequant_rows_bf16(const Fp4Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return fp4_dequant<uint16_t>(w, r0, nr, dst, stream);
}

cudaError_t fp4_dequant_rows_f32(const Fp4Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return fp4_dequant<float>(w, r0, nr, dst, stream);
}

int fp4_splits(const Fp4Tiled& w, int sms, int align_kg) {
  const int64_t groups = (w.tiles() + kWarps - 1) / kWarps;
  const int64_t target = 2 * int64_t(std::max(sms, 1));
  int64_t s = (target + groups / 2) / groups;
  s = std::max<int64_t>(1, std::min<int64_t>({s, kMaxSplits, w.kgroups()}));
  // The x slice of 8 rows must fit the shared memory of every target (96 KiB).
  s = std::max<int64_t>(s, (w.kgroups() + kMaxSliceKgroups - 1) / kMaxSliceKgroups);
  int64_t per = (w.kgroups() + s - 1) / s;
  per = (per + align_kg - 1) / align_kg * align_kg;
  return int((w.kgroups() + per - 1) / per);
}

bool fp4_gated_supported(const Fp4Tiled& w, int gate_dv) {
  return gate_dv > 0 && gate_dv % kFp4GroupCols == 0 && w.cols % gate_dv == 0 &&
         w.cols <= int64_t(kMaxGatedHeads) * gate_dv;
}

uint64_t fp4_partial_floats(const Fp4Tiled& w, int sms) {
  // Enough for every kernel and tuning (the tuning may change at run time).
  int64_t s = fp4_splits(w, sms);
  for (int warps : {4, 8})
    for (int bps = 1; bps <= kFp4MaxBlocksPerSm; ++bps) {
      const int64_t per = stream_kg_per(w, sms, 1, warps, bps);
      s = std::max(s, (w.kgroups() + per - 1) / per);
    }
  return s > 1 ? uint64_t(s) * uint64_t(w.tiles()) * kFp4TileRows * kMatvecMaxCols : 0;
}

uint64_t fp4_counter_ints(const Fp4Tiled& w) { return uint64_t((w.tiles() + kWarps - 1) / kWarps); }

Fp4BulkGeometry fp4_bulk_geometry(const Fp4Tiled& w, int sms, int align, int blocks_per_sm, bool cluster) {
  Fp4BulkGeometry geo;
  geo.kg_per = stream_kg_per(w, sms, align, kBulkWarps, blocks_per_sm);
  geo.splits = int((w.kgroups() + geo.kg_per - 1) / geo.kg_per);
  geo.cluster = cluster;
  if (cluster && geo.splits > kMaxClusterSplits) {
    // A cluster holds at most 8 blocks (portable size): wider slices.
    const int64_t per = (w.kgroups() + kMaxClusterSplits - 1) / kMaxClusterSplits;
    const int64_t kg_per = (per + align - 1) / align * align;
    if (kg_per <= kStreamMaxSliceKg) {
      geo.kg_per = kg_per;
      geo.splits = int((w.kgroups() + kg_per - 1) / kg_per);
    } else {
      geo.cluster = false;
    }
  }
  return geo;
}

// The arguments are complete and consistent (any kernel).
static bool fp4_args_valid(const Fp4MatvecArgs& a) {
  if (a.n < 1 || a.n > kMatvecMaxCols || !a.w.present()) return false;
  if (a.epilogue == Fp4Epilogue::SwiGLU && a.w.pairing != Fp4Pairing::GateUp) return false;
  if (a.epilogue == Fp4Epilogue::Conv &&
      (a.n > 2 || a.w.pairing != Fp4Pairing::Plain || !a.conv_taps || !a.conv_window || a.conv_k < 1 ||
       a.conv_channels > a.w.rows))
    return false;
  return !a.gate_z || (a.gate_w && fp4_gated_supported(a.w, a.gate_dv));
}

bool fp4_bulk_supported(const Fp4MatvecArgs& a) {
  const bool aligned = ((reinterpret_cast<uintptr_t>(a.w.codes) | reinterpret_cast<uintptr_t>(a.w.scales)) & 15u) == 0;
  return fp4_args_valid(a) && stream_supported(a) && aligned;
}

cudaError_t fp4_matvec(const Fp4MatvecArgs& a, int sms, cudaStream_t stream) {
  if (!fp4_args_valid(a)) return cudaErrorInvalidValue;
  const int align = a.gate_z ? a.gate_dv / kFp4GroupCols : 1;
  const DecodeTuning tune = decode_tuning();
  if (tune.fp4_kernel == 3 && stream_supported(a)) {
    // Kernel 3 needs 16-byte aligned weight runs for the bulk copies (the
    // upload arena's alignment; checked, not assumed) and its shared memory.
    const Fp4BulkGeometry geo = fp4_bulk_geometry(a.w, sms, align, tune.fp4_blocks_per_sm, tune.fp4_cluster != 0);
    const int64_t kg_per = geo.kg_per;
    const int splits = geo.splits;
    bool cluster = geo.cluster;
    const bool aligned = ((reinterpret_cast<uintptr_t>(a.w.codes) | reinterpret_cast<uintptr_t>(a.w.scales)) & 15u) == 0;
    // The FP8 arithmetic where its codes were uploaded (fp4_fp8 at load, on sm_89 or later).
    const bool fp8 = tune.fp4_fp8 && a.w.codes8 && (a.n == 1 || a.n == 2) && !tune.fp4_lean &&
                     (reinterpret_cast<uintptr_t>(a.w.codes8) & 15u) == 0;
    const size_t smem = fp8 ? bulk_ring_bytes(kBulkWarps, 4) + tc_x8_bytes(int(4 * kg_per), a.n)
                            : bulk_ring_bytes(kBulkWarps, tune.fp4_stages) + tc_x_bytes(int(4 * kg_per), a.n);
    if (aligned && smem <= max_dynamic_smem()) {
      if (splits > 1 && !cluster && (!a.partial || !a.counters)) return cudaErrorInvalidValue;
      const bool next_ok = a.next.codes && a.next.scales &&
                           ((reinterpret_cast<uintptr_t>(a.next.codes) | reinterpret_cast<uintptr_t>(a.next.scales)) & 15u) == 0;
      const int probe = (tune.fp4_probe & kFp4ProbeNoMath ? kBulkSkipMath : 0) |
                        (tune.fp4_probe & kFp4ProbeNoX ? kBulkSkipX : 0) |
                        (tune.fp4_probe & kFp4ProbeNoCombine ? kBulkSkipCombine : 0) |
                        (tune.fp4_late_pdl ? kBulkLateTrigger : 0) | (tune.fp4_x_l1 ? kBulkXL1 : 0) |
                        (tune.fp4_prefetch && next_ok ? kBulkPrefetchNext : 0) |
                        (tune.fp4_prefetch == 2 ? kBulkPrefetchEarly : 0);
      cluster = cluster && splits > 1;
      if (fp8) return launch_bulk_fp8(a, splits, kg_per, probe, cluster, stream);
      if (tune.fp4_stages == 8 && !tune.fp4_lean)
        return launch_bulk_combine<8, false>(a, splits, kg_per, probe, cluster, stream);
      if (tune.fp4_stages == 2)
        return tune.fp4_lean ? launch_bulk_combine<2, true>(a, splits, kg_per, probe, cluster, stream)
                             : launch_bulk_combine<2, false>(a, splits, kg_per, probe, cluster, stream);
      return tune.fp4_lean ? launch_bulk_combine<4, true>(a, splits, kg_per, probe, cluster, stream)
                           : launch_bulk_combine<4, false>(a, splits, kg_per, probe, cluster, stream);
    }
  }
  if (tune.fp4_kernel >= 2 && stream_supported(a)) {
    const int64_t kg_per = stream_kg_per(a.w, sms, align, tune.fp4_warps, tune.fp4_blocks_per_sm);
    const int splits = int((a.w.kgroups() + kg_per - 1) / kg_per);
    if (splits > 1 && (!a.partial || !a.counters)) return cudaErrorInvalidValue;
    const bool w8 = tune.fp4_warps == 8;
    switch (tune.fp4_depth) {
      case 4: return w8 ? launch_stream<8, 4>(a, splits, kg_per, stream) : launch_stream<4, 4>(a, splits, kg_per, stream);
      case 16:
        return w8 ? launch_stream<8, 16>(a, splits, kg_per, stream) : launch_stream<4, 16>(a, splits, kg_per, stream);
      default: return w8 ? launch_stream<8, 8>(a, splits, kg_per, stream) : launch_stream<4, 8>(a, splits, kg_per, stream);
    }
  }
  const int splits = fp4_splits(a.w, sms, align);
  if (splits > 1 && (!a.partial || !a.counters)) return cudaErrorInvalidValue;
  int64_t kg_per = (a.w.kgroups() + splits - 1) / splits;
  kg_per = (kg_per + align - 1) / align * align;
  const size_t smem = size_t(a.n) * size_t(kg_per) * kFp4GroupCols * sizeof(uint16_t);
  static SmemOptIn opt_in;
  const cudaError_t e = opt_in.ensure(fp4_matvec_kernel, smem);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned((a.w.tiles() + kWarps - 1) / kWarps), unsigned(splits));
  return launch(fp4_matvec_kernel, dim3(grid), dim3(kWarps * kWarp), smem, stream, a, splits, kg_per);
}

}  // namespace qwen35::cuda
