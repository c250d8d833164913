// One case of the fused decode attention (attention_fused) against
// qkv_norm_rope() + attention() on the same inputs, for the GPU op test and
// the emulated kernels. Alloc is a device-array template (DevArray on the
// GPU, a host vector in the emulation) with upload/download/get.
#pragma once

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

// rand(n, seed, lo, hi) returns n uniform floats; f16(x) the F16 bits of x.
template <template <typename> class Arr, typename Rand, typename F16>
FusedAttnResult run_fused_attention_case(int64_t Dh, int64_t n, int64_t n_past, int splits, Rand rand, F16 f16,
                                         bool tables = false) {
  using namespace qwen35::cuda;
  const int64_t Hq = 4, Hkv = 2, n_ctx = 48, qd = Hq * Dh, kvd = Hkv * Dh;
  RopeConfig rc;
  rc.n_rot = int32_t(Dh / 4);
  rc.sections[0] = int32_t(Dh / 24 + 1);
  rc.sections[1] = int32_t(Dh / 24);
  rc.sections[2] = int32_t(Dh / 8 - 2 * (Dh / 24) - 1);
  rc.base = 1e7f;
  const int half = rc.n_rot / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  std::vector<int32_t> comp(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    inv[size_t(i)] = std::pow(double(rc.base), -2.0 * i / double(rc.n_rot));
    comp[size_t(i)] = rope_component(rc, i);
  }
  // The attention layer's projection layout: per row [q|gate per head, k, v].
  const int64_t ld = 2 * qd + 2 * kvd;
  std::vector<float> mix = rand(size_t(n * ld), 1, -2.0f, 2.0f);
  std::vector<float> qn = rand(size_t(Dh), 2, 0.5f, 1.5f), kn = rand(size_t(Dh), 3, 0.5f, 1.5f);
  std::vector<int32_t> pos;
  for (int64_t t = 0; t < n; ++t) {
    pos.push_back(int32_t(n_past + t + 1000));
    pos.push_back(int32_t(n_past + t + 3));
    pos.push_back(int32_t(n_past + t));
  }
  // Cache rows before n_past random, the rest NaN (written or never read).
  std::vector<float> kv0 = rand(size_t(n_ctx * kvd), 4, -1.0f, 1.0f), vv0 = rand(size_t(n_ctx * kvd), 5, -1.0f, 1.0f);
  std::vector<uint16_t> kc(kv0.size()), vc(vv0.size());
  for (size_t i = 0; i < kc.size(); ++i) {
    const bool past = int64_t(i) < n_past * kvd;
    kc[i] = past ? f16(kv0[i]) : uint16_t(0x7E00);
    vc[i] = past ? f16(vv0[i]) : uint16_t(0x7E00);
  }
  Arr<float> dmix(mix), dqn(qn), dkn(kn), dq(std::vector<float>(size_t(n * qd)));
  Arr<double> dinv(inv);
  Arr<int32_t> dcomp(comp), dpos(pos), dnp(std::vector<int32_t>{int32_t(n_past)});
  Arr<int32_t> dcnt(std::vector<int32_t>(size_t(kFusedAttnRows * Hq), 0));
  Arr<uint16_t> kr(kc), vr(vc), kf(kc), vf(vc);
  Arr<float> pm(std::vector<float>(size_t(n * Hq * splits))), pl(std::vector<float>(size_t(n * Hq * splits))),
      po(std::vector<float>(size_t(n * Hq * splits * Dh)));
  Arr<float> out_ref(std::vector<float>(size_t(n * qd))), out_fused(std::vector<float>(size_t(n * qd)));

  QkvRopeArgs r;
  r.n = n;
  r.n_head = Hq;
  r.n_head_kv = Hkv;
  r.head_dim = Dh;
  r.eps = 1e-6f;
  r.qg = dmix.get();
  r.ldqg = ld;
  r.k = dmix.get() + 2 * qd;
  r.ldk = ld;
  r.v = dmix.get() + 2 * qd + kvd;
  r.ldv = ld;
  r.q_norm = dqn.get();
  r.k_norm = dkn.get();
  r.pos = dpos.get();
  r.rope.n_rot = rc.n_rot;
  r.rope.inv_freq = dinv.get();
  r.rope.comp = dcomp.get();
  // Optionally the host's per-row rotation tables (rope_tables) instead of
  // the kernels' own trigonometry.
  std::vector<float> cs(size_t(std::max<int64_t>(n, 1) * rc.n_rot));
  for (int64_t t = 0; t < n; ++t) rope_tables(rc, pos.data() + 3 * t, cs.data() + t * rc.n_rot, cs.data() + t * rc.n_rot + half);
  Arr<float> dcs(cs);
  if (tables) r.rope_cs = dcs.get();
  r.q_out = dq.get();
  r.k_cache = kr.get();
  r.v_cache = vr.get();
  r.n_past = dnp.get();
  AttnArgs a;
  a.n = n;
  a.n_head = Hq;
  a.n_head_kv = Hkv;
  a.head_dim = Dh;
  a.scale = 1.0f / std::sqrt(float(Dh));
  a.q = dq.get();
  a.k_cache = kr.get();
  a.v_cache = vr.get();
  a.gate = dmix.get() + Dh;
  a.ldgate = ld;
  a.gate_stride = 2 * Dh;
  a.n_past = dnp.get();
  a.o = out_ref.get();
  a.splits = splits;
  a.part_m = pm.get();
  a.part_l = pl.get();
  a.part_o = po.get();
  FusedAttnResult res;
  res.ok = qkv_norm_rope(r, nullptr) == cudaSuccess && attention(a, nullptr) == cudaSuccess;
  FusedAttnArgs f;
  f.attn = a;
  f.attn.q = nullptr;
  f.attn.k_cache = kf.get();
  f.attn.v_cache = vf.get();
  f.attn.o = out_fused.get();
  f.rope = r;
  f.rope.q_out = nullptr;
  f.rope.k_cache = kf.get();
  f.rope.v_cache = vf.get();
  f.counters = dcnt.get();
  res.ok = res.ok && attention_fused(f, nullptr) == cudaSuccess;
  res.out_ref = out_ref.download();
  res.out_fused = out_fused.download();
  res.k_ref = kr.download();
  res.v_ref = vr.download();
  res.k_fused = kf.download();
  res.v_fused = vf.download();
  res.counters = dcnt.download();
  return res;
}

}  // namespace qwen35::test
