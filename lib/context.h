// A conversation's state over a backend: the row history (tokens, image
// embeddings, M-RoPE positions), logits and hidden states of the last call,
// recurrent-state checkpoints for exact truncation, and the MTP cache
// bookkeeping (spec §5.4).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "model.h"
#include "status.h"

namespace qwen35 {

struct ContextOptions {
  int32_t n_ctx = 4096;
  int32_t n_batch = 512;
  int32_t n_threads = 1;
  bool use_mtp = true;
  bool mtp_prenorm = false;
  bool reference = false;
  bool mtp_logits = false;
};

enum class LogitsMode { Last, All, None };

// What a decode call keeps of its logit rows: the logits, or only each
// row's argmax (lowest id on ties), which a GPU backend computes on the
// device so that greedy decoding copies one id per row instead of n_vocab
// floats.
enum class Outputs { Logits, Argmax, TopK };

// One greedy speculative step (Context::speculate_greedy).
struct SpecStep {
  bool accepted = false;   // the main model's argmax after `token` was the draft
  int32_t next = -1;       // the next token: argmax after the draft (accepted) or after `token`
  int32_t next_draft = -1; // the MTP draft for the token after `next`, or -1 (no room)
};

class Context {
 public:
  static Status Create(const Model& model, const ContextOptions& opt, std::unique_ptr<Context>* out);
  ~Context();

