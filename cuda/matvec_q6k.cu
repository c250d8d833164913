// Q6_K kernels (see matvec_q6k.h).
//
// Kernel 1, Q6kRows32 layout (q6k_rows32.h): the matrix-vector product
// gives each thread one row: x is in shared memory and every thread of a
// warp reads the same x element at once (a broadcast), while the warp's
// weight loads are contiguous 512 + 256 + 64 bytes per 32 columns. 6-bit
// codes become floats with the 2^23 trick (exact). About 7 instructions per
// weight: at batch 1 it is bound by instruction issue, not memory.
//
// Kernel 2, Q6kTiled layout (q6k_tiled.h): the structure of the NVFP4
// streaming kernel (matvec_fp4.cu): one 16-row tile per warp, mma.sync
// m16n8k16 per 16-column sub-block with the codes turned into F16 q - 32 by
// three shifts/masks and one F16 subtraction per register, P kgroups in
// flight per warp (the first before the PDL wait), activations as F16 per
// chunk with power-of-two chunk scales (tc_load_x). No split of K: the
// LM head has thousands of tiles.
//
// Kernel 3 (QWEN35_CUDA_Q6K_KERNEL=3), the same layout: kernel 2's
// arithmetic (q6kt_kgroup), with the weights moved like the NVFP4 kernel
// 3's: lane 0 of each warp copies stages of 4 kgroups (lo, hi, sc and the
// super-scales: 3,360 bytes) with cp.async.bulk into a ring of S stages in
// shared memory, so a warp keeps S x 3.3 KiB in flight (kernel 2 with P =
// 4: 3.3 KiB in registers). Persistent: each warp walks tiles tile0,
// tile0 + stride, ..., its ring running on across tile boundaries, and a
// block converts the activations once.
//
// Either kernel can keep, per activation row, the maximum of what it
// stores (HeadArgmax): each lane tracks its two columns over its tiles, a
// warp combines its lanes, and a packed 64-bit atomicMax per warp and row
// (only when it beats the value already there) collects the rows' maxima;
// the last block converts them into indices.

#include "common.cuh"
#include "launch.cuh"
#include "matvec_q6k.h"
#include "tc_common.cuh"
#include "tiles_matvec.cuh"
#include "tuning.h"

namespace qwen35::cuda {

namespace {

constexpr int kThreads = 256;

// One thread per (row, chunk) of rows r0 .. r1-1; src holds row r0 first.
__global__ void q6k_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                  Q6kRows32 dst, uint8_t* __restrict__ ql, uint8_t* __restrict__ qh,
                                  int8_t* __restrict__ sc, uint16_t* __restrict__ d) {
  const int64_t chunks = dst.chunks();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= (r1 - r0) * chunks) return;
  const int64_t r = r0 + i / chunks, c = i % chunks;
  const int64_t u = dst.unit(r, c);
  uint32_t l4[4] = {0, 0, 0, 0}, h2[2] = {0, 0};
  int8_t s[2] = {0, 0};
  uint16_t dd = 0;
  if (r < dst.rows)
    q6k_pack_unit(src + uint64_t(r - r0) * row_bytes + uint64_t(c / 8) * 210, int(c % 8), l4, h2, s, &dd);
  reinterpret_cast<uint4*>(ql)[u] = make_uint4(l4[0], l4[1], l4[2], l4[3]);
  reinterpret_cast<uint2*>(qh)[u] = make_uint2(h2[0], h2[1]);
  sc[2 * u] = s[0];
  sc[2 * u + 1] = s[1];
  if (c % 8 == 0) d[dst.d_index(r, c)] = dd;
}

__device__ __forceinline__ float code_value(uint32_t q) { return __int_as_float(0x4B000000u | q) - 8388640.0f; }

__global__ void __launch_bounds__(kThreads) q6k_matvec_kernel(Q6kRows32 w, const float* __restrict__ x, int64_t ldx,
                                                               int n, float* __restrict__ y, int64_t ldy, bool add) {
  pdl_prologue();
  float* xs = dynamic_smem<float>();  // [n][K]
  const int64_t K = w.cols, chunks = w.chunks();
  for (int j = 0; j < n; ++j)
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) xs[j * K + k] = x[j * ldx + k];
  __syncthreads();
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= w.groups() * 32) return;
  float acc[kMatvecMaxCols];
#pragma unroll
  for (int j = 0; j < kMatvecMaxCols; ++j) acc[j] = 0.0f;
  const uint4* qlp = reinterpret_cast<const uint4*>(w.ql);
  const uint2* qhp = reinterpret_cast<const uint2*>(w.qh);
  const uint16_t* scp = reinterpret_cast<const uint16_t*>(w.sc);
  float dv = 0.0f;
