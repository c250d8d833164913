// CPU kernels behind the fast path, one implementation per instruction set
// (generic C++, AVX2+FMA+F16C, AVX-512 with VNNI), chosen at run time.
//
// Matrix products on quantized weights use integer dot products: each
// activation row is quantized to int8 in groups of 16 with an F32 scale
// (llama.cpp quantizes to blocks of 32; 16 matches the NVFP4 sub-blocks and
// halves the error), and the weights' small integers are multiplied with them
// exactly (VNNI vpdpbusd / maddubs). The unsigned-times-signed instructions
// need unsigned weights, so each weight value gets an offset c (NVFP4:
// 2*E2M1 + 12, Q8_0: q + 128, Q6_K: q + 32 as stored, Q4_K: q as stored) and
// the activation row carries the correction -c * (sum of each group of 4).
// F32/F16 weights use float activations; BF16 weights too, except where
// the CPU has AVX-512 BF16: there activations are rounded to BF16 and
// multiplied by vdpbf16ps (pairs of products accumulated in F32).
//
// Every output element is computed by one kernel call in a fixed order that
// does not depend on the row range, the batch size or the thread count, so
// results are bitwise reproducible and a row gets the same logits in a batch
// as alone.
//
// This header holds declarations and plain structs only: the kernel files are
// compiled with per-file instruction-set flags, and an inline function shared
// with other files could be emitted with those instructions and picked by the
// linker for generic code.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qwen35::cpu {

// Byte layout of one quantized activation row of K elements (K % 32 == 0),
// 64-byte aligned sections:
//   q     int8[K]      values; for NVFP4 each 64-block is permuted into the
//                      weights' nibble order (positions 0-31: low nibbles
//                      = elements 16s+j (s = p/8, j = p%8); 32-63: high
//                      nibbles = elements 16s+8+j)
//   corr  int32[K/4]   -c * (sum of the 4 values at positions 4l..4l+3)
//   xs    float[K/16]  scale of each group of 16 elements (x ~= xs * q)
//   s32   float[K/32]  sum of xs*q over each group of 32 elements (Q4_K mins)
// Padding bytes are zero. Activations converted to BF16 (see KernelSet::
// converts_acts) are K bf16 values at the start of a row of the same stride.
struct ActLayout {
  int64_t K = 0;
  size_t corr = 0, xs = 0, s32 = 0;  // section offsets in bytes
  size_t stride = 0;                 // bytes per row
};
ActLayout act_layout(int64_t K);

// Whether matrices of this type multiply int8-quantized activations.
bool uses_quantized_acts(uint32_t type);

// A pseudo weight type for GemmArgs::type / converts_acts / quantize_act:
// the approximate "screen" of a Q6_K matrix used to pick the MTP draft's
// candidate tokens. Its rows are blocks of kQ6kScreenBlockBytes: the qh[64],
// scales[16] and d of each Q6_K block (the high 2 bits of every 6-bit code),
// copied out of the Q6_K rows (q6k_screen_block); the low 4 bits count as 8,
// their middle. 82 of 210 bytes: the stream is 2.6x shorter. Activations are
// converted as for GGML_Q6_K. Only kernel sets whose converts_acts(kQ6kScreen)
// is true implement it.
constexpr uint32_t kQ6kScreen = 0x10000u | 14u;  // 14 = GGML_Q6_K
constexpr int kQ6kScreenBlockBytes = 82;
// The screen block of one 210-byte Q6_K block.
void q6k_screen_block(const uint8_t* q6k_block, uint8_t* dst);

// y[t * ldy + r] = scale * sum_k W[r][k] x[t][k] for rows r0 <= r < r1 and
// 0 <= t < n.
struct GemmArgs {
  uint32_t type = 0;
  const uint8_t* w = nullptr;   // row 0 of the weight matrix
  uint64_t w_stride = 0;        // bytes per weight row
  int64_t K = 0;
  const void* x = nullptr;      // [n] converted rows (act_layout(K).stride apart) or [n, K] F32
  size_t x_stride = 0;          // bytes between activation rows
  int64_t n = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  float scale = 1.0f;
  uint8_t* work = nullptr;  // per-thread scratch of gemm_work_bytes(K), or null
  size_t work_bytes = 0;
};
// Scratch a gemm call can use (decoded weight tiles for long batches).
size_t gemm_work_bytes(int64_t K);

