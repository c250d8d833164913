// The decode matrix-vector kernel of the tiled k-quant layouts (Q8_0 in
// matvec_q8.cu, Q4_K in matvec_q4k.cu): the structure of the Q6_K kernel 2
// (matvec_q6k.cu) with the format's loads and arithmetic plugged in.
// Included by .cu files only.
//
// 16-row tiles, kgroups of 64 columns = 4 chunks of 16 (one mma.sync
// m16n8k16 each); P kgroups in flight per warp in registers, the first
// before the PDL wait (weights are never written by a kernel); the
// activations as F16 per chunk with power-of-two chunk scales (tc_load_x),
// whole rows once per block. The decode shapes have few tiles for their
// bytes (FFN down of the 4B: 160 tiles of 9,216 columns), so S = 1, 2, 4 or
// 8 warps of a block share a tile, each taking a slice of its kgroups, and
// add their sums in shared memory in slice order: no split-K scratch, and
// the same sums for any number of activation rows.
//
// A format F provides:
//   using Weight = ...;                 rows, cols, scale, tiles(), kgroups()
//   struct Frag;                        one kgroup's loads of one lane
//   static constexpr bool kXsum;        needs the chunk sums of the activations
//   static constexpr int kDepth;        kgroups in flight per warp (registers: kDepth Frags)
//   static Frag zero();
//   static Frag load(const Weight&, int64_t tile, int kg, int lane);   (ld_stream)
//   static void kgroup(float* acc, const Frag&, int kg, const uint16_t* xb, const float* mp,
//                      const float* sp, int n);
//   static void load_chunk(const Weight&, int64_t row, int64_t chunk, float* v16);   (rows as values)
// kgroup adds the lane's products (acc[e]: tile row g + 8*(e/2), activation
// row 2t + e%2) for activation chunks at xb + chunk*n*16, their multipliers
// at mp + chunk*8 and (kXsum) the sums of their F16 values at sp + chunk*8.
#pragma once

#include "common.cuh"
#include "fusion.h"
#include "launch.cuh"
#include "matmul.h"
#include "tc_common.cuh"

namespace qwen35::cuda {

namespace {

constexpr int kTileWarps = 8;  // warps per block

// Dynamic shared memory: the activations as tc_load_x writes them, then
// (kXsum) the chunk sums [nch][8].
template <class F>
size_t tiles_smem(int64_t cols, int n) {
  const int nch = int(cols / 16);
  return tc_x_bytes(nch, n) + (F::kXsum ? size_t(nch) * 32 : 0);
}

// Block b: tiles b*T .. b*T+T-1 (T = W / S), warp w on tile b*T + w/S and
// kgroup slice w%S. With in.norm, y = W rmsnorm(x) (every block sums the
// squares of the whole rows in the same order); with in.gate_z the gated
// norm (tc_load_x: whole rows, so heads never straddle a block); with
// conv.taps the causal conv on outputs < conv.channels (n <= 2).
template <class F, int S>
__global__ void __launch_bounds__(kTileWarps* kWarp)
    tiles_matvec_kernel(typename F::Weight w, TcInput in, float* __restrict__ y, int64_t ldy, bool add, bool swiglu,
                        ConvEpi conv) {
  constexpr int W = kTileWarps, T = W / S, P = F::kDepth;
  uint8_t* smem_raw = dynamic_smem<uint8_t>();
  __shared__ float red[S > 1 ? W : 1][kWarp][4];
  __shared__ float ss_part[W][kMatvecMaxCols];  // the RMS norm's sums of squares (in.norm)
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int n = in.n;
  const int kg_n = int(w.kgroups());
  const int nch = 4 * kg_n;
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem_raw);                             // [nch][n][16] F16
  float* mult = reinterpret_cast<float*>(smem_raw + size_t(nch) * size_t(n) * 32);  // [nch][8]
  float* xsum = mult + size_t(nch) * kMatvecMaxCols;                                // [nch][8] (kXsum)
  const int64_t tile = int64_t(blockIdx.x) * T + warp / S;
  const int slice = warp % S, per = (kg_n + S - 1) / S;
  const int k0 = min(kg_n, slice * per), k1 = min(kg_n, k0 + per);
  const bool active = tile < w.tiles();

  // 1. The first P kgroups of this warp's slice, before the PDL wait.
  typename F::Frag ring[P];
#pragma unroll
  for (int p = 0; p < P; ++p) ring[p] = active && k0 + p < k1 ? F::load(w, tile, k0 + p, lane) : F::zero();
  pdl_wait_and_trigger();

