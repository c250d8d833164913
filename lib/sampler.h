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
#pragma once

#include <cstdint>
#include <deque>
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

class Sampler {
 public:
  Sampler(int32_t n_vocab, const SamplerOptions& opt);

  // Pick a token from n_vocab logits. Does not record it.
  int32_t sample(const float* logits);
  void accept(int32_t token);
  void accept_prompt(const int32_t* tokens, int32_t n);
  void reset(uint64_t seed);
  const SamplerOptions& options() const { return opt_; }
  bool greedy() const { return opt_.temperature <= 0.0f; }

  // The candidate set and probabilities after every filter (for tests):
  // (token, probability) sorted by decreasing probability.
  std::vector<std::pair<int32_t, double>> distribution(const float* logits);

 private:
  struct Cand {
    int32_t id;
    float logit;
  };
  void apply_bias_and_penalties(std::vector<Cand>& c) const;
  // Filters; leaves `probs_` aligned with `cands_` (sorted, normalized).
  void filter(const float* logits);
  uint64_t next_u64();
  double uniform();  // [0, 1)

  int32_t n_vocab_;
  SamplerOptions opt_;
  uint64_t rng_[4];
  std::deque<int32_t> history_;             // penalty window, oldest first
  std::unordered_map<int32_t, int32_t> counts_;  // token -> occurrences in the window
  std::vector<Cand> cands_;
  std::vector<double> probs_;
};

}  // namespace qwen35
