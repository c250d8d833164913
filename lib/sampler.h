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
// vocabulary: its weights and normalizer are defined in softmax_norm.h (a
// fixed-operation exp, a fixed summation tree) so that a device computes
// the same bits, and only as much of the ranking as top-p, min-p and the
// draw reach is sorted; a backend may return the best kMaxRequestK adjusted
// logits and the normalizer instead of the row (full_request, sample_full).
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
  // > 0: also the softmax normalizer of the adjusted row at this
  // temperature T (softmax_normalizer in softmax_norm.h, inv_temp = 1.0 / T,
  // mx = the best adjusted logit * inv_temp): the sampler without top-k
  // (full_request).
  float temperature = 0.0f;
};

// Index of the largest of x[0..n): the first one on ties, NaNs never win (0
// if every value is NaN). A max pass over independent lanes, then a scan for
// the first index holding the maximum: no loop-carried load through the
// best index (the plain loop compiles to a compare-and-move chain that took
// ~0.9 ms for a 248K-token row on a 2-core VM; this takes ~0.08 ms).
int32_t argmax_logits(const float* x, int64_t n);

// The reference of a request: the k best adjusted logits of a row, sorted
// by ranks_before.
void select_topk(const float* logits, int32_t n_vocab, const TopKRequest& req, std::vector<TokenLogit>* out);

// What a backend returns for one request: the candidates (at least the k
// best, any order) and, when the request has a temperature, the softmax
// normalizer of the adjusted row (Sampler::sample_full).
struct TopKResult {
  std::vector<TokenLogit> best;
  double total = 0;
};

// The request's adjustments applied to a row (adjust_logit; sanitized).
void adjust_row(const float* logits, int32_t n_vocab, const TopKRequest& req, float* out);
// The reference of a backend's answer: select_topk, and with a temperature
// the normalizer; `adjusted` (optional) then receives the adjusted row.
void select_candidates(const float* logits, int32_t n_vocab, const TopKRequest& req, TopKResult* out,
                       std::vector<float>* adjusted = nullptr);

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

  // Without top-k (temperature with top-p, min-p or neither): the request
  // for the best kMaxRequestK adjusted logits and the softmax normalizer of
  // the whole row (req->temperature > 0), or false for greedy and top-k
  // samplers. The _after form is the request once `token` is accepted.
  bool full_request(TopKRequest* req) const;
  bool samples_full() const;  // whether full_request applies (not greedy, no top-k below n_vocab)
  bool full_request_after(int32_t token, TopKRequest* req) const;
  // sample() from what a full_request returned: `best` holds every token
  // ranked at or above some adjusted logit (at least the request's k, any
  // order) and `total` the normalizer. The same token as sample() on the row,
  // or -1 if top-p, min-p or the draw need a rank past `best` (the random
  // state is then as before the call: sample_adjusted() on the row gives
  // the same draw). Reorders `best`.
  int32_t sample_full(std::vector<TokenLogit>& best, double total);
  // sample() on a row the bias and penalties were already applied to.
  int32_t sample_adjusted(const float* adjusted);

  // The candidate set and probabilities after every filter (for tests):
  // (token, probability) sorted by decreasing probability.
  std::vector<std::pair<int32_t, double>> distribution(const float* logits);

 private:
  TopKRequest request(int32_t k) const;
  TopKRequest request(int32_t k, const std::unordered_map<int32_t, int32_t>& counts) const;
  int32_t request_k() const;  // 0: sampling needs more than the k best
  // Top-k path: the filters over cands_ (the k best, sorted) -> probs_.
  void filter_sorted();
  std::unordered_map<int32_t, int32_t> counts_after(int32_t token) const;
  // No top-k. load_row: every token of a row (adjusted here unless
  // `adjusted`) into pool_, the normalizer total_. filter_all: top-p and
  // min-p over the ranking: the survivors' count n and their normalizer s
  // (probability of the i-th ranked token: weight(i) / total_ / s); false if
  // a rank past the candidates is needed (pool_ from sample_full).
  // draw_all: the draw, -1 (random state restored) if short.
  void load_row(const float* logits, bool adjusted);
  bool filter_all(size_t* n, double* s);
  int32_t draw_all(size_t n, double s);
  int32_t sample_row(const float* logits, bool adjusted);
  double weight(size_t i) const;  // det_weight of ranked pool_ entry i (softmax_norm.h)
  void rank_prefix(size_t m);     // pool_[0, m) sorted best first
  bool need(size_t i);            // pool_[i] ranked (lazily: with a margin after it); false past the candidates
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
  // No top-k: every token with its adjusted logit (or the candidates of
  // sample_full), ranked up to sorted_.
  std::vector<TokenLogit> pool_;
  std::vector<float> row_;            // the adjusted row in id order (the normalizer's input)
  std::vector<double> norm_scratch_;
  size_t sorted_ = 0;
  bool full_pool_ = true;             // pool_ holds the whole vocabulary
  double temp_ = 1.0, inv_temp_ = 1.0, mx_ = 0.0, total_ = 0.0;
};

}  // namespace qwen35
