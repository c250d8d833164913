#include "cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qwen35 {

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  double ss = 0.0;  // llama.cpp accumulates in double on the CPU
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float scale = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

void l2norm(float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float scale = float(1.0 / std::max(std::sqrt(ss), double(eps)));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

int rope_component(const RopeConfig& rc, int pair) {
  // ggml's interleaved M-RoPE (IMROPE) rule: pairs cycle t, h, w within the
  // section limits; anything else takes the 4th component, which is 0 for
  // text and images in this model.
  const int sect_dims = rc.sections[0] + rc.sections[1] + rc.sections[2] + rc.sections[3];
  const int sector = sect_dims > 0 ? pair % sect_dims : pair;
  if (sector % 3 == 1 && sector < 3 * rc.sections[1]) return 1;
  if (sector % 3 == 2 && sector < 3 * rc.sections[2]) return 2;
  if (sector % 3 == 0 && sector < 3 * rc.sections[0]) return 0;
  return 3;
}

void rope_tables(const RopeConfig& rc, const int32_t pos[3], float* cs, float* sn) {
  const int half = rc.n_rot / 2;
  for (int i = 0; i < half && i < kMaxRopePairs; ++i) {
    const double inv_freq = std::pow(double(rc.base), -2.0 * i / double(rc.n_rot));
    const int comp = rope_component(rc, i);
    const double ang = (comp < 3 ? double(pos[comp]) : 0.0) * inv_freq;
    cs[i] = float(std::cos(ang));
    sn[i] = float(std::sin(ang));
  }
}

void rope_heads(float* x, int64_t n_heads, int64_t head_dim, const RopeConfig& rc, const int32_t pos[3]) {
  const int half = rc.n_rot / 2;
  float cs[kMaxRopePairs], sn[kMaxRopePairs];
  rope_tables(rc, pos, cs, sn);
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cs[i] - b * sn[i];
      v[i + half] = a * sn[i] + b * cs[i];
    }
  }
}

void conv_silu_step(const float* window_prev, const float* u, const float* w, int64_t C, int64_t K, float* out) {
  for (int64_t c = 0; c < C; ++c) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K - 1; ++k) acc += w[c * K + k] * window_prev[k * C + c];
    acc += w[c * K + K - 1] * u[c];
    out[c] = siluf(acc);
  }
}

void delta_rule_step(float* M, const float* q, const float* k, const float* v, float beta, float g, int64_t dk,
                     int64_t dv, float* o) {
  const float decay = std::exp(g);
  for (int64_t j = 0; j < dv; ++j) {
    float* row = M + j * dk;
    float m = 0.0f;
    for (int64_t i = 0; i < dk; ++i) {
      row[i] *= decay;
      m += row[i] * k[i];
    }
    const float d = beta * (v[j] - m);
    float acc = 0.0f;
    for (int64_t i = 0; i < dk; ++i) {
      row[i] += k[i] * d;
      acc += row[i] * q[i];
    }
    o[j] = acc;
  }
}

void attend_one(const float* q, const float* K, const float* V, int64_t n_kv, int64_t stride, int64_t head_dim,
                float scale, float* scores, float* o) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n_kv; ++j) {
    const float* kr = K + j * stride;
    float s = 0.0f;
    for (int64_t i = 0; i < head_dim; ++i) s += q[i] * kr[i];
    scores[j] = s * scale;
    mx = std::max(mx, scores[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n_kv; ++j) {
    scores[j] = std::exp(scores[j] - mx);
    sum += scores[j];
  }
  const float inv = float(1.0 / sum);
  std::fill(o, o + head_dim, 0.0f);
  for (int64_t j = 0; j < n_kv; ++j) {
    const float p = scores[j] * inv;
    const float* vr = V + j * stride;
    for (int64_t i = 0; i < head_dim; ++i) o[i] += p * vr[i];
  }
}

}  // namespace qwen35
