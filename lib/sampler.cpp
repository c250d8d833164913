#include "sampler.h"

#include <algorithm>
#include <cmath>

namespace qwen35 {

namespace {
uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Sampler::Sampler(int32_t n_vocab, const SamplerOptions& opt) : n_vocab_(n_vocab), opt_(opt) {
  // Out-of-range bias entries are dropped here so sampling never indexes out of bounds.
  opt_.logit_bias.erase(std::remove_if(opt_.logit_bias.begin(), opt_.logit_bias.end(),
                                       [&](const auto& b) { return b.first < 0 || b.first >= n_vocab_; }),
                        opt_.logit_bias.end());
  reset(opt.seed);
  cands_.reserve(size_t(n_vocab));
  probs_.reserve(size_t(n_vocab));
}

void Sampler::reset(uint64_t seed) {
  opt_.seed = seed;
  uint64_t s = seed;
  for (auto& r : rng_) r = splitmix(s);
  history_.clear();
  counts_.clear();
}

uint64_t Sampler::next_u64() {  // xoshiro256**
  const uint64_t result = rotl(rng_[1] * 5, 7) * 9;
  const uint64_t t = rng_[1] << 17;
  rng_[2] ^= rng_[0];
  rng_[3] ^= rng_[1];
  rng_[1] ^= rng_[2];
  rng_[0] ^= rng_[3];
  rng_[2] ^= t;
  rng_[3] = rotl(rng_[3], 45);
  return result;
}

double Sampler::uniform() { return double(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

void Sampler::accept(int32_t token) {
  if (opt_.penalty_last_n == 0) return;
  history_.push_back(token);
  ++counts_[token];
  if (opt_.penalty_last_n > 0)
    while (int32_t(history_.size()) > opt_.penalty_last_n) {
      const int32_t old = history_.front();
      history_.pop_front();
      if (--counts_[old] == 0) counts_.erase(old);
    }
}

void Sampler::accept_prompt(const int32_t* tokens, int32_t n) {
  if (!opt_.penalize_prompt) return;
  for (int32_t i = 0; i < n; ++i) accept(tokens[i]);
}

void Sampler::apply_bias_and_penalties(std::vector<Cand>& c) const {
  for (const auto& [id, b] : opt_.logit_bias) c[size_t(id)].logit += b;
  for (const auto& [id, cnt] : counts_) {
    if (id < 0 || id >= n_vocab_) continue;
    float& l = c[size_t(id)].logit;
    // llama.cpp's repetition penalty: shrink positive logits, grow negative ones.
    if (opt_.repeat_penalty != 1.0f) l = l > 0 ? l / opt_.repeat_penalty : l * opt_.repeat_penalty;
    l -= float(cnt) * opt_.frequency_penalty + opt_.presence_penalty;
  }
}

void Sampler::filter(const float* logits) {
  cands_.resize(size_t(n_vocab_));
  for (int32_t i = 0; i < n_vocab_; ++i) cands_[size_t(i)] = {i, logits[i]};
  apply_bias_and_penalties(cands_);
  const float temp = opt_.temperature > 0 ? opt_.temperature : 1.0f;
  // Sort by logit (ties by id so the order is total and machine-independent);
  // with top-k only the first k need sorting.
  auto by_logit = [](const Cand& a, const Cand& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  size_t keep = cands_.size();
  if (opt_.top_k > 0 && size_t(opt_.top_k) < keep) {
    keep = size_t(opt_.top_k);
    std::partial_sort(cands_.begin(), cands_.begin() + int64_t(keep), cands_.end(), by_logit);
    cands_.resize(keep);
  } else {
    std::sort(cands_.begin(), cands_.end(), by_logit);
  }
  // Softmax over the survivors (max first, in double).
  probs_.resize(cands_.size());
  const double mx = double(cands_[0].logit) / temp;
  double sum = 0;
  for (size_t i = 0; i < cands_.size(); ++i) {
    const double l = double(cands_[i].logit);
    probs_[i] = std::isfinite(l) ? std::exp(l / temp - mx) : 0.0;
    sum += probs_[i];
  }
  for (double& p : probs_) p /= sum;
  // Top-p: smallest prefix whose mass reaches p (at least one token).
  if (opt_.top_p < 1.0f) {
    double cum = 0;
    size_t n = 0;
    while (n < probs_.size()) {
      cum += probs_[n++];
      if (cum >= double(opt_.top_p)) break;
    }
    cands_.resize(n);
    probs_.resize(n);
  }
  // Min-p: drop tokens below min_p times the most likely one.
  if (opt_.min_p > 0.0f) {
    const double thr = probs_[0] * double(opt_.min_p);
    size_t n = 1;
    while (n < probs_.size() && probs_[n] >= thr) ++n;
    cands_.resize(n);
    probs_.resize(n);
  }
  double s = 0;
  for (double p : probs_) s += p;
  for (double& p : probs_) p /= s;
}

int32_t Sampler::sample(const float* logits) {
  if (greedy()) {
    // Argmax after bias and penalties; lowest id wins ties.
    if (opt_.logit_bias.empty() && counts_.empty()) {
      int32_t best = 0;
      for (int32_t i = 1; i < n_vocab_; ++i)
        if (logits[i] > logits[best]) best = i;
      return best;
    }
    cands_.resize(size_t(n_vocab_));
    for (int32_t i = 0; i < n_vocab_; ++i) cands_[size_t(i)] = {i, logits[i]};
    apply_bias_and_penalties(cands_);
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab_; ++i)
      if (cands_[size_t(i)].logit > cands_[size_t(best)].logit) best = i;
    return best;
  }
  filter(logits);
  const double u = uniform();
  double cum = 0;
  for (size_t i = 0; i < probs_.size(); ++i) {
    cum += probs_[i];
    if (u < cum) return cands_[i].id;
  }
  return cands_.back().id;
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits) {
  std::vector<std::pair<int32_t, double>> out;
  if (greedy()) {
    out.push_back({sample(logits), 1.0});
    return out;
  }
  filter(logits);
  for (size_t i = 0; i < probs_.size(); ++i) out.push_back({cands_[i].id, probs_[i]});
  return out;
}

}  // namespace qwen35
