// Q8_0 decode products on the tensor cores (see matvec_q8.h).
//
// The structure of the Q6_K kernel 2 (matvec_q6k.cu) on the tiled layout of
// q8_tiled.h: mma.sync m16n8k16 per 16-column chunk, each register's two
// codes turned into F16 by one byte permute and one F16 subtraction, the
// block scale d of rows g and g+8 times the chunk's activation multiplier
// in F32 after each mma; P kgroups in flight per warp in registers (the
// first before the PDL wait); the activations as F16 per chunk with
// power-of-two chunk scales (tc_load_x), the whole rows once per block.
//
// The decode shapes have few tiles for their bytes (FFN down: 160 tiles of
// 9,216 columns), so the S = 1, 2, 4 or 8 warps of a block that share a
// tile split its kgroups into slices and add their sums in shared memory,
// in slice order (no global scratch, no counters; the same sums for any n).

#include <algorithm>

#include "common.cuh"
#include "launch.cuh"
#include "matvec_q8.h"
#include "tc_common.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kQ8Warps = 8;   // warps per block
constexpr int kQ8Depth = 4;   // kgroups in flight per warp
constexpr int kQ8Threads = 256;

// One thread per (tile, kgroup, lane) of the tiles of rows r0 .. r1-1; src
// holds row r0 first.
__global__ void q8t_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                  Q8Tiled dst, uint8_t* __restrict__ codes, uint16_t* __restrict__ scales) {
  const int64_t kg_n = dst.kgroups();
  const int64_t tile0 = r0 / kFp4TileRows;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= (r1 - r0 + kFp4TileRows - 1) / kFp4TileRows * kg_n * 32) return;
  const int lane = int(i % 32);
  const int64_t kg = (i / 32) % kg_n, tile = tile0 + i / 32 / kg_n;
  const uint8_t* row[kFp4TileRows];
  for (int r = 0; r < kFp4TileRows; ++r) {
    const int64_t rr = tile * kFp4TileRows + r;
    row[r] = rr < r1 && rr < dst.rows ? src + uint64_t(rr - r0) * row_bytes + uint64_t(kg) * 68 : nullptr;
  }
  const int64_t unit = tile * kg_n + kg;
  for (int h = 0; h < 2; ++h) {
    uint8_t b[16];
    q8t_lane_bytes(row, lane, h, b);
    uint32_t wd[4];
    for (int k = 0; k < 4; ++k)
      wd[k] = uint32_t(b[4 * k]) | uint32_t(b[4 * k + 1]) << 8 | uint32_t(b[4 * k + 2]) << 16 |
              uint32_t(b[4 * k + 3]) << 24;
    reinterpret_cast<uint4*>(codes + unit * kQ8CodeBytes + 512 * h)[lane] = make_uint4(wd[0], wd[1], wd[2], wd[3]);
  }
  if ((lane & 3) == 0) {
    const int g = lane >> 2;
    uint16_t s[4];
    q8t_g_scales(row, g, s);
    uint16_t* o = scales + unit * 32 + 4 * g;
    for (int k = 0; k < 4; ++k) o[k] = s[k];
  }
}

// One kgroup (64 columns, four mma) of a lane's tile rows: the code words of
// chunks 0-1 (c01) and 2-3 (c23), the block scales of rows g, g+8 (sc: block
// 0 in .x, block 1 in .y), activation chunks at xb / multipliers at mp.
__device__ __forceinline__ void q8t_kgroup(float* acc, uint4 c01, uint4 c23, uint2 sc, int i, const uint16_t* xb,
                                           const float* mp, int n) {
  const __half2 k1152 = __floats2half2_rn(1152.0f, 1152.0f);
  const uint32_t words[8] = {c01.x, c01.y, c01.z, c01.w, c23.x, c23.y, c23.z, c23.w};
#pragma unroll
  for (int wd = 0; wd < 4; ++wd) {
    const int c = 4 * i + wd;
    uint32_t ar[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t biased = q8t_reg(words[2 * wd + (r >> 1)], r);  // 1024 + q + 128 per half
      const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&biased), k1152);
      ar[r] = *reinterpret_cast<const uint32_t*>(&v);
    }
    const uint2 bv = *reinterpret_cast<const uint2*>(xb + c * n * 16);
    float dm[4];
    mma_f16(dm, ar, bv.x, bv.y);
    const float2 m = *reinterpret_cast<const float2*>(mp + c * kMatvecMaxCols);  // rows 2t, 2t+1
    const uint32_t s = wd < 2 ? sc.x : sc.y;
    const float s0 = __half2float(__ushort_as_half(uint16_t(s & 0xFFFFu)));
    const float s1 = __half2float(__ushort_as_half(uint16_t(s >> 16)));
    acc[0] = fmaf(dm[0], s0 * m.x, acc[0]);
    acc[1] = fmaf(dm[1], s0 * m.y, acc[1]);
    acc[2] = fmaf(dm[2], s1 * m.x, acc[2]);
    acc[3] = fmaf(dm[3], s1 * m.y, acc[3]);
  }
}

