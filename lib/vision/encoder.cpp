#include "vision/encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "vision/kernels.h"
#include "vision/preprocess.h"

namespace qwen35::vision {

// ---- position table (§4.2) -----------------------------------------------------

std::vector<std::vector<Tap>> PosAxisTaps(int32_t n_out, int32_t n_src, PosInterp mode) {
  std::vector<std::vector<Tap>> taps(static_cast<size_t>(n_out));
  for (int32_t i = 0; i < n_out; ++i) {
    std::vector<Tap>& t = taps[size_t(i)];
    if (mode == PosInterp::AlignCorners) {
      // linspace(0, G-1, n)[i], then the two neighbours.
      const double f = n_out > 1 ? double(i) * double(n_src - 1) / double(n_out - 1) : 0.0;
      const int32_t j0 = std::min(int32_t(std::floor(f)), n_src - 1);
      const int32_t j1 = std::min(j0 + 1, n_src - 1);
      const double a = f - j0;
      t.push_back({j0, float(1.0 - a)});
      if (j1 != j0 && a > 0.0) t.push_back({j1, float(a)});
    } else {
      // Half-pixel centres; the triangle widens by 1/scale when shrinking.
      const double scale = double(n_out) / double(n_src);
      const double support = std::max(1.0, 1.0 / scale);
      const double c = (i + 0.5) / scale;
      const int32_t lo = std::max(0, int32_t(std::floor(c - support + 0.5)));
      const int32_t hi = std::min(n_src, int32_t(std::floor(c + support + 0.5)));
      double sum = 0.0;
      std::vector<double> w;
      for (int32_t j = lo; j < hi; ++j) {
        w.push_back(std::max(0.0, 1.0 - std::fabs(j + 0.5 - c) / support));
        sum += w.back();
      }
      for (int32_t j = lo; j < hi; ++j)
        if (w[size_t(j - lo)] > 0.0) t.push_back({j, float(w[size_t(j - lo)] / sum)});
    }
  }
  return taps;
}

void ResamplePositions(const Mmproj& mp, int32_t gh, int32_t gw, PosInterp mode, float* out) {
  const int32_t G = mp.hp.pos_grid, C = mp.hp.n_embd, mw = gw / 2;
  const float* T = mp.pos_embd.data;  // [G][G][C]
  const auto ty = PosAxisTaps(gh, G, mode), tx = PosAxisTaps(gw, G, mode);
  // Separable: rows first (tmp[py][gx] for every table column), then columns.
  std::vector<float> tmp(static_cast<size_t>(G) * size_t(C));  // [G][C] for one py
  for (int32_t py = 0; py < gh; ++py) {
    std::fill(tmp.begin(), tmp.end(), 0.0f);
    for (const Tap& a : ty[size_t(py)])
      for (int32_t gx = 0; gx < G; ++gx) {
        const float* src = T + (size_t(a.src) * size_t(G) + size_t(gx)) * size_t(C);
        float* dst = tmp.data() + size_t(gx) * size_t(C);
        for (int32_t c = 0; c < C; ++c) dst[c] += a.w * src[c];
      }
    for (int32_t px = 0; px < gw; ++px) {
      float* dst = out + patch_seq_index(py, px, mw) * C;
      std::fill(dst, dst + C, 0.0f);
      for (const Tap& b : tx[size_t(px)]) {
        const float* src = tmp.data() + size_t(b.src) * size_t(C);
        for (int32_t c = 0; c < C; ++c) dst[c] += b.w * src[c];
      }
    }
  }
}

void VisionRopeCosSin(int32_t row, int32_t col, int32_t head_dim, float* cos_out, float* sin_out) {
  const int32_t half = head_dim / 2, quarter = head_dim / 4;
  for (int32_t d = 0; d < half; ++d) {
    const int32_t j = d < quarter ? d : d - quarter;
    const double a = double(d < quarter ? row : col) * std::pow(10000.0, -double(j) / double(quarter));
    cos_out[d] = float(std::cos(a));
    sin_out[d] = float(std::sin(a));
  }
}

namespace {

// F32 buffer that reports allocation failure instead of throwing.
struct Buf {
  std::vector<float> v;
  Status alloc(size_t n, const char* what) {
    try {
      v.assign(n, 0.0f);
    } catch (const std::bad_alloc&) {
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} MiB for the vision encoder's {}", (n * 4) >> 20,
                   what);
    }
    return Status::Ok();
  }
  float* data() { return v.data(); }
};

