// Cases of chained NVFP4 decode projections (fp4_chain, chain_fp4.h)
// against the same products launched one by one with fp4_matvec (kernel 3)
// and, for the FFN, against the CPU products: for the GPU op test and the
// emulated kernels. Arr is a device-array template (DevArray on the GPU, a
// host vector in the emulation) with a vector constructor, get() and
// download(); rand(n, seed, lo, hi) gives n uniform floats.
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include <doctest/doctest.h>

#include "chain_fp4.h"
#include "cpu/ops.h"
#include "delta_net.h"
#include "fused_attn_case.h"
#include "ggml_types.h"
#include "kernel_refs.h"
#include "matvec_fp4.h"
#include "quants.h"

namespace qwen35::test {

// Random GGUF NVFP4 rows [rows, cols], kept between calls (quantizing the
// 4B's matrices takes seconds).
template <typename Rand>
const std::vector<uint8_t>& random_nvfp4_rows(int64_t rows, int64_t cols, uint32_t seed, Rand rand) {
  static std::map<std::tuple<int64_t, int64_t, uint32_t>, std::vector<uint8_t>> cache;
  std::vector<uint8_t>& q = cache[{rows, cols, seed}];
  if (q.empty()) {
    const uint64_t rb = row_bytes(*type_info(GGML_NVFP4), cols);
    const std::vector<float> v = rand(size_t(rows * cols), seed, -0.5f, 0.5f);
    q.resize(size_t(rows) * rb);
    for (int64_t r = 0; r < rows; ++r) quantize_row(GGML_NVFP4, v.data() + r * cols, q.data() + r * rb, cols);
  }
  return q;
}

// A tiled NVFP4 weight on the device, repacked from GGUF rows (b: the up
// rows of a gate/up pair), with its codes also in the FP8 arrangement
// (codes8: for the FP8 arithmetic, tuning fp4_fp8).
template <template <typename> class Arr>
struct CaseTiled {
  Arr<uint8_t> buf;
  cuda::Fp4Tiled t;
  bool ok = false;
  CaseTiled(const std::vector<uint8_t>& a, const std::vector<uint8_t>* b, int64_t rows, int64_t cols, float scale)
      : buf(std::vector<uint8_t>(bytes(rows, cols, b != nullptr))) {
    using namespace qwen35::cuda;
    t.rows = rows;
    t.cols = cols;
    t.pairing = b ? Fp4Pairing::GateUp : Fp4Pairing::Plain;
    t.scale = scale;
    t.codes = buf.get();
    t.scales = buf.get() + t.code_bytes();
    t.codes8 = t.scales + t.scale_bytes();
    Arr<uint8_t> da(a), db(b ? *b : std::vector<uint8_t>(1));
    ok = fp4_repack(da.get(), b ? db.get() : nullptr, row_bytes(*type_info(GGML_NVFP4), cols), t, nullptr) ==
         cudaSuccess;
    (void)Arr<uint8_t>(std::vector<uint8_t>(1)).download();  // (a device array synchronizes: da, db are freed next)
  }
  static uint64_t bytes(int64_t rows, int64_t cols, bool pair) {
    cuda::Fp4Tiled w;
    w.rows = rows;
    w.cols = cols;
    w.pairing = pair ? cuda::Fp4Pairing::GateUp : cuda::Fp4Pairing::Plain;
    return 2 * w.code_bytes() + w.scale_bytes();
  }
};

// Stages s and s+1 of a chain: the FFN over n rows of the residual stream
// h (gate/up with the RMS norm and SwiGLU into act, then down added into h,
// waiting by slice).
inline void set_ffn_stages(cuda::Fp4ChainArgs& a, int s, const cuda::Fp4Tiled& gu, const cuda::Fp4Tiled& dn, int n,
                           float* h, int64_t ldh, const float* norm, float* act, int64_t lda) {
  using namespace qwen35::cuda;
  a.dep[s + 1] = Fp4Dep::Slice;
  Fp4MatvecArgs& g = a.stage[s];
  g.w = gu;
  g.n = n;
  g.x = h;
  g.ldx = ldh;
  g.norm = norm;
  g.eps = 1e-6f;
  g.y = act;
  g.ldy = lda;
  g.epilogue = Fp4Epilogue::SwiGLU;
  Fp4MatvecArgs& d = a.stage[s + 1];
  d.w = dn;
  d.n = n;
  d.x = act;
  d.ldx = lda;
  d.y = h;
  d.ldy = ldh;
  d.epilogue = Fp4Epilogue::Add;
}

struct FfnCaseResult {
  bool ok = false;
  std::vector<float> fused, twice, ref;      // [n, ldh] residual stream after the FFN
  std::vector<float> act_fused, act_twice;   // [n, lda] SwiGLU outputs
  std::vector<float> again;                  // a second fused launch from the same input
  std::vector<int> sync;                     // the chain's counters afterwards (all zero)
  int fault = 0;
  std::vector<int> fault_record;             // the fault ints (flag, stage, task, counter, wanted)
};

// The FFN as a chain of two (gate/up with the norm and SwiGLU, down added
// into the residual stream, by slice). D: model width, F: FFN width (a
// multiple of 64); n activation rows.
// layers > 1: the FFN applied that many times in a row on `stream` (the
// chain launches alternating between two sets of counters, as consecutive
// layers do; with PDL on a created stream), no CPU reference.
// first_ticket > 0: the chain's ticket counter starts there (as if a launch
// had not finished: the tasks below it never run), which must end in the
// fault flag, not in a hang.
template <template <typename> class Arr, typename Rand>
FfnCaseResult run_ffn_case(int64_t D, int64_t F, int n, int sms, Rand rand, cudaStream_t stream = nullptr,
                           int layers = 1, int first_ticket = 0) {
  using namespace qwen35::cuda;
  const int64_t ldh = D + 4, lda = F + 8;
  const uint64_t rb_d = row_bytes(*type_info(GGML_NVFP4), D), rb_f = row_bytes(*type_info(GGML_NVFP4), F);
  const std::vector<uint8_t>& gate = random_nvfp4_rows(F, D, 11, rand);
  const std::vector<uint8_t>& up = random_nvfp4_rows(F, D, 12, rand);
  const std::vector<uint8_t>& down = random_nvfp4_rows(D, F, 13, rand);
  CaseTiled<Arr> wgu(gate, &up, F, D, 0.5f), wdn(down, nullptr, D, F, 0.75f);
  const Fp4Tiled &tgu = wgu.t, &tdn = wdn.t;
  FfnCaseResult r;
  if (!wgu.ok || !wdn.ok) return r;

  const std::vector<float> h0 = rand(size_t(n * ldh), 14, -2.0f, 2.0f), nw = rand(size_t(D), 15, 0.5f, 1.5f);
  const std::vector<float> nan_act(size_t(n * lda), NAN);
  Arr<float> dnw(nw), part_gu(std::vector<float>(std::max<uint64_t>(1, fp4_partial_floats(tgu, sms)))),
      part_dn(std::vector<float>(std::max<uint64_t>(1, fp4_partial_floats(tdn, sms))));
  Arr<int> cnt_gu(std::vector<int>(std::max<uint64_t>(1, fp4_counter_ints(tgu)), 0)),
      cnt_dn(std::vector<int>(std::max<uint64_t>(1, fp4_counter_ints(tdn)), 0));
  auto products = [&](float* h, float* act) {
    Fp4ChainArgs a;
    a.stages = 2;
    set_ffn_stages(a, 0, tgu, tdn, n, h, ldh, dnw.get(), act, lda);
    a.stage[0].partial = part_gu.get();
    a.stage[0].counters = cnt_gu.get();
    a.stage[1].partial = part_dn.get();
    a.stage[1].counters = cnt_dn.get();
    return a;
  };

  // Two kernel-3 launches.
  Arr<float> h_t(h0), act_t(nan_act);
  const Fp4ChainArgs two = products(h_t.get(), act_t.get());
  r.ok = true;
  for (int l = 0; l < layers; ++l)
    r.ok = r.ok && fp4_matvec(two.stage[0], sms, stream) == cudaSuccess &&
           fp4_matvec(two.stage[1], sms, stream) == cudaSuccess;
  r.twice = h_t.download();
  r.act_twice = act_t.download();

  // The fused kernel, twice from the same input (the counters must be reset).
  std::vector<int> sync0(2 * fp4_chain_sync_ints(), 0);
  sync0[0] = first_ticket;
  Arr<int> sync(sync0), fault(std::vector<int>(kFp4ChainFaultInts, 0));
  for (int run = 0; run < 2; ++run) {
    Arr<float> h_f(h0), act_f(nan_act);
    Fp4ChainArgs a = products(h_f.get(), act_f.get());
    a.fault = fault.get();
    for (int l = 0; l < layers; ++l) {
      a.sync = sync.get() + (l % 2) * fp4_chain_sync_ints();
      r.ok = r.ok && fp4_chain_supported(a, sms) && fp4_chain(a, sms, stream) == cudaSuccess;
    }
    (run == 0 ? r.fused : r.again) = h_f.download();
    if (run == 0) r.act_fused = act_f.download();
  }
  r.sync = sync.download();
  r.fault_record = fault.download();
  r.fault = r.fault_record[0];
  if (layers > 1) return r;

  // CPU: h += down . (silu(gate . x) * (up . x)), x = rmsnorm(h).
  r.ref = h0;
  std::vector<float> x(static_cast<size_t>(D)), act(static_cast<size_t>(F));
  for (int j = 0; j < n; ++j) {
    rmsnorm(h0.data() + j * ldh, nw.data(), D, 1e-6f, x.data());
    for (int64_t i = 0; i < F; ++i) {
      const float g = vec_dot_ref(GGML_NVFP4, gate.data() + i * rb_d, x.data(), D) * 0.5f;
      const float u = vec_dot_ref(GGML_NVFP4, up.data() + i * rb_d, x.data(), D) * 0.5f;
      act[size_t(i)] = siluf(g) * u;
    }
    for (int64_t i = 0; i < D; ++i)
      r.ref[size_t(j * ldh + i)] += vec_dot_ref(GGML_NVFP4, down.data() + i * rb_f, act.data(), F) * 0.75f;
  }
  return r;
}

// What runs in front of a layer tail's output projection, as stage 0 of
// the chain (against its own kernel launched alone).
struct TailHead {
  enum Kind { None, Delta, Attention } kind = None;
  int64_t Hk = 0, dk = 0;  // Delta: key heads of dk (the value heads are the tail's Hv, dv)
  // Attention: query and KV heads of Dh (the tail's Hv, dv are unused: the
  // output projection reads Hq*Dh attention outputs), cached rows, splits.
  int64_t Hq = 0, Hkv = 0, Dh = 0, n_past = 0;
  int splits = 1;
};

struct TailCaseResult {
  bool ok = false;
  std::vector<float> so_chain, so_single;    // the delta rule's or the attention's outputs (with a head stage)
  std::vector<float> st_chain, st_single;    // the delta rule's state
  std::vector<uint16_t> kv_chain, kv_single; // the attention's K and V caches
  std::vector<float> h_chain, h_single;      // the residual stream afterwards
  std::vector<float> mix_chain, mix_single;  // the next input projection's outputs
  std::vector<float> win_chain, win_single;  // its causal-conv window
  std::vector<int> sync;                     // the chain's counters afterwards (all zero)
  int fault = 0;
  std::vector<int> fault_record;             // the fault ints (flag, stage, task, counter, wanted)
};

// A delta-net layer's tail as a chain of four against the same four
// products launched one by one: the output projection (the gated RMSNorm
// of the delta rule's output, heads of dv, as prologue; added into h), the
// FFN (gate/up, then down by slice) and the next layer's input projection
// (RMSNorm; for n <= 2 the causal conv + SiLU over its first C outputs as
// epilogue, else stored). D: model width, F: FFN width, Hv heads of dv,
// Nin input-projection rows. With a head, a fifth stage in front whose
// output is the output projection's input: the delta rule (against
// delta_net), or the fused decode attention (against attention_fused; an
// attention layer's tail: the output projection without a prologue).
// repeat > 1: the tail applied that many times in a row on `stream` (the
// chains alternating between two sets of counters, as consecutive layers
// do; with PDL on a created stream), each from the state the last left.
// norm_dep: how gate/up and the input projection (RMS norms of the
// residual stream the stage before wrote) wait, Full or SliceNorm (then,
// with the delta rule or attention in front, the output projection by
// Heads too: the backend's chains with tuning fp4_chain_early).
template <template <typename> class Arr, typename Rand>
TailCaseResult run_tail_case(int64_t D, int64_t F, int64_t Hv, int64_t dv, int64_t C, int64_t Nin, int n, int sms,
                             Rand rand, const TailHead& head = {}, int repeat = 1, cudaStream_t stream = nullptr,
                             qwen35::cuda::Fp4Dep norm_dep = qwen35::cuda::Fp4Dep::Full) {
  using namespace qwen35::cuda;
  const bool delta = head.kind == TailHead::Delta, attn = head.kind == TailHead::Attention;
  const int64_t Cv = attn ? head.Hq * head.Dh : Hv * dv, ldh = D + 4, lda = F + 8, ldz = Cv + 4, K = 4;
  const int64_t Hk = head.Hk, dk = head.dk;
  CaseTiled<Arr> wout(random_nvfp4_rows(D, Cv, 21, rand), nullptr, D, Cv, 0.5f);
  // (The FFN case's matrices: quantized once.)
  CaseTiled<Arr> wgu(random_nvfp4_rows(F, D, 11, rand), &random_nvfp4_rows(F, D, 12, rand), F, D, 0.75f);
  CaseTiled<Arr> wdn(random_nvfp4_rows(D, F, 13, rand), nullptr, D, F, 0.5f);
  CaseTiled<Arr> win(random_nvfp4_rows(Nin, D, 25, rand), nullptr, Nin, D, 1.0f);
  TailCaseResult r;
  if (!wout.ok || !wgu.ok || !wdn.ok || !win.ok) return r;
  const std::vector<float> so = rand(size_t(n * Cv), 26, -1.0f, 1.0f), z = rand(size_t(n * ldz), 27, -2.0f, 2.0f),
                           gw = rand(size_t(dv), 28, 0.5f, 1.5f), h0 = rand(size_t(n * ldh), 29, -2.0f, 2.0f),
                           post = rand(size_t(D), 30, 0.5f, 1.5f), pre = rand(size_t(D), 31, 0.5f, 1.5f),
                           taps = rand(size_t(C * K), 32, -0.5f, 0.5f), win0 = rand(size_t((K - 1) * C), 33, -1.0f, 1.0f);
  Arr<float> dz(z), dgw(gw), dpost(post), dpre(pre), dtaps(taps);
  // The delta rule's inputs (post-conv q|k|v, b, a, gate parameters, state).
  const DeltaShape ds{Hk, Hv, dk, dv};
  const int64_t ldu = 2 * Hk * dk + Hv * dv + 4, ldb = Hv + 3;
  const std::vector<float> uc = rand(size_t(n * ldu), 34, -1.0f, 1.0f), bb = rand(size_t(n * ldb), 35, -3.0f, 3.0f),
                           al = rand(size_t(n * ldb), 36, -3.0f, 3.0f), a_log = rand(size_t(Hv), 37, -2.0f, -0.1f),
                           dtb = rand(size_t(Hv), 38, -1.0f, 1.0f), st0 = rand(size_t(Hv * dv * dk), 39, -0.5f, 0.5f);
  Arr<float> duc(uc), db(bb), dal(al), dalog(a_log), ddtb(dtb);
  // The attention's inputs (projections, norms, positions, caches).
  const AttnCaseHost ac = make_attn_case(attn ? head.Hq : 2, attn ? head.Hkv : 1, attn ? head.Dh : 64, attn ? n : 1,
                                         head.n_past, rand, fp32_to_fp16);
  AttnCaseDev<Arr> adev(ac, head.splits);
  std::vector<std::vector<float>> part;
  std::vector<std::vector<int>> cnt;
  for (const Fp4Tiled* w : {&wout.t, &wgu.t, &wdn.t, &win.t}) {
    part.emplace_back(std::max<uint64_t>(1, fp4_partial_floats(*w, sms)));
    cnt.emplace_back(std::max<uint64_t>(1, fp4_counter_ints(*w)), 0);
  }
  Arr<float> p0(part[0]), p1(part[1]), p2(part[2]), p3(part[3]);
  Arr<int> c0(cnt[0]), c1(cnt[1]), c2(cnt[2]), c3(cnt[3]);
  float* parts[4] = {p0.get(), p1.get(), p2.get(), p3.get()};
  int* cnts[4] = {c0.get(), c1.get(), c2.get(), c3.get()};
  auto stages = [&](float* so_buf, float* state, uint16_t* kc, uint16_t* vc, float* h, float* act, float* mix,
                    float* window) {
    Fp4ChainArgs a;
    const int s0 = delta || attn ? 1 : 0;
    a.stages = 4 + s0;
    if (delta) {
      a.delta = true;
      a.delta_args = delta_args(ds, n, duc.get(), ldu, db.get(), dal.get(), ldb, dalog.get(), ddtb.get(), state, so_buf);
      a.delta_args.elems_per_thread = 8;
      a.dep[1] = norm_dep == Fp4Dep::SliceNorm ? Fp4Dep::Heads : Fp4Dep::Full;
    }
    if (attn) {
      a.attn = true;
      a.attn_args = adev.fused(kc, vc, so_buf, true);
      a.dep[1] = norm_dep == Fp4Dep::SliceNorm ? Fp4Dep::Heads : Fp4Dep::Full;
    }
    a.dep[s0 + 1] = norm_dep;
    a.dep[s0 + 3] = norm_dep;
    Fp4MatvecArgs& o = a.stage[s0];
    o.w = wout.t;
    o.x = so_buf;
    o.ldx = Cv;
    if (!attn) {  // the delta net's gated RMSNorm
      o.gate_z = dz.get();
      o.ldz = ldz;
      o.gate_w = dgw.get();
      o.gate_dv = int(dv);
    }
    o.y = h;
    o.ldy = ldh;
    o.epilogue = Fp4Epilogue::Add;
    set_ffn_stages(a, s0 + 1, wgu.t, wdn.t, n, h, ldh, dpost.get(), act, lda);
    Fp4MatvecArgs& i = a.stage[s0 + 3];
    i.w = win.t;
    i.x = h;
    i.ldx = ldh;
    i.norm = dpre.get();
    i.y = mix;
    i.ldy = Nin;
    i.epilogue = n <= 2 ? Fp4Epilogue::Conv : Fp4Epilogue::Store;
    if (n <= 2) {
      i.conv_taps = dtaps.get();
      i.conv_window = window;
      i.conv_channels = C;
      i.conv_k = int(K);
    }
    for (int s = 0; s < 4; ++s) {
      a.stage[s0 + s].n = n;
      a.stage[s0 + s].eps = 1e-6f;
      a.stage[s0 + s].partial = parts[s];
      a.stage[s0 + s].counters = cnts[s];
    }
    return a;
  };
  const std::vector<float> nan_act(size_t(n * lda), NAN), nan_mix(size_t(n * Nin), NAN);
  const uint64_t sync_ints = fp4_chain_sync_ints();
  Arr<int> sync(std::vector<int>(2 * sync_ints, 0)), fault(std::vector<int>(kFp4ChainFaultInts, 0));
  // The stages one launch each, or as one chain: the outputs after.
  auto run = [&](bool chain, std::vector<float>* so_out, std::vector<float>* st_out, std::vector<uint16_t>* kv_out,
                 std::vector<float>* h_out, std::vector<float>* mix_out, std::vector<float>* win_out) {
    Arr<float> so_buf(so), state(st0), h(h0), act(nan_act), mix(nan_mix), window(win0);
    Arr<uint16_t> kc(ac.kc), vc(ac.vc);
    Fp4ChainArgs a =
        stages(so_buf.get(), state.get(), kc.get(), vc.get(), h.get(), act.get(), mix.get(), window.get());
    (void)Arr<int>(std::vector<int>(1)).download();  // (a device array synchronizes: the uploads are done)
    bool ok = true;
    for (int r = 0; r < repeat && ok; ++r) {
      if (chain) {
        a.sync = sync.get() + (r % 2) * sync_ints;
        a.fault = fault.get();
        ok = fp4_chain_supported(a, sms) && fp4_chain(a, sms, stream) == cudaSuccess;
      } else {
        if (delta) ok = delta_net(a.delta_args, stream) == cudaSuccess;
        if (attn) ok = attention_fused(a.attn_args, stream) == cudaSuccess;
        for (int s = delta || attn ? 1 : 0; s < a.stages; ++s)
          ok = ok && fp4_matvec(a.stage[s], sms, stream) == cudaSuccess;
      }
    }
    *so_out = so_buf.download();
    *st_out = state.download();
    *kv_out = kc.download();
    const std::vector<uint16_t> v = vc.download();
    kv_out->insert(kv_out->end(), v.begin(), v.end());
    *h_out = h.download();
    *mix_out = mix.download();
    *win_out = window.download();
    return ok;
  };
  r.ok = run(false, &r.so_single, &r.st_single, &r.kv_single, &r.h_single, &r.mix_single, &r.win_single) &
         run(true, &r.so_chain, &r.st_chain, &r.kv_chain, &r.h_chain, &r.mix_chain, &r.win_chain);
  r.sync = sync.download();
  r.fault_record = fault.download();
  r.fault = r.fault_record[0];
  return r;
}

// A chained tail equals its single launches bit for bit (the same sums in
// the same order), and the chain leaves its counters at zero.
inline void check_tail_case(const TailCaseResult& r) {
  REQUIRE(r.ok);
  CHECK_MESSAGE(r.fault == 0, "a task gave up: stage " << r.fault_record[1] << ", task " << r.fault_record[2]
                                                       << ", counter " << r.fault_record[3] << " of "
                                                       << r.fault_record[4]);
  CHECK(std::memcmp(r.so_chain.data(), r.so_single.data(), r.so_chain.size() * 4) == 0);
  CHECK(std::memcmp(r.st_chain.data(), r.st_single.data(), r.st_chain.size() * 4) == 0);
  CHECK(r.kv_chain == r.kv_single);
  CHECK(std::memcmp(r.h_chain.data(), r.h_single.data(), r.h_chain.size() * 4) == 0);
  CHECK(std::memcmp(r.mix_chain.data(), r.mix_single.data(), r.mix_chain.size() * 4) == 0);
  CHECK(std::memcmp(r.win_chain.data(), r.win_single.data(), r.win_chain.size() * 4) == 0);
  CHECK(std::all_of(r.sync.begin(), r.sync.end(), [](int c) { return c == 0; }));
}

}  // namespace qwen35::test
