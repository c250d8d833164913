// Candidates for sampling on the device: one row of logits is adjusted by
// the sampler's bias and penalties and the tokens that can be among its k
// best are copied out, so the host finishes sampling from a few thousand
// (id, logit) pairs instead of n_vocab floats. CPU twin: select_topk() in
// lib/sampler.h (the k best of the returned set, ranked by ranks_before,
// equal it bit for bit).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "sampler.h"

namespace qwen35::cuda {

// Candidates returned at most; the largest k the selection accepts is
// Sampler::kMaxRequestK (1024).
constexpr int32_t kTopkCap = 4096;

// The request in device memory (written by the host before the launches).
struct TopkParams {
  int32_t k = 0;
  int32_t n_adjust = 0;            // entries of the adjustment array
  float repeat_penalty = 1.0f;
  float temperature = 0.0f;        // > 0: also the softmax normalizer (TopKRequest::temperature)
};

// What the selection leaves in device memory for the host.
struct TopkOut {
  int32_t count;                   // candidates in cands (>= k unless failed)
  int32_t failed;                  // 1: more than kTopkCap tokens tie at the k-th rank; read the row instead
  double total;                    // with a temperature: softmax_normalizer() of the adjusted row, bit for bit
  TokenLogit cands[kTopkCap];      // every token whose adjusted logit ranks at or above a threshold
};

// Device scratch of one selection over V logits (zeroed by the first kernel).
size_t topk_scratch_bytes(int32_t V);

// logits: [V] on the device, adjusted in place (the adjusted ids only; the
// same float operations as adjust_logit). adjust: [params->n_adjust] sorted
// by id, one entry per id. Finds by a radix search on the ranking keys the
// smallest key threshold with at most kTopkCap tokens at or above it and at
// least k, and writes those tokens (in no particular order) to out. With
// params->temperature > 0 it also sums the softmax normalizer of the
// adjusted row exactly as softmax_normalizer() in lib/softmax_norm.h does
// (the same fixed-operation exp, the same 32-ary tree), into out->total.
// Ten small launches, no host synchronisation.
cudaError_t topk_candidates(float* logits, int32_t V, const TopkParams* params, const LogitAdjust* adjust,
                            void* scratch, TopkOut* out, cudaStream_t stream);

}  // namespace qwen35::cuda