// Rows per MLP chunk: bounds the [rows, FF] intermediate for huge images.
constexpr int64_t kMlpChunk = 4096;
// Queries per attention task (scores buffer [kQueryBlock, Np] per thread).
constexpr int64_t kQueryBlock = 64;

class CpuEncoder {
 public:
  CpuEncoder(const Mmproj& mp, const EncoderOptions& opt, ThreadPool& tp, int32_t gw, int32_t gh)
      : mp_(mp), hp_(mp.hp), opt_(opt), tp_(tp), gw_(gw), gh_(gh), np_(int64_t(gw) * gh) {}

  Status run(const float* patches, float* out);

 private:
  void mm(const float* x, int64_t n, int64_t ldx, const Weight& w, const float* bias, float* y, int64_t ldy) {
    if (opt_.reference) gemm_weight_ref(x, n, ldx, w, bias, y, ldy, tp_);
    else gemm_weight(x, n, ldx, w, bias, y, ldy, tp_);
  }
  void layer_norm_rows(const float* x, const Vec& g, const Vec& b, int64_t n, float* y) {
    const int64_t C = hp_.n_embd;
    tp_.parallel_for(n, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        if (opt_.reference) layer_norm_ref(x + r * C, g.data, b.data, C, hp_.eps, y + r * C);
        else layer_norm(x + r * C, g.data, b.data, C, hp_.eps, y + r * C);
    });
  }
  void hook(const char* name, int32_t layer, const float* d, int64_t rows, int64_t cols) {
    if (opt_.hook) opt_.hook(name, layer, d, rows, cols);
  }

  void rope_tables();
  void patch_embed(const float* patches);
  void add_position_embedding();
  void vision_block(const VisionBlock& b);
  void rope2d(float* qkv);
  void attention_ref(const float* qkv, float* out);
  void attention_fast(const float* qkv, float* out);
  void mlp(const VisionBlock& b);
  void patch_merger(float* out);

  const Mmproj& mp_;
  const VisionHParams& hp_;
  const EncoderOptions& opt_;
  ThreadPool& tp_;
  const int32_t gw_, gh_;
  const int64_t np_;  // patches

  Buf x_;              // [Np, C] residual stream
  Buf h_;              // [Np, C] normalized input of a sub-layer
  Buf qkv_;            // [Np, 3C]
  Buf attn_;           // [Np, C] attention output before the projection
  Buf up_;             // [min(Np, kMlpChunk), FF]
  Buf heads_;          // fast attention: Q [NH][Np][DH] | K^T [NH][DH][Np] | V [NH][Np][DH]
  std::vector<float> cos_, sin_;  // [Np, DH/2]
};

Status CpuEncoder::run(const float* patches, float* out) {
  const int64_t C = hp_.n_embd;
  QWEN35_TRY(x_.alloc(size_t(np_ * C), "residual stream"));
  QWEN35_TRY(h_.alloc(size_t(np_ * C), "normalized activations"));
  QWEN35_TRY(qkv_.alloc(size_t(np_ * 3 * C), "QKV"));
  QWEN35_TRY(attn_.alloc(size_t(np_ * C), "attention output"));
  QWEN35_TRY(up_.alloc(size_t(std::min(np_, kMlpChunk) * hp_.n_ff), "MLP activations"));
  if (!opt_.reference) QWEN35_TRY(heads_.alloc(size_t(3 * np_ * C), "attention heads"));
  try {
    rope_tables();
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the vision RoPE tables");
  }
  patch_embed(patches);
  add_position_embedding();
  for (int32_t il = 0; il < hp_.n_block; ++il) {
    vision_block(mp_.blocks[size_t(il)]);
    hook("block", il, x_.data(), np_, C);
  }
  patch_merger(out);
  return Status::Ok();
}

void CpuEncoder::rope_tables() {
  const int32_t half = hp_.head_dim / 2, mw = gw_ / 2;
  cos_.resize(size_t(np_) * size_t(half));
  sin_.resize(size_t(np_) * size_t(half));
  for (int64_t s = 0; s < np_; ++s) {
    int32_t row = 0, col = 0;
    patch_of_seq(s, mw, &row, &col);
    VisionRopeCosSin(row, col, hp_.head_dim, cos_.data() + s * half, sin_.data() + s * half);
  }
}

