// Default implementations of the optional Backend operations.
#include "backend.h"

#include <new>
#include <vector>

namespace qwen35 {

namespace {

// Index of the largest of x[0..n) (the first one on ties; NaNs never win).
int32_t argmax_row(const float* x, int64_t n) {
  int32_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best] || (x[best] != x[best] && x[i] == x[i])) best = int32_t(i);
  return best;
}

}  // namespace

Status Backend::eval_greedy(const EvalBatch& b, int32_t* argmax) {
  const int32_t rows = b.n - b.logits_first;
  if (rows <= 0) return eval(b);
  const int64_t V = n_vocab;
  std::vector<float> logits;
  try {
    logits.resize(size_t(rows) * size_t(V));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the logits of {} rows", rows);
  }
  EvalBatch e = b;
  e.logits = logits.data();
  QWEN35_TRY(eval(e));
  for (int32_t r = 0; r < rows; ++r) argmax[r] = argmax_row(logits.data() + size_t(r) * size_t(V), V);
  return Status::Ok();
}

Status Backend::eval_topk(const EvalBatch& b, const TopKRequest* reqs, std::vector<TokenLogit>* cands) {
  const int32_t rows = b.n - b.logits_first;
  if (rows <= 0) return eval(b);
  std::vector<float> logits;
  try {
    logits.resize(size_t(rows) * size_t(n_vocab));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the logits of {} rows", rows);
  }
  EvalBatch e = b;
  e.logits = logits.data();
  QWEN35_TRY(eval(e));
  for (int32_t r = 0; r < rows; ++r)
    select_topk(logits.data() + size_t(r) * size_t(n_vocab), int32_t(n_vocab), reqs[r], &cands[r]);
  return Status::Ok();
}

Status Backend::eval_mtp_greedy(const MtpBatch& b, int32_t* argmax) {
  const int32_t rows = b.n - b.logits_first;
  if (rows <= 0) return eval_mtp(b);
  const int64_t V = n_vocab;
  std::vector<float> logits;
  try {
    logits.resize(size_t(rows) * size_t(V));
  } catch (const std::bad_alloc&) {
    return Error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory for the logits of {} rows", rows);
  }
  MtpBatch e = b;
  e.logits = logits.data();
  QWEN35_TRY(eval_mtp(e));
  for (int32_t r = 0; r < rows; ++r) argmax[r] = argmax_row(logits.data() + size_t(r) * size_t(V), V);
  return Status::Ok();
}

}  // namespace qwen35
