// The logits fixtures (../shared/fixtures/logits, see its README): every case
// decoded through the C API, batch or one token at a time, with per-position
// relative errors against the exact logits, and the README's bar. Shared by
// the CPU and the CUDA model tests.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "qwen35/qwen35.h"
#include "test_util.h"

namespace qwen35::test {

struct FixtureLogits {
  std::vector<std::vector<int32_t>> seqs;
  std::vector<float> main, mtp;
  int V = 4122;
  explicit FixtureLogits(const std::string& model) {
    seqs = read_seqs(fixture("logits/seqs.txt"));
    main = read_f32(fixture("logits/" + model + ".exact.main.f32"));
    if (model == "tiny-m-nvfp4") mtp = read_f32(fixture("logits/" + model + ".exact.mtp.f32"));
  }
};

struct FixtureErrors {
  std::vector<double> main, mtp;
  std::vector<std::pair<size_t, size_t>> argmax;  // (got, reference row)
};

// Every fixture case on context c (reset before each; created with
// mtp_logits when mtp), batch or one token at a time.
inline FixtureErrors run_fixture_cases(qwen35_context* c, const FixtureLogits& fx, bool step, bool mtp) {
  FixtureErrors e;
  size_t row = 0, mrow = 0;
  for (const auto& s : fx.seqs) {
    qwen35_context_reset(c);
    const int n = int(s.size());
    auto check_row = [&](const float* l, size_t r) {
      REQUIRE(l != nullptr);
      e.main.push_back(rel_err(l, fx.main.data() + r * size_t(fx.V), size_t(fx.V)));
      e.argmax.push_back({argmax(l, size_t(fx.V)), r});
    };
    auto check_mtp = [&](int pos) {
      const float* l = qwen35_context_mtp_logits(c, pos);
      REQUIRE(l != nullptr);
      e.mtp.push_back(rel_err(l, fx.mtp.data() + (mrow + size_t(pos)) * size_t(fx.V), size_t(fx.V)));
    };
    if (!step) {
      REQUIRE(qwen35_context_decode(c, s.data(), n, QWEN35_LOGITS_ALL) == QWEN35_OK);
      for (int i = 0; i < n; ++i) check_row(qwen35_context_logits(c, i), row + size_t(i));
      if (mtp)
        for (int i = 0; i + 1 < n; ++i) check_mtp(i);
    } else {
      for (int i = 0; i < n; ++i) {
        REQUIRE(qwen35_context_decode(c, &s[size_t(i)], 1, QWEN35_LOGITS_LAST) == QWEN35_OK);
        check_row(qwen35_context_logits(c, -1), row + size_t(i));
        if (mtp && i >= 1) check_mtp(i - 1);
      }
    }
    row += size_t(n);
    mrow += size_t(n - 1);
  }
  return e;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
inline double worst(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

// The fixture bar of fixtures/README.md: median <= 0.08, worst <= 0.25, and
// the argmax agrees wherever the exact top-2 margin exceeds 0.5.
inline void check_fixture_bar(const FixtureLogits& fx, const FixtureErrors& e, bool mtp) {
  CHECK(e.main.size() == 374);
  CHECK(median(e.main) <= 8e-2);
  CHECK(worst(e.main) <= 0.25);
  for (auto [got, r] : e.argmax) {
    const float* ref = fx.main.data() + r * size_t(fx.V);
    std::vector<float> s(ref, ref + fx.V);
    std::partial_sort(s.begin(), s.begin() + 2, s.end(), std::greater<float>());
    if (s[0] - s[1] > 0.5f) CHECK_MESSAGE(got == argmax(ref, size_t(fx.V)), "row " << r);
  }
  if (mtp) {
    CHECK(e.mtp.size() == 371);
    CHECK(median(e.mtp) <= 8e-2);
    CHECK(worst(e.mtp) <= 0.25);
  }
}

}  // namespace qwen35::test