// §4.1: one GEMM of the patch vectors with the folded (W0 + W1) kernel.
void CpuEncoder::patch_embed(const float* patches) {
  mm(patches, np_, hp_.patch_dim(), mp_.patch_w, mp_.patch_b.data, x_.data(), hp_.n_embd);
  hook("patch_embd", -1, x_.data(), np_, hp_.n_embd);
}

void CpuEncoder::add_position_embedding() {
  // Reuse h_ for the resampled table: [Np, C] in sequence order.
  ResamplePositions(mp_, gh_, gw_, opt_.pos_interp, h_.data());
  const int64_t n = np_ * hp_.n_embd;
  float* x = x_.data();
  const float* pe = h_.data();
  for (int64_t i = 0; i < n; ++i) x[i] += pe[i];
  hook("pos_added", -1, x_.data(), np_, hp_.n_embd);
}

// §4.4, pre-norm: x += attn(LN1(x)); x += mlp(LN2(x)).
void CpuEncoder::vision_block(const VisionBlock& b) {
  const int64_t C = hp_.n_embd;
  layer_norm_rows(x_.data(), b.ln1_w, b.ln1_b, np_, h_.data());
  mm(h_.data(), np_, C, b.qkv, b.qkv_b.data, qkv_.data(), 3 * C);
  rope2d(qkv_.data());
  if (opt_.reference) attention_ref(qkv_.data(), attn_.data());
  else attention_fast(qkv_.data(), attn_.data());
  mm(attn_.data(), np_, C, b.out, b.out_b.data, h_.data(), C);
  float* x = x_.data();
  const float* o = h_.data();
  for (int64_t i = 0; i < np_ * C; ++i) x[i] += o[i];
  mlp(b);
}

// Rotate q and k of every head in place (NeoX half split: pairs (d, d+DH/2)).
void CpuEncoder::rope2d(float* qkv) {
  const int64_t C = hp_.n_embd, DH = hp_.head_dim, half = DH / 2;
  tp_.parallel_for(np_, 16, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const float* cs = cos_.data() + s * half;
      const float* sn = sin_.data() + s * half;
      for (int64_t part = 0; part < 2; ++part)  // q, then k
        for (int64_t h = 0; h < hp_.n_head; ++h) rope2d_head(qkv + s * 3 * C + part * C + h * DH, cs, sn, half);
    }
  });
}

// Full bidirectional attention, one query at a time (the oracle).
void CpuEncoder::attention_ref(const float* qkv, float* out) {
  const int64_t C = hp_.n_embd, DH = hp_.head_dim, NH = hp_.n_head, n = np_;
  const float scale = 1.0f / std::sqrt(float(DH));
  tp_.parallel_for(n, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> sc(static_cast<size_t>(n));
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t h = 0; h < NH; ++h) {
        const float* q = qkv + i * 3 * C + h * DH;
        for (int64_t j = 0; j < n; ++j) {
          const float* k = qkv + j * 3 * C + C + h * DH;
          float acc = 0.0f;
          for (int64_t d = 0; d < DH; ++d) acc += q[d] * k[d];
          sc[size_t(j)] = acc * scale;
        }
        softmax_ref(sc.data(), n);
        float* o = out + i * C + h * DH;
        std::fill(o, o + DH, 0.0f);
        for (int64_t j = 0; j < n; ++j) {
          const float* v = qkv + j * 3 * C + 2 * C + h * DH;
          for (int64_t d = 0; d < DH; ++d) o[d] += sc[size_t(j)] * v[d];
        }
      }
  });
}

