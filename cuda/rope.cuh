// Device functions of the per-head q/k RMSNorm and interleaved M-RoPE
// (spec §4.4.2-4.4.3), shared by the q/k/v kernel (rope.cu) and the fused
// decode attention (attention.cu). Included by .cu files only.
#pragma once

#include "common.cuh"
#include "rope.h"

namespace qwen35::cuda {

constexpr int kMaxHeadDim = 512;

// buf[i] = src[i] / sqrt(mean(src^2) + eps) * w[i] for i < Dh. Every thread
// of the block calls it; buf is complete for every thread on return. buf
// must not be read by another thread when it is called (it is overwritten
// before the first barrier).
__device__ __forceinline__ void head_rmsnorm(const float* src, const float* w, int64_t Dh, float eps, float* buf,
                                             float* red) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) {
    const float v = src[i];
    buf[i] = v;
    ss = fmaf(v, v, ss);
  }
  ss = block_sum(ss, red);  // its barriers also complete buf
  const float scale = rsqrtf(ss / float(Dh) + eps);
  for (int64_t i = threadIdx.x; i < Dh; i += blockDim.x) buf[i] = buf[i] * scale * w[i];
  __syncthreads();
}

// Element i of the normalized head in buf, rotated for position pos[0..2]:
// pair p < n_rot/2 rotates (p, p + n_rot/2) by pos[comp[p]] * inv_freq[p]
// (angles in double, as the CPU reference).
// With cs_row (the row's [n_rot] host table, see QkvRopeArgs::rope_cs) the
// cosine and sine are read instead of computed.
__device__ __forceinline__ float rope_element(const float* buf, int64_t i, const int32_t* pos,
                                              const RopeTables& rope, const float* cs_row = nullptr) {
  const int half = rope.n_rot / 2;
  if (i >= 2 * half) return buf[i];
  const int p = int(i < half ? i : i - half);
  float c, s;
  if (cs_row) {
    c = cs_row[p];
    s = cs_row[half + p];
  } else {
    const int comp = rope.comp[p];
    const double ang = (comp < 3 ? double(pos[comp]) : 0.0) * rope.inv_freq[p];
    c = float(cos(ang));
    s = float(sin(ang));
  }
  if (i < half) return buf[i] * c - buf[i + half] * s;
  return buf[i - half] * s + buf[i] * c;
}

}  // namespace qwen35::cuda
