// The CPU backend: the qwen35 forward pass over a batch of rows (spec §4),
// one function per layer kind, and the MTP head (spec §5.1).
//
// Batches are processed layer by layer over all rows (so every weight is read
// once per batch); the recurrent parts (conv, delta rule) walk the rows in
// order. The same code serves prefill and single-token decode.
//
// Two paths share the layer functions: the reference path (BackendParams::
// reference) calls matmul_ref and the scalar oracles of cpu/ops.h; the fast
// path calls matmul / matmul_multi and the kernel set chosen for this CPU
// (cpu/kernels.h). Every fast-path result is independent of the thread count
// and of how rows are batched (docs/performance.md), and decode steps do not
// allocate: all scratch is sized in init().
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <utility>
#include <vector>

#include "backend.h"
#include "cpu/kernels.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "quants.h"
#include "threadpool.h"

namespace qwen35 {

namespace {

// F32 buffer that reports allocation failure instead of throwing.
struct Buf {
  std::vector<float> v;
  Status alloc(size_t n, const char* what) {
    try {
      v.assign(n, 0.0f);
    } catch (const std::bad_alloc&) {
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate {} MiB for {}", (n * 4) >> 20, what);
    }
    return Status::Ok();
  }
  float* data() { return v.data(); }
  const float* data() const { return v.data(); }
  size_t bytes() const { return v.size() * sizeof(float); }
};

// Per full-attention layer: keys after q/k-norm and RoPE, values as
// projected. Head-major, so that attention streams each KV head's rows from
// one contiguous stretch (row-major, consecutive rows of a head would be
// Hkv*Dh floats apart: a new page per row at 4B sizes). The serialized state
// is row-major ([rows, Hkv*Dh]) all the same.
struct KVCache {
  Buf k;  // [Hkv, n_ctx, Dh]
  Buf v;  // [Hkv, n_ctx, Dh]
  int64_t n_ctx = 0, dh = 0;
  float* k_row(int64_t g, int64_t row) { return k.data() + (g * n_ctx + row) * dh; }
  float* v_row(int64_t g, int64_t row) { return v.data() + (g * n_ctx + row) * dh; }
};

// Per gated-delta-net layer.
struct RecurrentState {
  Buf conv;  // [Kc-1, Cconv]: the last Kc-1 pre-conv inputs, oldest first
  Buf ssm;   // [Hv, dv, dk]: per value head M = S^T (row per value dim)
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(const Model& m, const BackendParams& p)
      : m_(m), hp_(m.hp), p_(p), tp_(p.n_threads), ks_(cpu::kernels()) {
    rope_.n_rot = hp_.n_rot;
    std::copy(hp_.rope_sections, hp_.rope_sections + 4, rope_.sections);
    rope_.base = hp_.rope_base;
  }

  Status init();
  const char* name() const override { return p_.reference ? "cpu-reference" : "cpu"; }
  Status eval(const EvalBatch& b) override;
  Status eval_mtp(const MtpBatch& b) override;
  // Greedy variants: logits land in a reused buffer and are scanned here (no
  // allocation per step). Saying yes to device_argmax also lets the
  // generation loop fuse the MTP cache row and the next draft into one MTP
  // pass. The reference path keeps plain logits.
  Status eval_greedy(const EvalBatch& b, int32_t* argmax) override;
  Status eval_mtp_greedy(const MtpBatch& b, int32_t* argmax) override;
  // The MTP head up to its last residual (h_, rows [0, b.n)).
  Status mtp_trunk(const MtpBatch& b);
  // Draft argmax of normalized rows xn [rows, D] through the Q6_K screen
  // (cpu/kernels.h kQ6kScreen, a compact copy of the head's high bits made
  // on first use): the kScreenCandidates best rows of the approximate
  // product, then their exact logits (the kernel and order of the full LM
  // head, so the same values) and the best of those (lowest index on ties).
  // That is the full argmax whenever it is among the candidates; a draft
  // only decides what gets verified, so results are exact either way.
  void screened_argmax(const Weight& head, const float* xn, int32_t rows, int32_t* argmax);
  // Whether the draft of `head` goes through the screen; makes the screen
  // copy on first use (false, and the full head is used, if memory is short).
  bool use_screen(const Weight& head);
  // eval(b) with the logits rows in a reused buffer, then use(r, row) for each.
  template <class Batch, class Eval, class Use>
  Status logit_rows(const Batch& b, Eval eval, Use use);
  template <class Batch, class Eval>
  Status argmax_rows(const Batch& b, int32_t* argmax, Eval eval);
  bool device_argmax() const override { return !p_.reference; }
  // Sampling candidates: the row lands in the reused buffer and is selected
  // here (the context copies k pairs instead of the row). Saying yes lets the
  // generation loop's top-k path run (and be tested) on the CPU.
  Status eval_topk(const EvalBatch& b, const TopKRequest* reqs, TopKResult* cands) override;
  bool device_topk() const override { return !p_.reference; }
  void reset() override;
  Status save_recurrent(int slot) override;
  Status restore_recurrent(int slot) override;
  uint64_t state_bytes(int32_t n_rows, int32_t n_mtp_rows) const override;
  Status write_state(int32_t n_rows, int32_t n_mtp_rows, uint8_t* dst) override;
  Status read_state(int32_t n_rows, int32_t n_mtp_rows, const uint8_t* src) override;
  uint64_t memory_bytes() const override;

 private:
  void mm(const Weight& w, const float* x, int64_t n, float* y) {
    if (p_.reference) matmul_ref(w, x, n, y, tp_);
    else matmul(w, x, n, y, tp_, mms_);
  }
  // Several products of the same input: one pass over the threads on the fast path.
  void mm_multi(std::initializer_list<MatmulOut> outs, const float* x, int64_t n) {
    if (p_.reference) {
      for (const MatmulOut& o : outs) matmul_ref(*o.w, x, n, o.y, tp_);
    } else {
      matmul_multi(outs.begin(), int(outs.size()), x, n, tp_, mms_);
    }
  }
  bool aborted() const { return abort_flag && abort_flag->load(std::memory_order_relaxed); }
  // fn(t) for every row t < n; rows are independent, so they may run on any thread.
  template <class Fn>
  void for_rows(int64_t n, Fn&& fn) {
    if (n == 1) {
      fn(int64_t(0));
      return;
    }
    tp_.parallel_chunks(n, 1, [&](int64_t t, int64_t, int) { fn(t); });
  }

