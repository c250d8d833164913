// Vision attention on tensor cores (see vision_kernels.h:
// vision_attention_mma). The same flash-attention structure as the text
// model's attention_mma.cu (mma.sync m16n8k16, 4 warps x 16 query rows, key
// tiles of 32 in shared memory, the score accumulators reused as the A
// operand of P V), for full bidirectional attention over F32 Q, K and V:
// every operand is split into F16 hi + lo parts and each product takes three
// mma (hi x hi + hi x lo + lo x hi; lo x lo is below F32 rounding), so the
// results match the F32 kernel to rounding. Keys past n are masked; rows
// past n are not written.
#include "common.cuh"
#include "launch.cuh"
#include "tc_common.cuh"
#include "vision_kernels.h"

namespace qwen35::cuda {

namespace {

constexpr int kVmWarps = 4;
constexpr int kVmRows = 16 * kVmWarps;  // query rows per block
constexpr int kVmKeys = 32;             // keys per tile

template <int DH>
struct VmLayout {  // offsets in halves
  static constexpr int QS = DH + 8;      // row stride of the query and key tiles
  static constexpr int VS = kVmKeys + 8;  // row stride of the transposed values
  static constexpr int qh = 0, ql = kVmRows * QS;
  static constexpr int kh = 2 * kVmRows * QS, kl = kh + kVmKeys * QS;
  static constexpr int vh = kl + kVmKeys * QS, vl = vh + DH * VS;
  static constexpr size_t bytes = size_t(vl + DH * VS) * sizeof(uint16_t);
};

__device__ __forceinline__ uint16_t f16_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }

// x ~ hi + lo, both F16 (lo: the rounding error of hi, rounded).
__device__ __forceinline__ void split_f16(float x, uint16_t& hi, uint16_t& lo) {
  const __half h = __float2half_rn(x);
  hi = __half_as_ushort(h);
  lo = f16_bits(x - __half2float(h));
}

__device__ __forceinline__ uint32_t pair_bits(uint16_t a, uint16_t b) { return uint32_t(a) | (uint32_t(b) << 16); }

__device__ __forceinline__ uint32_t ld_pair(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Rows r0 + (0, 8) and columns col + (0, 8) of a [*, stride] F16 tile as an
// A fragment.
__device__ __forceinline__ void load_a(const uint16_t* base, int stride, uint32_t* a) {
  a[0] = ld_pair(base);
  a[1] = ld_pair(base + 8 * stride);
  a[2] = ld_pair(base + 8);
  a[3] = ld_pair(base + 8 * stride + 8);
}

template <int DH>
__global__ void __launch_bounds__(kVmWarps * kWarp)
    vision_attention_mma_kernel(const float* __restrict__ qkv, int64_t ld, int64_t k_offset, int64_t v_offset,
                                int64_t n, float scale, float* __restrict__ o, int64_t ldo) {
  using L = VmLayout<DH>;
  constexpr int QS = L::QS, VS = L::VS, NT = kVmKeys / 8, DT = DH / 8;
  uint16_t* smem = dynamic_smem<uint16_t>();
  uint16_t *sqh = smem + L::qh, *sql = smem + L::ql;  // [kVmRows, QS] scaled queries
  uint16_t *skh = smem + L::kh, *skl = smem + L::kl;  // [kVmKeys, QS] keys
  uint16_t *svh = smem + L::vh, *svl = smem + L::vl;  // [DH, VS] values, transposed
  pdl_prologue();
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp, g = lane >> 2, t = lane & 3;
  const int64_t q0 = int64_t(blockIdx.x) * kVmRows, h = blockIdx.y;
  const float* qb = qkv + h * DH;
  const float* kb = qkv + k_offset + h * DH;
  const float* vb = qkv + v_offset + h * DH;

  for (int e = tid; e < kVmRows * DH / 4; e += blockDim.x) {
    const int r = e / (DH / 4), c = 4 * (e % (DH / 4));
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (q0 + r < n) v = *reinterpret_cast<const float4*>(qb + (q0 + r) * ld + c);
    const float x[4] = {v.x * scale, v.y * scale, v.z * scale, v.w * scale};
    for (int i = 0; i < 4; ++i) split_f16(x[i], sqh[r * QS + c + i], sql[r * QS + c + i]);
  }

  const int r0 = 16 * warp + g;
  float acc[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;

  for (int64_t j0 = 0; j0 < n; j0 += kVmKeys) {
    __syncthreads();  // the previous tile is no longer read (and the queries are stored)
    for (int e = tid; e < kVmKeys * DH / 4; e += blockDim.x) {
      const int r = e / (DH / 4), c = 4 * (e % (DH / 4));
      float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
      if (j0 + r < n) {
        kv = *reinterpret_cast<const float4*>(kb + (j0 + r) * ld + c);
        vv = *reinterpret_cast<const float4*>(vb + (j0 + r) * ld + c);
      }
      const float kx[4] = {kv.x, kv.y, kv.z, kv.w}, vx[4] = {vv.x, vv.y, vv.z, vv.w};
      for (int i = 0; i < 4; ++i) {
        split_f16(kx[i], skh[r * QS + c + i], skl[r * QS + c + i]);
        split_f16(vx[i], svh[(c + i) * VS + r], svl[(c + i) * VS + r]);
      }
    }
    __syncthreads();

    // Scores of rows g, g+8 (accumulators e < 2, e >= 2), keys j0 + 8nt + 2t + e%2.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      const int col = 16 * ks + 2 * t;
      uint32_t ah[4], al[4];
      load_a(sqh + r0 * QS + col, QS, ah);
      load_a(sql + r0 * QS + col, QS, al);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int off = (8 * nt + g) * QS + col;
        const uint32_t bh0 = ld_pair(skh + off), bh1 = ld_pair(skh + off + 8);
        const uint32_t bl0 = ld_pair(skl + off), bl1 = ld_pair(skl + off + 8);
        mma_f16_acc(s[nt], ah, bh0, bh1);
        mma_f16_acc(s[nt], ah, bl0, bl1);
        mma_f16_acc(s[nt], al, bh0, bh1);
      }
    }

#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[nt][2 * hr + e];
          if (j0 + 8 * nt + 2 * t + e >= n) v = -INFINITY;
          mx = fmaxf(mx, v);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, 2));
      // Key 0 is in the first tile: m is finite from then on.
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

