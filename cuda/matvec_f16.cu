// F16 decode products on the tensor cores (see matvec_f16.h).
//
// The tiled kernel of tiles_matvec.cuh with the F16 tiles of f16_tiled.h:
// per kgroup a lane loads its four chunks' A registers (four 16-byte loads,
// each warp-wide load 512 contiguous bytes) and feeds them to the mma as
// they are; the chunk's activation multiplier goes in F32 after each mma.
// Two kgroups in flight per warp (8 KiB per warp; a Frag is 16 registers).

#include "matvec_f16.h"
#include "tiles_matvec.cuh"

namespace qwen35::cuda {

namespace {

// One thread per (tile, kgroup, lane) of the tiles of rows r0 .. r1-1; src
// holds row r0 first.
__global__ void f16t_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                   F16Tiled dst, uint8_t* __restrict__ codes) {
  const int64_t kg_n = dst.kgroups();
  int lane;
  int64_t kg, tile;
  const uint8_t* row[kFp4TileRows];  // a kgroup is 128 bytes of each row
  if (!tiles_repack_item(src, row_bytes, r0, r1, dst.rows, dst.paired, kg_n, 1, 128, &lane, &kg, &tile, row))
    return;
  const int64_t unit = tile * kg_n + kg;
  for (int w = 0; w < 4; ++w) {
    uint32_t wd[4];
    for (int reg = 0; reg < 4; ++reg) wd[reg] = f16t_lane_word(row, lane, w, reg);
    reinterpret_cast<uint4*>(codes + unit * kF16CodeBytes + 512 * w)[lane] = make_uint4(wd[0], wd[1], wd[2], wd[3]);
  }
}

// The F16 tiles as a format of tiles_matvec.cuh.
struct F16Format {
  using Weight = F16Tiled;
  struct Frag {
    uint4 c[4];  // the A registers of chunks 0-3
  };
  static constexpr bool kXsum = false;
  static constexpr int kDepth = 2;
  __device__ static Frag zero() {
    Frag f;
#pragma unroll
    for (int w = 0; w < 4; ++w) f.c[w] = make_uint4(0, 0, 0, 0);
    return f;
  }
  __device__ static Frag load(const F16Tiled& w, int64_t tile, int kg, int lane) {
    const int64_t unit = tile * w.kgroups() + kg;
    const uint4* cp = reinterpret_cast<const uint4*>(w.codes) + unit * (kF16CodeBytes / 16) + lane;
    Frag f;
#pragma unroll
    for (int k = 0; k < 4; ++k) f.c[k] = ld_stream(cp + 32 * k);
    return f;
  }
  // One kgroup (64 columns, four mma) of a lane's tile rows.
  __device__ static void kgroup(float* acc, const Frag& f, int i, const uint16_t* xb, const float* mp, const float*,
                                int n) {
#pragma unroll
    for (int wd = 0; wd < 4; ++wd) {
      const int c = 4 * i + wd;
      const uint32_t ar[4] = {f.c[wd].x, f.c[wd].y, f.c[wd].z, f.c[wd].w};
      const uint2 bv = *reinterpret_cast<const uint2*>(xb + c * n * 16);
      float dm[4];
      mma_f16(dm, ar, bv.x, bv.y);
      const float2 m = *reinterpret_cast<const float2*>(mp + c * kMatvecMaxCols);  // rows 2t, 2t+1
      acc[0] = fmaf(dm[0], m.x, acc[0]);
      acc[1] = fmaf(dm[1], m.y, acc[1]);
      acc[2] = fmaf(dm[2], m.x, acc[2]);
      acc[3] = fmaf(dm[3], m.y, acc[3]);
    }
  }
  // Element values of tile row r, columns 16*c .. 16*c+15.
  __device__ static void load_chunk(const F16Tiled& w, int64_t r, int64_t c, float* out) {
    const int64_t unit = (r / kFp4TileRows) * w.kgroups() + c / 4;
    const int ri = int(r % kFp4TileRows), cc0 = int(16 * (c % 4));
    const uint8_t* codes = w.codes + unit * kF16CodeBytes;
    for (int k = 0; k < 16; ++k) {
      const uint8_t* p = codes + f16t_offset(ri, cc0 + k);
      out[k] = __half2float(__ushort_as_half(uint16_t(p[0] | (p[1] << 8))));
    }
  }
};

}  // namespace

cudaError_t f16t_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const F16Tiled& dst,
                        cudaStream_t stream) {
  if (dst.cols % kFp4GroupCols != 0 || r0 % kFp4TileRows != 0 || nr <= 0 || row_bytes != uint64_t(dst.cols) * 2)
    return cudaErrorInvalidValue;
  const int64_t r1 = r0 + nr;
  if (r1 > dst.rows || (r1 % kFp4TileRows != 0 && r1 != dst.rows)) return cudaErrorInvalidValue;
  if (dst.paired && (r0 != 0 || r1 != dst.rows || dst.rows % 16 != 0)) return cudaErrorInvalidValue;  // one range
  return launch_plain(f16t_repack_kernel, dim3(ceil_div(tiles_repack_threads(nr, dst.kgroups()), 256)), dim3(256), 0,
                      stream, src, row_bytes, r0, r1, dst, const_cast<uint8_t*>(dst.codes));
}

int f16t_slices(const F16Tiled& w, int sms) { return tiles_slices(w.tiles(), w.kgroups(), sms); }

bool f16t_matvec_fits(const F16Tiled& w, int n) { return tiles_fit<F16Format>(w, n); }

cudaError_t f16t_matvec(const F16Tiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                        int sms, cudaStream_t stream, const TilesFusion& f) {
  return tiles_matvec<F16Format>(w, x, ldx, n, y, ldy, acc, sms, stream, f);
}

cudaError_t f16t_dequant_rows_f32(const F16Tiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return tiles_dequant<F16Format>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t f16t_dequant_rows_bf16(const F16Tiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return tiles_dequant<F16Format>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t f16t_embedding_rows(const F16Tiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                cudaStream_t stream) {
  return tiles_dequant<F16Format>(w, 0, n, tokens, out, ldo, stream);
}

}  // namespace qwen35::cuda