  // x: [n, D] normalized input; out: [n, D].
  void attention_layer(const Layer& L, KVCache& kv, const float* x, int32_t n, int32_t n_past, const int32_t* pos,
                       float* out);
  void conv_rows(const Layer& L, int il, RecurrentState& st, RecurrentState* snap, const float* u, int32_t n,
                 int32_t snapshot_row, float* uc);
  void delta_net_layer(const Layer& L, int il, RecurrentState& st, RecurrentState* snap, const float* x, int32_t n,
                       int32_t snapshot_row, float* out);
  void ffn(const Layer& L, const float* x, int32_t n, float* out);
  // Residual block: h += mixer(norm(h)); h += ffn(norm(h)).
  void decoder_layer(int il, const Layer& L, float* h, int32_t n, int32_t n_past, const int32_t* pos,
                     int32_t snapshot_row);
  void norm_rows(const float* x, const Vec& w, int32_t n, float* y);
  Status reserve_matmul_scratch();
  void lm_head(const Weight& head, const float* h, int32_t n, float* logits) { mm(head, h, n, logits); }

  const Model& m_;
  const HParams& hp_;
  BackendParams p_;
  ThreadPool tp_;
  const cpu::KernelSet& ks_;  // fast path kernels for this CPU
  MatmulScratch mms_;         // fast path: quantized activations
  RopeConfig rope_;
  static constexpr int64_t kMaxConv = 64;        // ssm.conv_kernel limit of the loader
  std::vector<std::vector<float>> conv_taps_t_;  // fast path, per delta-net layer: [Kc, Cconv]

  std::vector<KVCache> kv_;                  // per main layer (empty for delta-net layers)
  std::vector<RecurrentState> rs_;           // per main layer (empty for attention layers)
  std::vector<std::vector<RecurrentState>> slots_;  // [kNumSlots][layer], allocated on first use
  KVCache mtp_kv_;

  // Scratch, sized for n_batch rows.
  Buf h_, xn_, out_;                 // [nb, D]
  Buf qg_, q_, k_, v_, o_;           // attention: [nb, 2*Hq*Dh], [nb, Hq*Dh], [nb, kv], [nb, kv], [nb, Hq*Dh]
  Buf scores_;                       // [threads, Hq/Hkv, n_ctx]
  size_t scores_stride_ = 0;         // floats per thread
  Buf u_, conv_out_, z_, beta_, alpha_, ssm_o_;  // delta net
  Buf ffn_g_, ffn_u_;                // [nb, F]
  Buf mtp_in_;                       // [nb, 2D]
  Buf greedy_logits_;                // [rows, V] for the greedy variants, grown on demand
  std::vector<uint8_t> screen_w_;    // [V][K/256][82] the MTP draft screen (built on first use)
  std::vector<uint8_t> screen_act_;  // one Q6_K-converted activation row
  // QWEN35_MTP_SCREEN=0 turns the draft screen off (for comparisons).
  bool screen_enabled_ = [] {
    const char* e = std::getenv("QWEN35_MTP_SCREEN");
    return !(e && std::strcmp(e, "0") == 0);
  }();
};

Status CpuBackend::init() {
  const int64_t D = hp_.n_embd, nb = p_.n_batch, nctx = p_.n_ctx;
  // RoPE angle tables hold kMaxRopePairs pairs (the 4B model rotates 32).
  if (hp_.n_rot / 2 > kMaxRopePairs)
    return Error(QWEN35_ERR_UNSUPPORTED, "rope.dimension_count {} is larger than {} (not supported)", hp_.n_rot,
                 2 * kMaxRopePairs);
  kv_.resize(size_t(hp_.n_layer));
  rs_.resize(size_t(hp_.n_layer));
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) {
      QWEN35_TRY(kv_[size_t(il)].k.alloc(size_t(nctx * hp_.kv_dim()), "the KV cache"));
      QWEN35_TRY(kv_[size_t(il)].v.alloc(size_t(nctx * hp_.kv_dim()), "the KV cache"));
      kv_[size_t(il)].n_ctx = nctx;
      kv_[size_t(il)].dh = hp_.head_dim;
    } else {
      QWEN35_TRY(rs_[size_t(il)].conv.alloc(size_t((hp_.ssm_conv - 1) * hp_.ssm_conv_dim()), "conv state"));
      QWEN35_TRY(rs_[size_t(il)].ssm.alloc(size_t(hp_.ssm_inner) * size_t(hp_.ssm_state), "delta-net state"));
    }
  }
  if (m_.mtp) {
    QWEN35_TRY(mtp_kv_.k.alloc(size_t(nctx * hp_.kv_dim()), "the MTP KV cache"));
    QWEN35_TRY(mtp_kv_.v.alloc(size_t(nctx * hp_.kv_dim()), "the MTP KV cache"));
    mtp_kv_.n_ctx = nctx;
    mtp_kv_.dh = hp_.head_dim;
  }
  slots_.resize(kNumSlots);
  const int64_t qd = hp_.q_dim(), kvd = hp_.kv_dim(), F = hp_.n_ff;
  QWEN35_TRY(h_.alloc(size_t(nb * D), "scratch"));
  QWEN35_TRY(xn_.alloc(size_t(nb * D), "scratch"));
  QWEN35_TRY(out_.alloc(size_t(nb * D), "scratch"));
  QWEN35_TRY(qg_.alloc(size_t(nb * 2 * qd), "scratch"));
  QWEN35_TRY(q_.alloc(size_t(nb * qd), "scratch"));
  QWEN35_TRY(k_.alloc(size_t(nb * kvd), "scratch"));
  QWEN35_TRY(v_.alloc(size_t(nb * kvd), "scratch"));
  QWEN35_TRY(o_.alloc(size_t(nb * qd), "scratch"));
  // Attention scores: per thread, one row of n_ctx per query head of a GQA group.
  if (hp_.n_head / hp_.n_head_kv > cpu::kMaxAttnGroup)
    return Error(QWEN35_ERR_UNSUPPORTED, "{} query heads per KV head (at most {})", hp_.n_head / hp_.n_head_kv,
                 cpu::kMaxAttnGroup);
  scores_stride_ = size_t(nctx) * size_t(hp_.n_head / hp_.n_head_kv);
  QWEN35_TRY(scores_.alloc(size_t(tp_.size()) * scores_stride_, "scratch"));
  QWEN35_TRY(u_.alloc(size_t(nb * hp_.ssm_conv_dim()), "scratch"));
  QWEN35_TRY(conv_out_.alloc(size_t(nb * hp_.ssm_conv_dim()), "scratch"));
  QWEN35_TRY(z_.alloc(size_t(nb * hp_.ssm_inner), "scratch"));
  QWEN35_TRY(beta_.alloc(size_t(nb * hp_.ssm_heads_v), "scratch"));
  QWEN35_TRY(alpha_.alloc(size_t(nb * hp_.ssm_heads_v), "scratch"));
  QWEN35_TRY(ssm_o_.alloc(size_t(nb * hp_.ssm_inner), "scratch"));
  QWEN35_TRY(ffn_g_.alloc(size_t(nb * F), "scratch"));
  QWEN35_TRY(ffn_u_.alloc(size_t(nb * F), "scratch"));
  if (m_.mtp) QWEN35_TRY(mtp_in_.alloc(size_t(nb * 2 * D), "scratch"));
  if (!p_.reference) {
    QWEN35_TRY(reserve_matmul_scratch());
    // Conv taps transposed to [Kc, Cconv] so the fast conv runs along channels.
    const int64_t C = hp_.ssm_conv_dim(), K = hp_.ssm_conv;
    try {
      conv_taps_t_.resize(size_t(hp_.n_layer));
      for (int il = 0; il < hp_.n_layer; ++il) {
        if (hp_.is_attn_layer(il)) continue;
        const float* w = m_.layers[size_t(il)].conv1d.data;  // [C, K]
        auto& t = conv_taps_t_[size_t(il)];
        t.resize(size_t(K * C));
        for (int64_t c = 0; c < C; ++c)
          for (int64_t k = 0; k < K; ++k) t[size_t(k * C + c)] = w[c * K + k];
      }
    } catch (const std::bad_alloc&) {
      return Error(QWEN35_ERR_OUT_OF_MEMORY, "cannot allocate the transposed conv taps");
    }
  }
  return Status::Ok();
}

