#include "sampler.h"

#include "softmax_norm.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <queue>

namespace qwen35 {

namespace {
uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// The adjusted logits of a row in id order: `visit(id, logit)` for every
// token (the adjustments are sorted by id, so one pointer walks them).
template <typename F>
void for_each_adjusted(const float* logits, int32_t n_vocab, const TopKRequest& req, F&& visit) {
  size_t a = 0;
  for (int32_t i = 0; i < n_vocab; ++i) {
    float l;
    if (a < req.adjust.size() && req.adjust[a].id == i) l = adjust_logit(logits[i], req.adjust[a++], req.repeat_penalty);
    else l = sanitize_logit(logits[i]);
    visit(i, l);
  }
}
}  // namespace

int32_t argmax_logits(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (float& l : lane) l = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];  // NaN: keeps lane[j]
  float m = -INFINITY;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (float l : lane) m = l > m ? l : m;
  for (int64_t k = 0; k < n; ++k)
    if (x[k] == m) return int32_t(k);  // (-0 == +0: the first zero, as the plain loop)
  return 0;                            // every value NaN
}

void select_topk(const float* logits, int32_t n_vocab, const TopKRequest& req, std::vector<TokenLogit>* out) {
  const size_t k = size_t(std::clamp(req.k, 0, n_vocab));
  out->clear();
  if (k == 0) return;
  // A heap whose top is the worst kept candidate; ids come in increasing
  // order, so a newcomer that ties the worst never displaces it.
  std::priority_queue<TokenLogit, std::vector<TokenLogit>, decltype(&ranks_before)> heap(&ranks_before);
  for_each_adjusted(logits, n_vocab, req, [&](int32_t id, float l) {
    const TokenLogit c{id, l};
    if (heap.size() < k) heap.push(c);
    else if (ranks_before(c, heap.top())) {
      heap.pop();
      heap.push(c);
    }
  });
  out->reserve(k);
  while (!heap.empty()) {
    out->push_back(heap.top());
    heap.pop();
  }
  std::reverse(out->begin(), out->end());
}

void adjust_row(const float* logits, int32_t n_vocab, const TopKRequest& req, float* out) {
  for_each_adjusted(logits, n_vocab, req, [&](int32_t id, float l) { out[id] = l; });
}

void select_candidates(const float* logits, int32_t n_vocab, const TopKRequest& req, TopKResult* out,
                       std::vector<float>* adjusted) {
  out->total = 0;
  if (!(req.temperature > 0.0f)) {
    select_topk(logits, n_vocab, req, &out->best);
    return;
  }
  std::vector<float> local;
  std::vector<float>& row = adjusted ? *adjusted : local;
  row.resize(size_t(std::max(n_vocab, 0)));
  adjust_row(logits, n_vocab, req, row.data());
  TopKRequest plain;
  plain.k = req.k;
  select_topk(row.data(), n_vocab, plain, &out->best);
  if (out->best.empty()) return;
  const double inv = 1.0 / double(req.temperature), mx = double(out->best[0].logit) * inv;
  std::vector<double> scratch(size_t(n_vocab) / kNormFan + 2);
  out->total = softmax_normalizer(row.data(), n_vocab, inv, mx, scratch.data());
}

