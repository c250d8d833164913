// The persistent NVFP4 sequence (persist_fp4.h) on the CPU through the
// emulation: blocks run one after another, so the first block's four warps
// take every ticket, interleaving at their warp-wide operations, each
// streaming its units through its ring across the stages' boundaries. Part
// of test_cuda_emu.
#include <doctest/doctest.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "cuda_emu.h"
#include "emu_test_util.h"
#include "persist_attn_case.h"
#include "persist_case.h"

using namespace qwen35;
using namespace qwen35::test;

TEST_CASE("the persistent sequence's plan on the 4B's shapes: slices that fit, few and long") {
  // (No memory is read: the plan looks at shapes and alignment only.)
  alignas(16) static float buf[4];
  auto stage = [](int64_t rows, int64_t cols) {
    cuda::PersistFp4Stage s;
    s.w.codes = reinterpret_cast<const uint8_t*>(buf);
    s.w.scales = reinterpret_cast<const uint8_t*>(buf);
    s.w.rows = rows;
    s.w.cols = cols;
    s.x = buf;
    s.y = buf;
    return s;
  };
  std::vector<cuda::PersistFp4Stage> st = {stage(12352, 2560), stage(2560, 4096), stage(18432, 2560),
                                           stage(2560, 9216)};
  for (int blocks : {1, 7, 132, 396}) {
    CAPTURE(blocks);
    REQUIRE(cuda::persist_fp4_plan(st.data(), int(st.size()), blocks));
    for (const cuda::PersistFp4Stage& s : st) {
      const int64_t kgs = s.w.kgroups();
      CHECK(s.kg_per >= 1);
      CHECK(s.kg_per <= cuda::kPersistMaxKgPer);
      CHECK(int64_t(s.splits) * s.kg_per >= kgs);
      CHECK(int64_t(s.splits - 1) * s.kg_per < kgs);
      CHECK(s.units == s.w.tiles() * s.splits);
    }
    if (blocks == 396) {  // an H100 at 3 blocks per multiprocessor: 1,584 warps
      CHECK(st[2].splits == 4);  // 4,608 units of 10 kgroups: at most 3 per warp
      CHECK(st[2].kg_per == 10);
      CHECK(st[3].splits == 9);  // 1,440 units of 16 kgroups: one per warp
      CHECK(st[3].kg_per == 16);
    }
  }
  const cuda::PersistFp4Sizes z = cuda::persist_fp4_sizes(st.data(), int(st.size()));
  CHECK(z.max_kg_per <= cuda::kPersistMaxKgPer);
  // Slice waits where a stage reads the one before's rows (here every
  // stage: one buffer), each count of a tile on the slice counter of the
  // stage after; not for a stage of more slices than a done line holds
  // (16 rows of 9,216 columns over 1,584 warps: 48 slices of 3 kgroups).
  for (const cuda::PersistFp4Stage& s : st) CHECK(s.slice_per == 0);
  REQUIRE(cuda::persist_fp4_plan(st.data(), int(st.size()), 396, true));
  for (size_t i = 0; i < st.size(); ++i) {
    CHECK(st[i].slice_per == (i == 0 ? 0 : 16));
    CHECK(st[i].slice_cols == (i + 1 < st.size() ? st[i + 1].kg_per * 64 : 0));
    CHECK(st[i].slice_limit == (i + 1 < st.size() ? st[i + 1].w.cols : 0));
  }
  std::vector<cuda::PersistFp4Stage> wide = {stage(9216, 256), stage(16, 9216)};
  REQUIRE(cuda::persist_fp4_plan(wide.data(), 2, 396, true));
  CHECK(wide[1].splits > cuda::kPersistMaxSliceWaits);
  CHECK(wide[1].slice_per == 0);
  CHECK(wide[0].slice_cols == 0);
  REQUIRE(cuda::persist_fp4_plan(st.data(), int(st.size()), 396));  // (planned again without: none left)
  for (const cuda::PersistFp4Stage& s : st) CHECK(s.slice_per + s.slice_cols + s.slice_limit == 0);
  // A gate/up pair without SwiGLU (and SwiGLU without one), both norms, a
  // gated norm's heads wider than a warp's lanes, a conv wider than the
  // outputs, an unaligned input, no columns: refused.
  st[0].w.pairing = cuda::Fp4Pairing::GateUp;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[0].epilogue = cuda::Fp4Epilogue::SwiGLU;
  CHECK(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[0].w.pairing = cuda::Fp4Pairing::Plain;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[0].epilogue = cuda::Fp4Epilogue::Store;
  st[1].norm = buf;
  st[1].gate_z = buf;
  st[1].gate_w = buf;
  st[1].gate_dv = 128;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[1].norm = nullptr;
  REQUIRE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  CHECK(st[1].kg_per % 2 == 0);
  st[1].gate_dv = 1024;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[1].gate_z = nullptr;
  st[0].epilogue = cuda::Fp4Epilogue::Conv;
  st[0].conv_taps = buf;
  st[0].conv_window = buf;
  st[0].conv_k = 4;
  st[0].conv_channels = 12353;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[0].conv_channels = 8192;
  CHECK(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[0].epilogue = cuda::Fp4Epilogue::Store;
  st[1].x = buf + 1;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
  st[1].x = buf;
  st[2].w.cols = 0;
  CHECK_FALSE(cuda::persist_fp4_plan(st.data(), int(st.size()), 7));
}

TEST_CASE("emulated: a persistent NVFP4 sequence equals kernel 3 stage by stage, and the CPU") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // Five stages: a unit per warp or several, one column slice or several
  // (the first: 40 kgroups, more than a slice holds), rows that end inside
  // a tile, a stage with fewer units than warps.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {200, 2560}, {192, 128}, {72, 192}, {256, 64}, {120, 256}};
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    emu::set_order(reverse);
    const PersistCaseResult r = run_persist_case<HostArray>(shapes, 1, 2, rand);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    CHECK(r.splits[0] >= 2);  // 40 kgroups in slices of at most 24
    CHECK(r.worst_kernel3 < 1e-5);  // the same chunks and products, other sums of the slices
    CHECK(r.worst_cpu < 2e-3);      // F16 activations
    CHECK(all_zero(r.counters));
    CHECK(all_zero(r.done));  // (no memset per launch)
    // The timeline probe: every stage's times written, in the order the
    // waits make (the emulated clock counts its readings: strictly).
    CHECK(timeline_ordered(r.timeline, true));
  }
  emu::set_order(false);
  // Two and three blocks, run one after another: the first block's warps
  // take every ticket (with static units, its later stages would wait for
  // units of blocks that cannot run before it ends). The same bits: where
  // a unit's outputs go does not depend on who computes it.
  const PersistCaseResult one = run_persist_case<HostArray>(shapes, 1, 2, rand);
  REQUIRE(one.ok);
  for (int blocks : {2, 3}) {
    CAPTURE(blocks);
    const PersistCaseResult r = run_persist_case<HostArray>(shapes, 1, 2, rand, blocks);  // (planned for 1)
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.acts == one.acts);
    CHECK(all_zero(r.tickets));
    CHECK(all_zero(r.done));
  }
  // A table whose stage 0 lacks a unit: a tile of it is never finished, so
  // stage 1's waits give up. The fault flag, wrong results, no hang; the
  // last warp to leave still puts every counter back to zero (the split-K
  // counter of the unfinished tile too).
  const PersistCaseResult f = run_persist_case<HostArray>(shapes, 1, 2, rand, 0, 1);
  REQUIRE(f.ok);
  CHECK(f.fault == 1);
  CHECK(all_zero(f.counters));
  CHECK(all_zero(f.done));
  CHECK(all_zero(f.tickets));
}

