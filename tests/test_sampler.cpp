// Sampler: each filter keeps exactly the right set, frequencies follow the
// distribution (chi-square), penalties and bias, seeded reproducibility.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "sampler.h"
#include "softmax_norm.h"

using namespace qwen35;

namespace {
// Logits with probabilities (temperature 1) proportional to `w`.
std::vector<float> logits_for(const std::vector<double>& w) {
  std::vector<float> l;
  for (double x : w) l.push_back(x > 0 ? float(std::log(x)) : -INFINITY);
  return l;
}
std::set<int32_t> kept(Sampler& s, const std::vector<float>& l) {
  std::set<int32_t> out;
  for (auto [id, p] : s.distribution(l.data())) out.insert(id);
  return out;
}
// Pearson chi-square statistic of observed counts against probabilities.
double chi2(const std::map<int32_t, int>& counts, const std::vector<std::pair<int32_t, double>>& dist, int n) {
  double x = 0;
  for (auto [id, p] : dist) {
    const double e = p * n;
    const auto it = counts.find(id);
    const double o = it == counts.end() ? 0 : it->second;
    x += (o - e) * (o - e) / e;
  }
  return x;
}
}  // namespace

TEST_CASE("argmax_logits: the first largest value, NaNs never win, any length") {
  // The plain loop it replaces, with NaN handling: the reference.
  auto ref = [](const std::vector<float>& x) {
    int32_t best = 0;
    for (size_t i = 1; i < x.size(); ++i)
      if (x[i] > x[size_t(best)] || (x[size_t(best)] != x[size_t(best)] && x[i] == x[i])) best = int32_t(i);
    return best;
  };
  uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  for (int t = 0; t < 3000; ++t) {
    const size_t n = 1 + next() % 70;
    std::vector<float> x(n);
    for (float& v : x) {
      const uint32_t r = next() % 12;
      v = r == 0 ? NAN : r == 1 ? -INFINITY : r == 2 ? 0.0f : r == 3 ? -0.0f : r == 4 ? INFINITY : float(next() % 5);
    }
    if (t % 9 == 0) std::fill(x.begin(), x.end(), NAN);
    if (t % 9 == 1) std::fill(x.begin(), x.end(), -INFINITY);
    CAPTURE(t);
    CHECK(qwen35::argmax_logits(x.data(), int64_t(n)) == ref(x));
  }
  // A vocabulary-sized row: the maximum once near the end, then tied earlier.
  std::vector<float> row(248320);
  for (size_t i = 0; i < row.size(); ++i) row[i] = float((i * 7919) % 1000) * 1e-3f;
  row[200001] = 3.0f;
  CHECK(qwen35::argmax_logits(row.data(), int64_t(row.size())) == 200001);
  row[77] = 3.0f;
  CHECK(qwen35::argmax_logits(row.data(), int64_t(row.size())) == 77);
}

TEST_CASE("greedy picks the argmax, lowest id on ties") {
  SamplerOptions o;
  Sampler s(5, o);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f, 2.0f};
  CHECK(s.sample(l.data()) == 1);
  o.logit_bias = {{4, 5.0f}};
  Sampler b(5, o);
  CHECK(b.sample(l.data()) == 4);
}

TEST_CASE("top-k, top-p and min-p keep exactly the right sets") {
  // Probabilities 0.4 0.3 0.15 0.1 0.05 (ids 0..4), shuffled order in the vocab.
  const std::vector<double> w = {0.1, 0.4, 0.05, 0.3, 0.15};
  const auto l = logits_for(w);
  SamplerOptions o;
  o.temperature = 1.0f;
  {
    o.top_k = 2;
    Sampler s(5, o);
    CHECK(kept(s, l) == std::set<int32_t>{1, 3});
  }
  o.top_k = 0;
  {
    o.top_p = 0.7f;  // 0.4 + 0.3 reaches 0.7
    Sampler s(5, o);
    CHECK(kept(s, l) == std::set<int32_t>{1, 3});
    o.top_p = 0.71f;
    Sampler s2(5, o);
    CHECK(kept(s2, l) == std::set<int32_t>{1, 3, 4});
  }
  o.top_p = 1.0f;
  {
    o.min_p = 0.3f;  // threshold 0.12: keeps 0.4, 0.3, 0.15
    Sampler s(5, o);
    CHECK(kept(s, l) == std::set<int32_t>{1, 3, 4});
    auto d = s.distribution(l.data());
    double sum = 0;
    for (auto [id, p] : d) sum += p;
    CHECK(sum == doctest::Approx(1.0));
    CHECK(d[0].second == doctest::Approx(0.4 / 0.85));
  }
}

