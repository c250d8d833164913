// CPU kernels of the vision encoder: a register-tiled F32 matrix product and
// the element-wise operations around it, each with a plain-loop reference
// twin (the *_ref functions) that the fast versions are tested against.
//
// The encoder runs every weight over hundreds to thousands of patch rows, so
// unlike single-token text decode it is compute bound: the fast product packs
// a block of weight rows into F32 panels once (F16 and other stored types are
// converted while packing, so weights stay in their file type in memory) and
// reuses each panel for every activation row. The inner micro-kernel is one
// template compiled for AVX-512, AVX2+FMA and baseline SIMD and picked at run
// time, so a default (non -march=native) build still uses the machine's
// widest vectors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model.h"
#include "threadpool.h"

namespace qwen35::vision {

// A weight matrix used as y = W x: `rows` outputs (N) of `cols` inputs (K),
// rows stored contiguously in any ggml type dequantize_row supports.
// (qwen35::Weight from model.h, so text-model weights can use it too.)

// Y[m][n] = sum_k X[m][k] * W[n][k] + (bias ? bias[n] : 0)
//   X: [M, K] with row stride ldx; Y: [M, N] with row stride ldy.
// Threads split the output columns; each output element is computed by one
// thread in a fixed order, so the result does not depend on the thread count.
void gemm_weight(const float* X, int64_t M, int64_t ldx, const Weight& W, const float* bias, float* Y, int64_t ldy,
                 ThreadPool& tp);
// Reference: each weight row dequantized exactly, dotted in element order.
void gemm_weight_ref(const float* X, int64_t M, int64_t ldx, const Weight& W, const float* bias, float* Y,
                     int64_t ldy, ThreadPool& tp);

// Single-threaded C[m][n] = alpha * sum_k A[m][k] * B[k][n] on the calling
// thread (attention: scores = Q K^T with B = K^T, outputs = P V with B = V).
//   A: [M, K] stride lda; B: [K, N] stride ldb; C: [M, N] stride ldc.
void gemm_f32_kn(const float* A, int64_t M, int64_t lda, const float* B, int64_t ldb, int64_t N, int64_t K,
                 float alpha, float* C, int64_t ldc);
void gemm_f32_kn_ref(const float* A, int64_t M, int64_t lda, const float* B, int64_t ldb, int64_t N, int64_t K,
                     float alpha, float* C, int64_t ldc);

// LayerNorm of one row (biased variance): y = (x - mean) / sqrt(var + eps) * g + b.
// y may alias x.
void layer_norm(const float* x, const float* g, const float* b, int64_t n, float eps, float* y);
void layer_norm_ref(const float* x, const float* g, const float* b, int64_t n, float eps, float* y);

// In place: x = gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_tanh(float* x, int64_t n);
void gelu_tanh_ref(float* x, int64_t n);
// In place: x = 0.5 x (1 + erf(x / sqrt(2))) (exact GELU).
void gelu_erf(float* x, int64_t n);

// 2-D vision RoPE of one head in place (spec §4.3): pairs (d, d + half) turn
// by the angle whose cosine and sine are cs[d] and sn[d] (VisionRopeCosSin).
void rope2d_head(float* v, const float* cs, const float* sn, int64_t half);

// In place softmax of one row (F32 statistics).
void softmax(float* x, int64_t n);
void softmax_ref(float* x, int64_t n);

// F16 -> F32 for n elements (bit-exact, subnormals and specials included).
void fp16_to_fp32_row(const uint16_t* src, float* dst, int64_t n);

// Name of the micro-kernel variant in use ("avx512", "avx2", "generic").
const char* gemm_kernel_name();
// Variants this CPU supports, best first (the default).
std::vector<std::string> gemm_kernel_names();
// Tests and benchmarks only: run `name` from now on ("" = the default).
// Returns false if this CPU cannot run it. Not to be called while a product runs.
bool select_gemm_kernel(const std::string& name);

}  // namespace qwen35::vision