TEST_CASE("emulated: a persistent NVFP4 sequence on the FP8 tensor cores equals kernel 3's FP8 arithmetic and the CPU") {
  // The warps' compact FP8 activations (48 bytes a chunk) against kernel 3's
  // B fragments: the same terms, products and sums within a slice.
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {200, 2560}, {192, 128}, {72, 192}, {256, 64}, {120, 256}};
  const PersistCaseResult f16 = run_persist_case<HostArray>(shapes, 1, 2, rand);
  REQUIRE(f16.ok);
  for (bool reverse : {false, true}) {
    CAPTURE(reverse);
    emu::set_order(reverse);
    const PersistCaseResult r = run_persist_case<HostArray>(shapes, 1, 2, rand, 0, 0, true);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    CHECK(r.worst_kernel3 < 1e-5);
    CHECK(r.worst_cpu < 2e-4);              // three E4M3 terms per activation
    CHECK(r.worst_cpu < f16.worst_cpu / 4);  // (F16 activations: ~1e-3)
    CHECK(all_zero(r.counters));
    CHECK(all_zero(r.done));
    MESSAGE("FP8: against kernel 3 " << r.worst_kernel3 << ", the CPU " << r.worst_cpu << " (F16: "
                                     << f16.worst_cpu << ")");
  }
  emu::set_order(false);
}