Sampler::Sampler(int32_t n_vocab, const SamplerOptions& opt) : n_vocab_(n_vocab), opt_(opt) {
  // Out-of-range bias entries are dropped here so sampling never indexes out
  // of bounds; repeated ids are merged into one bias (their sum, in order).
  std::map<int32_t, float> bias;
  for (const auto& [id, b] : opt.logit_bias)
    if (id >= 0 && id < n_vocab_) bias[id] += b;
  opt_.logit_bias.assign(bias.begin(), bias.end());
  reset(opt.seed);
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

TopKRequest Sampler::request(int32_t k) const { return request(k, counts_); }

TopKRequest Sampler::request(int32_t k, const std::unordered_map<int32_t, int32_t>& counts) const {
  TopKRequest r;
  r.k = k;
  r.repeat_penalty = opt_.repeat_penalty;
  r.adjust.reserve(opt_.logit_bias.size() + counts.size());
  for (const auto& [id, b] : opt_.logit_bias) r.adjust.push_back({id, b, 0.0f, LogitAdjust::kBias});
  const size_t n_bias = r.adjust.size();
  for (const auto& [id, cnt] : counts) {
    if (id < 0 || id >= n_vocab_) continue;
    // One float product and one sum, stored: the device subtracts this value.
    const float f = float(cnt) * opt_.frequency_penalty;
    const float sub = f + opt_.presence_penalty;
    r.adjust.push_back({id, 0.0f, sub, LogitAdjust::kPenalty});
  }
  // Merge into one entry per id, sorted.
  std::sort(r.adjust.begin() + int64_t(n_bias), r.adjust.end(),
            [](const LogitAdjust& a, const LogitAdjust& b) { return a.id < b.id; });
  std::vector<LogitAdjust> merged;
  merged.reserve(r.adjust.size());
  size_t i = 0, j = n_bias;
  while (i < n_bias || j < r.adjust.size()) {
    if (j == r.adjust.size() || (i < n_bias && r.adjust[i].id < r.adjust[j].id)) {
      merged.push_back(r.adjust[i++]);
    } else if (i == n_bias || r.adjust[j].id < r.adjust[i].id) {
      merged.push_back(r.adjust[j++]);
    } else {
      LogitAdjust m = r.adjust[i++];
      m.sub = r.adjust[j++].sub;
      m.flags |= LogitAdjust::kPenalty;
      merged.push_back(m);
    }
  }
  r.adjust = std::move(merged);
  return r;
}

int32_t Sampler::request_k() const {
  int32_t k = 0;
  if (greedy()) k = 1;
  else if (opt_.top_k > 0 && opt_.top_k < n_vocab_ && opt_.top_k <= kMaxRequestK) k = opt_.top_k;
  return k < n_vocab_ ? k : 0;
}

bool Sampler::topk_request(TopKRequest* req) const {
  const int32_t k = request_k();
  if (k == 0) return false;
  *req = request(k);
  return true;
}

std::unordered_map<int32_t, int32_t> Sampler::counts_after(int32_t token) const {
  // accept(token) on a copy of the window's counts.
  std::unordered_map<int32_t, int32_t> counts = counts_;
  ++counts[token];
  if (opt_.penalty_last_n > 0) {
    int64_t extra = int64_t(history_.size()) + 1 - opt_.penalty_last_n;
    for (size_t i = 0; extra > 0; ++i, --extra) {
      const int32_t old = i < history_.size() ? history_[i] : token;
      if (--counts[old] == 0) counts.erase(old);
    }
  }
  return counts;
}

bool Sampler::topk_request_after(int32_t token, TopKRequest* req) const {
  const int32_t k = request_k();
  if (k == 0) return false;
  if (opt_.penalty_last_n == 0) {
    *req = request(k);
    return true;
  }
  *req = request(k, counts_after(token));
  return true;
}

// The filters over cands_, the k best sorted (spec'd by the old full-sort
// implementation, which this path repeats operation for operation).
void Sampler::filter_sorted() {
  const double temp = opt_.temperature > 0 ? double(opt_.temperature) : 1.0;
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

int32_t Sampler::draw_sorted() {
  const double u = uniform();
  double cum = 0;
  for (size_t i = 0; i < probs_.size(); ++i) {
    cum += probs_[i];
    if (u < cum) return cands_[i].id;
  }
  return cands_.back().id;
}

double Sampler::weight(size_t i) const { return det_weight(pool_[i].logit, inv_temp_, mx_); }

void Sampler::rank_prefix(size_t m) {
  m = std::min(m, pool_.size());
  if (m <= sorted_) return;
  const auto first = pool_.begin() + int64_t(sorted_), mid = pool_.begin() + int64_t(m);
  if (mid != pool_.end()) std::nth_element(first, mid, pool_.end(), ranks_before);
  std::sort(first, mid, ranks_before);
  sorted_ = m;
}

bool Sampler::need(size_t i) {
  if (i < sorted_) return true;
  if (!full_pool_) return false;  // candidates only: rank i is not among them
  if (sorted_ == 0 && i < size_t(kMaxRequestK) && pool_.size() > size_t(kMaxRequestK)) {
    // The first ranks from one heap pass over the row (cheaper than a
    // partition of the whole pool); the rest of the pool follows in id order.
    TopKRequest plain;
    plain.k = kMaxRequestK;
    std::vector<TokenLogit> top;
    select_topk(row_.data(), n_vocab_, plain, &top);
    std::vector<char> taken(pool_.size(), 0);
    for (const TokenLogit& t : top) taken[size_t(t.id)] = 1;
    size_t w = top.size();
    for (size_t id = 0; id < pool_.size(); ++id)
      if (!taken[id]) pool_[w++] = {int32_t(id), row_[id]};
    std::copy(top.begin(), top.end(), pool_.begin());
    sorted_ = top.size();
    return true;
  }
  // Rank more of the pool as the walks need it: 64 first, then x4.
  rank_prefix(std::max<size_t>(i + 1, std::max<size_t>(64, 4 * sorted_)));
  return true;
}

void Sampler::load_row(const float* logits, bool adjusted) {
  const size_t V = size_t(n_vocab_);
  temp_ = opt_.temperature > 0 ? double(opt_.temperature) : 1.0;
  pool_.resize(V);
  row_.resize(V);
  float best = -std::numeric_limits<float>::infinity();
  auto put = [&](int32_t id, float l) {
    pool_[size_t(id)] = {id, l};
    row_[size_t(id)] = l;
    best = std::max(best, l);
  };
  if (adjusted) {
    for (int32_t i = 0; i < n_vocab_; ++i) put(i, sanitize_logit(logits[i]));
  } else {
    for_each_adjusted(logits, n_vocab_, request(0), put);
  }
  sorted_ = 0;
  full_pool_ = true;
  inv_temp_ = 1.0 / temp_;
  mx_ = double(best) * inv_temp_;
  norm_scratch_.resize((V + kNormFan - 1) / kNormFan + 1);
  total_ = softmax_normalizer(row_.data(), int64_t(V), inv_temp_, mx_, norm_scratch_.data());
}

bool Sampler::filter_all(size_t* n_out, double* s_out) {
  const size_t V = size_t(n_vocab_);
  size_t n = V;
  bool cut = false;
  if (!std::isfinite(total_) || total_ <= 0) {
    // No finite weights (every logit -inf, or an infinite one): the best ranked token.
    if (!need(0)) return false;
    *n_out = 1;
    *s_out = 0;
    return true;
  }
  if (opt_.top_p < 1.0f) {
    double cum = 0;
    size_t i = 0;
    while (i < V) {
      if (!need(i)) return false;
      cum += weight(i) / total_;
      ++i;
      if (cum >= double(opt_.top_p)) break;
    }
    n = i;
    cut = n < V;
  }
  if (opt_.min_p > 0.0f) {
    if (!need(0)) return false;
    const double thr = weight(0) / total_ * double(opt_.min_p);
    size_t m = 1;
    while (m < n) {
      if (!need(m)) return false;
      if (!(weight(m) / total_ >= thr)) break;
      ++m;
    }
    cut = cut || m < n;
    n = m;
  }
  // Renormalize over the survivors (in rank order); with every token kept
  // the probabilities are already normalized.
  double s = 1.0;
  if (cut) {
    s = 0;
    for (size_t i = 0; i < n; ++i) s += weight(i) / total_;
  }
  *n_out = n;
  *s_out = s;
  return true;
}

int32_t Sampler::draw_all(size_t n, double s) {
  if (s == 0) return pool_[0].id;
  const uint64_t saved[4] = {rng_[0], rng_[1], rng_[2], rng_[3]};
  const double u = uniform();
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!need(i)) {
      std::copy(saved, saved + 4, rng_);  // the caller retries with the row: the same draw
      return -1;
    }
    cum += weight(i) / total_ / s;
    if (u < cum) return pool_[i].id;
  }
  if (!need(n - 1)) {
    std::copy(saved, saved + 4, rng_);
    return -1;
  }
  return pool_[n - 1].id;
}

