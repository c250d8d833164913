// Causal GQA attention over the F16 KV cache with the sigmoid output gate
// (spec §4.4.4-4.4.5). CPU twin: attend_one() in lib/cpu/ops.h. All
// arithmetic is F32 (the cache values are F16).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "rope.h"

namespace qwen35::cuda {

struct AttnArgs {
  int64_t n = 0;          // query rows; row t attends cache rows 0 .. n_past + t
  int64_t n_head = 0;     // Hq
  int64_t n_head_kv = 0;  // Hkv (query head h uses KV head h / (Hq/Hkv))
  int64_t head_dim = 0;   // Dh: 64, 128, 256 or 512
  float scale = 1.0f;     // 1/sqrt(Dh)
  const float* q = nullptr;          // [n, Hq*Dh]
  const uint16_t* k_cache = nullptr; // [n_ctx, Hkv*Dh] F16
  const uint16_t* v_cache = nullptr; // [n_ctx, Hkv*Dh] F16
  const float* gate = nullptr;       // gate of row t, head h at gate[t*ldgate + h*gate_stride] (Dh values)
  int64_t ldgate = 0;
  int64_t gate_stride = 0;
  const int32_t* n_past = nullptr;   // device scalar
  float* o = nullptr;                // [n, Hq*Dh]: softmax(q K^T * scale) V * sigmoid(gate)
  // Split-K scratch for decode (attention_splits() partitions of the keys):
  // [n, Hq, splits] maxima and sums and [n, Hq, splits, Dh] partial outputs.
  int splits = 1;
  float* part_m = nullptr;
  float* part_l = nullptr;
  float* part_o = nullptr;
  // Batches: the tiled kernel (key tiles in shared memory shared by a tile
  // of query rows, online softmax; no split scratch) when its shared memory
  // fits the device; else the split kernel above.
  bool tiled = false;
  // With tiled: the tensor-core kernel (attention_mma) where it supports the
  // head size; else the F32 tiled kernel.
  bool tensor_cores = false;
};

bool attention_head_dim_supported(int64_t head_dim);

// The whole attention for every row and head.
cudaError_t attention(const AttnArgs& a, cudaStream_t stream);

// Flash attention on tensor cores (attention_mma.cu): mma.sync with F16
// operands, the queries and probabilities split into F16 hi + lo parts so
// the products keep F32 precision (results agree with the F32 kernels to
// rounding, not bit for bit). Head sizes 64-256 where the block's shared
// memory fits the device (about 103 KiB for 256); splits are not used.
bool attention_mma_supported(int64_t head_dim);
cudaError_t attention_mma(const AttnArgs& a, cudaStream_t stream);

// Decode steps of up to kFusedAttnRows rows: the q/k norm + RoPE + KV cache
// write of qkv_norm_rope() and both attention kernels in one kernel. Every
// block computes its query head and the batch's new keys and values itself
// (F16-rounded, as the cache holds them) and reads only the cache rows
// before n_past; one block per (row, KV head) writes that row's key and
// value to the cache; the last block of each (row, head) to finish merges
// the splits (in split order, as the merge kernel).
constexpr int kFusedAttnRows = 2;

struct FusedAttnArgs {
  AttnArgs attn;       // q is not read (tiled must be false)
  QkvRopeArgs rope;    // the raw projections and norms (caches and n_past as in attn); q_out is not written
  int* counters = nullptr;  // [n, n_head] zeros (left zero)
};

// Whether attention_fused accepts these arguments.
bool attention_fused_supported(const FusedAttnArgs& f);
cudaError_t attention_fused(const FusedAttnArgs& a, cudaStream_t stream);

}  // namespace qwen35::cuda