TEST_CASE("emulated: a delta-net layer's tail as one persistent launch (norms, gated norm, SwiGLU, Add, conv) "
          "tracks kernel 3") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // D 256, FFN 1,600 (down: 25 kgroups, two slices), 2 heads of 128 (the
  // gated norm's slices hold whole heads: even kgroups), a conv over 320 of
  // the input projection's 584 outputs (rows that end inside a tile).
  // Two rows too (an MTP verify step), with the table inline.
  for (auto [inline_stages, n] : {std::pair{true, 1}, std::pair{false, 1}, std::pair{true, 2}}) {
    for (bool reverse : {false, true}) {
      CAPTURE(inline_stages);
      CAPTURE(n);
      CAPTURE(reverse);
      emu::set_order(reverse);
      const PersistTailResult r = run_persist_tail_case<HostArray>(256, 1600, 2, 128, 320, 584, 1, 2, rand,
                                                                   inline_stages, n);
      REQUIRE(r.ok);
      CHECK(r.fault == 0);
      CHECK(r.repeat_equal);
      CHECK(r.kg_per[0] % 2 == 0);  // whole heads of 128 columns
      CHECK(r.splits[2] >= 2);
      // The output projection and down leave their sums of squares for the
      // norms of gate/up and the input projection.
      CHECK(r.squares == std::vector<bool>{true, false, true, false});
      CHECK(r.norm_from_prev == std::vector<bool>{false, true, false, true});
      MESSAGE("h " << r.worst_h << " act " << r.worst_act << " mix " << r.worst_mix << " window " << r.worst_win
                   << "; the input projection on the same input: mix " << r.worst_mix_same << " window "
                   << r.worst_win_same);
      // Other column slices (and, for the norms, other sums of squares):
      // rounding, which the F16 activations of the input projection magnify
      // (on the same input it is the same, below).
      CHECK(r.worst_h < 1e-5);
      CHECK(r.worst_act < 1e-5);
      CHECK(r.worst_mix < 1e-4);
      CHECK(r.worst_win < 1e-4);
      CHECK(r.worst_mix_same < 1e-6);
      CHECK(r.worst_win_same < 1e-6);
      CHECK(all_zero(r.counters));
      CHECK(all_zero(r.done));
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: the delta rule as a persistent stage between the input and output projections") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // The tiny fixtures' delta net (2 key heads, 4 value heads of 64: 4 rows
  // a unit) and the 4B's head size (128: 2 rows a unit).
  for (int64_t dk : {64, 128}) {
    for (bool reverse : {false, true}) {
      CAPTURE(dk);
      CAPTURE(reverse);
      emu::set_order(reverse);
      const PersistDeltaResult r = run_persist_delta_case<HostArray>(256, 2, 4, dk, dk, 1, 2, rand);
      // Two rows: the delta rule walks them in order, and the first row's
      // results are those of a launch of it alone, bit for bit (what makes
      // an MTP verify step agree with plain decoding).
      const PersistDeltaResult r2 = run_persist_delta_case<HostArray>(256, 2, 4, dk, dk, 1, 2, rand, 2);
      REQUIRE(r2.ok);
      CHECK(r2.fault == 0);
      CHECK(r2.repeat_equal);
      CHECK(r2.delta_equal);
      CHECK(r2.worst_mix < 1e-6);
      CHECK(r2.worst_h < 1e-5);
      CHECK(std::equal(r.h.begin(), r.h.end(), r2.h.begin()));
      CHECK(std::equal(r.mix.begin(), r.mix.end(), r2.mix.begin()));
      CHECK(std::equal(r.so.begin(), r.so.end(), r2.so.begin()));
      REQUIRE(r.ok);
      CHECK(r.fault == 0);
      CHECK(r.repeat_equal);
      CHECK(r.units[1] == 4 * dk / (256 / dk));
      CHECK(r.delta_equal);  // the delta rule kernel's bits
      if (dk == 128 && !reverse) {  // three blocks (the first takes every ticket): the same bits
        const PersistDeltaResult r3 = run_persist_delta_case<HostArray>(256, 2, 4, dk, dk, 3, 2, rand);
        REQUIRE(r3.ok);
        CHECK(r3.fault == 0);
        CHECK(r3.h == r.h);
        CHECK(r3.mix == r.mix);
        CHECK(r3.so == r.so);
      }
      MESSAGE("mix " << r.worst_mix << " window " << r.worst_win << " h " << r.worst_h);
      CHECK(r.worst_mix < 1e-6);
      CHECK(r.worst_win < 1e-6);
      CHECK(r.worst_h < 1e-5);
      CHECK(all_zero(r.counters));
      CHECK(all_zero(r.done));
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: decode attention as a persistent stage between the input and output projections") {
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  // Heads of 64 after 37 cached rows in 4 splits of at least 16 keys (the
  // last split empty); the 4B's heads of 256 after 200 rows in 8 splits.
  struct Shape {
    int64_t Dh, n_past;
    int splits;
  };
  for (const Shape sh : {Shape{64, 37, 4}, Shape{256, 200, 8}}) {
    for (bool reverse : {false, true}) {
      CAPTURE(sh.Dh);
      CAPTURE(reverse);
      emu::set_order(reverse);
      const PersistAttnResult r = run_persist_attn_case<HostArray>(256, 4, 2, sh.Dh, sh.n_past, sh.splits, 4, 1, 2,
                                                                   rand);
      REQUIRE(r.ok);
      CHECK(r.fault == 0);
      CHECK(r.repeat_equal);
      CHECK(r.units == 4 * sh.splits);
      MESSAGE("mix " << r.worst_mix << " o " << r.worst_o << " k " << r.worst_k << " v " << r.worst_v << " h "
                     << r.worst_h << "; cache elements unlike attention_fused's: " << r.cache_rows_differ);
      CHECK(r.worst_mix < 1e-5);  // (other column slices than kernel 3's)
      CHECK(r.worst_o < 1e-5);    // one warp per split, warp sums in the norms: rounding
      CHECK(r.worst_k < 1e-3);    // (F16: an element may round the other way)
      CHECK(r.worst_v == 0.0);    // (no arithmetic)
      CHECK(r.worst_h < 1e-5);
      for (const std::vector<int>* c : {&r.counters, &r.done, &r.tickets, &r.attn_counters})
        CHECK(all_zero(*c));
      // Two rows (an MTP verify step): the first row's outputs and cache
      // row are those of a launch of it alone, bit for bit.
      const PersistAttnResult r2 = run_persist_attn_case<HostArray>(256, 4, 2, sh.Dh, sh.n_past, sh.splits, 4, 1, 2,
                                                                    rand, 2);
      REQUIRE(r2.ok);
      CHECK(r2.fault == 0);
      CHECK(r2.repeat_equal);
      CHECK(r2.worst_o < 1e-5);
      CHECK(r2.worst_h < 1e-5);
      CHECK(std::equal(r.o.begin(), r.o.end(), r2.o.begin()));
      CHECK(std::equal(r.h.begin(), r.h.end(), r2.h.begin()));
      const size_t rows = size_t((sh.n_past + 1) * 2 * sh.Dh);  // the cache rows up to the first new one
      CHECK(std::equal(r.kc.begin(), r.kc.begin() + rows, r2.kc.begin()));
      CHECK(std::equal(r.vc.begin(), r.vc.begin() + rows, r2.vc.begin()));
    }
  }
  emu::set_order(false);
}

TEST_CASE("emulated: slice waits give the bits of whole-stage waits, and leave every counter at zero") {
  // A stage that waits by column slice starts on the outputs of the stage
  // before in its columns and waits for the rest only before it stores:
  // the same chunks, products and sums, so the same bits. The emulation's
  // warps interleave at their polls, so units of a stage run while the
  // stage before is still being computed.
  auto rand = [](size_t n, uint32_t seed, float lo, float hi) { return random_floats(n, seed, lo, hi); };
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {200, 2560}, {192, 128}, {72, 192}, {256, 64}, {120, 256}};
  const PersistCaseResult whole = run_persist_case<HostArray>(shapes, 1, 2, rand);
  REQUIRE(whole.ok);
  CHECK(whole.slice_per == std::vector<int>{0, 0, 0, 0, 0});
  for (bool reverse : {false, true}) {
    for (int blocks : {0, 3}) {
      CAPTURE(reverse);
      CAPTURE(blocks);
      emu::set_order(reverse);
      const PersistCaseResult r = run_persist_case<HostArray>(shapes, 1, 2, rand, blocks, 0, false, true);
      REQUIRE(r.ok);
      CHECK(r.fault == 0);
      CHECK(r.repeat_equal);
      CHECK(r.slice_per == std::vector<int>{0, 16, 16, 16, 16});  // (each reads the plain rows of the one before)
      CHECK(r.acts == whole.acts);
      CHECK(all_zero(r.counters));
      CHECK(all_zero(r.done));  // (the slice counters on the stages' lines too)
      CHECK(all_zero(r.tickets));
      CHECK(timeline_ordered(r.timeline, true, true));
      // (Units that started before the stage before was done: the waits by slice let them.)
      int early = 0;
      long long ahead = 0;
      for (size_t s = 1; s < r.timeline.size(); ++s) {
        const unsigned long long ready = r.timeline[s].t[cuda::kTimeFirstReady],
                                 before = r.timeline[s - 1].t[cuda::kTimeLastDone];
        early += ready < before;
        if (ready < before) ahead += (long long)(before - ready);
      }
      CHECK(early >= 2);
      MESSAGE("stages with units ready before the stage before was done: " << early << ", by " << ahead
              << " clock readings in all");
    }
  }
  emu::set_order(false);
  // The broken table (a tile of stage 0 never finished): stage 1's slice
  // waits give up, every counter is back at zero.
  const PersistCaseResult f = run_persist_case<HostArray>(shapes, 1, 2, rand, 0, 1, false, true);
  REQUIRE(f.ok);
  CHECK(f.fault == 1);
  CHECK(all_zero(f.counters));
  CHECK(all_zero(f.done));
  CHECK(all_zero(f.tickets));

  // A delta-net layer's tail (gate/up after the output projection's Add,
  // down after SwiGLU, the input projection after down: the norms' factors
  // and the residual stream's writes after all of the stage before), one
  // and two rows.
  for (auto [inline_stages, n] : {std::pair{true, 1}, std::pair{false, 1}, std::pair{true, 2}}) {
    CAPTURE(inline_stages);
    CAPTURE(n);
    const PersistTailResult w = run_persist_tail_case<HostArray>(256, 1600, 2, 128, 320, 584, 1, 2, rand,
                                                                 inline_stages, n);
    const PersistTailResult r = run_persist_tail_case<HostArray>(256, 1600, 2, 128, 320, 584, 1, 2, rand,
                                                                 inline_stages, n, true);
    REQUIRE(w.ok);
    REQUIRE(r.ok);
    CHECK(r.fault == 0);
    CHECK(r.repeat_equal);
    CHECK(w.slice_per == std::vector<int>{0, 0, 0, 0});
    CHECK(r.slice_per == std::vector<int>{0, 16, 8, 16});
    CHECK(same_bits(r, w));
    CHECK(all_zero(r.counters));
    CHECK(all_zero(r.done));
  }

  // The output projection after the delta rule, by the heads in its slice.
  for (int64_t dk : {64, 128}) {
    for (int n : {1, 2}) {
      CAPTURE(dk);
      CAPTURE(n);
      const PersistDeltaResult w = run_persist_delta_case<HostArray>(256, 2, 4, dk, dk, 1, 2, rand, n);
      const PersistDeltaResult r = run_persist_delta_case<HostArray>(256, 2, 4, dk, dk, 1, 2, rand, n, true);
      REQUIRE(w.ok);
      REQUIRE(r.ok);
      CHECK(r.fault == 0);
      CHECK(r.repeat_equal);
      CHECK(r.slice_per == std::vector<int>{0, 0, int(256 / dk)});
      CHECK(same_bits(r, w));
      CHECK(all_zero(r.counters));
      CHECK(all_zero(r.done));
    }
  }
}
