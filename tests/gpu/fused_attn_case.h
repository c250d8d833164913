// One case of the fused decode attention (attention_fused) against
// qkv_norm_rope() + attention() on the same inputs, for the GPU op test and
// the emulated kernels (its inputs also serve the chain cases). Arr is a
// device-array template (DevArray on the GPU, a host vector in the
// emulation) with a vector constructor, get() and download().
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "cpu/ops.h"
#include "rope.h"

namespace qwen35::test {

struct FusedAttnResult {
  std::vector<float> out_fused, out_ref;                  // [n, Hq*Dh]
  std::vector<uint16_t> k_fused, k_ref, v_fused, v_ref;   // the caches afterwards
  std::vector<int32_t> counters;                          // after the fused call
  bool ok = false;                                        // both launches succeeded
};

// The host inputs of a decode attention case: n rows of an attention
// layer's projections ([q|gate per head, k, v]), the q/k norms, M-RoPE
// positions and tables, F16 caches of n_ctx rows with n_past random rows
// (the rest NaN: written or never read). rand(n, seed, lo, hi) returns n
// uniform floats; f16(x) the F16 bits of x.
struct AttnCaseHost {
  int64_t Hq = 0, Hkv = 0, Dh = 0, n = 0, n_past = 0, n_ctx = 48;
  RopeConfig rc;
  std::vector<double> inv;
  std::vector<int32_t> comp, pos;
  std::vector<float> mix, qn, kn, cs;  // cs: the host's rotation tables [n, n_rot]
  std::vector<uint16_t> kc, vc;
  int64_t qd() const { return Hq * Dh; }
  int64_t kvd() const { return Hkv * Dh; }
  int64_t ld() const { return 2 * qd() + 2 * kvd(); }
};

template <typename Rand, typename F16>
AttnCaseHost make_attn_case(int64_t Hq, int64_t Hkv, int64_t Dh, int64_t n, int64_t n_past, Rand rand, F16 f16) {
  AttnCaseHost c;
  c.Hq = Hq;
  c.Hkv = Hkv;
  c.Dh = Dh;
  c.n = n;
  c.n_past = n_past;
  c.n_ctx = std::max<int64_t>(48, n_past + n);
  RopeConfig& rc = c.rc;
  rc.n_rot = int32_t(Dh / 4);
  rc.sections[0] = int32_t(Dh / 24 + 1);
  rc.sections[1] = int32_t(Dh / 24);
  rc.sections[2] = int32_t(Dh / 8 - 2 * (Dh / 24) - 1);
  rc.base = 1e7f;
  const int half = rc.n_rot / 2;
  c.inv.resize(static_cast<size_t>(half));
  c.comp.resize(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    c.inv[size_t(i)] = std::pow(double(rc.base), -2.0 * i / double(rc.n_rot));
    c.comp[size_t(i)] = rope_component(rc, i);
  }
  c.mix = rand(size_t(n * c.ld()), 1, -2.0f, 2.0f);
  c.qn = rand(size_t(Dh), 2, 0.5f, 1.5f);
  c.kn = rand(size_t(Dh), 3, 0.5f, 1.5f);
  for (int64_t t = 0; t < n; ++t) {
    c.pos.push_back(int32_t(n_past + t + 1000));
    c.pos.push_back(int32_t(n_past + t + 3));
    c.pos.push_back(int32_t(n_past + t));
  }
  c.cs.resize(size_t(std::max<int64_t>(n, 1) * rc.n_rot));
  for (int64_t t = 0; t < n; ++t)
    rope_tables(rc, c.pos.data() + 3 * t, c.cs.data() + t * rc.n_rot, c.cs.data() + t * rc.n_rot + half);
  const int64_t kvd = c.kvd();
  const std::vector<float> kv0 = rand(size_t(c.n_ctx * kvd), 4, -1.0f, 1.0f),
                           vv0 = rand(size_t(c.n_ctx * kvd), 5, -1.0f, 1.0f);
  c.kc.resize(kv0.size());
  c.vc.resize(vv0.size());
  for (size_t i = 0; i < c.kc.size(); ++i) {
    const bool past = int64_t(i) < n_past * kvd;
    c.kc[i] = past ? f16(kv0[i]) : uint16_t(0x7E00);
    c.vc[i] = past ? f16(vv0[i]) : uint16_t(0x7E00);
  }
  return c;
}

// Its device copies and the attention's scratch; the caches and outputs are
// the caller's (one set per run).
template <template <typename> class Arr>
struct AttnCaseDev {
  const AttnCaseHost& h;
  int splits;
  Arr<float> mix, qn, kn, cs;
  Arr<double> inv;
  Arr<int32_t> comp, pos, np, cnt;
  Arr<float> pm, pl, po;
  AttnCaseDev(const AttnCaseHost& host, int splits_)
      : h(host), splits(splits_), mix(host.mix), qn(host.qn), kn(host.kn), cs(host.cs), inv(host.inv),
        comp(host.comp), pos(host.pos), np(std::vector<int32_t>{int32_t(host.n_past)}),
        cnt(std::vector<int32_t>(size_t(cuda::kFusedAttnRows * host.Hq), 0)),
        pm(std::vector<float>(size_t(host.n * host.Hq * splits_))),
        pl(std::vector<float>(size_t(host.n * host.Hq * splits_))),
        po(std::vector<float>(size_t(host.n * host.Hq * splits_ * host.Dh))) {}