#pragma unroll 2
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t u = w.unit(r, c);
    const uint4 q = __ldg(qlp + u);
    const uint2 h = __ldg(qhp + u);
    const uint32_t s = __ldg(scp + u);
    if (c % 8 == 0) dv = __half2float(__ushort_as_half(__ldg(w.d + w.d_index(r, c))));
    const uint32_t l4[4] = {q.x, q.y, q.z, q.w}, h2[2] = {h.x, h.y};
    const float sub_scale[2] = {dv * float(int8_t(s & 0xFFu)), dv * float(int8_t(s >> 8))};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float v[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = code_value(q6k_rows32_code(l4, h2, 16 * half + i));
#pragma unroll
      for (int j = 0; j < kMatvecMaxCols; ++j) {
        if (j < n) {
          const float4* xv = reinterpret_cast<const float4*>(xs + j * K + 32 * c + 16 * half);
          float p = 0.0f;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float4 xx = xv[i];
            p = fmaf(v[4 * i], xx.x, p);
            p = fmaf(v[4 * i + 1], xx.y, p);
            p = fmaf(v[4 * i + 2], xx.z, p);
            p = fmaf(v[4 * i + 3], xx.w, p);
          }
          acc[j] = fmaf(p, sub_scale[half], acc[j]);
        }
      }
    }
  }
  if (r >= w.rows) return;
#pragma unroll
  for (int j = 0; j < kMatvecMaxCols; ++j) {
    if (j < n) {
      float* out = y + j * ldy + r;
      const float val = acc[j] * w.scale;
      *out = add ? *out + val : val;
    }
  }
}

// Element values of row r, chunk c (32 floats, scale not applied).
__device__ void q6k_load_chunk(const Q6kRows32& w, int64_t r, int64_t c, float* out) {
  const int64_t u = w.unit(r, c);
  const uint4 q = reinterpret_cast<const uint4*>(w.ql)[u];
  const uint2 h = reinterpret_cast<const uint2*>(w.qh)[u];
  const uint32_t l4[4] = {q.x, q.y, q.z, q.w}, h2[2] = {h.x, h.y};
  const float dv = __half2float(__ushort_as_half(w.d[w.d_index(r, c)]));
  const float s0 = dv * float(w.sc[2 * u]), s1 = dv * float(w.sc[2 * u + 1]);
  for (int i = 0; i < 32; ++i) out[i] = (i < 16 ? s0 : s1) * float(int(q6k_rows32_code(l4, h2, i)) - 32);
}

template <typename Out>
__global__ void q6k_dequant_kernel(Q6kRows32 w, int64_t r0, int64_t nr, const int32_t* __restrict__ tokens,
                                   Out* __restrict__ dst, int64_t ldo) {
  pdl_prologue();
  const int64_t chunks = w.chunks();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nr * chunks) return;
  const int64_t t = i / chunks, c = i % chunks;
  const int64_t r = tokens ? int64_t(tokens[t]) : r0 + t;
  if (r < 0 || r >= w.rows) return;
  float v[32];
  q6k_load_chunk(w, r, c, v);
  Out* o = dst + t * ldo + 32 * c;
  for (int k = 0; k < 32; ++k) {
    if constexpr (sizeof(Out) == 4) o[k] = v[k];
    else o[k] = __bfloat16_as_ushort(__float2bfloat16_rn(v[k]));
  }
}

// ---- kernel 2: tiled layout ----------------------------------------------------------

// One thread per (tile, kgroup, lane) of the tiles of rows r0 .. r1-1; src
// holds row r0 first.
__global__ void q6kt_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                   Q6kTiled dst, uint8_t* __restrict__ lo, uint8_t* __restrict__ hi,
                                   int8_t* __restrict__ sc, uint16_t* __restrict__ d) {
  const int64_t kg_n = dst.kgroups();
  int lane;
  int64_t kg, tile;
  const uint8_t* block[kFp4TileRows];  // the 256-column block holding the kgroup
  if (!tiles_repack_item(src, row_bytes, r0, r1, dst.rows, dst.paired, kg_n, 4, 210, &lane, &kg, &tile, block))
    return;
  uint32_t l[4], h[2] = {0, 0};
  for (int w = 0; w < 4; ++w) {
    uint32_t hw = 0;
    q6kt_lane_words(block, int(kg % 4), lane, w, &l[w], &hw);
    h[w / 2] |= hw;
  }
  const int64_t unit = tile * kg_n + kg;
  reinterpret_cast<uint4*>(lo)[unit * 32 + lane] = make_uint4(l[0], l[1], l[2], l[3]);
  reinterpret_cast<uint2*>(hi)[unit * 32 + lane] = make_uint2(h[0], h[1]);
  if ((lane & 3) == 0) {
    const int g = lane >> 2;
    q6kt_g_scales(block, int(kg % 4), g, sc + unit * 64 + 8 * g);
    if (kg % 4 == 0) reinterpret_cast<uint32_t*>(d)[(tile * (kg_n / 4) + kg / 4) * 8 + g] = q6kt_g_d(block, g);
  }
}