// Tiled: per head, Q [Np][DH], K^T [DH][Np] and V [Np][DH] are laid out once;
// each task takes a block of queries: S = scale Q K^T, row softmax, O = S V.
void CpuEncoder::attention_fast(const float* qkv, float* out) {
  const int64_t C = hp_.n_embd, DH = hp_.head_dim, NH = hp_.n_head, n = np_;
  const float scale = 1.0f / std::sqrt(float(DH));
  float* Q = heads_.data();
  float* Kt = Q + n * C;
  float* V = Kt + n * C;
  tp_.parallel_for(NH, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t j = 0; j < n; ++j) {
        const float* src = qkv + j * 3 * C + h * DH;
        std::memcpy(Q + (h * n + j) * DH, src, size_t(DH) * 4);
        for (int64_t d = 0; d < DH; ++d) Kt[(h * DH + d) * n + j] = src[C + d];
        std::memcpy(V + (h * n + j) * DH, src + 2 * C, size_t(DH) * 4);
      }
  });
  const int64_t n_blocks = (n + kQueryBlock - 1) / kQueryBlock;
  tp_.parallel_for(NH * n_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> S(static_cast<size_t>(kQueryBlock * n));  // [qb][Np]
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / n_blocks, i0 = (t % n_blocks) * kQueryBlock, qb = std::min(kQueryBlock, n - i0);
      gemm_f32_kn(Q + (h * n + i0) * DH, qb, DH, Kt + h * DH * n, n, n, DH, scale, S.data(), n);
      for (int64_t i = 0; i < qb; ++i) softmax(S.data() + i * n, n);
      gemm_f32_kn(S.data(), qb, n, V + h * n * DH, DH, DH, n, 1.0f, out + i0 * C + h * DH, C);
    }
  });
}

// x += down(gelu_tanh(up(LN2(x)))), in row chunks to bound the FF buffer.
void CpuEncoder::mlp(const VisionBlock& b) {
  const int64_t C = hp_.n_embd, FF = hp_.n_ff;
  layer_norm_rows(x_.data(), b.ln2_w, b.ln2_b, np_, h_.data());
  for (int64_t r0 = 0; r0 < np_; r0 += kMlpChunk) {
    const int64_t rn = std::min(kMlpChunk, np_ - r0);
    float* u = up_.data();
    mm(h_.data() + r0 * C, rn, C, b.up, b.up_b.data, u, FF);
    tp_.parallel_for(rn, 8, [&](int64_t a, int64_t e) {
      if (opt_.reference) gelu_tanh_ref(u + a * FF, (e - a) * FF);
      else gelu_tanh(u + a * FF, (e - a) * FF);
    });
    // down(u) goes to attn_ (free here), then into the residual.
    mm(u, rn, FF, b.down, b.down_b.data, attn_.data() + r0 * C, C);
  }
  float* x = x_.data();
  const float* d = attn_.data();
  for (int64_t i = 0; i < np_ * C; ++i) x[i] += d[i];
}

// §4.5: LayerNorm per patch, four consecutive patches (one 2x2 block in
// sequence order) concatenated, mm.0, activation, mm.2.
void CpuEncoder::patch_merger(float* out) {
  const int64_t C4 = hp_.merged_dim(), N = np_ / 4;
  layer_norm_rows(x_.data(), mp_.post_ln_w, mp_.post_ln_b, np_, h_.data());
  hook("merger_norm", -1, h_.data(), np_, hp_.n_embd);
  // h_ viewed as [N, 4C]; mm.0 output reuses qkv_ ([Np, 3C] >= [N, 4C]).
  float* z = qkv_.data();
  mm(h_.data(), N, C4, mp_.mm0, mp_.mm0_b.data, z, C4);
  tp_.parallel_for(N, 8, [&](int64_t a, int64_t e) {
    float* p = z + a * C4;
    const int64_t cnt = (e - a) * C4;
    if (opt_.merger_act == MergerAct::GeluErf) gelu_erf(p, cnt);
    else if (opt_.reference) gelu_tanh_ref(p, cnt);
    else gelu_tanh(p, cnt);
  });
  mm(z, N, C4, mp_.mm2, mp_.mm2_b.data, out, hp_.proj_dim);
  hook("output", -1, out, N, hp_.proj_dim);
}

}  // namespace

Status EncodeCpu(const Mmproj& mp, const float* patches, int32_t gw, int32_t gh, const EncoderOptions& opt,
                 ThreadPool& tp, float* out) {
  if (gw < 2 || gh < 2 || gw % 2 || gh % 2)
    return Error(QWEN35_ERR_INVALID_ARG, "patch grid {}x{} must be even and at least 2x2", gw, gh);
  CpuEncoder enc(mp, opt, tp, gw, gh);
  try {
    return enc.run(patches, out);
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory in the vision encoder");
  }
}

}  // namespace qwen35::vision