// Attention of n_heads query heads that share keys and values (a GQA group)
// over n_kv cached rows (keys and values F32, `stride` floats apart):
// o_h = softmax(scale * q_h.K^T) V. Head h reads q + h*head_stride, writes
// o + h*head_stride and uses scores + h*n_kv (n_heads * n_kv floats).
constexpr int64_t kMaxAttnGroup = 64;
struct AttnArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t n_kv = 0, stride = 0, head_dim = 0;
  int64_t n_heads = 1, head_stride = 0;  // n_heads <= kMaxAttnGroup
  float scale = 1.0f;
  float* scores = nullptr;
  float* o = nullptr;
};

// One value head of the gated delta rule over n rows (spec §4.5.4), state
// kept as M = S^T ([dv][dk], row per value dim). Row t reads q/k/v at
// q + t*x_stride etc., beta[t*g_stride], g[t*g_stride] (log-decay) and writes
// o + t*o_stride. snap (or null) receives the state after row snap_row.
struct DeltaArgs {
  float* M = nullptr;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t x_stride = 0;
  const float* beta = nullptr;
  const float* g = nullptr;
  int64_t g_stride = 0;
  float* o = nullptr;
  int64_t o_stride = 0;
  int64_t n = 0, dk = 0, dv = 0;
  float* snap = nullptr;
  int64_t snap_row = -1;
  float* work = nullptr;  // delta_chunk_work_floats(dk, dv) floats (chunked form only)
};
// Chunk length of the chunked (parallel) form of the delta rule (spec §4.5.6).
constexpr int64_t kDeltaChunk = 64;
size_t delta_chunk_work_floats(int64_t dk, int64_t dv);

struct KernelSet {
  const char* name;
  // Whether gemm on this type wants converted activation rows (int8 groups,
  // or BF16) rather than F32 rows.
  bool (*converts_acts)(uint32_t type);
  // Convert one activation row for weights of `type` (act_layout(K).stride bytes).
  void (*quantize_act)(uint32_t type, const float* x, int64_t K, uint8_t* dst);
  // Matrix product over weight rows [r0, r1); false if the type has no kernel
  // here (the caller then uses its float fallback).
  bool (*gemm)(const GemmArgs& a, int64_t r0, int64_t r1);

  // ---- vector ops of the forward pass ----
  float (*dot)(const float* a, const float* b, int64_t n);
  // y = x / sqrt(mean(x^2) + eps) * w   (w may be null; y may alias x)
  void (*rmsnorm)(const float* x, const float* w, int64_t n, float eps, float* y);
  // x = x / max(||x||, eps) * post_scale
  void (*l2norm)(float* x, int64_t n, float eps, float post_scale);
  // a[i] = silu(a[i]) * b[i]
  void (*silu_mul)(float* a, const float* b, int64_t n);
  // a[i] = a[i] * sigmoid(b[i])
  void (*mul_sigmoid)(float* a, const float* b, int64_t n);
  // Gated RMSNorm of one value head: o = rmsnorm(o, w) * silu(z)
  void (*gated_rmsnorm)(float* o, const float* z, const float* w, int64_t n, float eps);
  // Causal conv + SiLU for one row: out[c] = silu(sum_k taps_t[k*C + c] * in[k][c]),
  // in[0..K-1] the K input rows (oldest first).
  void (*conv_silu)(const float* const* in, const float* taps_t, int64_t K, int64_t C, float* out);
  // Rotary embedding of n_heads heads of head_dim floats in place: pair
  // (i, i + half) of each head rotated by the angle with cos cs[i], sin sn[i].
  void (*rope)(float* x, int64_t n_heads, int64_t head_dim, int64_t half, const float* cs, const float* sn);
  void (*attend)(const AttnArgs& a);
  void (*delta_rule)(const DeltaArgs& a);        // sequential form
  void (*delta_rule_chunked)(const DeltaArgs& a);  // chunked form (n any; chunks of kDeltaChunk)
};

const KernelSet& kernels_generic();
// These two exist only on x86-64 builds; callers check cpu_has_*() first.
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();

// What this CPU (and OS) supports.
bool cpu_has_avx2();    // AVX2 + FMA + F16C
bool cpu_has_avx512();  // AVX-512 F/BW/VL/VNNI
bool cpu_has_avx512_bf16();

// The best kernel set for this CPU. QWEN35_CPU_ISA=generic|avx2|avx512 in the
// environment caps the choice (for measurements); read once.
const KernelSet& kernels();
// Every kernel set this CPU can run, best last (tests).
int available_kernel_sets(const KernelSet** out, int max);

}  // namespace qwen35::cpu
