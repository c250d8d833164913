// Default implementations of the optional Backend operations.
#include "backend.h"

#include <algorithm>
#include <new>
#include <vector>

namespace qwen35 {

namespace {

// Runs `run` on a copy of b whose logits rows go to a temporary buffer,
// then use(r, row) for each of them.
template <class Batch, class Run, class Use>
Status with_logit_rows(const Batch& b, int64_t V, Run run, Use use) {
  const int32_t rows = b.n - b.logits_first;
  if (rows <= 0) return run(b);
  std::vector<float> logits;
  try {
    logits.resize(size_t(rows) * size_t(V));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the logits of {} rows", rows);
  }
  Batch e = b;
  e.logits = logits.data();
  QWEN35_TRY(run(e));
  for (int32_t r = 0; r < rows; ++r) use(r, logits.data() + size_t(r) * size_t(V));
  return Status::Ok();
}

}  // namespace

Status Backend::eval_greedy(const EvalBatch& b, int32_t* argmax) {
  return with_logit_rows(
      b, n_vocab, [this](const EvalBatch& e) { return eval(e); },
      [&](int32_t r, const float* row) { argmax[r] = argmax_logits(row, n_vocab); });
}

Status Backend::eval_topk(const EvalBatch& b, const TopKRequest* reqs, TopKResult* cands) {
  topk_rows_.assign(size_t(std::max(0, b.n - std::clamp(b.logits_first, 0, b.n))), std::vector<float>());
  return with_logit_rows(
      b, n_vocab, [this](const EvalBatch& e) { return eval(e); },
      [&](int32_t r, const float* row) { select_candidates(row, n_vocab, reqs[r], &cands[r], &topk_rows_[size_t(r)]); });
}

Status Backend::topk_row(int32_t r, std::vector<float>* adjusted) {
  if (r < 0 || size_t(r) >= topk_rows_.size() || topk_rows_[size_t(r)].size() != size_t(n_vocab))
    return Error(QWEN35_ERR_STATE, "no adjusted row {} from the last candidate selection", r);
  *adjusted = topk_rows_[size_t(r)];
  return Status::Ok();
}

Status Backend::eval_mtp_greedy(const MtpBatch& b, int32_t* argmax) {
  return with_logit_rows(
      b, n_vocab, [this](const MtpBatch& e) { return eval_mtp(e); },
      [&](int32_t r, const float* row) { argmax[r] = argmax_logits(row, n_vocab); });
}

}  // namespace qwen35
