// Q4_K decode products on the tensor cores (see matvec_q4k.h).
//
// The tiled kernel of tiles_matvec.cuh with the Q4_K tiles of q4k_tiled.h:
// per kgroup a lane loads its code words (one 16-byte load), the 6-bit
// scales and mins of its rows' two sub-blocks (8 bytes) and its rows' d and
// dmin (8 bytes, the same for the 4 kgroups of a 256-column block). A
// register's two codes become F16 by one shift, one mask and one F16
// subtraction; after each mma (the sum of q * x over 16 columns) the lane
// adds (d*sc * that - dmin*m * the sum of the chunk's x) times the chunk's
// activation multiplier, so the sub-block minimum costs one FMA per result.

#include "matvec_q4k.h"
#include "tiles_matvec.cuh"

namespace qwen35::cuda {

namespace {

// One thread per (tile, kgroup, lane) of the tiles of rows r0 .. r1-1; src
// holds row r0 first.
__global__ void q4kt_repack_kernel(const uint8_t* __restrict__ src, uint64_t row_bytes, int64_t r0, int64_t r1,
                                   Q4kTiled dst, uint8_t* __restrict__ codes, uint8_t* __restrict__ sm,
                                   uint16_t* __restrict__ dm) {
  const int64_t kg_n = dst.kgroups();
  int lane;
  int64_t kg, tile;
  const uint8_t* block[kFp4TileRows];  // the 256-column block holding the kgroup
  if (!tiles_repack_item(src, row_bytes, r0, r1, dst.rows, dst.paired, kg_n, 4, 144, &lane, &kg, &tile, block))
    return;
  const int64_t unit = tile * kg_n + kg;
  const int kg4 = int(kg % 4);
  uint32_t wd[4];
  for (int w = 0; w < 4; ++w) wd[w] = q4kt_lane_word(block, kg4, lane, w);
  reinterpret_cast<uint4*>(codes)[unit * 32 + lane] = make_uint4(wd[0], wd[1], wd[2], wd[3]);
  if ((lane & 3) == 0) {
    const int g = lane >> 2;
    q4kt_g_sm(block, kg4, g, sm + unit * kQ4kSmBytes + 8 * g);
    if (kg4 == 0) q4kt_g_dm(block, g, dm + (tile * (kg_n / 4) + kg / 4) * 32 + 4 * g);
  }
}

// The Q4_K tiles as a format of tiles_matvec.cuh.
struct Q4kFormat {
  using Weight = Q4kTiled;
  struct Frag {
    uint4 c;   // the code words of chunks 0-3
    uint2 sm;  // sc (.x) and m (.y) bytes of rows g, g+8, sub-blocks 0 and 1
    uint2 dm;  // d (.x) and dmin (.y) of rows g (low half), g+8 (high half)
  };
  static constexpr bool kXsum = true;
  static constexpr int kDepth = 4;
  __device__ static Frag zero() { return Frag{make_uint4(0, 0, 0, 0), make_uint2(0, 0), make_uint2(0, 0)}; }
  __device__ static Frag load(const Q4kTiled& w, int64_t tile, int kg, int lane) {
    const int64_t kg_n = w.kgroups(), unit = tile * kg_n + kg;
    const int g = lane >> 2;
    const uint4* cp = reinterpret_cast<const uint4*>(w.codes) + unit * 32 + lane;
    const uint2* sp = reinterpret_cast<const uint2*>(w.sm) + unit * 8 + g;
    const uint2* dp = reinterpret_cast<const uint2*>(w.dm) + (tile * (kg_n / 4) + kg / 4) * 8 + g;
    return Frag{ld_stream(cp), ld_stream(sp), ld_stream(dp)};
  }
  // One kgroup (64 columns, four mma) of a lane's tile rows; sp: the chunk
  // sums of activation rows 2t, 2t+1.
  __device__ static void kgroup(float* acc, const Frag& f, int i, const uint16_t* xb, const float* mp, const float* sp,
                                int n) {
    const __half2 k1024 = __floats2half2_rn(1024.0f, 1024.0f);
    const float d_g = __half2float(__ushort_as_half(uint16_t(f.dm.x & 0xFFFFu)));
    const float d_g8 = __half2float(__ushort_as_half(uint16_t(f.dm.x >> 16)));
    const float mn_g = __half2float(__ushort_as_half(uint16_t(f.dm.y & 0xFFFFu)));
    const float mn_g8 = __half2float(__ushort_as_half(uint16_t(f.dm.y >> 16)));
    const uint32_t words[4] = {f.c.x, f.c.y, f.c.z, f.c.w};
#pragma unroll
    for (int sb = 0; sb < 2; ++sb) {
      // d*sc and dmin*m of rows g and g+8 for this sub-block.
      const float s0 = d_g * float((f.sm.x >> (16 * sb)) & 0xFFu);
      const float s1 = d_g8 * float((f.sm.x >> (16 * sb + 8)) & 0xFFu);
      const float m0 = mn_g * float((f.sm.y >> (16 * sb)) & 0xFFu);
      const float m1 = mn_g8 * float((f.sm.y >> (16 * sb + 8)) & 0xFFu);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int wd = 2 * sb + h, c = 4 * i + wd;
        uint32_t ar[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const uint32_t biased = q4kt_reg(words[wd], r);  // 1024 + q per half
          const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&biased), k1024);
          ar[r] = *reinterpret_cast<const uint32_t*>(&v);
        }
        const uint2 bv = *reinterpret_cast<const uint2*>(xb + c * n * 16);
        float dq[4];
        mma_f16(dq, ar, bv.x, bv.y);
        const float2 m = *reinterpret_cast<const float2*>(mp + c * kMatvecMaxCols);  // rows 2t, 2t+1
        const float2 xs = *reinterpret_cast<const float2*>(sp + c * kMatvecMaxCols);
        acc[0] = fmaf(fmaf(dq[0], s0, -m0 * xs.x), m.x, acc[0]);
        acc[1] = fmaf(fmaf(dq[1], s0, -m0 * xs.y), m.y, acc[1]);
        acc[2] = fmaf(fmaf(dq[2], s1, -m1 * xs.x), m.x, acc[2]);
        acc[3] = fmaf(fmaf(dq[3], s1, -m1 * xs.y), m.y, acc[3]);
      }
    }
  }
  // Element values of row r, columns 16*c .. 16*c+15 (scale not applied),
  // rounded as dequantize_row: (d*sc) * q - (dmin*m).
  __device__ static void load_chunk(const Q4kTiled& w, int64_t r, int64_t c, float* out) {
    const int64_t kg_n = w.kgroups(), kg = c / 4, tile = r / kFp4TileRows, unit = tile * kg_n + kg;
    const int ri = int(r % kFp4TileRows), g = ri & 7, up = ri >> 3, cc0 = int(16 * (c % 4)), sb = cc0 / 32;
    const uint16_t* dm = w.dm + (tile * (kg_n / 4) + kg / 4) * 32 + 4 * g;
    const uint8_t* sm = w.sm + unit * kQ4kSmBytes + 8 * g;
    const float d = __half2float(__ushort_as_half(dm[up])), dmin = __half2float(__ushort_as_half(dm[2 + up]));
    const float ds = __fmul_rn(d, float(sm[2 * sb + up])), mn = __fmul_rn(dmin, float(sm[4 + 2 * sb + up]));
    const uint32_t* words = reinterpret_cast<const uint32_t*>(w.codes + unit * kQ4kCodeBytes);
    for (int k = 0; k < 16; ++k) {
      int lane, wd, bit;
      q4kt_position(ri, cc0 + k, &lane, &wd, &bit);
      const uint32_t q = (words[lane * 4 + wd] >> bit) & 0x0Fu;
      out[k] = __fsub_rn(__fmul_rn(ds, float(q)), mn);
    }
  }
};

}  // namespace