// Room for the largest batch of converted activations: n_batch rows of the
// widest matrix input, once per distinct weight type that may want them.
Status CpuBackend::reserve_matmul_scratch() {
  int64_t k_max = 0;
  std::vector<uint32_t> types;
  auto visit = [&](const Weight& w) {
    if (!w.present()) return;
    k_max = std::max(k_max, w.cols);
    const bool converts = cpu::uses_quantized_acts(w.type) || w.type == GGML_BF16;  // BF16: on AVX-512 BF16
    if (converts && std::find(types.begin(), types.end(), w.type) == types.end())
      types.push_back(w.type);
  };
  auto visit_layer = [&](const Layer& L) {
    for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.wqkv, &L.wgate, &L.wbeta, &L.walpha, &L.ssm_out,
                            &L.ffn_gate, &L.ffn_up, &L.ffn_down})
      visit(*w);
  };
  for (const Layer& L : m_.layers) visit_layer(L);
  visit(m_.output);
  if (m_.mtp) {
    visit_layer(m_.mtp->block);
    visit(m_.mtp->eh_proj);
    visit(m_.mtp->head);
  }
  return mms_.reserve(p_.n_batch, k_max, int(types.size()), tp_.size());
}

void CpuBackend::norm_rows(const float* x, const Vec& w, int32_t n, float* y) {
  const int64_t D = hp_.n_embd;
  if (p_.reference) {
    for (int32_t t = 0; t < n; ++t) rmsnorm(x + t * D, w.data, D, hp_.eps, y + t * D);
    return;
  }
  for_rows(n, [&](int64_t t) { ks_.rmsnorm(x + t * D, w.data, D, hp_.eps, y + t * D); });
}