  // 2. The activations, whole rows (times the norm weights, whose 1/rms
  // multiplies the results, or through the gated norm), and the sums of
  // each chunk's F16 values.
  tc_load_x(in, 0, nch, xs, mult);
  if (in.norm) tc_row_squares<W>(in, w.cols, ss_part);
  __syncthreads();
  if constexpr (F::kXsum) {
    for (int item = threadIdx.x; item < nch * kMatvecMaxCols; item += blockDim.x) {
      const int c = item / kMatvecMaxCols, j = item % kMatvecMaxCols;
      float s = 0.0f;
      if (j < n) {
        const __half* h = reinterpret_cast<const __half*>(xs + (size_t(c) * n + j) * 16);
        for (int k = 0; k < 16; ++k) s += __half2float(h[k]);
      }
      xsum[item] = s;
    }
    __syncthreads();
  }

  // 3. The stream.
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const uint16_t* xb = xs + tc_b_row(g, n) * 16 + t * 4;  // + chunk * n * 16
  const float* mp = mult + 2 * t;                         // + chunk * 8
  const float* sp = xsum + 2 * t;                         // + chunk * 8
  if (active) {
    for (int i0 = k0; i0 < k1; i0 += P) {
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = i0 + p;
        if (i < k1) {
          const typename F::Frag f = ring[p];
          if (i + P < k1) ring[p] = F::load(w, tile, i + P, lane);
          F::kgroup(acc, f, i, xb, mp, sp, n);
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
  float v[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int j = 2 * t + (e & 1);
    v[e] = j < n ? acc[e] * w.scale * (in.norm ? tc_rnorm<W>(ss_part, j, w.cols, in.eps) : 1.0f) : 0.0f;
  }
  if (conv.taps) {  // n <= 2: activation rows 0 and 1 are in lane t = 0, which walks them in order
    if (t != 0) return;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t r = tile * kFp4TileRows + g + 8 * half;
      if (r >= w.rows) continue;
      if (r < conv.channels) {
        conv_silu_channel(conv.taps, conv.window, conv.channels, conv.k, n, r, v[2 * half], v[2 * half + 1], y, ldy,
                          conv.snapshot_row, conv.snapshot);
      } else {
        y[r] = v[2 * half];
        if (n > 1) y[ldy + r] = v[2 * half + 1];
      }
    }
    return;
  }
  if (swiglu) {  // (paired) rows g and g+8: the gate and up rows of output 8 * tile + g
    const int64_t out = 8 * tile + g;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int j = 2 * t + e;
      if (j < n && out < w.rows / 2) y[j * ldy + out] = silu_f(v[e]) * v[2 + e];
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int i = g + 8 * (e >> 1);
    const int64_t row = w.paired ? tiles_paired_row(tile, i, w.rows / 2) : tile * kFp4TileRows + i;
    const int j = 2 * t + (e & 1);
    if (row < w.rows && j < n) {
      float* out = y + j * ldy + row;
      *out = add ? *out + v[e] : v[e];
    }
  }
}

template <class F, int S>
cudaError_t launch_tiles(const typename F::Weight& w, const TcInput& in, float* y, int64_t ldy, bool add, bool swiglu,
                         const ConvEpi& conv, cudaStream_t stream) {
  static SmemOptIn opt_in;
  const size_t smem = tiles_smem<F>(w.cols, in.n);
  if (const cudaError_t e = opt_in.ensure(tiles_matvec_kernel<F, S>, smem); e != cudaSuccess) return e;
  constexpr int T = kTileWarps / S;
  return launch(tiles_matvec_kernel<F, S>, dim3(ceil_div(w.tiles(), T)), dim3(kTileWarps * kWarp), smem, stream, w, in,
                y, ldy, add, swiglu, conv);
}

// Warps per tile: about 24 warps per multiprocessor in all, as few slices
// as give that, at least one kgroup per slice.
inline int tiles_slices(int64_t tiles, int64_t kgroups, int sms) {
  const int64_t want = int64_t(sms > 1 ? sms : 1) * 24;
  int s = 1;
  while (s < kTileWarps && tiles * s < want && s * 2 <= kgroups) s *= 2;
  return s;
}

template <class F>
bool tiles_fit(const typename F::Weight& w, int n) {
  return n >= 1 && n <= kMatvecMaxCols && w.cols > 0 && w.cols % kFp4GroupCols == 0 && w.rows > 0 &&
         (!w.paired || w.rows % 16 == 0) && tiles_smem<F>(w.cols, n) <= max_dynamic_smem();
}

template <class F>
cudaError_t tiles_matvec(const typename F::Weight& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy,
                         Accum acc, int sms, cudaStream_t stream, const TilesFusion& f) {
  TcInput in;
  in.x = x;
  in.ldx = ldx;
  in.n = n;
  in.norm = f.norm;
  in.eps = f.eps;
  const bool add = acc == Accum::Add;
  if (f.gated.present()) {
    if (f.norm || !tiles_gated_fits(w.cols, f.gated.dv) || !f.gated.w) return cudaErrorInvalidValue;
    in.gate_z = f.gated.z;
    in.ldz = f.gated.ldz;
    in.gate_w = f.gated.w;
    in.gate_dv = f.gated.dv;
  }
  if (!tiles_fit<F>(w, n) || !tc_input_aligned(in)) return cudaErrorInvalidValue;
  if (f.swiglu && (!w.paired || add)) return cudaErrorInvalidValue;
  const ConvEpi& c = f.conv;
  if (c.present() && (n > 2 || add || f.swiglu || w.paired || !c.window || c.k < 1 || c.channels < 0 ||
                      c.channels > w.rows || (c.snapshot_row >= 0 && c.snapshot_row < n && !c.snapshot)))
    return cudaErrorInvalidValue;
  switch (tiles_slices(w.tiles(), w.kgroups(), sms)) {
    case 1:
      return launch_tiles<F, 1>(w, in, y, ldy, add, f.swiglu, c, stream);
    case 2:
      return launch_tiles<F, 2>(w, in, y, ldy, add, f.swiglu, c, stream);
    case 4:
      return launch_tiles<F, 4>(w, in, y, ldy, add, f.swiglu, c, stream);
    default:
      return launch_tiles<F, 8>(w, in, y, ldy, add, f.swiglu, c, stream);
  }
}

// Thread i of a repack kernel (one thread per tile, kgroup and lane of the
// tiles of rows r0 .. r1-1 of a `rows`-row weight; src holds row r0 first):
// false past the last; else its lane, kgroup and tile, and row[r] the GGUF
// bytes of tile row r where the kgroup's block starts (a block of
// block_bytes holds kpb kgroups; null for padding rows).
__device__ __forceinline__ bool tiles_repack_item(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                                  int64_t rows, bool paired, int64_t kg_n, int kpb, int block_bytes,
                                                  int* lane, int64_t* kg, int64_t* tile, const uint8_t** row) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= (r1 - r0 + kFp4TileRows - 1) / kFp4TileRows * kg_n * 32) return false;
  *lane = int(i % 32);
  *kg = (i / 32) % kg_n;
  *tile = r0 / kFp4TileRows + i / 32 / kg_n;
  for (int r = 0; r < kFp4TileRows; ++r) {
    // (A paired stack is repacked in one range: r0 = 0, r1 = rows.)
    const int64_t rr = paired ? tiles_paired_row(*tile, r, rows / 2) : *tile * kFp4TileRows + r;
    row[r] = rr < r1 && rr < rows ? src + uint64_t(rr - r0) * row_bytes + uint64_t(*kg / kpb) * block_bytes : nullptr;
  }
  return true;
}

// The number of repack threads for rows r0 .. r0+nr-1 (tiles_repack_item).
inline int64_t tiles_repack_threads(int64_t nr, int64_t kg_n) {
  return (nr + kFp4TileRows - 1) / kFp4TileRows * kg_n * 32;
}

// Rows of a tiled weight as F32 or BF16 (the GEMM path, embedding rows):
// one thread per (row, 16-column chunk), F::load_chunk(w, r, c, v) giving
// the 16 values of tile row r (16 * tile + i), columns 16c .. 16c+15 (scale
// not applied). Rows are stack rows (a paired stack's order undone); rows
// r0 .. r0+nr-1, or (tokens) rows tokens[0 .. nr-1] (ids outside the rows:
// left alone).
template <class F, typename Out>
__global__ void tiles_dequant_kernel(typename F::Weight w, int64_t r0, int64_t nr, const int32_t* __restrict__ tokens,
                                     Out* __restrict__ dst, int64_t ldo) {
  pdl_prologue();
  const int64_t chunks = w.cols / 16;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nr * chunks) return;
  const int64_t t = i / chunks, c = i % chunks;
  const int64_t r = tokens ? int64_t(tokens[t]) : r0 + t;
  if (r < 0 || r >= w.rows) return;
  float v[16];
  F::load_chunk(w, w.paired ? tiles_paired_pos(r, w.rows / 2) : r, c, v);
  Out* o = dst + t * ldo + 16 * c;
  for (int k = 0; k < 16; ++k) {
    if constexpr (sizeof(Out) == 4)
      o[k] = v[k];
    else
      o[k] = __bfloat16_as_ushort(__float2bfloat16_rn(v[k]));
  }
}

template <class F, typename Out>
cudaError_t tiles_dequant(const typename F::Weight& w, int64_t r0, int64_t nr, const int32_t* tokens, Out* dst,
                          int64_t ldo, cudaStream_t stream) {
  if (nr <= 0) return cudaSuccess;
  if (!tokens && (r0 < 0 || r0 + nr > w.rows)) return cudaErrorInvalidValue;
  return launch(tiles_dequant_kernel<F, Out>, dim3(ceil_div(nr * (w.cols / 16), 256)), dim3(256), 0, stream, w, r0, nr,
                tokens, dst, ldo);
}

}  // namespace

}  // namespace qwen35::cuda
