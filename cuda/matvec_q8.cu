// Q8_0 decode products on the tensor cores (see matvec_q8.h).
//
// The tiled kernel of tiles_matvec.cuh with the Q8_0 tiles of q8_tiled.h:
// per kgroup a lane loads its codes (two 16-byte loads) and its rows' block
// scales (8 bytes); each register's two codes become F16 by one byte
// permute and one F16 subtraction, and the block scale d of rows g and g+8
// times the chunk's activation multiplier goes in F32 after each mma.

#include <algorithm>

#include "matvec_q8.h"
#include "tiles_matvec.cuh"

namespace qwen35::cuda {

namespace {

// One thread per (tile, kgroup, lane) of the tiles of rows r0 .. r1-1; src
// holds row r0 first.
__global__ void q8t_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                  Q8Tiled dst, uint8_t* __restrict__ codes, uint16_t* __restrict__ scales) {
  const int64_t kg_n = dst.kgroups();
  int lane;
  int64_t kg, tile;
  const uint8_t* row[kFp4TileRows];  // a kgroup is two 34-byte blocks
  if (!tiles_repack_item(src, row_bytes, r0, r1, dst.rows, dst.paired, kg_n, 1, 68, &lane, &kg, &tile, row))
    return;
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

// The Q8_0 tiles as a format of tiles_matvec.cuh.
struct Q8Format {
  using Weight = Q8Tiled;
  struct Frag {
    uint4 c01, c23;  // the code words of chunks 0-1 and 2-3
    uint2 sc;        // the block scales of rows g, g+8: block 0 in .x, block 1 in .y
  };
  static constexpr bool kXsum = false;
  static constexpr int kDepth = 4;
  __device__ static Frag zero() { return Frag{make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0), make_uint2(0, 0)}; }
  __device__ static Frag load(const Q8Tiled& w, int64_t tile, int kg, int lane) {
    const int64_t unit = tile * w.kgroups() + kg;
    const uint4* cp = reinterpret_cast<const uint4*>(w.codes) + unit * (kQ8CodeBytes / 16) + lane;
    const uint2* sp = reinterpret_cast<const uint2*>(w.scales) + unit * (kQ8ScaleBytes / 8) + (lane >> 2);
    return Frag{ld_stream(cp), ld_stream(cp + 32), ld_stream(sp)};
  }
  // One kgroup (64 columns, four mma) of a lane's tile rows.
  __device__ static void kgroup(float* acc, const Frag& f, int i, const uint16_t* xb, const float* mp, const float*,
                                int n) {
    const __half2 k1152 = __floats2half2_rn(1152.0f, 1152.0f);
    const uint32_t words[8] = {f.c01.x, f.c01.y, f.c01.z, f.c01.w, f.c23.x, f.c23.y, f.c23.z, f.c23.w};
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
      const uint32_t s = wd < 2 ? f.sc.x : f.sc.y;
      const float s0 = __half2float(__ushort_as_half(uint16_t(s & 0xFFFFu)));
      const float s1 = __half2float(__ushort_as_half(uint16_t(s >> 16)));
      acc[0] = fmaf(dm[0], s0 * m.x, acc[0]);
      acc[1] = fmaf(dm[1], s0 * m.y, acc[1]);
      acc[2] = fmaf(dm[2], s1 * m.x, acc[2]);
      acc[3] = fmaf(dm[3], s1 * m.y, acc[3]);
    }
  }
  // Element values of row r, columns 16*c .. 16*c+15 (scale not applied).
  __device__ static void load_chunk(const Q8Tiled& w, int64_t r, int64_t c, float* out) {
    const int64_t kg = c / 4, unit = (r / kFp4TileRows) * w.kgroups() + kg;
    const int ri = int(r % kFp4TileRows), cc0 = int(16 * (c % 4));
    const uint8_t* codes = w.codes + unit * kQ8CodeBytes;
    const float d = __half2float(__ushort_as_half(w.scales[unit * 32 + q8t_scale_index(ri, cc0)]));
    for (int k = 0; k < 16; ++k) out[k] = d * float(int(codes[q8t_code_offset(ri, cc0 + k)]) - 128);
  }
};

}  // namespace

cudaError_t q8t_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q8Tiled& dst,
                       cudaStream_t stream) {
  if (dst.cols % kFp4GroupCols != 0 || r0 % kFp4TileRows != 0 || nr <= 0 || row_bytes != uint64_t(dst.cols / 32) * 34)
    return cudaErrorInvalidValue;
  const int64_t r1 = r0 + nr;
  if (r1 > dst.rows || (r1 % kFp4TileRows != 0 && r1 != dst.rows)) return cudaErrorInvalidValue;
  if (dst.paired && (r0 != 0 || r1 != dst.rows || dst.rows % 16 != 0)) return cudaErrorInvalidValue;  // one range
  return launch_plain(q8t_repack_kernel, dim3(ceil_div(tiles_repack_threads(nr, dst.kgroups()), 256)), dim3(256), 0, stream, src, row_bytes, r0, r1,
                      dst, const_cast<uint8_t*>(dst.codes), const_cast<uint16_t*>(dst.scales));
}

int q8t_slices(const Q8Tiled& w, int sms) { return tiles_slices(w.tiles(), w.kgroups(), sms); }

bool q8t_matvec_fits(const Q8Tiled& w, int n) { return tiles_fit<Q8Format>(w, n); }

cudaError_t q8t_matvec(const Q8Tiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc, int sms,
                       cudaStream_t stream, const TilesFusion& f) {
  return tiles_matvec<Q8Format>(w, x, ldx, n, y, ldy, acc, sms, stream, f);
}

cudaError_t q8t_dequant_rows_f32(const Q8Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return tiles_dequant<Q8Format>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t q8t_dequant_rows_bf16(const Q8Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return tiles_dequant<Q8Format>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t q8t_embedding_rows(const Q8Tiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                               cudaStream_t stream) {
  return tiles_dequant<Q8Format>(w, 0, n, tokens, out, ldo, stream);
}

}  // namespace qwen35::cuda