TEST_CASE("sampled frequencies match the distribution (chi-square)") {
  const std::vector<double> w = {0.05, 0.1, 0.2, 0.3, 0.35};
  const auto l = logits_for(w);
  for (float temp : {1.0f, 0.5f, 2.0f}) {
    for (float top_p : {1.0f, 0.8f}) {
      SamplerOptions o;
      o.temperature = temp;
      o.top_p = top_p;
      o.seed = 99;
      Sampler s(5, o);
      const auto dist = s.distribution(l.data());
      // Temperature reshapes p^(1/T) before the filters.
      if (top_p == 1.0f) {
        double z = 0;
        for (double x : w) z += std::pow(x, 1.0 / temp);
        for (auto [id, p] : dist) CHECK(p == doctest::Approx(std::pow(w[size_t(id)], 1.0 / temp) / z).epsilon(1e-6));
      }
      std::map<int32_t, int> counts;
      const int n = 20000;
      for (int i = 0; i < n; ++i) counts[s.sample(l.data())]++;
      for (auto [id, c] : counts)
        CHECK_MESSAGE(std::any_of(dist.begin(), dist.end(), [&](auto& d) { return d.first == id; }),
                      "token " << id << " outside the filtered set");
      // 99.9th percentile of chi-square with <= 4 degrees of freedom is 18.5.
      CHECK(chi2(counts, dist, n) < 18.5);
    }
  }
}

TEST_CASE("penalties follow the documented rules and window") {
  std::vector<float> l = {2.0f, -2.0f, 1.0f, 0.5f};
  SamplerOptions o;
  o.temperature = 1.0f;
  o.repeat_penalty = 2.0f;
  o.presence_penalty = 0.5f;
  o.frequency_penalty = 0.25f;
  o.penalty_last_n = 3;
  Sampler s(4, o);
  for (int t : {0, 1, 1, 3}) s.accept(t);  // window keeps 1, 1, 3
  auto d = s.distribution(l.data());
  std::map<int32_t, double> p(d.begin(), d.end());
  // Effective logits: 0 -> 2 (left the window), 1 -> -2*2 - 0.5 - 0.5 = -5,
  // 2 -> 1, 3 -> 0.5/2 - 0.5 - 0.25 = -0.5.
  const double e[4] = {2.0, -5.0, 1.0, -0.5};
  double z = 0;
  for (double x : e) z += std::exp(x);
  for (int i = 0; i < 4; ++i) CHECK(p[i] == doctest::Approx(std::exp(e[i]) / z));
  o.penalty_last_n = 0;  // off
  Sampler off(4, o);
  off.accept(0);
  CHECK(off.distribution(l.data())[0].first == 0);
}

TEST_CASE("same seed, same tokens; reset reseeds; golden sequence") {
  std::vector<float> l(1000);
  for (int i = 0; i < 1000; ++i) l[size_t(i)] = float(std::sin(i * 0.37)) * 3.0f;
  SamplerOptions o;
  o.temperature = 0.9f;
  o.top_k = 50;
  o.top_p = 0.9f;
  o.seed = 1234;
  Sampler a(1000, o), b(1000, o);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 50; ++i) {
    sa.push_back(a.sample(l.data()));
    sb.push_back(b.sample(l.data()));
  }
  CHECK(sa == sb);
  a.reset(1234);
  std::vector<int32_t> again;
  for (int i = 0; i < 50; ++i) again.push_back(a.sample(l.data()));
  CHECK(again == sa);
  // Pinned values: a change here means seeds no longer reproduce old runs.
  const std::vector<int32_t> golden(sa.begin(), sa.begin() + 8);
  CHECK(golden == std::vector<int32_t>{208, 870, 4, 853, 191, 531, 395, 310});
}