// Full attention (spec §4.4): gated query heads, q/k RMSNorm, partial M-RoPE,
// causal GQA softmax attention over the cache, sigmoid output gate.
void CpuBackend::attention_layer(const Layer& L, KVCache& kv, const float* x, int32_t n, int32_t n_past,
                                 const int32_t* pos, float* out) {
  const int64_t Hq = hp_.n_head, Hkv = hp_.n_head_kv, Dh = hp_.head_dim;
  const int64_t qd = Hq * Dh, kvd = Hkv * Dh;
  float* qg = qg_.data();  // [n, Hq, 2, Dh]: per head [query | gate]
  float* q = q_.data();    // [n, Hq*Dh]
  float* o = o_.data();    // [n, Hq*Dh]
  mm_multi({{&L.wq, qg}, {&L.wk, k_.data()}, {&L.wv, v_.data()}}, x, n);
  auto rms = [&](const float* src, const Vec& w, float* dst) {
    if (p_.reference) rmsnorm(src, w.data, Dh, hp_.eps, dst);
    else ks_.rmsnorm(src, w.data, Dh, hp_.eps, dst);
  };
  for_rows(n, [&](int64_t t) {
    const int64_t row = n_past + t;
    for (int64_t h = 0; h < Hq; ++h) rms(qg + t * 2 * qd + h * 2 * Dh, L.q_norm, q + t * qd + h * Dh);
    for (int64_t g = 0; g < Hkv; ++g) rms(k_.data() + t * kvd + g * Dh, L.k_norm, kv.k_row(g, row));
    if (p_.reference) {
      rope_heads(q + t * qd, Hq, Dh, rope_, pos + 3 * t);
      for (int64_t g = 0; g < Hkv; ++g) rope_heads(kv.k_row(g, row), 1, Dh, rope_, pos + 3 * t);
    } else {
      // One table of angles for the row's query and key heads.
      float cs[kMaxRopePairs], sn[kMaxRopePairs];
      rope_tables(rope_, pos + 3 * t, cs, sn);
      ks_.rope(q + t * qd, Hq, Dh, rope_.n_rot / 2, cs, sn);
      for (int64_t g = 0; g < Hkv; ++g) ks_.rope(kv.k_row(g, row), 1, Dh, rope_.n_rot / 2, cs, sn);
    }
    for (int64_t g = 0; g < Hkv; ++g)
      std::memcpy(kv.v_row(g, row), v_.data() + t * kvd + g * Dh, size_t(Dh) * sizeof(float));
  });
  const float scale = 1.0f / std::sqrt(float(Dh));
  const int64_t group = Hq / Hkv;
  // Row t sees cache rows 0..n_past+t. Reference: one task per (row, head);
  // fast path: one per (row, KV head), the group's query heads together.
  if (p_.reference) {
    tp_.parallel_chunks(int64_t(n) * Hq, 1, [&](int64_t job, int64_t, int ith) {
      float* sc = scores_.data() + int64_t(ith) * scores_stride_;
      const int64_t t = job / Hq, h = job % Hq, g = h / group;
      attend_one(q + t * qd + h * Dh, kv.k_row(g, 0), kv.v_row(g, 0), n_past + t + 1, Dh, Dh, scale, sc,
                 o + t * qd + h * Dh);
    });
  } else {
    tp_.parallel_chunks(int64_t(n) * Hkv, 1, [&](int64_t job, int64_t, int ith) {
      const int64_t t = job / Hkv, g = job % Hkv;
      cpu::AttnArgs a;
      a.q = q + t * qd + g * group * Dh;
      a.k = kv.k_row(g, 0);
      a.v = kv.v_row(g, 0);
      a.n_kv = n_past + t + 1;
      a.stride = Dh;
      a.head_dim = Dh;
      a.n_heads = group;
      a.head_stride = Dh;
      a.scale = scale;
      a.scores = scores_.data() + int64_t(ith) * scores_stride_;
      a.o = o + t * qd + g * group * Dh;
      ks_.attend(a);
    });
  }
  for_rows(n, [&](int64_t t) {
    for (int64_t h = 0; h < Hq; ++h) {
      const float* gate = qg + t * 2 * qd + h * 2 * Dh + Dh;
      float* oh = o + t * qd + h * Dh;
      if (p_.reference) {
        for (int64_t i = 0; i < Dh; ++i) oh[i] *= sigmoidf(gate[i]);
      } else {
        ks_.mul_sigmoid(oh, gate, Dh);
      }
    }
  });
  mm(L.wo, o, n, out);
}

// Causal depthwise conv + SiLU over the window of the previous K-1 inputs
// and the n new rows u [n, C]; uc [n, C] receives the outputs. The window
// afterwards holds the last K-1 inputs (snap: as after row snapshot_row).
void CpuBackend::conv_rows(const Layer& L, int il, RecurrentState& st, RecurrentState* snap, const float* u,
                           int32_t n, int32_t snapshot_row, float* uc) {
  const int64_t C = hp_.ssm_conv_dim(), K = hp_.ssm_conv;
  float* win = st.conv.data();  // [K-1, C], oldest first
  if (p_.reference) {
    // Channel-parallel scalar loop.
    tp_.parallel_for(C, 64, [&](int64_t c0, int64_t c1) {
      std::vector<float> w(static_cast<size_t>(K));
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t k = 0; k < K - 1; ++k) w[size_t(k)] = win[k * C + c];  // oldest first
        const float* taps = L.conv1d.data + c * K;
        for (int32_t t = 0; t < n; ++t) {
          w[size_t(K - 1)] = u[t * C + c];
          float acc = 0.0f;
          for (int64_t k = 0; k < K; ++k) acc += taps[k] * w[size_t(k)];
          uc[t * C + c] = siluf(acc);
          for (int64_t k = 0; k + 1 < K; ++k) w[size_t(k)] = w[size_t(k + 1)];
          if (snap && t == snapshot_row)
            for (int64_t k = 0; k < K - 1; ++k) snap->conv.data()[k * C + c] = w[size_t(k)];
        }
        for (int64_t k = 0; k < K - 1; ++k) win[k * C + c] = w[size_t(k)];
      }
    });
    return;
  }
  // Fast path: the input sequence is [window rows | u rows]; output row t
  // combines sequence rows t..t+K-1 with the transposed taps, vectorized over
  // channels.
  const float* taps = conv_taps_t_[size_t(il)].data();  // [K, C]
  auto seq = [&](int64_t i) { return i < K - 1 ? win + i * C : u + (i - (K - 1)) * C; };
  for_rows(n, [&](int64_t t) {
    const float* in[kMaxConv];
    for (int64_t k = 0; k < K; ++k) in[k] = seq(t + k);
    ks_.conv_silu(in, taps, K, C, uc + t * C);
  });
  // The window after row t is sequence rows t+1..t+K-1.
  if (snap && snapshot_row >= 0)
    for (int64_t k = 0; k < K - 1; ++k)
      std::memcpy(snap->conv.data() + k * C, seq(snapshot_row + 1 + k), size_t(C) * sizeof(float));
  if (n >= K - 1) {
    std::memcpy(win, u + (n - (K - 1)) * C, size_t((K - 1) * C) * sizeof(float));
  } else {
    std::memmove(win, win + int64_t(n) * C, size_t((K - 1 - n) * C) * sizeof(float));
    std::memcpy(win + (K - 1 - n) * C, u, size_t(int64_t(n) * C) * sizeof(float));
  }
}

