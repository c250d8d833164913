// Stores of F32 results into the activation types of vision_kernels.h
// (F32, or F16 / BF16 rounded to nearest even for the GEMMs).
#pragma once

#include "common.cuh"

namespace qwen35::cuda {

__device__ __forceinline__ void store_act(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_act(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_act(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

}  // namespace qwen35::cuda