namespace {
// The sampler's chain as first written (every token sorted, plain loops):
// the reference of the fast paths below.
struct ReferenceSampler {
  SamplerOptions o;
  std::vector<std::pair<int32_t, double>> dist(const std::vector<float>& raw,
                                               const std::map<int32_t, int32_t>& counts) const {
    const int32_t V = int32_t(raw.size());
    std::vector<TokenLogit> c;
    for (int32_t i = 0; i < V; ++i) c.push_back({i, raw[size_t(i)]});
    for (const auto& [id, b] : o.logit_bias) c[size_t(id)].logit += b;
    for (const auto& [id, cnt] : counts) {
      float& l = c[size_t(id)].logit;
      if (o.repeat_penalty != 1.0f) l = l > 0 ? l / o.repeat_penalty : l * o.repeat_penalty;
      l -= float(cnt) * o.frequency_penalty + o.presence_penalty;
    }
    for (auto& x : c) x.logit = sanitize_logit(x.logit);
    std::sort(c.begin(), c.end(), ranks_before);
    if (o.top_k > 0 && o.top_k < V) c.resize(size_t(o.top_k));
    std::vector<double> p(c.size());
    const double T = o.temperature, mx = double(c[0].logit) / T;
    double sum = 0;
    for (size_t i = 0; i < c.size(); ++i) sum += p[i] = std::isfinite(c[i].logit) ? std::exp(c[i].logit / T - mx) : 0.0;
    for (double& x : p) x /= sum;
    size_t n = c.size();
    if (o.top_p < 1.0f) {
      double cum = 0;
      size_t i = 0;
      while (i < n && cum < double(o.top_p)) cum += p[i++];
      n = i;
    }
    if (o.min_p > 0.0f) {
      size_t m = 1;
      while (m < n && p[m] >= p[0] * double(o.min_p)) ++m;
      n = m;
    }
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += p[i];
    std::vector<std::pair<int32_t, double>> out;
    for (size_t i = 0; i < n; ++i) out.push_back({c[i].id, p[i] / s});
    return out;
  }
};

// A row like a language model's: a few strong tokens over a wide tail,
// with exact ties, -inf, NaN and both zeros mixed in.
std::vector<float> lm_row(int32_t V, uint32_t seed) {
  std::vector<float> l(static_cast<size_t>(V));
  uint32_t s = seed * 2654435761u + 1;
  auto next = [&] { return s = s * 1664525u + 1013904223u; };
  for (auto& x : l) x = float(int32_t(next() >> 8) % 4000) / 400.0f - 5.0f;  // ties on a 1/400 grid
  for (int i = 0; i < 6; ++i) l[size_t(next() % uint32_t(V))] = 8.0f + float(i);
  l[size_t(next() % uint32_t(V))] = -INFINITY;
  l[size_t(next() % uint32_t(V))] = NAN;
  l[size_t(next() % uint32_t(V))] = -0.0f;
  l[size_t(next() % uint32_t(V))] = 0.0f;
  return l;
}
}  // namespace

TEST_CASE("select_topk keeps the k best adjusted logits in rank order") {
  const int32_t V = 5000;
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    const auto l = lm_row(V, seed);
    SamplerOptions o;
    o.temperature = 0.8f;
    o.top_k = 40;
    o.repeat_penalty = 1.3f;
    o.presence_penalty = 0.7f;
    o.frequency_penalty = 0.2f;
    o.logit_bias = {{7, 3.0f}, {7, 1.5f}, {11, -INFINITY}, {V + 3, 1.0f}, {42, 20.0f}};
    Sampler s(V, o);
    for (int t : {42, 42, 5, 7, 1000, 1000, 1000}) s.accept(t);
    TopKRequest req;
    REQUIRE(s.topk_request(&req));
    CHECK(req.k == 40);
    // One entry per id, sorted; 7 and 42 carry bias and penalty.
    for (size_t i = 1; i < req.adjust.size(); ++i) CHECK(req.adjust[i - 1].id < req.adjust[i].id);
    for (const auto& a : req.adjust)
      if (a.id == 7 || a.id == 42) CHECK(a.flags == (LogitAdjust::kBias | LogitAdjust::kPenalty));
    for (int32_t k : {1, 2, 40, 1024, V - 1}) {
      req.k = k;
      std::vector<TokenLogit> got;
      select_topk(l.data(), V, req, &got);
      // Reference: adjust every logit, sort everything.
      std::vector<TokenLogit> all;
      size_t a = 0;
      for (int32_t i = 0; i < V; ++i) {
        float x = sanitize_logit(l[size_t(i)]);
        if (a < req.adjust.size() && req.adjust[a].id == i) x = adjust_logit(l[size_t(i)], req.adjust[a++], 1.3f);
        all.push_back({i, x});
      }
      std::sort(all.begin(), all.end(), ranks_before);
      REQUIRE(got.size() == size_t(k));
      for (int32_t i = 0; i < k; ++i) {
        CHECK(got[size_t(i)].id == all[size_t(i)].id);
        CHECK(std::memcmp(&got[size_t(i)].logit, &all[size_t(i)].logit, 4) == 0);
      }
    }
  }
}