// One kgroup (64 columns, four mma) of a lane's tile rows (kernels 2 and
// 3): low and high code bits l4 and h2, sub-block scales s2, the
// super-scales of rows g and g+8, activation chunks at xb / multipliers at
// mp (as fp4_kgroup).
__device__ __forceinline__ void q6kt_kgroup(float* acc, uint4 l4, uint2 h2, uint2 s2, float d_g, float d_g8, int i,
                                            const uint16_t* xb, const float* mp, int n) {
  const __half2 k1056 = __floats2half2_rn(1056.0f, 1056.0f);
  const uint32_t lw[4] = {l4.x, l4.y, l4.z, l4.w};
#pragma unroll
  for (int wd = 0; wd < 4; ++wd) {
    const int c = 4 * i + wd;
    const uint32_t hw = wd < 2 ? h2.x : h2.y;
    uint32_t ar[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t biased = q6kt_reg(lw[wd], hw, wd, r);  // 1024 + q per half
      const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&biased), k1056);
      ar[r] = *reinterpret_cast<const uint32_t*>(&v);
    }
    const uint2 bv = *reinterpret_cast<const uint2*>(xb + c * n * 16);
    float dm[4];
    mma_f16(dm, ar, bv.x, bv.y);
    const float2 m = *reinterpret_cast<const float2*>(mp + c * kMatvecMaxCols);  // rows 2t, 2t+1
    const uint32_t sw = (wd < 2 ? s2.x : s2.y) >> (16 * (wd & 1));
    const float s0 = d_g * float(int8_t(sw & 0xFFu)), s1 = d_g8 * float(int8_t((sw >> 8) & 0xFFu));
    acc[0] = fmaf(dm[0], s0 * m.x, acc[0]);
    acc[1] = fmaf(dm[1], s0 * m.y, acc[1]);
    acc[2] = fmaf(dm[2], s1 * m.x, acc[2]);
    acc[3] = fmaf(dm[3], s1 * m.y, acc[3]);
  }
}

// The finished outputs of a lane's tile rows (kernels 2 and 3).
__device__ __forceinline__ void q6kt_store(const Q6kTiled& w, int64_t tile, int g, int t, int n, const float* acc,
                                           float* y, int64_t ldy, bool add) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t row = tile * kFp4TileRows + g + 8 * (e >> 1);
    const int j = 2 * t + (e & 1);
    if (row < w.rows && j < n) {
      float* out = y + j * ldy + row;
      const float v = acc[e] * w.scale;
      *out = add ? *out + v : v;
    }
  }
}

// ---- the greedy epilogue ----

// The packed key of a stored value v of row `row`: larger for a larger
// value, and among equal values for a smaller row (-0 counts as +0). NaN
// gets no key; 0 is below every key (the order bits of a non-NaN value are
// never all zero).
__device__ __forceinline__ unsigned long long argmax_key(float v, int64_t row) {
  uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(b) << 32) | (0xFFFFFFFFu - uint32_t(row));
}

// keys[c] = the maximum key of column 2t + c over the values q6kt_store
// (Store) wrote for this tile and the earlier ones.
__device__ __forceinline__ void q6kt_track(const Q6kTiled& w, int64_t tile, int g, int t, int n, const float* acc,
                                           unsigned long long* keys) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t row = tile * kFp4TileRows + g + 8 * (e >> 1);
    const int j = 2 * t + (e & 1);
    const float v = acc[e] * w.scale;  // the stored value (v == v: not NaN)
    if (row < w.rows && j < n && v == v) keys[e & 1] = max(keys[e & 1], argmax_key(v, row));
  }
}

// Every thread of the block, after its warp's last q6kt_track.
__device__ __forceinline__ void head_argmax_finish(const HeadArgmax& am, unsigned long long* keys, int n, int lane,
                                                   bool* is_last) {
#pragma unroll
  for (int o = 4; o < kWarp; o <<= 1) {  // the 8 lanes of each column pair (same t)
    keys[0] = max(keys[0], __shfl_xor_sync(0xFFFFFFFFu, keys[0], o));
    keys[1] = max(keys[1], __shfl_xor_sync(0xFFFFFFFFu, keys[1], o));
  }
  if (lane < 4) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int j = 2 * lane + c;
      if (j < n && keys[c] > __ldcg(am.best + j)) atomicMax(am.best + j, keys[c]);
    }
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) *is_last = atomicAdd(am.done, 1) == int(gridDim.x) - 1;
  __syncthreads();
  if (!*is_last) return;
  __threadfence();
  if (int(threadIdx.x) < n) {
    const unsigned long long k = __ldcg(am.best + threadIdx.x);
    am.out[threadIdx.x] = k ? int32_t(0xFFFFFFFFu - uint32_t(k & 0xFFFFFFFFu)) : 0;
    am.best[threadIdx.x] = 0;
  }
  if (threadIdx.x == 0) *am.done = 0;
}

