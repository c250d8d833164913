// Fragment-level pieces of the tensor-core flash-attention kernels
// (attention_mma.cu for the text model, vision_attention_mma.cu for the
// vision encoder). A warp owns 16 query rows; with the m16n8k16 mapping of
// tc_common.cuh (lane = 4g + t) each lane holds rows g and g + 8, and a
// score tile of NT x 8 keys is s[nt][e]: row g for e < 2, row g + 8 for
// e >= 2, key 8nt + 2t + e%2. Included by .cu files only.
#pragma once

#include "tc_common.cuh"

namespace qwen35::cuda {

// Block geometry of both kernels: kFlashWarps warps of 16 query rows, key
// tiles of kFlashKeys in shared memory; F16 tiles padded by 8 halves per
// row so a warp's fragment loads fall on 32 distinct banks.
constexpr int kFlashWarps = 4;
constexpr int kFlashRows = 16 * kFlashWarps;  // query rows per block
constexpr int kFlashKeys = 32;                // keys per tile
constexpr int flash_row_stride(int dh) { return dh + 8; }  // query and key tiles
constexpr int kFlashVtStride = kFlashKeys + 8;             // transposed values

// x ~ hi + lo, both F16 (lo: the rounding error of hi, rounded).
__device__ __forceinline__ void split_f16(float x, uint16_t& hi, uint16_t& lo) {
  const __half h = __float2half_rn(x);
  hi = __half_as_ushort(h);
  lo = __half_as_ushort(__float2half_rn(x - __half2float(h)));
}

// (x, y) as F16 pairs hi and lo.
__device__ __forceinline__ void split_f16x2(float x, float y, uint32_t& hi, uint32_t& lo) {
  uint16_t h0, l0, h1, l1;
  split_f16(x, h0, l0);
  split_f16(y, h1, l1);
  hi = uint32_t(h0) | (uint32_t(h1) << 16);
  lo = uint32_t(l0) | (uint32_t(l1) << 16);
}

// Two adjacent F16 values of shared memory as one fragment register.
__device__ __forceinline__ uint32_t ld_pair(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Rows 0 and 8, columns 0 and 8 from `base` of a [*, stride] F16 tile: an A
// fragment (base = row g, column 2t of the 16 x 16 block).
__device__ __forceinline__ void load_a_frag(const uint16_t* base, int stride, uint32_t* a) {
  a[0] = ld_pair(base);
  a[1] = ld_pair(base + 8 * stride);
  a[2] = ld_pair(base + 8);
  a[3] = ld_pair(base + 8 * stride + 8);
}

// One key tile of the online softmax for the lane's two rows: the scores
// become v * scale, or -inf where masked(hr, e, nt) (hr 0: row g, 1: row
// g + 8); then the row maxima m, the sums l (this lane's part; add the
// row's four lanes at the end: finish_row_sum) and the accumulators acc
// (DT tiles of 8 output columns) are rescaled, and s holds the unnormalized
// probabilities. Every row must see a key in the first tile (m is then
// finite, and exp(m_old - m_new) is 0 the first time).
template <int NT, int DT, typename Masked>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NT][4], float scale, Masked masked, float* m, float* l,
                                                    float (&acc)[DT][4]) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = s[nt][2 * hr + e];
        v = masked(hr, nt, e) ? -INFINITY : v * scale;
        mx = fmaxf(mx, v);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, 2));
    const float m_new = fmaxf(m[hr], mx);
    const float c = expf(m[hr] - m_new);
    float ps = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = s[nt][2 * hr + e];
        v = expf(v - m_new);
        ps += v;
      }
    l[hr] = l[hr] * c + ps;
    m[hr] = m_new;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      acc[dt][2 * hr] *= c;
      acc[dt][2 * hr + 1] *= c;
    }
  }
}

// The probabilities of keys 16kc .. 16kc + 15 as A fragments (hi and lo):
// the D layout of score tiles 2kc and 2kc + 1 is the A layout of one step.
template <int NT>
__device__ __forceinline__ void p_frags(const float (&s)[NT][4], int kc, uint32_t* ph, uint32_t* pl) {
  split_f16x2(s[2 * kc][0], s[2 * kc][1], ph[0], pl[0]);          // row g, keys 16kc + 2t
  split_f16x2(s[2 * kc][2], s[2 * kc][3], ph[1], pl[1]);          // row g + 8
  split_f16x2(s[2 * kc + 1][0], s[2 * kc + 1][1], ph[2], pl[2]);  // row g, keys 16kc + 8 + 2t
  split_f16x2(s[2 * kc + 1][2], s[2 * kc + 1][3], ph[3], pl[3]);  // row g + 8
}

// A row's softmax sum over its four lanes (every lane of the warp calls it).
__device__ __forceinline__ float finish_row_sum(float l) {
  l += __shfl_xor_sync(0xFFFFFFFFu, l, 1);
  return l + __shfl_xor_sync(0xFFFFFFFFu, l, 2);
}

}  // namespace qwen35::cuda