// Block b: tiles b*T .. b*T+T-1 (T = W / S), warp w on tile b*T + w/S and
// kgroup slice w%S.
template <int S>
__global__ void __launch_bounds__(kQ8Warps* kWarp) q8t_matvec_kernel(Q8Tiled w, TcInput in, float* __restrict__ y,
                                                                     int64_t ldy, bool add) {
  constexpr int W = kQ8Warps, T = W / S, P = kQ8Depth;
  uint8_t* smem_raw = dynamic_smem<uint8_t>();
  __shared__ float red[S > 1 ? W : 1][kWarp][4];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int n = in.n;
  const int kg_n = int(w.kgroups());
  const int nch = 4 * kg_n;
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem_raw);                            // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(smem_raw + size_t(nch) * size_t(n) * 32);  // [nch][8]
  const int64_t tile = int64_t(blockIdx.x) * T + warp / S;
  const int slice = warp % S, per = (kg_n + S - 1) / S;
  const int k0 = min(kg_n, slice * per), k1 = min(kg_n, k0 + per);
  const bool active = tile < w.tiles();

  // 1. The first P kgroups of this warp's slice, before waiting for the
  // previous kernel (weights are never written by a kernel).
  const int64_t unit0 = tile * kg_n;
  const uint4* cp = reinterpret_cast<const uint4*>(w.codes) + unit0 * (kQ8CodeBytes / 16) + lane;
  const uint2* sp = reinterpret_cast<const uint2*>(w.scales) + unit0 * (kQ8ScaleBytes / 8) + g;
  uint4 ca[P], cb[P];
  uint2 sb[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    ca[p] = cb[p] = make_uint4(0, 0, 0, 0);
    sb[p] = make_uint2(0, 0);
    if (active && k0 + p < k1) {
      ca[p] = ld_stream(cp + (k0 + p) * 64);
      cb[p] = ld_stream(cp + (k0 + p) * 64 + 32);
      sb[p] = ld_stream(sp + (k0 + p) * 8);
    }
  }
  pdl_wait_and_trigger();

  // 2. The activations, whole rows.
  tc_load_x(in, 0, nch, xs, mult);
  __syncthreads();

  // 3. The stream.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const uint16_t* xb = xs + tc_b_row(g, n) * 16 + t * 4;  // + chunk * n * 16
  const float* mp = mult + 2 * t;                          // + chunk * 8
  if (active) {
    for (int i0 = k0; i0 < k1; i0 += P) {
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = i0 + p;
        if (i < k1) {
          const uint4 a = ca[p], b = cb[p];
          const uint2 s = sb[p];
          if (i + P < k1) {
            ca[p] = ld_stream(cp + (i + P) * 64);
            cb[p] = ld_stream(cp + (i + P) * 64 + 32);
            sb[p] = ld_stream(sp + (i + P) * 8);
          }
          q8t_kgroup(acc, a, b, s, i, xb, mp, n);
        }
      }
    }
  }

  // 4. The slices of a tile added in slice order, then stored.
  if constexpr (S > 1) {
#pragma unroll
    for (int e = 0; e < 4; ++e) red[warp][lane][e] = acc[e];
    __syncthreads();
    if (slice != 0) return;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float s = red[warp][lane][e];
      for (int k = 1; k < S; ++k) s += red[warp + k][lane][e];
      acc[e] = s;
    }
  }
  if (!active) return;
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

template <int S>
cudaError_t launch_q8t(const Q8Tiled& w, const TcInput& in, float* y, int64_t ldy, bool add, cudaStream_t stream) {
  static SmemOptIn opt_in;
  const size_t smem = tc_x_bytes(int(w.cols / 16), in.n);
  if (const cudaError_t e = opt_in.ensure(q8t_matvec_kernel<S>, smem); e != cudaSuccess) return e;
  constexpr int T = kQ8Warps / S;
  return launch(q8t_matvec_kernel<S>, dim3(ceil_div(w.tiles(), T)), dim3(kQ8Threads), smem, stream, w, in, y, ldy,
                add);
}

// Element values of row r, columns 16*c .. 16*c+15 (scale not applied).
__device__ void q8t_load_chunk(const Q8Tiled& w, int64_t r, int64_t c, float* out) {
  const int64_t kg = c / 4, unit = (r / kFp4TileRows) * w.kgroups() + kg;
  const int ri = int(r % kFp4TileRows), cc0 = int(16 * (c % 4));
  const uint8_t* codes = w.codes + unit * kQ8CodeBytes;
  const float d = __half2float(__ushort_as_half(w.scales[unit * 32 + q8t_scale_index(ri, cc0)]));
  for (int k = 0; k < 16; ++k) out[k] = d * float(int(codes[q8t_code_offset(ri, cc0 + k)]) - 128);
}