int32_t Sampler::sample(const float* logits) {
  if (greedy()) {
    // Argmax after bias and penalties; lowest id wins ties.
    if (opt_.logit_bias.empty() && counts_.empty()) return argmax_logits(logits, n_vocab_);
    select_topk(logits, n_vocab_, request(1), &cands_);
    return cands_[0].id;
  }
  if (opt_.top_k > 0 && opt_.top_k < n_vocab_) {
    select_topk(logits, n_vocab_, request(opt_.top_k), &cands_);
    filter_sorted();
    return draw_sorted();
  }
  return sample_row(logits, false);
}

int32_t Sampler::sample_row(const float* logits, bool adjusted) {
  load_row(logits, adjusted);
  size_t n = 0;
  double s = 0;
  filter_all(&n, &s);  // the whole pool: never short
  return draw_all(n, s);
}

int32_t Sampler::sample_adjusted(const float* adjusted) {
  if (greedy() || (opt_.top_k > 0 && opt_.top_k < n_vocab_)) {
    TopKRequest plain;
    plain.k = greedy() ? 1 : opt_.top_k;
    select_topk(adjusted, n_vocab_, plain, &cands_);
    if (greedy()) return cands_[0].id;
    filter_sorted();
    return draw_sorted();
  }
  return sample_row(adjusted, true);
}