// One warp per tile, or (a grid smaller than tiles / W: the persistent
// launch) tiles tile0, tile0 + gridDim.x * W, ... in turn, so a block
// converts the activations once for many tiles.
template <int W, int P, bool kArgmax>
__global__ void __launch_bounds__(W * kWarp) q6kt_matvec_kernel(Q6kTiled w, TcInput in, float* __restrict__ y,
                                                                 int64_t ldy, bool add, HeadArgmax am) {
  static_assert(P % 4 == 0, "a super-scale covers 4 kgroups");
  uint8_t* smem_raw = dynamic_smem<uint8_t>();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int n = in.n;
  const int kg_n = int(w.kgroups());  // a multiple of 4
  const int nch = 4 * kg_n;
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem_raw);                           // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(smem_raw + size_t(nch) * size_t(n) * 32);  // [nch][8]
  const int64_t tiles = w.tiles(), stride = int64_t(gridDim.x) * W;
  int64_t tile = int64_t(blockIdx.x) * W + warp;

  // The pointers of a tile and its first P kgroups (and their super-scales).
  const uint4* lp = nullptr;
  const uint2 *hp = nullptr, *sp = nullptr;
  const uint32_t* dp = nullptr;
  uint4 lb[P];
  uint2 hb[P], sb[P];
  uint32_t db[P / 4];
  auto start = [&](int64_t tl) {
    const int64_t unit0 = tl * kg_n;
    lp = reinterpret_cast<const uint4*>(w.lo) + unit0 * 32 + lane;
    hp = reinterpret_cast<const uint2*>(w.hi) + unit0 * 32 + lane;
    sp = reinterpret_cast<const uint2*>(w.sc) + unit0 * 8 + g;
    dp = reinterpret_cast<const uint32_t*>(w.d) + tl * (kg_n / 4) * 8 + g;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      lb[p] = make_uint4(0, 0, 0, 0);
      hb[p] = sb[p] = make_uint2(0, 0);
      if (p % 4 == 0) db[p / 4] = 0;
      if (tl < tiles && p < kg_n) {
        lb[p] = ld_stream(lp + p * 32);
        hb[p] = ld_stream(hp + p * 32);
        sb[p] = ld_stream(sp + p * 8);
        if (p % 4 == 0) db[p / 4] = ld_stream(dp + (p / 4) * 8);
      }
    }
  };

  // 1. The first tile's first P kgroups, before waiting for the previous kernel.
  start(tile);
  pdl_wait_and_trigger();

  // 2. The activations, once per block.
  tc_load_x(in, 0, nch, xs, mult);
  __syncthreads();

  // 3. Stream each tile (no barriers from here to the greedy epilogue: the
  // warps go their own ways).
  unsigned long long keys[2] = {0, 0};                      // (kArgmax)
  const uint16_t* xb = xs + tc_b_row(g, n) * 16 + t * 4;  // + chunk * n * 16
  const float* mp = mult + 2 * t;            // + chunk * 8
  for (bool first = true; tile < tiles; tile += stride, first = false) {
    if (!first) start(tile);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float d_g = 0.0f, d_g8 = 0.0f;
    for (int i0 = 0; i0 < kg_n; i0 += P) {
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = i0 + p;
        if (i < kg_n) {
          const uint4 l4 = lb[p];
          const uint2 h2 = hb[p], s2 = sb[p];
          if (p % 4 == 0) {  // a new 256-column block: its super-scales
            const uint32_t dd = db[p / 4];
            d_g = __half2float(__ushort_as_half(uint16_t(dd & 0xFFFFu)));
            d_g8 = __half2float(__ushort_as_half(uint16_t(dd >> 16)));
          }
          if (i + P < kg_n) {
            lb[p] = ld_stream(lp + (i + P) * 32);
            hb[p] = ld_stream(hp + (i + P) * 32);
            sb[p] = ld_stream(sp + (i + P) * 8);
            if (p % 4 == 0) db[p / 4] = ld_stream(dp + ((i + P) / 4) * 8);
          }
          q6kt_kgroup(acc, l4, h2, s2, d_g, d_g8, i, xb, mp, n);
        }
      }
    }
    q6kt_store(w, tile, g, t, n, acc, y, ldy, add);
    if constexpr (kArgmax) q6kt_track(w, tile, g, t, n, acc, keys);
  }
  if constexpr (kArgmax) {
    __shared__ bool is_last;
    head_argmax_finish(am, keys, n, lane, &is_last);
  }
}