// Gated delta net (spec §4.5): projections, causal conv + SiLU, L2-normalized
// q/k, the gated delta rule per value head, gated RMSNorm, output projection.
void CpuBackend::delta_net_layer(const Layer& L, int il, RecurrentState& st, RecurrentState* snap, const float* x,
                                 int32_t n, int32_t snapshot_row, float* out) {
  const int64_t C = hp_.ssm_conv_dim(), Hv = hp_.ssm_heads_v, Hk = hp_.ssm_heads_k;
  const int64_t dk = hp_.ssm_state, dv = hp_.ssm_dv, Cqk = hp_.ssm_qk_dim(), Cv = hp_.ssm_inner;
  float* u = u_.data();          // [n, C] pre-conv
  float* uc = conv_out_.data();  // [n, C] post conv + SiLU
  float* z = z_.data();          // [n, Cv]
  float* beta = beta_.data();    // [n, Hv]
  float* g = alpha_.data();      // [n, Hv]: alpha, then log-decay g
  float* o = ssm_o_.data();      // [n, Cv]
  mm_multi({{&L.wqkv, u}, {&L.wgate, z}, {&L.wbeta, beta}, {&L.walpha, g}}, x, n);
  for (int64_t i = 0; i < int64_t(n) * Hv; ++i) {
    const int64_t j = i % Hv;
    beta[i] = sigmoidf(beta[i]);
    g[i] = L.ssm_a.data[j] * softplusf(g[i] + L.dt_bias.data[j]);
  }
  conv_rows(L, il, st, snap, u, n, snapshot_row, uc);

  // q, k: L2-normalize per key head; q also scaled by 1/sqrt(dk).
  const float qscale = 1.0f / std::sqrt(float(dk));
  for_rows(n, [&](int64_t t) {
    for (int64_t h = 0; h < Hk; ++h) {
      float* qh = uc + t * C + h * dk;
      float* kh = uc + t * C + Cqk + h * dk;
      if (p_.reference) {
        l2norm(qh, dk, hp_.eps);
        l2norm(kh, dk, hp_.eps);
        for (int64_t i = 0; i < dk; ++i) qh[i] *= qscale;
      } else {
        ks_.l2norm(qh, dk, hp_.eps, qscale);
        ks_.l2norm(kh, dk, hp_.eps, 1.0f);
      }
    }
  });

  // Delta rule, head-parallel, rows in order. Value head j uses key head j % Hk.
  tp_.parallel_chunks(Hv, 1, [&](int64_t j, int64_t, int) {
    float* M = st.ssm.data() + j * dv * dk;
    const int64_t kh = j % Hk;
    if (p_.reference) {
      for (int32_t t = 0; t < n; ++t) {
        const float* qv = uc + t * C + kh * dk;
        const float* kv = uc + t * C + Cqk + kh * dk;
        const float* vv = uc + t * C + 2 * Cqk + j * dv;
        delta_rule_step(M, qv, kv, vv, beta[t * Hv + j], g[t * Hv + j], dk, dv, o + t * Cv + j * dv);
        if (snap && t == snapshot_row)
          std::memcpy(snap->ssm.data() + j * dv * dk, M, size_t(dv * dk) * sizeof(float));
      }
      return;
    }
    cpu::DeltaArgs a;
    a.M = M;
    a.q = uc + kh * dk;
    a.k = uc + Cqk + kh * dk;
    a.v = uc + 2 * Cqk + j * dv;
    a.x_stride = C;
    a.beta = beta + j;
    a.g = g + j;
    a.g_stride = Hv;
    a.o = o + j * dv;
    a.o_stride = Cv;
    a.n = n;
    a.dk = dk;
    a.dv = dv;
    a.snap = snap ? snap->ssm.data() + j * dv * dk : nullptr;
    a.snap_row = snapshot_row;
    ks_.delta_rule(a);
  });

  // Gated RMSNorm per value head, then the output projection.
  for_rows(n, [&](int64_t t) {
    for (int64_t j = 0; j < Hv; ++j) {
      float* oh = o + t * Cv + j * dv;
      const float* zh = z + t * Cv + j * dv;
      if (p_.reference) {
        rmsnorm(oh, L.ssm_norm.data, dv, hp_.eps, oh);
        for (int64_t i = 0; i < dv; ++i) oh[i] *= siluf(zh[i]);
      } else {
        ks_.gated_rmsnorm(oh, zh, L.ssm_norm.data, dv, hp_.eps);
      }
    }
  });
  mm(L.ssm_out, o, n, out);
}

// SwiGLU feed-forward (spec §4.3).
void CpuBackend::ffn(const Layer& L, const float* x, int32_t n, float* out) {
  const int64_t F = hp_.n_ff;
  float* gt = ffn_g_.data();
  float* up = ffn_u_.data();
  mm_multi({{&L.ffn_gate, gt}, {&L.ffn_up, up}}, x, n);
  if (p_.reference) {
    for (int64_t i = 0; i < int64_t(n) * F; ++i) gt[i] = siluf(gt[i]) * up[i];
  } else {
    for_rows(n, [&](int64_t t) { ks_.silu_mul(gt + t * F, up + t * F, F); });
  }
  mm(L.ffn_down, gt, n, out);
}

void CpuBackend::decoder_layer(int il, const Layer& L, float* h, int32_t n, int32_t n_past, const int32_t* pos,
                               int32_t snapshot_row) {
  const int64_t D = hp_.n_embd;
  float* xn = xn_.data();
  float* out = out_.data();
  norm_rows(h, L.attn_norm, n, xn);
  if (L.is_attn) {
    attention_layer(L, kv_[size_t(il)], xn, n, n_past, pos, out);
  } else {
    RecurrentState* snap = snapshot_row >= 0 ? &slots_[kRollbackSlot][size_t(il)] : nullptr;
    delta_net_layer(L, il, rs_[size_t(il)], snap, xn, n, snapshot_row, out);
  }
  for (int64_t i = 0; i < int64_t(n) * D; ++i) h[i] += out[i];
  norm_rows(h, L.post_attention_norm, n, xn);
  ffn(L, xn, n, out);
  for (int64_t i = 0; i < int64_t(n) * D; ++i) h[i] += out[i];
}

