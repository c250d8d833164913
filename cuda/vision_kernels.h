// The plain-CUDA kernels of the vision encoder (spec vision.md §4), one op
// per file (vision_layernorm.cu, vision_bias_act.cu, vision_rope.cu,
// vision_attention.cu); the projections are cuBLASLt GEMMs (gemm.h) and the
// encoder that strings them together is vision_encoder.cpp. Activations are
// F32; a kernel whose output feeds an F16 or BF16 GEMM writes that type
// directly (rounded to nearest even), so no conversion pass is needed.
//
// CPU twins (lib/vision/kernels.h): layer_norm_ref, gelu_tanh_ref /
// gelu_erf, rope2d_head, softmax_ref (the encoder's attention_ref). The
// emulation tests (tests/emu/test_cuda_emu.cpp) run these kernels against
// them on the CPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qwen35::cuda {

// Element type of an activation buffer written for a GEMM.
enum class ActType { F32, F16, BF16 };

// y[t] = LayerNorm(x[t]) * g + b for t < n rows of C elements (biased
// variance, F32 statistics; spec §4). y: [n, ldy] of `yt`; y may alias x
// when yt is F32 and ldy == ldx.
cudaError_t vision_layer_norm(const float* x, int64_t ldx, const float* g, const float* b, int64_t n, int64_t C,
                              float eps, void* y, int64_t ldy, ActType yt, cudaStream_t stream);

// Activation after a bias add.
enum class VisionAct { None, GeluTanh, GeluErf };

// y[t][i] = act(x[t][i] + (bias ? bias[i] : 0)) for t < n, i < cols.
// y: [n, ldy] of `yt`; y may be x (in place) when yt is F32 and ldy == ldx.
cudaError_t vision_bias_act(const float* x, int64_t ldx, const float* bias, int64_t n, int64_t cols, VisionAct act,
                            void* y, int64_t ldy, ActType yt, cudaStream_t stream);

// 2-D vision RoPE (spec §4.3) in place on the q and k parts of QKV rows:
// row t holds q at qkv[t*ld + h*head_dim], k at qkv[t*ld + k_offset +
// h*head_dim] for h < n_head; pairs (d, d + head_dim/2) turn by the angle
// whose cosine and sine are cos/sin[t*(head_dim/2) + d] (tables built on the
// host with VisionRopeCosSin, angles in double as on the CPU).
cudaError_t vision_rope(float* qkv, int64_t ld, int64_t n, int64_t n_head, int64_t head_dim, int64_t k_offset,
                        const float* cos, const float* sin, cudaStream_t stream);

// Full bidirectional attention over n patches (spec §4.4): for each head h,
// o[i][h*Dh..] = softmax_j(scale * q_i . k_j) v_j, with q, k, v read from
// QKV rows of stride ld (q at column h*Dh, k at k_offset + h*Dh, v at
// v_offset + h*Dh). Tiled (flash) kernel: F32 scores, online softmax in F32.
// o: [n, ldo] F32. Head sizes 32, 64 and 128 (vision_attention_supported).
bool vision_attention_supported(int64_t head_dim);
cudaError_t vision_attention(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                             int64_t n_head, int64_t head_dim, float scale, float* o, int64_t ldo,
                             cudaStream_t stream);
// The same on tensor cores (vision_attention_mma.cu): mma.sync with every
// F32 operand split into F16 hi + lo parts (three products per step), so
// results agree with the F32 kernel to rounding. Same head sizes; ld,
// k_offset and v_offset multiples of 4 and qkv 16-byte aligned
// (cudaErrorInvalidValue otherwise); cudaErrorNotSupported where the
// device's shared memory is too small.
cudaError_t vision_attention_mma(const float* qkv, int64_t ld, int64_t k_offset, int64_t v_offset, int64_t n,
                                 int64_t n_head, int64_t head_dim, float scale, float* o, int64_t ldo,
                                 cudaStream_t stream);

}  // namespace qwen35::cuda