// ---- kernel 3: bulk copies into shared memory ----

constexpr int kQ6kBulkWarps = 4;
// A stage: 4 kgroups of lo (4 x 512), hi (4 x 256), sc (4 x 64) and their
// super-scales (32), each a contiguous run of its array.
constexpr int kQ6kStageLo = 0, kQ6kStageHi = 2048, kQ6kStageSc = 3072, kQ6kStageD = 3328, kQ6kStageBytes = 3360;
constexpr size_t q6k_ring_bytes(int stages) { return size_t(kQ6kBulkWarps) * stages * (kQ6kStageBytes + 8); }

template <int S, bool kArgmax>
__global__ void __launch_bounds__(kQ6kBulkWarps * kWarp) q6kt_bulk_kernel(Q6kTiled w, TcInput in, float* __restrict__ y,
                                                                         int64_t ldy, bool add, HeadArgmax am) {
  constexpr int W = kQ6kBulkWarps;
  uint8_t* smem_raw = dynamic_smem<uint8_t>();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int n = in.n;
  const int kg_n = int(w.kgroups());  // a multiple of 4
  const int nch = 4 * kg_n, nst = kg_n / 4;
  uint8_t* ring = smem_raw + size_t(warp) * S * kQ6kStageBytes;                                         // [S][3360]
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem_raw + size_t(W) * S * kQ6kStageBytes) + warp * S;  // [S]
  uint8_t* xbase = smem_raw + q6k_ring_bytes(S);
  uint16_t* xs = reinterpret_cast<uint16_t*>(xbase);                           // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(xbase + size_t(nch) * size_t(n) * 32);  // [nch][8]
  // This warp's tiles: tile0, tile0 + stride, ...; stage q of its walk is
  // stage q % nst of its tile q / nst.
  const int64_t tiles = w.tiles(), stride = int64_t(gridDim.x) * W, tile0 = int64_t(blockIdx.x) * W + warp;
  const int64_t count = tile0 < tiles ? (tiles - tile0 + stride - 1) / stride : 0;
  const int64_t total = count * nst;
  auto issue = [&](int64_t q) {  // lane 0
    const int64_t tile = tile0 + (q / nst) * stride;
    const int64_t st = q % nst, unit = tile * kg_n + 4 * st;
    uint8_t* dst = ring + (q % S) * kQ6kStageBytes;
    const uint32_t bar = smem_addr(bars + q % S);
    mbar_expect_tx(bar, kQ6kStageBytes);
    bulk_copy_g2s(smem_addr(dst + kQ6kStageLo), w.lo + unit * 512, 2048, bar);
    bulk_copy_g2s(smem_addr(dst + kQ6kStageHi), w.hi + unit * 256, 1024, bar);
    bulk_copy_g2s(smem_addr(dst + kQ6kStageSc), w.sc + unit * 64, 256, bar);
    bulk_copy_g2s(smem_addr(dst + kQ6kStageD), w.d + (tile * nst + st) * 16, 32, bar);
  };

  // 1. The first S stages (weights are never written by a kernel).
  if (lane == 0) {
    for (int i = 0; i < S; ++i) mbar_init(smem_addr(bars + i), 1);
    for (int64_t q = 0; q < S && q < total; ++q) issue(q);
  }
  __syncwarp();
  pdl_wait_and_trigger();

  // 2. The activations, once per block.
  tc_load_x(in, 0, nch, xs, mult);
  __syncthreads();

  // 3. Walk the stages (no barriers from here to the greedy epilogue: the
  // warps go their own ways).
  const uint16_t* xb = xs + tc_b_row(g, n) * 16 + t * 4;
  const float* mp = mult + 2 * t;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  unsigned long long keys[2] = {0, 0};  // (kArgmax)
  for (int64_t q = 0; q < total; ++q) {
    const uint8_t* src = ring + (q % S) * kQ6kStageBytes;
    mbar_wait(smem_addr(bars + q % S), uint32_t(q / S) & 1u);
    uint4 l4[4];
    uint2 h2[4], s2[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      l4[k] = *reinterpret_cast<const uint4*>(src + kQ6kStageLo + k * 512 + lane * 16);
      h2[k] = *reinterpret_cast<const uint2*>(src + kQ6kStageHi + k * 256 + lane * 8);
      s2[k] = *reinterpret_cast<const uint2*>(src + kQ6kStageSc + k * 64 + g * 8);
    }
    const uint32_t dd = *reinterpret_cast<const uint32_t*>(src + kQ6kStageD + g * 4);
    // The slot is free once every lane has its values: request stage q + S.
    __syncwarp();
    if (lane == 0 && q + S < total) {
      fence_proxy_async_smem();
      issue(q + S);
    }
    const float d_g = __half2float(__ushort_as_half(uint16_t(dd & 0xFFFFu)));
    const float d_g8 = __half2float(__ushort_as_half(uint16_t(dd >> 16)));
    const int st = int(q % nst);
#pragma unroll
    for (int k = 0; k < 4; ++k) q6kt_kgroup(acc, l4[k], h2[k], s2[k], d_g, d_g8, 4 * st + k, xb, mp, n);
    if (st == nst - 1) {  // the tile is done
      q6kt_store(w, tile0 + (q / nst) * stride, g, t, n, acc, y, ldy, add);
      if constexpr (kArgmax) q6kt_track(w, tile0 + (q / nst) * stride, g, t, n, acc, keys);
      acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
    }
  }
  if constexpr (kArgmax) {
    __shared__ bool is_last;
    head_argmax_finish(am, keys, n, lane, &is_last);
  }
}