bool Sampler::samples_full() const { return !greedy() && !(opt_.top_k > 0 && opt_.top_k < n_vocab_) && n_vocab_ >= 2; }

bool Sampler::full_request(TopKRequest* req) const {
  if (!samples_full()) return false;
  *req = request(std::min(kMaxRequestK, n_vocab_ - 1));
  req->temperature = opt_.temperature;
  return true;
}

bool Sampler::full_request_after(int32_t token, TopKRequest* req) const {
  if (!samples_full()) return false;
  const int32_t k = std::min(kMaxRequestK, n_vocab_ - 1);
  *req = opt_.penalty_last_n != 0 ? request(k, counts_after(token)) : request(k);
  req->temperature = opt_.temperature;
  return true;
}

int32_t Sampler::sample_full(std::vector<TokenLogit>& best, double total) {
  if (best.empty() || !samples_full()) return -1;
  std::sort(best.begin(), best.end(), ranks_before);
  temp_ = opt_.temperature > 0 ? double(opt_.temperature) : 1.0;
  pool_ = best;
  sorted_ = pool_.size();
  full_pool_ = false;
  inv_temp_ = 1.0 / temp_;
  mx_ = double(pool_[0].logit) * inv_temp_;
  total_ = total;
  size_t n = 0;
  double s = 0;
  if (!filter_all(&n, &s)) return -1;
  return draw_all(n, s);
}

int32_t Sampler::sample_topk(std::vector<TokenLogit>& best) {
  const size_t k = size_t(greedy() ? 1 : std::max(opt_.top_k, 1));
  if (best.empty()) return 0;
  const size_t keep = std::min(k, best.size());
  std::partial_sort(best.begin(), best.begin() + int64_t(keep), best.end(), ranks_before);
  if (greedy()) return best[0].id;
  cands_.assign(best.begin(), best.begin() + int64_t(keep));
  filter_sorted();
  return draw_sorted();
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits) {
  std::vector<std::pair<int32_t, double>> out;
  if (greedy()) {
    out.push_back({sample(logits), 1.0});
    return out;
  }
  if (opt_.top_k > 0 && opt_.top_k < n_vocab_) {
    select_topk(logits, n_vocab_, request(opt_.top_k), &cands_);
    filter_sorted();
    for (size_t i = 0; i < probs_.size(); ++i) out.push_back({cands_[i].id, probs_[i]});
    return out;
  }
  load_row(logits, false);
  size_t n = 0;
  double s = 0;
  filter_all(&n, &s);
  if (s == 0) return {{pool_[0].id, 1.0}};
  rank_prefix(n);
  for (size_t i = 0; i < n; ++i) out.push_back({pool_[i].id, weight(i) / total_ / s});
  return out;
}

}  // namespace qwen35
