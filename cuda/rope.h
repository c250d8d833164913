// Per-head q/k RMSNorm + interleaved M-RoPE (spec §4.4.2-4.4.3) and the KV
// cache write. CPU twins: rmsnorm() and rope_heads() in lib/cpu/ops.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qwen35::cuda {

// Rotary tables, built once on the host with the CPU reference's formulas:
// pair i < n_rot/2 rotates (i, i + n_rot/2) by pos[comp[i]] * inv_freq[i]
// (comp 3 means angle 0).
struct RopeTables {
  int n_rot = 0;
  const double* inv_freq = nullptr;  // [n_rot/2] device
  const int32_t* comp = nullptr;     // [n_rot/2] device
};

struct QkvRopeArgs {
  int64_t n = 0;           // rows
  int64_t n_head = 0;      // Hq
  int64_t n_head_kv = 0;   // Hkv
  int64_t head_dim = 0;    // Dh (multiple of 32, <= 512)
  float eps = 1e-6f;
  // Inputs, one row per token:
  const float* qg = nullptr;  // [n, ldqg]: per head [query(Dh) | gate(Dh)]
  int64_t ldqg = 0;
  const float* k = nullptr;   // [n, ldk]: Hkv heads of Dh
  int64_t ldk = 0;
  const float* v = nullptr;   // [n, ldv]
  int64_t ldv = 0;
  const float* q_norm = nullptr;  // [Dh]
  const float* k_norm = nullptr;  // [Dh]
  const int32_t* pos = nullptr;   // [n, 3] device
  RopeTables rope;
  // Optional: per row the cosines and sines of the rotation, [n, n_rot]
  // (pair p: cos at [p], sin at [n_rot/2 + p]; rope_tables() of
  // lib/cpu/ops.h, computed on the host), so the kernels do no double-
  // precision trigonometry. Null: computed from pos and rope.
  const float* rope_cs = nullptr;
  // Outputs:
  float* q_out = nullptr;         // [n, Hq*Dh] normalized, rotated queries
  uint16_t* k_cache = nullptr;    // [n_ctx, Hkv*Dh] F16: row n_past+t gets the key
  uint16_t* v_cache = nullptr;    // [n_ctx, Hkv*Dh] F16
  const int32_t* n_past = nullptr;  // device scalar: first cache row of this batch
};

cudaError_t qkv_norm_rope(const QkvRopeArgs& a, cudaStream_t stream);

}  // namespace qwen35::cuda