  // The fused attention's arguments over caches k, v into o [n, Hq*Dh]
  // (tables: with the host's rotation tables).
  cuda::FusedAttnArgs fused(uint16_t* k, uint16_t* v, float* o, bool tables) {
    using namespace qwen35::cuda;
    const int64_t qd = h.qd(), kvd = h.kvd(), ld = h.ld();
    QkvRopeArgs r;
    r.n = h.n;
    r.n_head = h.Hq;
    r.n_head_kv = h.Hkv;
    r.head_dim = h.Dh;
    r.eps = 1e-6f;
    r.qg = mix.get();
    r.ldqg = ld;
    r.k = mix.get() + 2 * qd;
    r.ldk = ld;
    r.v = mix.get() + 2 * qd + kvd;
    r.ldv = ld;
    r.q_norm = qn.get();
    r.k_norm = kn.get();
    r.pos = pos.get();
    r.rope.n_rot = h.rc.n_rot;
    r.rope.inv_freq = inv.get();
    r.rope.comp = comp.get();
    if (tables) r.rope_cs = cs.get();
    r.k_cache = k;
    r.v_cache = v;
    r.n_past = np.get();
    AttnArgs a;
    a.n = h.n;
    a.n_head = h.Hq;
    a.n_head_kv = h.Hkv;
    a.head_dim = h.Dh;
    a.scale = 1.0f / std::sqrt(float(h.Dh));
    a.k_cache = k;
    a.v_cache = v;
    a.gate = mix.get() + h.Dh;
    a.ldgate = ld;
    a.gate_stride = 2 * h.Dh;
    a.n_past = np.get();
    a.o = o;
    a.splits = splits;
    a.part_m = pm.get();
    a.part_l = pl.get();
    a.part_o = po.get();
    FusedAttnArgs f;
    f.attn = a;
    f.rope = r;
    f.counters = cnt.get();
    return f;
  }
};

template <template <typename> class Arr, typename Rand, typename F16>
FusedAttnResult run_fused_attention_case(int64_t Dh, int64_t n, int64_t n_past, int splits, Rand rand, F16 f16,
                                         bool tables = false) {
  using namespace qwen35::cuda;
  const AttnCaseHost c = make_attn_case(4, 2, Dh, n, n_past, rand, f16);
  AttnCaseDev<Arr> dev(c, splits);
  Arr<float> dq(std::vector<float>(size_t(n * c.qd())));
  Arr<uint16_t> kr(c.kc), vr(c.vc), kf(c.kc), vf(c.vc);
  Arr<float> out_ref(std::vector<float>(size_t(n * c.qd()))), out_fused(std::vector<float>(size_t(n * c.qd())));
  // qkv_norm_rope() + attention() ...
  const FusedAttnArgs split = dev.fused(kr.get(), vr.get(), out_ref.get(), tables);
  QkvRopeArgs r = split.rope;
  r.q_out = dq.get();
  AttnArgs a = split.attn;
  a.q = dq.get();
  FusedAttnResult res;
  res.ok = qkv_norm_rope(r, nullptr) == cudaSuccess && attention(a, nullptr) == cudaSuccess;
  // ... against the fused kernel.
  const FusedAttnArgs f = dev.fused(kf.get(), vf.get(), out_fused.get(), tables);
  res.ok = res.ok && attention_fused(f, nullptr) == cudaSuccess;
  res.out_ref = out_ref.download();
  res.out_fused = out_fused.download();
  res.k_ref = kr.download();
  res.v_ref = vr.download();
  res.k_fused = kf.download();
  res.v_fused = vf.download();
  res.counters = dev.cnt.download();
  return res;
}

}  // namespace qwen35::test