    // acc += P V, 16 keys per step.
#pragma unroll
    for (int kc = 0; kc < NT / 2; ++kc) {
      uint32_t ph[4], pl[4];
      const float pv[4][2] = {{s[2 * kc][0], s[2 * kc][1]},
                              {s[2 * kc][2], s[2 * kc][3]},
                              {s[2 * kc + 1][0], s[2 * kc + 1][1]},
                              {s[2 * kc + 1][2], s[2 * kc + 1][3]}};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint16_t h0, l0, h1, l1;
        split_f16(pv[q][0], h0, l0);
        split_f16(pv[q][1], h1, l1);
        ph[q] = pair_bits(h0, h1);
        pl[q] = pair_bits(l0, l1);
      }
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const int off = (8 * dt + g) * VS + 16 * kc + 2 * t;
        const uint32_t bh0 = ld_pair(svh + off), bh1 = ld_pair(svh + off + 8);
        const uint32_t bl0 = ld_pair(svl + off), bl1 = ld_pair(svl + off + 8);
        mma_f16_acc(acc[dt], ph, bh0, bh1);
        mma_f16_acc(acc[dt], ph, bl0, bl1);
        mma_f16_acc(acc[dt], pl, bh0, bh1);
      }
    }
  }

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(0xFFFFFFFFu, lt, 1);
    lt += __shfl_xor_sync(0xFFFFFFFFu, lt, 2);
    const int64_t row = q0 + r0 + 8 * hr;
    if (row >= n) continue;
    const float inv = 1.0f / lt;
    float* out = o + row * ldo + h * DH;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int d = 8 * dt + 2 * t;
      out[d] = acc[dt][2 * hr] * inv;
      out[d + 1] = acc[dt][2 * hr + 1] * inv;
    }
  }
}

template <int DH>
cudaError_t launch_vm(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n, int64_t n_head,
                      float scale, float* o, int64_t ldo, cudaStream_t stream) {
  using L = VmLayout<DH>;
  if (L::bytes > max_dynamic_smem()) return cudaErrorNotSupported;
  const cudaError_t e = allow_dynamic_smem(vision_attention_mma_kernel<DH>, L::bytes);
  if (e != cudaSuccess) return e;
  return launch(vision_attention_mma_kernel<DH>, dim3(ceil_div(n, kVmRows), unsigned(n_head)),
                dim3(kVmWarps * kWarp), L::bytes, stream, qkv, ld, k_offset, v_offset, n, scale, o, ldo);
}

}  // namespace

cudaError_t vision_attention_mma(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                                 int64_t n_head, int64_t head_dim, float scale, float* o, int64_t ldo,
                                 cudaStream_t stream) {
  if (n <= 0 || n_head <= 0) return cudaSuccess;
  // float4 loads of q, k and v rows.
  if (ld % 4 != 0 || k_offset % 4 != 0 || v_offset % 4 != 0 || (reinterpret_cast<uintptr_t>(qkv) & 15u) != 0)
    return cudaErrorInvalidValue;
  switch (head_dim) {
    case 32: return launch_vm<32>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    case 64: return launch_vm<64>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    case 128: return launch_vm<128>(qkv, ld, k_offset, v_offset, n, n_head, scale, o, ldo, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qwen35::cuda