Status CpuBackend::eval(const EvalBatch& b) {
  const int64_t D = hp_.n_embd;
  if (b.n < 1 || b.n > p_.n_batch) return Error(QWEN35_ERR_INVALID_ARG, "batch of {} rows (limit {})", b.n, p_.n_batch);
  if (b.n_past < 0 || b.n_past + b.n > p_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "rows {}..{} exceed the context size {}", b.n_past, b.n_past + b.n, p_.n_ctx);
  if (b.snapshot_row >= 0) {
    // The rollback slot must hold buffers before the layers write into it.
    auto& slot = slots_[kRollbackSlot];
    if (slot.empty()) {
      slot.resize(size_t(hp_.n_layer));
      for (int il = 0; il < hp_.n_layer; ++il)
        if (!hp_.is_attn_layer(il)) {
          QWEN35_TRY(slot[size_t(il)].conv.alloc(rs_[size_t(il)].conv.v.size(), "a state snapshot"));
          QWEN35_TRY(slot[size_t(il)].ssm.alloc(rs_[size_t(il)].ssm.v.size(), "a state snapshot"));
        }
    }
  }
  float* h = h_.data();  // [n, D] residual stream
  for (int32_t t = 0; t < b.n; ++t) {
    if (b.embd) std::memcpy(h + t * D, b.embd + t * D, size_t(D) * sizeof(float));
    else embedding_row(m_.token_embd, b.tokens[t], h + t * D);
  }
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (aborted()) return Error(QWEN35_ERR_CANCELLED, "decode aborted");
    decoder_layer(il, m_.layers[size_t(il)], h, b.n, b.n_past, b.pos, b.snapshot_row);
  }
  if (b.hidden_prenorm) std::memcpy(b.hidden_prenorm, h, size_t(b.n * D) * sizeof(float));
  float* hn = b.hidden ? b.hidden : xn_.data();
  norm_rows(h, m_.output_norm, b.n, hn);
  if (b.logits && b.logits_first < b.n)
    lm_head(m_.output, hn + int64_t(b.logits_first) * D, b.n - b.logits_first, b.logits);
  return Status::Ok();
}

// The greedy variants: the batch's logits go to a reused buffer and only
// each row's argmax (lowest index on ties, the greedy sampler's rule) is
// returned.
template <class Batch, class Eval, class Use>
Status CpuBackend::logit_rows(const Batch& b, Eval eval, Use use) {
  const int32_t rows = b.n - b.logits_first;
  if (rows <= 0) return eval(b);
  const int64_t V = hp_.n_vocab;
  if (greedy_logits_.v.size() < size_t(rows) * size_t(V))
    QWEN35_TRY(greedy_logits_.alloc(size_t(rows) * size_t(V), "greedy logits"));
  Batch e = b;
  e.logits = greedy_logits_.data();
  QWEN35_TRY(eval(e));
  for (int32_t r = 0; r < rows; ++r) use(r, greedy_logits_.data() + r * V);
  return Status::Ok();
}

template <class Batch, class Eval>
Status CpuBackend::argmax_rows(const Batch& b, int32_t* argmax, Eval eval) {
  const int64_t V = hp_.n_vocab;
  return logit_rows(b, eval, [&](int32_t r, const float* x) { argmax[r] = argmax_logits(x, V); });
}

Status CpuBackend::eval_greedy(const EvalBatch& b, int32_t* argmax) {
  return argmax_rows(b, argmax, [this](const EvalBatch& e) { return eval(e); });
}

Status CpuBackend::eval_topk(const EvalBatch& b, const TopKRequest* reqs, TopKResult* cands) {
  topk_rows_.assign(size_t(std::max(0, b.n - std::clamp(b.logits_first, 0, b.n))), std::vector<float>());
  return logit_rows(
      b, [this](const EvalBatch& e) { return eval(e); },
      [&](int32_t r, const float* row) {
        select_candidates(row, int32_t(hp_.n_vocab), reqs[r], &cands[r], &topk_rows_[size_t(r)]);
      });
}

// The screen pays off for large vocabularies on kernel sets that have it:
// the draft streams 82 of every 210 bytes of the Q6_K head, plus 64 rows.
constexpr int64_t kScreenMinVocab = 65536;
constexpr int kScreenCandidates = 64;

bool CpuBackend::use_screen(const Weight& head) {
  if (!screen_enabled_ || p_.reference || head.type != GGML_Q6_K || head.rows < kScreenMinVocab ||
      head.cols % 256 != 0 || !cpu::kernels().converts_acts(cpu::kQ6kScreen))
    return false;
  if (!screen_w_.empty()) return true;
  const int64_t V = head.rows, D = head.cols, blocks = D / 256;
  const uint64_t sbytes = uint64_t(blocks) * cpu::kQ6kScreenBlockBytes;
  try {
    screen_w_.resize(size_t(V) * size_t(sbytes));
    screen_act_.resize(cpu::act_layout(D).stride);
  } catch (const std::bad_alloc&) {
    screen_w_ = {};
    screen_act_ = {};
    screen_enabled_ = false;
    m_.log.warn("MTP draft screen: no memory for {} MiB; drafting with the full LM head",
                (uint64_t(V) * sbytes) >> 20);
    return false;
  }
  tp_.parallel_chunks(V, 4096, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < blocks; ++j)
        cpu::q6k_screen_block(head.row(r) + j * 210,
                              screen_w_.data() + uint64_t(r) * sbytes + uint64_t(j) * cpu::kQ6kScreenBlockBytes);
  });
  return true;
}

