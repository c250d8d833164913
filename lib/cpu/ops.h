// Scalar CPU building blocks of the qwen35 forward pass (spec §4). These are
// the reference implementations: plain loops, F32, and the CPU twins that the
// CUDA kernels are tested against.
#pragma once

#include <cmath>
#include <cstdint>

namespace qwen35 {

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float siluf(float x) { return x / (1.0f + std::exp(-x)); }
inline float softplusf(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// y = x / sqrt(mean(x^2) + eps) * w   (n elements; y may alias x; w may be null = ones)
void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* y);

// x / max(||x||, eps) in place.
void l2norm(float* x, int64_t n, float eps);

// Rotary embedding tables: pair i of `n_rot/2` uses position component
// sel(i) (interleaved M-RoPE: t if i%3==0, h if i%3==1, w if i%3==2, with the
// section limits of spec §4.4.3) and inverse frequency base^(-2i/n_rot).
struct RopeConfig {
  int32_t n_rot = 0;          // rotated dims per head (pairs (i, i + n_rot/2))
  int32_t sections[4] = {0, 0, 0, 0};
  float base = 10000.0f;
};
// Which position component (0=t, 1=h, 2=w, 3=e which is always 0) drives rotation pair i.
int rope_component(const RopeConfig& rc, int pair);
// cos and sin of the rotation angle of each pair i < n_rot/2 at pos = (t, h, w).
// Angles are computed in double and reduced once (spec §4.4.3 numerics).
constexpr int kMaxRopePairs = 512;
void rope_tables(const RopeConfig& rc, const int32_t pos[3], float* cs, float* sn);
// Rotate n_heads heads of `head_dim` floats in place; pos = (t, h, w).
void rope_heads(float* x, int64_t n_heads, int64_t head_dim, const RopeConfig& rc, const int32_t pos[3]);

// Causal depthwise conv over a window: channels `C`, width `K`.
// window: [K-1, C] previous inputs (oldest first) followed by this token's
// input u [C]; w: [C, K] taps (tap K-1 multiplies the current input).
// out[c] = silu(sum_k w[c][k] * in_k[c]).
void conv_silu_step(const float* window_prev, const float* u, const float* w, int64_t C, int64_t K, float* out);

// One gated-delta-rule step for one value head (spec §4.5.4), state kept
// transposed as M[v][k] = S[k][v] (row per value dim, contiguous over keys):
//   M *= exp(g); d = beta * (v - M k); M += d k^T; o = M q
void delta_rule_step(float* M, const float* q, const float* k, const float* v, float beta, float g, int64_t dk,
                     int64_t dv, float* o);

// Attention of one query head over `n_kv` cached rows: o = softmax(scale q.K^T) V.
// K, V: [n_kv, stride] rows, head at offset 0 of each row (caller offsets).
void attend_one(const float* q, const float* K, const float* V, int64_t n_kv, int64_t stride, int64_t head_dim,
                float scale, float* scores, float* o);

}  // namespace qwen35