// One thread per (row, 16-column chunk): rows r0 .. r0+nr-1, or (tokens)
// rows tokens[0 .. nr-1] (negative ids and ids past the rows: left alone).
template <typename Out>
__global__ void q8t_dequant_kernel(Q8Tiled w, int64_t r0, int64_t nr, const int32_t* __restrict__ tokens,
                                   Out* __restrict__ dst, int64_t ldo) {
  pdl_prologue();
  const int64_t chunks = w.cols / 16;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nr * chunks) return;
  const int64_t t = i / chunks, c = i % chunks;
  const int64_t r = tokens ? int64_t(tokens[t]) : r0 + t;
  if (r < 0 || r >= w.rows) return;
  float v[16];
  q8t_load_chunk(w, r, c, v);
  Out* o = dst + t * ldo + 16 * c;
  for (int k = 0; k < 16; ++k) {
    if constexpr (sizeof(Out) == 4) o[k] = v[k];
    else o[k] = __bfloat16_as_ushort(__float2bfloat16_rn(v[k]));
  }
}

template <typename Out>
cudaError_t q8t_dequant(const Q8Tiled& w, int64_t r0, int64_t nr, Out* dst, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  if (r0 < 0 || r0 + nr > w.rows) return cudaErrorInvalidValue;
  return launch(q8t_dequant_kernel<Out>, dim3(ceil_div(nr * (w.cols / 16), 256)), dim3(256), 0, stream, w, r0, nr,
                static_cast<const int32_t*>(nullptr), dst, w.cols);
}

}  // namespace

cudaError_t q8t_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q8Tiled& dst,
                       cudaStream_t stream) {
  if (dst.cols % kFp4GroupCols != 0 || r0 % kFp4TileRows != 0 || nr <= 0 || row_bytes != uint64_t(dst.cols / 32) * 34)
    return cudaErrorInvalidValue;
  const int64_t r1 = r0 + nr;
  if (r1 > dst.rows || (r1 % kFp4TileRows != 0 && r1 != dst.rows)) return cudaErrorInvalidValue;
  const int64_t threads = (nr + kFp4TileRows - 1) / kFp4TileRows * dst.kgroups() * 32;
  return launch_plain(q8t_repack_kernel, dim3(ceil_div(threads, 256)), dim3(256), 0, stream, src, row_bytes, r0, r1,
                      dst, const_cast<uint8_t*>(dst.codes), const_cast<uint16_t*>(dst.scales));
}

int q8t_slices(const Q8Tiled& w, int sms) {
  // About 24 warps per multiprocessor in all, as few slices as give that.
  const int64_t want = int64_t(std::max(sms, 1)) * 24;
  int s = 1;
  while (s < kQ8Warps && w.tiles() * s < want && (s * 2) <= w.kgroups()) s *= 2;
  return s;
}

bool q8t_matvec_fits(const Q8Tiled& w, int n) {
  return n >= 1 && n <= kMatvecMaxCols && w.cols % kFp4GroupCols == 0 && w.cols > 0 &&
         tc_x_bytes(int(w.cols / 16), n) <= max_dynamic_smem();
}

cudaError_t q8t_matvec(const Q8Tiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                       int sms, cudaStream_t stream) {
  TcInput in;
  in.x = x;
  in.ldx = ldx;
  in.n = n;
  if (!q8t_matvec_fits(w, n) || !tc_input_aligned(in) || w.rows < 1) return cudaErrorInvalidValue;
  const bool add = acc == Accum::Add;
  switch (q8t_slices(w, sms)) {
    case 1: return launch_q8t<1>(w, in, y, ldy, add, stream);
    case 2: return launch_q8t<2>(w, in, y, ldy, add, stream);
    case 4: return launch_q8t<4>(w, in, y, ldy, add, stream);
    default: return launch_q8t<8>(w, in, y, ldy, add, stream);
  }
}

cudaError_t q8t_dequant_rows_f32(const Q8Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return q8t_dequant(w, r0, nr, dst, stream);
}

cudaError_t q8t_dequant_rows_bf16(const Q8Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return q8t_dequant(w, r0, nr, dst, stream);
}

cudaError_t q8t_embedding_rows(const Q8Tiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return launch(q8t_dequant_kernel<float>, dim3(ceil_div(n * (w.cols / 16), 256)), dim3(256), 0, stream, w,
                int64_t(0), n, tokens, out, ldo);
}

}  // namespace qwen35::cuda
