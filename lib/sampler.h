// Token sampling: a fixed chain over the logits of one position.
//
//   logit bias -> penalties (repetition, presence, frequency over a window)
//   -> greedy (temperature <= 0) | temperature -> top-k -> top-p -> min-p
//   -> draw with a seeded RNG
//
// Temperature is applied before the filters (the Hugging Face / vLLM order,
// which the published Qwen3.5 recommendations were made with). The RNG is a
// fixed splitmix64/xoshiro generator and probabilities are computed in
// double, so a seed gives the same tokens on every machine.
//
// Candidates are ranked by adjusted logit, then by lower id (a total order).
// With top-k (1..n_vocab-1) the chain only reads the k best adjusted
// logits, so a backend may find them where the logits are (TopKRequest,
// select_topk) and the sampler finishes from those (sample_topk) with the
// same result bit for bit. Without top-k the softmax runs over the whole
// vocabulary: its normalizer is summed in token-id order and only as much
// of the ranking as top-p, min-p and the draw reach is sorted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <unordered_map>
#include <vector>

namespace qwen35 {

struct SamplerOptions {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repeat_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalty_last_n = -1;   // -1: whole history, 0: penalties off
  bool penalize_prompt = false;
  uint64_t seed = 0;
  std::vector<std::pair<int32_t, float>> logit_bias;
};

struct TokenLogit {
  int32_t id;
  float logit;
};

// The ranking: larger logit first, then lower id.
inline bool ranks_before(const TokenLogit& a, const TokenLogit& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// How the bias and the penalties change one token's logit.
struct LogitAdjust {
  static constexpr int32_t kBias = 1, kPenalty = 2;
  int32_t id;
  float bias;     // added first (kBias)
  float sub;      // kPenalty: after the repetition penalty, subtracted (frequency * count + presence)
  int32_t flags;
};

// A logit as the sampler ranks it: NaN counts as -inf.
inline float sanitize_logit(float l) { return l != l ? -std::numeric_limits<float>::infinity() : l; }

// The adjusted logit: bias, then llama.cpp's repetition penalty (shrink
// positive logits, grow negative ones), then the subtraction. Plain float
// operations in this order, which the device kernels repeat exactly.
inline float adjust_logit(float l, const LogitAdjust& a, float repeat_penalty) {
  if (a.flags & LogitAdjust::kBias) l += a.bias;
  if (a.flags & LogitAdjust::kPenalty) {
    if (repeat_penalty != 1.0f) l = l > 0 ? l / repeat_penalty : l * repeat_penalty;
    l -= a.sub;
  }
  return sanitize_logit(l);
}

// What a backend needs to find the candidates of one logits row.
struct TopKRequest {
  int32_t k = 0;                    // 1 .. n_vocab - 1
  float repeat_penalty = 1.0f;
  std::vector<LogitAdjust> adjust;  // sorted by id, one entry per id
};

// The reference of a request: the k best adjusted logits of a row, sorted
// by ranks_before.
void select_topk(const float* logits, int32_t n_vocab, const TopKRequest& req, std::vector<TokenLogit>* out);

class Sampler {
 public:
  // The largest k a backend is asked to select (sample_topk's input).
  static constexpr int32_t kMaxRequestK = 1024;

  Sampler(int32_t n_vocab, const SamplerOptions& opt);

  // Pick a token from n_vocab logits. Does not record it.
  int32_t sample(const float* logits);
  void accept(int32_t token);
  void accept_prompt(const int32_t* tokens, int32_t n);
  void reset(uint64_t seed);
  const SamplerOptions& options() const { return opt_; }
  bool greedy() const { return opt_.temperature <= 0.0f; }

  // Whether the next sample depends only on the k best adjusted logits (a
  // greedy sampler: k = 1; else top-k in 1..kMaxRequestK below n_vocab); if
  // so, *req says what to select. Valid until the next accept().
  bool topk_request(TopKRequest* req) const;
  // The same as it will be once `token` is accepted (the second row of a
  // speculative verify pass, which is sampled after the draft is accepted).
  bool topk_request_after(int32_t token, TopKRequest* req) const;
  // sample() from the k best adjusted logits of the request (exactly what
  // select_topk returns, in any order; more candidates are fine, the best k
  // are used). Same token as sample() on the full row. Reorders `best`.
  int32_t sample_topk(std::vector<TokenLogit>& best);

  // The candidate set and probabilities after every filter (for tests):
  // (token, probability) sorted by decreasing probability.
  std::vector<std::pair<int32_t, double>> distribution(const float* logits);

 private:
  TopKRequest request(int32_t k) const;
  TopKRequest request(int32_t k, const std::unordered_map<int32_t, int32_t>& counts) const;
  int32_t request_k() const;  // 0: sampling needs more than the k best
  // Top-k path: the filters over cands_ (the k best, sorted) -> probs_.
  void filter_sorted();
  // No top-k: ranks pool_ lazily. Returns the survivors' count n and their
  // normalizer s (probability of the i-th ranked token: weight(i) / total_ / s).
  void prepare_all(const float* logits, size_t* n, double* s);
  double weight(size_t i) const;  // exp(l / T - max / T) of ranked pool_ entry i
  void rank_prefix(size_t m);     // pool_[0, m) sorted best first
  void rank_through(size_t i);    // pool_[i] ranked (and a margin after it)
  int32_t draw_sorted();
  uint64_t next_u64();
  double uniform();  // [0, 1)

  int32_t n_vocab_;
  SamplerOptions opt_;
  uint64_t rng_[4];
  std::deque<int32_t> history_;             // penalty window, oldest first
  std::unordered_map<int32_t, int32_t> counts_;  // token -> occurrences in the window
  std::vector<TokenLogit> cands_;
  std::vector<double> probs_;
  // No top-k: every token with its adjusted logit, ranked up to sorted_.
  std::vector<TokenLogit> pool_;
  size_t sorted_ = 0;
  double temp_ = 1.0, mx_ = 0.0, total_ = 0.0;
};

}  // namespace qwen35
