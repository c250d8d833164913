// One case of the device sampling candidates (topk_candidates) against
// select_topk(), for the GPU op test and the emulated kernels. Arr is a
// device-array template (DevArray on the GPU, a host vector in the
// emulation) with a vector constructor, get() and download().
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "sampler.h"
#include "topk.h"

namespace qwen35::test {

// Rows that take the radix search through its levels. kGrid: a few strong
// tokens over a wide tail on a coarse grid (many exact ties; usually one
// level); kFine: distinct values in [1, 2) (the first level's buckets hold
// too many); kLowBits: 256 values that differ only in their last 8 bits,
// each many times (the last level decides); kFlat: every token equal but a
// few (more ties than the candidates hold). -inf, NaN and both zeros are
// mixed into every kind.
enum class TopkRow { kGrid, kFine, kLowBits, kFlat };
inline std::vector<float> topk_row(int32_t V, uint32_t seed, TopkRow kind = TopkRow::kGrid) {
  std::vector<float> l(static_cast<size_t>(V));
  uint32_t s = seed * 2654435761u + 7;
  auto next = [&] { return s = s * 1664525u + 1013904223u; };
  for (int32_t i = 0; i < V; ++i) {
    float& x = l[size_t(i)];
    switch (kind) {
      case TopkRow::kGrid: x = float(int32_t(next() >> 8) % 3000) / 300.0f - 6.0f; break;
      case TopkRow::kFine: x = 1.0f + float(i) / float(V); break;
      case TopkRow::kLowBits: {
        const uint32_t bits = 0x3F800000u | (next() >> 24);
        std::memcpy(&x, &bits, 4);
        break;
      }
      case TopkRow::kFlat: x = 1.0f; break;
    }
  }
  if (kind == TopkRow::kFine)  // shuffle, so ids and ranks are unrelated
    for (int32_t i = V - 1; i > 0; --i) std::swap(l[size_t(i)], l[size_t(next() % uint32_t(i + 1))]);
  for (int i = 0; i < 5; ++i) l[size_t(next() % uint32_t(V))] = 9.0f + float(i);
  l[size_t(next() % uint32_t(V))] = -INFINITY;
  l[size_t(next() % uint32_t(V))] = NAN;
  l[size_t(next() % uint32_t(V))] = -0.0f;
  l[size_t(next() % uint32_t(V))] = 0.0f;
  return l;
}

// A request with bias and penalties on some ids (repeat penalty 1.3).
inline TopKRequest topk_request(int32_t V, int32_t k, uint32_t seed) {
  TopKRequest r;
  r.k = k;
  r.repeat_penalty = 1.3f;
  uint32_t s = seed * 40503u + 3;
  for (int32_t id = int32_t(s % 7); id < V; id += 97 + int32_t((s = s * 1103515245u + 12345u) >> 28)) {
    LogitAdjust a{id, 0.0f, 0.0f, 0};
    if (id % 3 != 0) {
      a.flags |= LogitAdjust::kBias;
      a.bias = id % 5 == 0 ? -INFINITY : float(int32_t(s >> 20) % 400) / 100.0f - 2.0f;
    }
    if (id % 2 == 0) {
      a.flags |= LogitAdjust::kPenalty;
      a.sub = float(id % 4) * 0.25f + 0.5f;
    }
    if (a.flags) r.adjust.push_back(a);
  }
  return r;
}

struct TopkCaseResult {
  bool ok = false;                      // the launches succeeded
  int32_t count = 0, failed = 0;
  std::vector<TokenLogit> cands;        // as returned, [count]
  std::vector<float> adjusted;          // the row afterwards
  double total = 0;                     // the normalizer (requests with a temperature)
};

template <template <typename> class Arr>
TopkCaseResult run_topk_case(const std::vector<float>& logits, const TopKRequest& req) {
  using namespace qwen35::cuda;
  TopkParams p;
  p.k = req.k;
  p.n_adjust = int32_t(req.adjust.size());
  p.repeat_penalty = req.repeat_penalty;
  p.temperature = req.temperature;
  Arr<float> row(logits);
  Arr<TopkParams> dp(std::vector<TopkParams>{p});
  Arr<LogitAdjust> adj(req.adjust.empty() ? std::vector<LogitAdjust>(1, LogitAdjust{-1, 0, 0, 0}) : req.adjust);
  Arr<uint8_t> scratch(std::vector<uint8_t>(topk_scratch_bytes(int32_t(logits.size())), 0xAB));  // not zeroed: the kernels must
  std::vector<TopkOut> init(1);
  std::memset(static_cast<void*>(init.data()), 0xCD, sizeof(TopkOut));
  Arr<TopkOut> out(init);
  TopkCaseResult r;
  r.ok = topk_candidates(row.get(), int32_t(logits.size()), dp.get(), adj.get(), scratch.get(), out.get(), nullptr) ==
         cudaSuccess;
  const std::vector<TopkOut> o = out.download();
  r.count = o[0].count;
  r.failed = o[0].failed;
  r.total = o[0].total;
  if (r.count >= 0 && r.count <= kTopkCap) r.cands.assign(o[0].cands, o[0].cands + r.count);
  r.adjusted = row.download();
  return r;
}

// Empty when the result is the reference's: the adjusted row bit for bit,
// the candidates exactly the tokens ranked at or above the k-th one's key
// bucket (at least k, distinct), and their best k equal to select_topk.
inline std::string check_topk_case(const std::vector<float>& logits, const TopKRequest& req, const TopkCaseResult& r) {
  const int32_t V = int32_t(logits.size());
  if (!r.ok) return "launch failed";
  std::vector<float> adj(logits);
  for (const auto& a : req.adjust) adj[size_t(a.id)] = adjust_logit(logits[size_t(a.id)], a, req.repeat_penalty);
  for (int32_t i = 0; i < V; ++i)
    if (std::memcmp(&adj[size_t(i)], &r.adjusted[size_t(i)], 4) != 0 &&
        !(adj[size_t(i)] != adj[size_t(i)] && r.adjusted[size_t(i)] != r.adjusted[size_t(i)]))
      return "adjusted logit " + std::to_string(i) + " differs";
  std::vector<TokenLogit> want;
  select_topk(logits.data(), V, req, &want);
  // Ties at the k-th rank: how many tokens share its logit.
  const float kth = want.back().logit;
  int32_t at_or_above = 0;
  for (int32_t i = 0; i < V; ++i) at_or_above += sanitize_logit(adj[size_t(i)]) >= kth;
  // The normalizer: softmax_normalizer() of the adjusted row, bit for bit.
  TopKResult want_full;
  select_candidates(logits.data(), V, req, &want_full);
  if (std::memcmp(&want_full.total, &r.total, sizeof(double)) != 0)
    return "normalizer " + std::to_string(r.total) + " instead of " + std::to_string(want_full.total);
  if (r.failed) {
    return at_or_above > cuda::kTopkCap ? "" : "failed with only " + std::to_string(at_or_above) + " tokens at or above the k-th";
  }
  if (r.count < req.k || r.count > cuda::kTopkCap) return "count " + std::to_string(r.count);
  std::vector<TokenLogit> got = r.cands;
  std::sort(got.begin(), got.end(), [](const TokenLogit& a, const TokenLogit& b) { return a.id < b.id; });
  for (size_t i = 1; i < got.size(); ++i)
    if (got[i].id == got[i - 1].id) return "token " + std::to_string(got[i].id) + " twice";
  for (const auto& c : got) {
    if (c.id < 0 || c.id >= V) return "token id " + std::to_string(c.id) + " out of range";
    const float a = sanitize_logit(adj[size_t(c.id)]);
    if (std::memcmp(&a, &c.logit, 4) != 0 && !(a == 0 && c.logit == 0)) return "candidate logit differs";
  }
  std::sort(got.begin(), got.end(), ranks_before);
  for (int32_t i = 0; i < req.k; ++i)
    if (got[size_t(i)].id != want[size_t(i)].id || std::memcmp(&got[size_t(i)].logit, &want[size_t(i)].logit, 4) != 0)
      return "rank " + std::to_string(i) + ": token " + std::to_string(got[size_t(i)].id) + " instead of " +
             std::to_string(want[size_t(i)].id);
  return "";
}

}  // namespace qwen35::test
