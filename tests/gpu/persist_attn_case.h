// An attention layer's head as one persistent launch (persist_fp4.h): the
// input projection (RMS norm) -> decode attention (q/k norm, RoPE, the
// cache write, the splits' merge, the gate) -> the output projection
// (added into h), the stages the backend's QWEN35_CUDA_FP4_PERSIST=3 puts
// around an attention layer; against kernel 3 and attention_fused on the
// inputs the persistent launch's stages read. For the GPU op test and the
// emulated kernels (Arr: DevArray or a host vector).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fused_attn_case.h"
#include "persist_case.h"

namespace qwen35::test {

struct PersistAttnResult {
  bool ok = false;
  int fault = 0;
  bool repeat_equal = false;  // a second launch from the same inputs gave the same bits
  // Largest |difference| / largest |value|: the input projection against
  // kernel 3 on the same input; the attention's outputs and the caches
  // against attention_fused on the launch's projections; the residual
  // stream against kernel 3 on the launch's attention outputs.
  double worst_mix = 0.0, worst_o = 0.0, worst_k = 0.0, worst_v = 0.0, worst_h = 0.0;
  int64_t cache_rows_differ = 0;  // cache elements (F16) not equal to attention_fused's
  std::vector<int> counters, done, tickets, attn_counters;  // after the launches (all zero)
  int64_t units = 0;                                       // the attention stage's, as planned
  std::vector<float> h, o;                                 // [n, D], [n, Hq Dh]
  std::vector<uint16_t> kc, vc;                            // the caches afterwards
};

// D columns of h, Hq / Hkv heads of Dh, n rows (1 or 2) after n_past cached
// ones, `splits` key splits of the persistent stage (ref_splits for
// attention_fused).
template <template <typename> class Arr, typename Rand>
PersistAttnResult run_persist_attn_case(int64_t D, int64_t Hq, int64_t Hkv, int64_t Dh, int64_t n_past, int splits,
                                        int ref_splits, int blocks, int sms, Rand rand, int n = 1) {
  using namespace qwen35::cuda;
  PersistAttnResult r;
  const AttnCaseHost ac = make_attn_case(Hq, Hkv, Dh, n, n_past, rand, fp32_to_fp16);
  const int64_t qd = ac.qd(), ld = ac.ld();
  CaseTiled<Arr> win(random_nvfp4_rows(ld, D, 61, rand), nullptr, ld, D, 1.0f);
  CaseTiled<Arr> wout(random_nvfp4_rows(D, qd, 62, rand), nullptr, D, qd, 0.5f);
  if (!win.ok || !wout.ok) return r;
  // (Row 0's inputs do not depend on n: the rows are generated one by one.)
  std::vector<float> h0;
  for (int j = 0; j < n; ++j) {
    const std::vector<float> row = rand(size_t(D), 63 + 100 * j, -2.0f, 2.0f);
    h0.insert(h0.end(), row.begin(), row.end());
  }
  const std::vector<float> pre = rand(size_t(D), 64, 0.5f, 1.5f), nan_o(size_t(n * qd), NAN);
  Arr<float> dpre(pre);
  auto in_args = [&](float* h, float* mix) {
    Fp4MatvecArgs a;
    a.w = win.t;
    a.n = n;
    a.x = h;
    a.ldx = D;
    a.norm = dpre.get();
    a.y = mix;
    a.ldy = ld;
    return a;
  };
  auto out_args = [&](float* o, float* h) {
    Fp4MatvecArgs a;
    a.w = wout.t;
    a.n = n;
    a.x = o;
    a.ldx = qd;
    a.y = h;
    a.ldy = D;
    a.epilogue = Fp4Epilogue::Add;
    return a;
  };

  // The persistent launch (twice, from the same inputs); the projections go
  // to the case's mix, which the attention stage reads.
  AttnCaseDev<Arr> dev(ac, splits);
  PersistScratch<Arr> scratch(3);
  std::vector<float> mix;
  for (int run = 0; run < 2; ++run) {
    Arr<float> h(h0), o(nan_o);
    Arr<uint16_t> kc(ac.kc), vc(ac.vc);
    PersistFp4Stage table[3];
    if (!persist_fp4_stage(in_args(h.get(), dev.mix.get()), &table[0]) ||
        !persist_attention_stage(dev.fused(kc.get(), vc.get(), o.get(), true), &table[1]) ||
        !persist_fp4_stage(out_args(o.get(), h.get()), &table[2]) || !persist_fp4_plan(table, 3, blocks))
      return r;
    r.units = table[1].units;
    if (!scratch.launch(table, 3, blocks, true)) return r;
    if (run == 0) {
      r.h = h.download();
      r.o = o.download();
      r.kc = kc.download();
      r.vc = vc.download();
      mix = dev.mix.download();
    } else {
      r.repeat_equal = h.download() == r.h && o.download() == r.o && kc.download() == r.kc &&
                       vc.download() == r.vc && dev.mix.download() == mix;
    }
  }
  r.fault = scratch.fault_report();
  r.counters = scratch.counters->download();
  r.done = scratch.done.download();
  r.tickets = scratch.tickets.download();
  r.attn_counters = dev.cnt.download();
  {  // the input projection: kernel 3 on the same h
    Arr<float> h(h0), m(std::vector<float>(size_t(n * ld), NAN));
    if (!kernel3_alone<Arr>(in_args(h.get(), m.get()), sms)) return r;
    r.worst_mix = worst_rel(mix, m.download());
  }
  {  // the attention: attention_fused on the launch's projections
    AttnCaseHost rc = ac;
    rc.mix = mix;
    AttnCaseDev<Arr> ref(rc, ref_splits);
    Arr<float> o(nan_o);
    Arr<uint16_t> kc(ac.kc), vc(ac.vc);
    if (attention_fused(ref.fused(kc.get(), vc.get(), o.get(), true), nullptr) != cudaSuccess) return r;
    r.worst_o = worst_rel(r.o, o.download());
    const std::vector<uint16_t> k = kc.download(), v = vc.download();
    std::vector<float> kf, vf, kg, vg;
    for (size_t i = size_t(n_past * ac.kvd()); i < size_t((n_past + n) * ac.kvd()); ++i) {
      kf.push_back(fp16_to_fp32(k[i]));
      vf.push_back(fp16_to_fp32(v[i]));
      kg.push_back(fp16_to_fp32(r.kc[i]));
      vg.push_back(fp16_to_fp32(r.vc[i]));
    }
    r.worst_k = worst_rel(kg, kf);
    r.worst_v = worst_rel(vg, vf);
    for (size_t i = 0; i < k.size(); ++i) r.cache_rows_differ += (k[i] != r.kc[i]) + (v[i] != r.vc[i]);
  }
  {  // the output projection: kernel 3 on the launch's attention outputs
    Arr<float> o(r.o), h(h0);
    if (!kernel3_alone<Arr>(out_args(o.get(), h.get()), sms)) return r;
    r.worst_h = worst_rel(r.h, h.download());
  }
  r.ok = true;
  return r;
}

}  // namespace qwen35::test