cudaError_t q4kt_repack(const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr, const Q4kTiled& dst,
                        cudaStream_t stream) {
  if (dst.cols % 256 != 0 || r0 % kFp4TileRows != 0 || nr <= 0 || row_bytes != uint64_t(dst.cols / 256) * 144)
    return cudaErrorInvalidValue;
  const int64_t r1 = r0 + nr;
  if (r1 > dst.rows || (r1 % kFp4TileRows != 0 && r1 != dst.rows)) return cudaErrorInvalidValue;
  if (dst.paired && (r0 != 0 || r1 != dst.rows || dst.rows % 16 != 0)) return cudaErrorInvalidValue;  // one range
  return launch_plain(q4kt_repack_kernel, dim3(ceil_div(tiles_repack_threads(nr, dst.kgroups()), 256)), dim3(256), 0,
                      stream, src, row_bytes, r0, r1, dst, const_cast<uint8_t*>(dst.codes), const_cast<uint8_t*>(dst.sm),
                      const_cast<uint16_t*>(dst.dm));
}

int q4kt_slices(const Q4kTiled& w, int sms) { return tiles_slices(w.tiles(), w.kgroups(), sms); }

bool q4kt_matvec_fits(const Q4kTiled& w, int n) { return w.cols % 256 == 0 && tiles_fit<Q4kFormat>(w, n); }

cudaError_t q4kt_matvec(const Q4kTiled& w, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                        int sms, cudaStream_t stream, const TilesFusion& f) {
  if (w.cols % 256 != 0) return cudaErrorInvalidValue;
  return tiles_matvec<Q4kFormat>(w, x, ldx, n, y, ldy, acc, sms, stream, f);
}

cudaError_t q4kt_dequant_rows_f32(const Q4kTiled& w, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  return tiles_dequant<Q4kFormat>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t q4kt_dequant_rows_bf16(const Q4kTiled& w, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  return tiles_dequant<Q4kFormat>(w, r0, nr, nullptr, dst, w.cols, stream);
}

cudaError_t q4kt_embedding_rows(const Q4kTiled& w, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                cudaStream_t stream) {
  return tiles_dequant<Q4kFormat>(w, 0, n, tokens, out, ldo, stream);
}

}  // namespace qwen35::cuda