// Element values of row r (tile row i), columns 16*c .. 16*c+15 of the row.
__device__ void q6kt_load_chunk(const Q6kTiled& w, int64_t r, int64_t c, float* out) {
  const int64_t kg_n = w.kgroups(), tile = r / kFp4TileRows, kg = c / 4;
  const int i = int(r % kFp4TileRows), wd = int(c % 4);
  const int64_t unit = tile * kg_n + kg;
  const uint32_t* lo = reinterpret_cast<const uint32_t*>(w.lo) + unit * 32 * 4;
  const uint32_t* hi = reinterpret_cast<const uint32_t*>(w.hi) + unit * 32 * 2;
  const float d = __half2float(__ushort_as_half(w.d[((tile * (kg_n / 4) + kg / 4) * 8 + (i & 7)) * 2 + (i >> 3)]));
  const float s = d * float(w.sc[unit * 64 + fp4_scale_byte(i, wd)]);
  for (int k = 0; k < 16; ++k) {
    int lane, w2, p;
    q6kt_position(i, 16 * wd + k, &lane, &w2, &p);
    const uint32_t q = q6kt_code(lo[lane * 4 + wd], hi[lane * 2 + wd / 2], wd, p);
    out[k] = s * float(int(q) - 32);
  }
}


// Multiprocessors of the current device (2 in the emulation).
int multiprocessors() {
#ifdef QWEN35_CUDA_EMU
  return 2;
#else
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 1;
  return std::max(sms, 1);
#endif
}

template <int W, int P, bool kArgmax>
cudaError_t launch_q6kt(const Q6kTiled& w, const TcInput& in, float* y, int64_t ldy, bool add, const HeadArgmax& am,
                        cudaStream_t stream) {
  static SmemOptIn opt_in;
  const size_t smem = tc_x_bytes(int(w.cols / 16), in.n);
  if (const cudaError_t e = opt_in.ensure(q6kt_matvec_kernel<W, P, kArgmax>, smem); e != cudaSuccess) return e;
  // Persistent (tuning q6k_persist = blocks per multiprocessor): fewer
  // blocks than tiles / W, each converting the activations once.
  int64_t blocks = (w.tiles() + W - 1) / W;
  const int persist = decode_tuning().q6k_persist;
  if (persist > 0) blocks = std::min<int64_t>(blocks, int64_t(persist) * multiprocessors());
  return launch(q6kt_matvec_kernel<W, P, kArgmax>, dim3(unsigned(blocks)), dim3(W * kWarp), smem, stream, w, in, y,
                ldy, add, am);
}

// Kernel 3: persistent, blocks per multiprocessor from the tuning
// (q6k_persist) or 3 (what its shared memory allows at 1 row).
template <int S, bool kArgmax>
cudaError_t launch_q6kt_bulk(const Q6kTiled& w, const TcInput& in, float* y, int64_t ldy, bool add,
                             const HeadArgmax& am, cudaStream_t stream) {
  static SmemOptIn opt_in;
  const size_t smem = q6k_ring_bytes(S) + tc_x_bytes(int(w.cols / 16), in.n);
  if (const cudaError_t e = opt_in.ensure(q6kt_bulk_kernel<S, kArgmax>, smem); e != cudaSuccess) return e;
  const int persist = decode_tuning().q6k_persist;
  const int64_t blocks =
      std::min<int64_t>((w.tiles() + kQ6kBulkWarps - 1) / kQ6kBulkWarps, int64_t(persist > 0 ? persist : 3) * multiprocessors());
  return launch(q6kt_bulk_kernel<S, kArgmax>, dim3(unsigned(blocks)), dim3(kQ6kBulkWarps * kWarp), smem, stream, w, in,
                y, ldy, add, am);
}

