// Helpers of the emulated CUDA backend's tests (test_cuda_backend_emu,
// test_cuda_faults_emu.cpp): models on the emulated device, contexts, and
// a free that checks what the emulated runtime saw.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "cuda_emu.h"
#include "qwen35/qwen35.h"
#include "synth.h"
#include "test_util.h"

namespace qwen35::test {

// The model file at path on the emulated device.
inline qwen35_model* load_cuda_path(const std::string& path) {
  qwen35_model_params mp = qwen35_model_default_params();
  mp.device = QWEN35_DEVICE_CUDA;
  qwen35_model* m = nullptr;
  REQUIRE_MESSAGE(qwen35_model_load(path.c_str(), &mp, &m) == QWEN35_OK, qwen35_errmsg());
  CHECK(qwen35_model_device(m) == QWEN35_DEVICE_CUDA);
  return m;
}

// A fixture model on the emulated device.
inline qwen35_model* load_cuda(const char* name) {
  return load_cuda_path(fixture(std::string("models/") + name + ".gguf"));
}

// A small synthetic model's shapes: 600 tokens, width n_embd, head size 64,
// delta-net dk = dv = 32, NVFP4 matrices, a tied embedding (Q6_K from 256
// columns; below that Q8_0, which the upload puts in the Q8_0 tiles), one
// MTP layer.
inline SynthConfig small_synth(int32_t n_embd, uint32_t seed) {
  SynthConfig cfg;
  cfg.n_vocab = 600;
  cfg.n_embd = n_embd;
  cfg.n_ff = 2 * n_embd;
  cfg.head_dim = 64;
  cfg.n_rot = 32;
  cfg.sections = {6, 5, 5, 0};
  cfg.ssm_state = 32;
  cfg.ssm_dv = 32;
  cfg.seed = seed;
  return cfg;
}

// small_synth with an MTP layer that mirrors the main model (the drafts are
// right: every verify pass is accepted), on the CUDA backend; its matrices
// of matrix_type.
inline qwen35_model* load_mirror_synth(const char* name, int32_t n_embd, uint32_t seed,
                                       uint32_t matrix_type = GGML_NVFP4) {
  SynthConfig cfg = small_synth(n_embd, seed);
  cfg.mtp_mirror = true;
  cfg.matrix_type = matrix_type;
  return load_cuda_path(synth_model(name, cfg));
}

inline qwen35_context* make_ctx(qwen35_model* m) {
  qwen35_context_params cp = qwen35_context_default_params();
  cp.n_ctx = 512;
  cp.n_batch = 512;
  cp.use_mtp = true;
  cp.mtp_logits = true;
  qwen35_context* c = nullptr;
  REQUIRE_MESSAGE(qwen35_context_create(m, &cp, &c) == QWEN35_OK, qwen35_errmsg());
  return c;
}

// One decode call of `rows` tokens with every row's logits, appended to out
// (V floats a row).
inline void decode_append_logits(qwen35_context* c, const int32_t* tokens, int rows, int64_t V,
                                 std::vector<float>& out) {
  REQUIRE(qwen35_context_decode(c, tokens, rows, QWEN35_LOGITS_ALL) == QWEN35_OK);
  for (int r = 0; r < rows; ++r) {
    const float* l = qwen35_context_logits(c, r);
    REQUIRE(l != nullptr);
    out.insert(out.end(), l, l + V);
  }
}

// The MTP logits the context holds for positions 0 .. pos-1 (after a
// decode call up to pos: the rows that call filled), appended to out.
inline void append_mtp_logits(qwen35_context* c, int32_t pos, int64_t V, std::vector<float>& out) {
  for (int32_t p = 0; p < pos; ++p)
    if (const float* ml = qwen35_context_mtp_logits(c, p)) out.insert(out.end(), ml, ml + V);
}

// The relative error of each row of a against the same row of b (V floats
// a row; the same number of rows).
inline std::vector<double> row_errors(const std::vector<float>& a, const std::vector<float>& b, int64_t V) {
  REQUIRE(a.size() == b.size());
  std::vector<double> errs;
  for (size_t r = 0; r < a.size() / size_t(V); ++r)
    errs.push_back(rel_err(a.data() + r * size_t(V), b.data() + r * size_t(V), size_t(V)));
  return errs;
}

// Frees the model (its contexts freed before) and checks the emulated
// runtime: no device or pinned memory left, no free of memory it did not
// hand out, no copy past the end of an allocation, and no call the real runtime refuses during a graph capture
// (the backend would quietly fall back to eager launches on the GPU).
inline void free_model(qwen35_model* m) {
  qwen35_model_free(m);
  CHECK(emu::live_allocations() == 0);
  CHECK(emu::take_bad_frees() == 0);
  CHECK(emu::take_bad_copies() == 0);
  CHECK_MESSAGE(emu::take_capture_violations() == 0, emu::last_capture_violation());
}

}  // namespace qwen35::test