void CpuBackend::screened_argmax(const Weight& head, const float* xn, int32_t rows, int32_t* argmax) {
  const int64_t V = head.rows, D = head.cols;
  Weight screen = head;
  screen.type = cpu::kQ6kScreen;
  screen.data = screen_w_.data();
  screen.row_bytes = uint64_t(D / 256) * cpu::kQ6kScreenBlockBytes;
  float* approx = greedy_logits_.data();  // [rows, V]
  mm(screen, xn, rows, approx);
  const cpu::KernelSet& ks = cpu::kernels();
  const cpu::ActLayout L = cpu::act_layout(D);
  using Cand = std::pair<float, int32_t>;
  auto greater = [](const Cand& x, const Cand& y) { return x.first > y.first; };
  for (int32_t r = 0; r < rows; ++r) {
    // The kScreenCandidates largest approximate values (a min-heap).
    const float* a = approx + int64_t(r) * V;
    Cand heap[kScreenCandidates];
    int n = 0;
    for (int32_t i = 0; i < int32_t(V); ++i) {
      if (n < kScreenCandidates) {
        heap[n++] = {a[i], i};
        std::push_heap(heap, heap + n, greater);
      } else if (a[i] > heap[0].first) {
        std::pop_heap(heap, heap + n, greater);
        heap[n - 1] = {a[i], i};
        std::push_heap(heap, heap + n, greater);
      }
    }
    // Their exact logits, one row at a time (a row's value does not depend
    // on the rows computed with it), and the best of them.
    ks.quantize_act(GGML_Q6_K, xn + int64_t(r) * D, D, screen_act_.data());
    int32_t best = -1;
    float best_v = 0.0f;
    for (int c = 0; c < n; ++c) {
      const int32_t i = heap[c].second;
      float v = 0.0f;
      cpu::GemmArgs g;
      g.type = GGML_Q6_K;
      g.w = head.row(i);
      g.w_stride = head.row_bytes;
      g.K = D;
      g.x = screen_act_.data();
      g.x_stride = L.stride;
      g.n = 1;
      g.y = &v;
      g.ldy = 1;
      g.scale = head.scale;
      ks.gemm(g, 0, 1);
      if (best < 0 || v > best_v || (v == best_v && i < best)) {
        best = i;
        best_v = v;
      }
    }
    argmax[r] = best;
  }
}

Status CpuBackend::eval_mtp_greedy(const MtpBatch& b, int32_t* argmax) {
  const int32_t rows = b.n - b.logits_first;
  const Weight* head = m_.mtp ? (m_.mtp->head.present() ? &m_.mtp->head : &m_.output) : nullptr;
  if (rows <= 0 || !head || !use_screen(*head))
    return argmax_rows(b, argmax, [this](const MtpBatch& e) { return eval_mtp(e); });
  const int64_t D = hp_.n_embd, V = hp_.n_vocab;
  if (greedy_logits_.v.size() < size_t(rows) * size_t(V))
    QWEN35_TRY(greedy_logits_.alloc(size_t(rows) * size_t(V), "greedy logits"));
  QWEN35_TRY(mtp_trunk(b));
  float* xn = xn_.data();
  norm_rows(h_.data() + int64_t(b.logits_first) * D, m_.mtp->shared_head_norm, rows, xn);
  screened_argmax(*head, xn, rows, argmax);
  return Status::Ok();
}

// MTP head (spec §5.1): e = enorm(embed(token)), hh = hnorm(hidden),
// y = eh_proj [e | hh], a full-attention decoder layer with its own KV cache,
// shared_head_norm, then the (shared) LM head.
Status CpuBackend::eval_mtp(const MtpBatch& b) {
  QWEN35_TRY(mtp_trunk(b));
  if (b.logits && b.logits_first < b.n) {
    const MtpLayer& M = *m_.mtp;
    const int64_t D = hp_.n_embd;
    float* xn = xn_.data();
    norm_rows(h_.data() + int64_t(b.logits_first) * D, M.shared_head_norm, b.n - b.logits_first, xn);
    lm_head(M.head.present() ? M.head : m_.output, xn, b.n - b.logits_first, b.logits);
  }
  return Status::Ok();
}

Status CpuBackend::mtp_trunk(const MtpBatch& b) {
  if (!m_.mtp) return Error(QWEN35_ERR_UNSUPPORTED, "the model has no MTP layer");
  if (b.n < 1 || b.n > p_.n_batch) return Error(QWEN35_ERR_INVALID_ARG, "MTP batch of {} rows", b.n);
  if (b.n_past < 0 || b.n_past + b.n > p_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "MTP rows {}..{} exceed the context size {}", b.n_past, b.n_past + b.n,
                 p_.n_ctx);
  const MtpLayer& M = *m_.mtp;
  const int64_t D = hp_.n_embd;
  float* in = mtp_in_.data();  // [n, 2D]: [enorm(embedding) | hnorm(hidden)]
  const Weight& embed = M.embed.present() ? M.embed : m_.token_embd;
  for (int32_t t = 0; t < b.n; ++t) {
    float* e = in + t * 2 * D;
    if (b.tokens[t] >= 0) embedding_row(embed, b.tokens[t], e);
    else std::memcpy(e, b.next_embd + t * D, size_t(D) * sizeof(float));
    rmsnorm(e, M.enorm.data, D, hp_.eps, e);
    rmsnorm(b.hidden + t * D, M.hnorm.data, D, hp_.eps, e + D);
  }
  float* y = h_.data();
  mm(M.eh_proj, in, b.n, y);
  float* xn = xn_.data();
  float* out = out_.data();
  norm_rows(y, M.block.attn_norm, b.n, xn);
  attention_layer(M.block, mtp_kv_, xn, b.n, b.n_past, b.pos, out);
  for (int64_t i = 0; i < int64_t(b.n) * D; ++i) y[i] += out[i];
  norm_rows(y, M.block.post_attention_norm, b.n, xn);
  ffn(M.block, xn, b.n, out);
  for (int64_t i = 0; i < int64_t(b.n) * D; ++i) y[i] += out[i];
  return Status::Ok();
}