// The tiled layout as a format of tiles_matvec.cuh (Q6_K projections: the
// warps of a block share a tile by column slices, for the few-tile shapes
// that kernel 2's warp per tile leaves idle); kernel 2's arithmetic.
struct Q6kFormat {
  using Weight = Q6kTiled;
  struct Frag {
    uint4 lo;
    uint2 hi, sc;
    uint32_t d;  // the super-scales of rows g, g+8 of the kgroup's 256 columns
  };
  static constexpr bool kXsum = false;
  static constexpr int kDepth = 4;
  __device__ static Frag zero() { return Frag{make_uint4(0, 0, 0, 0), make_uint2(0, 0), make_uint2(0, 0), 0u}; }
  __device__ static Frag load(const Q6kTiled& w, int64_t tile, int kg, int lane) {
    const int64_t kg_n = w.kgroups(), unit = tile * kg_n + kg;
    const int g = lane >> 2;
    return Frag{ld_stream(reinterpret_cast<const uint4*>(w.lo) + unit * 32 + lane),
                ld_stream(reinterpret_cast<const uint2*>(w.hi) + unit * 32 + lane),
                ld_stream(reinterpret_cast<const uint2*>(w.sc) + unit * 8 + g),
                ld_stream(reinterpret_cast<const uint32_t*>(w.d) + (tile * (kg_n / 4) + kg / 4) * 8 + g)};
  }
  __device__ static void kgroup(float* acc, const Frag& f, int i, const uint16_t* xb, const float* mp, const float*,
                                int n) {
    const float d_g = __half2float(__ushort_as_half(uint16_t(f.d & 0xFFFFu)));
    const float d_g8 = __half2float(__ushort_as_half(uint16_t(f.d >> 16)));
    q6kt_kgroup(acc, f.lo, f.hi, f.sc, d_g, d_g8, i, xb, mp, n);
  }
  __device__ static void load_chunk(const Q6kTiled& w, int64_t r, int64_t c, float* out) { q6kt_load_chunk(w, r, c, out); }
};

}  // namespace

cudaError_t q6k_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q6kRows32& dst,
                       cudaStream_t stream) {
  if (dst.cols % 256 != 0 || r0 % 32 != 0 || nr <= 0) return cudaErrorInvalidValue;
  // The last range also zeroes the padding rows of its group.
  const int64_t r1 = r0 + nr >= dst.rows ? dst.groups() * 32 : r0 + nr;
  if (r1 % 32 != 0) return cudaErrorInvalidValue;
  const int64_t threads = (r1 - r0) * dst.chunks();
  return launch_plain(q6k_repack_kernel, dim3(ceil_div(threads, 256)), dim3(256), 0, stream, src, row_bytes, r0, r1, dst,
                     const_cast<uint8_t*>(dst.ql), const_cast<uint8_t*>(dst.qh), const_cast<int8_t*>(dst.sc),
                     const_cast<uint16_t*>(dst.d));
}

bool q6k_matvec_fits(const Q6kRows32& w, int n) {
  // x in shared memory, within what every target offers a block (sm_120: 99 KiB).
  return n >= 1 && n <= kMatvecMaxCols && uint64_t(n) * uint64_t(w.cols) * 4 <= 96 * 1024;
}

cudaError_t q6k_matvec(const Q6kRows32& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                       cudaStream_t stream) {
  if (!q6k_matvec_fits(w, n)) return cudaErrorInvalidValue;
  const size_t smem = size_t(n) * size_t(w.cols) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t e = allow_dynamic_smem(q6k_matvec_kernel, smem);
    if (e != cudaSuccess) return e;
  }
  return launch(q6k_matvec_kernel, dim3(ceil_div(w.groups() * 32, kThreads)), dim3(kThreads), smem, stream, w, x, ldx, n, y, ldy,
                                                                                     acc == Accum::Add);
}

cudaError_t q6k_dequant_rows_f32(const Q6kRows32& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  return launch(q6k_dequant_kernel<float>, dim3(ceil_div(nr * w.chunks(), 256)), dim3(256), 0, stream, w, r0, nr, nullptr, dst, w.cols);
}

cudaError_t q6k_dequant_rows_bf16(const Q6kRows32& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  return launch(q6k_dequant_kernel<uint16_t>, dim3(ceil_div(nr * w.chunks(), 256)), dim3(256), 0, stream, w, r0, nr, nullptr, dst, w.cols);
}