TEST_CASE("sample_topk on the k best equals sample on the whole row") {
  const int32_t V = 3000;
  for (float temp : {0.0f, 0.7f, 1.3f}) {
    for (int32_t k : {1, 20, 300}) {
      SamplerOptions o;
      o.temperature = temp;
      o.top_k = k;
      o.top_p = 0.9f;
      o.min_p = 0.02f;
      o.presence_penalty = 1.5f;
      o.logit_bias = {{3, 2.0f}};
      o.seed = 77;
      Sampler full(V, o), part(V, o);
      for (int step = 0; step < 60; ++step) {
        const auto l = lm_row(V, uint32_t(step + 1));
        TopKRequest req;
        REQUIRE(part.topk_request(&req));
        // A backend may return more than k candidates, in any order.
        TopKRequest wider = req;
        wider.k = std::min(V - 1, req.k + 17);
        std::vector<TokenLogit> best;
        select_topk(l.data(), V, wider, &best);
        std::reverse(best.begin(), best.end());
        const int32_t a = full.sample(l.data()), b = part.sample_topk(best);
        REQUIRE(a == b);
        full.accept(a);
        part.accept(b);
      }
    }
  }
  // No request without a top-k (or above kMaxRequestK); greedy asks for one token.
  SamplerOptions o;
  o.temperature = 1.0f;
  TopKRequest req;
  CHECK_FALSE(Sampler(V, o).topk_request(&req));
  o.top_k = Sampler::kMaxRequestK + 1;
  CHECK_FALSE(Sampler(V, o).topk_request(&req));
  o.temperature = 0.0f;
  REQUIRE(Sampler(V, o).topk_request(&req));
  CHECK(req.k == 1);
}

TEST_CASE("without top-k: the lazily ranked vocabulary gives the reference distribution and draws") {
  const int32_t V = 20000;
  struct Case {
    float temp, top_p, min_p;
  };
  for (const Case& c : {Case{0.7f, 0.8f, 0.0f}, Case{1.0f, 0.95f, 0.0f}, Case{1.0f, 1.0f, 0.0f},
                        Case{0.6f, 1.0f, 0.05f}, Case{1.2f, 0.9f, 0.01f}}) {
    CAPTURE(c.temp);
    CAPTURE(c.top_p);
    CAPTURE(c.min_p);
    SamplerOptions o;
    o.temperature = c.temp;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    o.repeat_penalty = 1.1f;
    o.frequency_penalty = 0.3f;
    o.seed = 5;
    Sampler s(V, o);
    std::map<int32_t, int32_t> counts;
    for (int t : {1, 2, 2, 19999}) {
      s.accept(t);
      ++counts[t];
    }
    const auto l = lm_row(V, 9);
    ReferenceSampler ref{o};
    const auto want = ref.dist(l, counts);
    const auto got = s.distribution(l.data());
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].first == want[i].first);
      CHECK(std::abs(got[i].second - want[i].second) <= 1e-12 * want[i].second + 1e-300);
    }
    // Draws walk the same ranking: the reference's inverse CDF with the same uniforms.
    Sampler again(V, o);
    for (int t : {1, 2, 2, 19999}) again.accept(t);
    uint64_t st = o.seed, rng[4];
    auto splitmix = [](uint64_t& x) {
      uint64_t z = (x += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    for (auto& r : rng) r = splitmix(st);
    auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
    for (int d = 0; d < 300; ++d) {
      const uint64_t res = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
      rng[2] ^= rng[0];
      rng[3] ^= rng[1];
      rng[1] ^= rng[2];
      rng[0] ^= rng[3];
      rng[2] ^= t;
      rng[3] = rotl(rng[3], 45);
      const double u = double(res >> 11) * (1.0 / 9007199254740992.0);
      double cum = 0;
      int32_t expect = want.back().first;
      for (auto [id, p] : want) {
        cum += p;
        if (u < cum) {
          expect = id;
          break;
        }
      }
      REQUIRE(again.sample(l.data()) == expect);
    }
  }
}

TEST_CASE("the sampler's softmax: det_exp is exp to 1e-14; the tree normalizer is the sum to rounding") {
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const double x = -699.99 * i / 200000.0 - 1e-9 * (i % 7);
    const double want = std::exp(x), got = det_exp(x);
    worst = std::max(worst, std::abs(got - want) / want);
  }
  CHECK(worst < 2e-14);
  CHECK(det_exp(0.0) == 1.0);
  CHECK(det_exp(-701.0) == 0.0);
  CHECK(det_exp(-INFINITY) == 0.0);
  CHECK(det_exp(std::nan("")) == 0.0);
  CHECK(det_weight(INFINITY, 1.0, 0.0) == 0.0);
  // 100,003 weights: three tree levels and partial groups.
  const auto l = lm_row(100003, 4);
  float best = -INFINITY;
  for (float v : l) best = std::max(best, v != v ? -INFINITY : v);
  const double inv = 1.0 / 0.8, mx = double(best) * inv;
  std::vector<double> scratch(100003 / kNormFan + 2);
  const double tree = softmax_normalizer(l.data(), int64_t(l.size()), inv, mx, scratch.data());
  long double seq = 0;
  for (float v : l) seq += det_weight(v, inv, mx);
  CHECK(std::abs(double(seq) - tree) <= 1e-14 * tree);
}