void CpuBackend::reset() {
  for (auto& s : rs_) {
    std::fill(s.conv.v.begin(), s.conv.v.end(), 0.0f);
    std::fill(s.ssm.v.begin(), s.ssm.v.end(), 0.0f);
  }
}

Status CpuBackend::save_recurrent(int slot) {
  if (slot < 0 || slot >= kNumSlots) return Error(QWEN35_ERR_INVALID_ARG, "bad state slot {}", slot);
  auto& s = slots_[size_t(slot)];
  if (s.empty()) {
    s.resize(rs_.size());
    for (size_t il = 0; il < rs_.size(); ++il) {
      QWEN35_TRY(s[il].conv.alloc(rs_[il].conv.v.size(), "a state checkpoint"));
      QWEN35_TRY(s[il].ssm.alloc(rs_[il].ssm.v.size(), "a state checkpoint"));
    }
  }
  for (size_t il = 0; il < rs_.size(); ++il) {
    s[il].conv.v = rs_[il].conv.v;
    s[il].ssm.v = rs_[il].ssm.v;
  }
  return Status::Ok();
}

Status CpuBackend::restore_recurrent(int slot) {
  if (slot < 0 || slot >= kNumSlots || slots_[size_t(slot)].empty())
    return Error(QWEN35_ERR_STATE, "state slot {} is empty", slot);
  auto& s = slots_[size_t(slot)];
  for (size_t il = 0; il < rs_.size(); ++il) {
    rs_[il].conv.v = s[il].conv.v;
    rs_[il].ssm.v = s[il].ssm.v;
  }
  return Status::Ok();
}

uint64_t CpuBackend::state_bytes(int32_t n_rows, int32_t n_mtp_rows) const {
  uint64_t bytes = 0;
  const uint64_t row = uint64_t(hp_.kv_dim()) * sizeof(float);
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) bytes += 2 * row * uint64_t(n_rows);
    else bytes += rs_[size_t(il)].conv.bytes() + rs_[size_t(il)].ssm.bytes();
  }
  if (m_.mtp) bytes += 2 * row * uint64_t(n_mtp_rows);
  return bytes;
}

Status CpuBackend::write_state(int32_t n_rows, int32_t n_mtp_rows, uint8_t* dst) {
  auto put = [&](const void* p, size_t k) {
    std::memcpy(dst, p, k);
    dst += k;
  };
  // KV rows go out row-major: [rows, Hkv*Dh] keys, then values.
  const size_t head = size_t(hp_.head_dim) * sizeof(float);
  auto put_kv = [&](KVCache& kv, int32_t rows) {
    for (int32_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < hp_.n_head_kv; ++g) put(kv.k_row(g, r), head);
    for (int32_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < hp_.n_head_kv; ++g) put(kv.v_row(g, r), head);
  };
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) {
      put_kv(kv_[size_t(il)], n_rows);
    } else {
      put(rs_[size_t(il)].conv.data(), rs_[size_t(il)].conv.bytes());
      put(rs_[size_t(il)].ssm.data(), rs_[size_t(il)].ssm.bytes());
    }
  }
  if (m_.mtp) put_kv(mtp_kv_, n_mtp_rows);
  return Status::Ok();
}

Status CpuBackend::read_state(int32_t n_rows, int32_t n_mtp_rows, const uint8_t* src) {
  if (n_rows > p_.n_ctx || n_mtp_rows > p_.n_ctx)
    return Error(QWEN35_ERR_CONTEXT_FULL, "state holds {} rows but the context has room for {}", n_rows, p_.n_ctx);
  auto get = [&](void* p, size_t k) {
    std::memcpy(p, src, k);
    src += k;
  };
  const size_t head = size_t(hp_.head_dim) * sizeof(float);
  auto get_kv = [&](KVCache& kv, int32_t rows) {
    for (int32_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < hp_.n_head_kv; ++g) get(kv.k_row(g, r), head);
    for (int32_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < hp_.n_head_kv; ++g) get(kv.v_row(g, r), head);
  };
  for (int il = 0; il < hp_.n_layer; ++il) {
    if (hp_.is_attn_layer(il)) {
      get_kv(kv_[size_t(il)], n_rows);
    } else {
      get(rs_[size_t(il)].conv.data(), rs_[size_t(il)].conv.bytes());
      get(rs_[size_t(il)].ssm.data(), rs_[size_t(il)].ssm.bytes());
    }
  }
  if (m_.mtp) get_kv(mtp_kv_, n_mtp_rows);
  return Status::Ok();
}

uint64_t CpuBackend::memory_bytes() const {
  uint64_t b = 0;
  for (auto& kv : kv_) b += kv.k.bytes() + kv.v.bytes();
  for (auto& s : rs_) b += s.conv.bytes() + s.ssm.bytes();
  for (auto& sl : slots_)
    for (auto& s : sl) b += s.conv.bytes() + s.ssm.bytes();
  b += mtp_kv_.k.bytes() + mtp_kv_.v.bytes();
  for (const Buf* x : {&h_, &xn_, &out_, &qg_, &q_, &k_, &v_, &o_, &scores_, &u_, &conv_out_, &z_, &beta_, &alpha_,
                       &ssm_o_, &ffn_g_, &ffn_u_, &mtp_in_, &greedy_logits_})
    b += x->bytes();
  for (const auto& t : conv_taps_t_) b += t.size() * sizeof(float);
  b += screen_w_.size() + screen_act_.size();
  b += mms_.bytes();
  return b;
}

}  // namespace

Status CreateCpuBackend(const Model& model, const BackendParams& p, std::unique_ptr<Backend>* out) {
  auto b = std::make_unique<CpuBackend>(model, p);
  b->n_vocab = model.hp.n_vocab;
  QWEN35_TRY(b->init());
  *out = std::move(b);
  return Status::Ok();
}

}  // namespace qwen35