cudaError_t q6k_embedding_rows(const Q6kRows32& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(q6k_dequant_kernel<float>, dim3(ceil_div(n * w.chunks(), 256)), dim3(256), 0, stream, w, 0, n, tokens, out, ldo);
}

// ---- tiled layout ----

cudaError_t q6kt_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q6kTiled& dst,
                        cudaStream_t stream) {
  if (dst.cols % 256 != 0 || r0 % kFp4TileRows != 0 || nr <= 0) return cudaErrorInvalidValue;
  const int64_t r1 = r0 + nr;
  if (r1 % kFp4TileRows != 0 && r1 != dst.rows) return cudaErrorInvalidValue;
  if (dst.paired && (r0 != 0 || r1 != dst.rows || dst.rows % 16 != 0)) return cudaErrorInvalidValue;  // one range
  return launch_plain(q6kt_repack_kernel, dim3(ceil_div(tiles_repack_threads(nr, dst.kgroups()), 256)), dim3(256), 0, stream, src, row_bytes, r0, r1,
                     dst, const_cast<uint8_t*>(dst.lo), const_cast<uint8_t*>(dst.hi), const_cast<int8_t*>(dst.sc),
                     const_cast<uint16_t*>(dst.d));
}

bool q6kt_matvec_fits(const Q6kTiled& w, int n) {
  return n >= 1 && n <= kMatvecMaxCols && w.cols % 256 == 0 && tc_x_bytes(int(w.cols / 16), n) <= 96 * 1024;
}

cudaError_t q6kt_matvec(const Q6kTiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                        cudaStream_t stream, const HeadArgmax* argmax) {
  TcInput in;
  in.x = x;
  in.ldx = ldx;
  in.n = n;
  if (!q6kt_matvec_fits(w, n) || !tc_input_aligned(in)) return cudaErrorInvalidValue;
  if (argmax && (acc != Accum::Store || !argmax->best || !argmax->done || !argmax->out)) return cudaErrorInvalidValue;
  const DecodeTuning tune = decode_tuning();
  const bool add = acc == Accum::Add;
  const HeadArgmax am = argmax ? *argmax : HeadArgmax{};
  if (tune.q6k_kernel == 3) {
    // Kernel 3 needs 16-byte aligned arrays for its bulk copies (the upload
    // arena's alignment; checked) and its shared memory.
    const bool aligned = ((reinterpret_cast<uintptr_t>(w.lo) | reinterpret_cast<uintptr_t>(w.hi) |
                           reinterpret_cast<uintptr_t>(w.sc) | reinterpret_cast<uintptr_t>(w.d)) & 15u) == 0;
    if (aligned && q6k_ring_bytes(4) + tc_x_bytes(int(w.cols / 16), n) <= max_dynamic_smem())
      return argmax ? launch_q6kt_bulk<4, true>(w, in, y, ldy, add, am, stream)
                    : launch_q6kt_bulk<4, false>(w, in, y, ldy, add, am, stream);
  }
  const bool deep = tune.fp4_depth >= 8;
  if (argmax)  // (4 warps per block: the greedy epilogue is not compiled for 8)
    return deep ? launch_q6kt<4, 8, true>(w, in, y, ldy, add, am, stream)
                : launch_q6kt<4, 4, true>(w, in, y, ldy, add, am, stream);
  if (tune.fp4_warps == 8)
    return deep ? launch_q6kt<8, 8, false>(w, in, y, ldy, add, am, stream)
                : launch_q6kt<8, 4, false>(w, in, y, ldy, add, am, stream);
  return deep ? launch_q6kt<4, 8, false>(w, in, y, ldy, add, am, stream)
              : launch_q6kt<4, 4, false>(w, in, y, ldy, add, am, stream);
}

cudaError_t q6kt_dequant_rows_f32(const Q6kTiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return tiles_dequant<Q6kFormat>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t q6kt_dequant_rows_bf16(const Q6kTiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return tiles_dequant<Q6kFormat>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t q6kt_embedding_rows(const Q6kTiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                cudaStream_t stream) {
  return tiles_dequant<Q6kFormat>(w, 0, n, tokens, out, ldo, stream);
}

int q6kt_slices(const Q6kTiled& w, int sms) { return tiles_slices(w.tiles(), w.kgroups(), sms); }

bool q6kt_sliced_fits(const Q6kTiled& w, int n) { return w.cols % 256 == 0 && tiles_fit<Q6kFormat>(w, n); }

cudaError_t q6kt_matvec_sliced(const Q6kTiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy,
                               Accum acc, int sms, cudaStream_t stream, const TilesFusion& f) {
  if (w.cols % 256 != 0) return cudaErrorInvalidValue;
  return tiles_matvec<Q6kFormat>(w, x, ldx, n, y, ldy, acc, sms, stream, f);
}

}  // namespace qwen35::cuda