TEST_CASE("sample_full on the best candidates and the normalizer equals sample on the row") {
  const int32_t V = 3000;
  struct Case {
    float temp, top_p, min_p;
  };
  int shorts = 0, fulls = 0;
  for (const Case& c : {Case{0.7f, 0.9f, 0.0f}, Case{1.0f, 1.0f, 0.0f}, Case{1.3f, 1.0f, 0.0f},
                        Case{0.9f, 1.0f, 0.05f}, Case{1.2f, 0.95f, 0.01f}}) {
    CAPTURE(c.temp);
    CAPTURE(c.top_p);
    CAPTURE(c.min_p);
    SamplerOptions o;
    o.temperature = c.temp;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    o.presence_penalty = 0.5f;
    o.repeat_penalty = 1.1f;
    o.logit_bias = {{3, 4.0f}, {17, -INFINITY}};
    o.seed = 99;
    Sampler row(V, o), part(V, o);
    for (int step = 0; step < 80; ++step) {
      auto l = lm_row(V, uint32_t(step + 11));
      if (step % 3 == 0)  // a flat row: the draw often goes past 1,024 ranks
        for (auto& x : l) x = std::isfinite(x) ? x * 0.05f : x;
      TopKRequest req;
      REQUIRE(part.full_request(&req));
      CHECK(req.k == Sampler::kMaxRequestK);
      CHECK(req.temperature == c.temp);
      // What a backend computes: the adjusted row, a rank prefix of at
      // least k candidates (any order), the tree normalizer.
      TopKRequest all = req;
      all.k = V;
      std::vector<TokenLogit> ranked;
      select_topk(l.data(), V, all, &ranked);
      std::vector<float> adj(static_cast<size_t>(V));
      for (const TokenLogit& t : ranked) adj[size_t(t.id)] = t.logit;
      std::vector<TokenLogit> best(ranked.begin(), ranked.begin() + req.k + step % 5);
      std::reverse(best.begin(), best.end());
      std::vector<double> scratch(V / kNormFan + 2);
      const double inv = 1.0 / double(c.temp), mx = double(ranked[0].logit) * inv;
      const double total = softmax_normalizer(adj.data(), V, inv, mx, scratch.data());
      int32_t b = part.sample_full(best, total);
      if (b < 0) {
        ++shorts;
        b = part.sample_adjusted(adj.data());
      } else {
        ++fulls;
      }
      const int32_t a = row.sample(l.data());
      REQUIRE(a == b);
      row.accept(a);
      part.accept(b);
    }
  }
  CHECK(shorts > 0);  // both ways were taken
  CHECK(fulls > shorts);
  // No full request for greedy or top-k samplers.
  SamplerOptions o;
  o.temperature = 0.0f;
  TopKRequest req;
  CHECK_FALSE(Sampler(V, o).full_request(&req));
  o.temperature = 0.8f;
  o.top_k = 40;
  CHECK_FALSE(Sampler(V, o).full_request(&req));
  o.top_k = V;  // top-k that keeps everything: the full path
  CHECK(Sampler(V, o).full_request(&req));
}

TEST_CASE("full_request_after counts the accepted token like accept() will") {
  const int32_t V = 500;
  SamplerOptions o;
  o.temperature = 0.8f;
  o.frequency_penalty = 0.4f;
  o.penalty_last_n = 3;
  Sampler s(V, o);
  for (int t : {5, 6, 7}) s.accept(t);
  TopKRequest after;
  REQUIRE(s.full_request_after(9, &after));
  s.accept(9);
  TopKRequest now;
  REQUIRE(s.full_request(&now));
  REQUIRE(after.adjust.size() == now.adjust.size());
  for (size_t i = 0; i < now.adjust.size(); ++i) {
    CHECK(after.adjust[i].id == now.adjust[i].id);
    CHECK(after.adjust[i].sub == now.adjust[i].sub);
  }
  CHECK(after.temperature == now.temperature);
}
