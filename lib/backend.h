// The interface between the device-independent context (history, positions,
// checkpoints, MTP loop, sampling) and a compute backend (CPU, CUDA) that owns
// the per-sequence state: KV caches, conv windows, delta-net states and the
// MTP layer's KV cache.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "model.h"
#include "sampler.h"
#include "status.h"

namespace qwen35 {

// One forward pass of the main model over n new rows appended after n_past
// cached rows. Rows are tokens, or embeddings when `embd` is set.
struct EvalBatch {
  int32_t n = 0;
  const int32_t* tokens = nullptr;  // [n]; ignored where embd is used
  const float* embd = nullptr;      // [n, D] input embeddings instead of token rows (vision)
  const int32_t* pos = nullptr;     // [n, 3]: (t, h, w) rotary positions
  int32_t n_past = 0;               // rows already in the caches; new rows go to n_past..n_past+n-1

  int32_t logits_first = 0;         // rows logits_first..n-1 get logits (n: none)
  float* logits = nullptr;          // [n - logits_first, V] host memory
  float* hidden = nullptr;          // [n, D] post-output_norm hidden of every row, or null
  float* hidden_prenorm = nullptr;  // [n, D] residual stream before output_norm, or null

  // >= 0: also write the recurrent state (conv windows and delta-net states)
  // as it is after row `snapshot_row` into the rollback slot. Used by the
  // MTP verify pass so that a rejected draft costs no recomputation.
  int32_t snapshot_row = -1;
};

// The MTP head over n rows: row i pairs hidden[i] (main model, post-norm)
// with tokens[i] (the token that followed) at rotary position pos[i]; the
// MTP KV cache row n_past+i is written.
struct MtpBatch {
  int32_t n = 0;
  const float* hidden = nullptr;    // [n, D]
  const int32_t* tokens = nullptr;  // [n]; a negative id means: use next_embd row i
  const float* next_embd = nullptr; // [n, D] input embeddings of the following rows (images), or null
  const int32_t* pos = nullptr;     // [n, 3]
  int32_t n_past = 0;
  int32_t logits_first = 0;         // rows logits_first..n-1 get logits
  float* logits = nullptr;          // [n - logits_first, V]
};

class Backend {
 public:
  // Slot 0 is written by EvalBatch::snapshot_row; others by save_recurrent.
  static constexpr int kRollbackSlot = 0;
  static constexpr int kNumSlots = 3;

  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  virtual Status eval(const EvalBatch& b) = 0;
  virtual Status eval_mtp(const MtpBatch& b) = 0;

  // Greedy variants: like eval / eval_mtp, but instead of copying the logits
  // of rows logits_first..n-1 to b.logits (which is ignored), write the index
  // of each row's largest logit (lowest index on ties) to argmax[n -
  // logits_first]. A GPU backend computes it on the device, so greedy
  // decoding copies one id per token instead of n_vocab floats. The default
  // runs eval / eval_mtp into a temporary buffer and scans it.
  virtual Status eval_greedy(const EvalBatch& b, int32_t* argmax);
  virtual Status eval_mtp_greedy(const MtpBatch& b, int32_t* argmax);
  // Whether the greedy variants save work here (the argmax runs where the
  // logits are); the generation loop then asks for ids instead of logits.
  virtual bool device_argmax() const { return false; }

  // Sampling candidates: like eval, but instead of logits rows
  // logits_first..n-1 (b.logits is ignored), cands[r].best receives at
  // least reqs[r].k (id, adjusted logit) pairs, in any order, holding every
  // token ranked at or above some adjusted logit (so they include the k best
  // of row logits_first + r as select_topk() ranks them with reqs[r]'s
  // adjustments); with reqs[r].temperature > 0 also cands[r].total, the
  // softmax normalizer of the adjusted row (select_candidates() is the
  // reference). The default runs eval into temporary rows and calls
  // select_candidates.
  virtual Status eval_topk(const EvalBatch& b, const TopKRequest* reqs, TopKResult* cands);
  // The adjusted row r of the last eval_topk call whose request r had a
  // temperature (for a sampler whose draw needs more than the candidates;
  // valid until the next eval).
  virtual Status topk_row(int32_t r, std::vector<float>* adjusted);
  // Whether eval_topk saves work here (the selection runs where the logits
  // are); the generation loop then asks for candidates instead of logits.
  virtual bool device_topk() const { return false; }

  // Zero the recurrent state. KV rows are addressed by the caller's n_past,
  // so they need no clearing.
  virtual void reset() = 0;
  virtual Status save_recurrent(int slot) = 0;
  virtual Status restore_recurrent(int slot) = 0;

  // Serialization of the first n_rows KV rows, the recurrent state and the
  // first n_mtp_rows MTP KV rows.
  virtual uint64_t state_bytes(int32_t n_rows, int32_t n_mtp_rows) const = 0;
  virtual Status write_state(int32_t n_rows, int32_t n_mtp_rows, uint8_t* dst) = 0;
  virtual Status read_state(int32_t n_rows, int32_t n_mtp_rows, const uint8_t* src) = 0;

  virtual uint64_t memory_bytes() const = 0;

  // Set by the context; checked between layers so a long prefill can be
  // cancelled from another thread.
  const std::atomic<bool>* abort_flag = nullptr;

  // Width of a logits row (the model's n_vocab); set by the Create function.
  int32_t n_vocab = 0;

 protected:
  // Backends that sample on the host side: the adjusted rows of the last
  // eval_topk requests with a temperature (topk_row's default source).
  std::vector<std::vector<float>> topk_rows_;
};

struct BackendParams {
  int32_t n_ctx = 0;
  int32_t n_batch = 0;    // max rows per eval call
  int32_t n_threads = 1;
  bool reference = false; // float reference path (CPU only)
};

Status CreateCpuBackend(const Model& model, const BackendParams& p, std::unique_ptr<Backend>* out);
// Defined by the CUDA backend when built; return UNSUPPORTED otherwise.
Status CreateCudaBackend(const Model& model, const BackendParams& p, std::unique_ptr<Backend>* out);
// Upload the weights to CUDA device `device_index` and mark the model as
// running there. When no usable GPU exists: an error if `required`, else the
// model stays on the CPU and OK is returned.
Status UploadModelToCuda(Model& model, int device_index, bool required);
// Whether this build has the CUDA backend and a usable device.
bool CudaAvailable();
// Free and total memory of CUDA device `device_index` (UNSUPPORTED without
// the CUDA backend or a device).
Status CudaMemoryInfo(int device_index, uint64_t* free_bytes, uint64_t* total_bytes);
// Device memory bandwidth of CUDA device `device_index` for benchmarks' roofline: the best of a few
// device-to-device copies of `bytes` (counting bytes read plus written), in GB/s. UNSUPPORTED
// without the CUDA backend or a device.
Status CudaCopyBandwidth(int device_index, uint64_t bytes, double* gb_per_s);

}  // namespace qwen35