  const Model& model() const { return m_; }
  const ContextOptions& options() const { return opt_; }
  int32_t n_ctx() const { return opt_.n_ctx; }
  int32_t n_past() const { return int32_t(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // The input embedding of an image row ([n_embd] floats), or null for token rows.
  const float* row_embedding(int32_t row) const { return row_embd(row); }
  bool mtp_enabled() const { return opt_.use_mtp && m_.mtp != nullptr; }
  uint64_t memory_bytes() const;
  Backend& backend() { return *be_; }

  // Append text tokens. On failure the context is exactly as before.
  Status decode(const int32_t* tokens, int32_t n, LogitsMode mode);
  // Append n embedding rows with explicit (t, h, w) positions; the next text
  // position becomes next_pos_after.
  Status decode_embd(const float* embd, int32_t n, const int32_t* pos, int32_t next_pos_after, LogitsMode mode);
  // Next text position (t = h = w for text rows).
  int32_t next_pos() const { return next_pos_; }

  // Like decode, but the call keeps only the argmax of its logit rows.
  Status decode_argmax(const int32_t* tokens, int32_t n, LogitsMode mode);

  // Like decode with LogitsMode::Last, but the call keeps only the sampling
  // candidates of its last row for `req` (Backend::eval_topk).
  Status decode_topk(const int32_t* tokens, int32_t n, const TopKRequest& req);
  // Like decode_with_snapshot with LogitsMode::All, keeping the candidates
  // of every row i for reqs[i] instead of the logits.
  Status decode_with_snapshot_topk(const int32_t* tokens, int32_t n, const TopKRequest* reqs);

  // Results of the last decode call (row i of that call, -1 = last).
  const float* logits(int32_t i) const;
  int32_t argmax(int32_t i) const;  // -1 if the call kept no argmax for row i
  // Row i's candidates (decode_topk, decode_with_snapshot_topk; -1 = last
  // row), or null. Sampler::sample_topk / sample_full may reorder them.
  TopKResult* topk(int32_t i);
  // Row i's adjusted logits, when its request had a temperature (for a
  // sample_full that needs more than the candidates): Backend::topk_row.
  Status topk_row(int32_t i, std::vector<float>* adjusted);
  const float* hidden(int32_t i) const;
  const float* mtp_logits(int32_t pos) const;

  // MTP draft: run the head on (hidden of the last row, token) and return the
  // draft logits. The MTP cache row it writes is provisional.
  Status mtp_draft(int32_t token, const float** logits);
  // The same, keeping only the draft's argmax.
  Status mtp_draft_argmax(int32_t token, int32_t* draft);

  // Greedy speculative decoding (spec §5.5) with argmax outputs, after
  // mtp_draft_argmax(token, &draft): verifies [token, draft] in one pass.
  // Accepted (the argmax after `token` is `draft`): both rows stay, and the
  // MTP cache row of the draft and the next draft are computed together in
  // one MTP pass. Rejected: the draft's row is rolled back and the next
  // draft is computed for the argmax after `token`. The result equals
  // decode_with_snapshot + (rollback_to_snapshot) + mtp_draft with argmax
  // sampling; after an accepted step the caller may still roll back.
  Status speculate_greedy(int32_t token, int32_t draft, SpecStep* out);

  // Speculative verify support: decode tokens with a snapshot of the
  // recurrent state after row 0, then either keep all rows or roll back to
  // "after row 0" without recomputation.
  Status decode_with_snapshot(const int32_t* tokens, int32_t n, LogitsMode mode);
  Status rollback_to_snapshot();

  void reset();
  // While drafting is paused, the MTP cache rows of new tokens may wait and
  // be computed later in one batched MTP pass (much cheaper per row than one
  // pass per token). mtp_flush() computes them; drafts and checkpoints flush
  // first, so the cache is complete whenever it is read.
  // (Never while every row's MTP logits are wanted: they come per decode.)
  void set_mtp_lazy(bool lazy) { mtp_lazy_ = lazy && !opt_.mtp_logits; }
  Status mtp_flush();
  Status truncate(int32_t n_keep);
  // Save the recurrent state at the current row count into checkpoint slot
  // (for cheap truncation back to here later).
  Status checkpoint();

  // Conversation snapshot (rows, positions, caches, recurrent state).
  uint64_t state_size() const;
  Status state_save(std::vector<uint8_t>* out) const;
  Status state_load(const uint8_t* data, uint64_t size);

  // Set from any thread to cancel the running call; the C API clears it when
  // a new call starts.
  std::atomic<bool> abort{false};
  std::string errmsg;

 private:
  Context(const Model& m, const ContextOptions& o) : m_(m), opt_(o) {}
  struct EmbdSpan {
    int32_t row0 = 0, n = 0;
    std::shared_ptr<std::vector<float>> data;  // [n, D]
  };
  struct Checkpoint {
    int32_t rows = -1;             // row count the state belongs to (-1: empty)
    std::vector<float> hidden;     // post-norm (or pre-norm) hidden of row rows-1 for the MTP
    int32_t n_mtp = 0;
  };

  // MTP cache rows whose inputs are known but that were not computed yet
  // (only inside speculate_greedy, which computes or drops them).
  struct MtpRows {
    int32_t start = 0, n = 0;
    std::vector<float> hidden;     // [n, D]
    std::vector<int32_t> tokens;   // [n]
    std::vector<float> next_embd;  // [n, D] or empty
  };

  // Core append: rows are tokens or embeddings (embd != null), positions given.
  Status append(const int32_t* tokens, const float* embd, int32_t n, const int32_t* pos, LogitsMode mode,
                int32_t snapshot_row, Outputs outputs = Outputs::Logits, bool defer_mtp = false);
  Status eval_rows(int32_t first_row, int32_t n, LogitsMode mode, int32_t snapshot_row, bool record,
                   Outputs outputs = Outputs::Logits, bool defer_mtp = false);
  // defer: leave the rows to compute in mtp_deferred_ instead of running them.
  Status mtp_fill(int32_t first_row, int32_t n, const float* hidden_rows, bool defer = false);
  // Run the MTP head on `rows`, plus (draft_token >= 0) one draft row for
  // row n_past-1 whose argmax goes to *draft.
  Status mtp_run(MtpRows& rows, int32_t draft_token, int32_t* draft);
  Status recover(int32_t n_rows);  // restore the exact state of the first n_rows rows
  const float* row_embd(int32_t row) const;  // image embedding of a row, or null

  const Model& m_;
  ContextOptions opt_;
  std::unique_ptr<Backend> be_;

  // History, one entry per row.
  std::vector<int32_t> tokens_;          // token id, -1 for embedding rows
  std::vector<int32_t> pos_;             // [rows, 3]
  std::vector<int32_t> next_pos_after_;  // next text position after each row
  std::vector<EmbdSpan> spans_;
  int32_t next_pos_ = 0;

  // Last call's outputs.
  std::vector<float> logits_;    // [n_logit_rows, V]
  std::vector<int32_t> argmax_;  // [n_argmax_rows] with Outputs::Argmax
  int32_t logits_row0_ = 0;      // call-relative row of logits_ (or argmax_) row 0
  int32_t n_logit_rows_ = 0;
  int32_t n_argmax_rows_ = 0;
  std::vector<TopKResult> topk_;  // [n_topk_rows] with Outputs::TopK
  int32_t n_topk_rows_ = 0;
  int32_t topk_backend_row0_ = 0;  // topk_ index of row 0 of the backend's last eval_topk
  const TopKRequest* topk_reqs_ = nullptr;     // [logit rows of the call], during the call
  std::vector<float> hidden_;    // [call rows, D] post-norm
  std::vector<float> prenorm_;   // [call rows, D] when mtp_prenorm
  int32_t call_rows_ = 0;
  std::vector<float> mtp_logits_;  // [k, V]
  int32_t mtp_logits_pos0_ = 0, n_mtp_logits_ = 0;

  // MTP cache: rows 0..n_mtp_-1 pair hidden(row i) with the input of row i+1.
  int32_t n_mtp_ = 0;
  std::vector<float> pending_hidden_;  // hidden of row n_past-1, waiting for the next row
  bool have_pending_ = false;
  MtpRows mtp_deferred_;
  bool mtp_lazy_ = false;
  MtpRows mtp_backlog_;          // rows n_mtp_.. waiting for mtp_flush()
  std::vector<float> draft_logits_;
  bool draft_valid_ = false;   // mtp_draft wrote MTP row draft_row_ for input draft_token_
  int32_t draft_row_ = -1;
  int32_t draft_token_ = -1;

  Checkpoint slots_[Backend::kNumSlots];
};

}  // namespace qwen35
