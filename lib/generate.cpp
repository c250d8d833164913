#include "generate.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#include "tokenizer.h"
#include "unicode.h"

namespace qwen35 {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Streamed text: complete, valid UTF-8 only (ill-formed bytes, which a
// model can produce with byte tokens, become U+FFFD as spec §3.2
// recommends; stop strings are matched on the raw bytes), and text that
// could be the start of a stop string is held back until it is known not
// to be one.
class TextStream {
 public:
  explicit TextStream(const std::vector<std::string>& stops) : stops_(stops) {}

  // Bytes of a new token; returns the text that can be emitted now.
  std::string push(const std::string& bytes) {
    held_ += utf8_.push(bytes);
    return release(false);
  }
  // End of generation: everything still held (unless a stop string matched).
  std::string flush() {
    held_ += utf8_.flush();
    return release(true);
  }
  bool matched() const { return matched_; }

 private:
  std::string release(bool final) {
    if (matched_) return {};
    size_t cut = std::string::npos;
    for (const std::string& s : stops_) {
      if (s.empty()) continue;
      size_t p = held_.find(s);
      if (p != std::string::npos) cut = std::min(cut, p);
    }
    std::string out;
    if (cut != std::string::npos) {
      matched_ = true;
      out = held_.substr(0, cut);
      held_.clear();
      return unicode::sanitize_utf8(out);
    }
    size_t keep = 0;
    if (!final)
      for (const std::string& s : stops_)
        for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
          if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
            keep = k;
            break;
          }
    out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return unicode::sanitize_utf8(out);
  }

  const std::vector<std::string>& stops_;
  Utf8Stream utf8_;
  std::string held_;
  bool matched_ = false;
};

// Whether sampling is a plain argmax of the logits (no bias, no effective
// penalties), so the backend may return token ids instead of logits.
bool plain_argmax(const Sampler& s) {
  const SamplerOptions& o = s.options();
  const bool no_penalties = o.penalty_last_n == 0 || (o.repeat_penalty == 1.0f && o.presence_penalty == 0.0f &&
                                                      o.frequency_penalty == 0.0f);
  return s.greedy() && o.logit_bias.empty() && no_penalties;
}

}  // namespace

Status Generate(Context& ctx, Sampler& sampler, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                GenerateStats* stats_out, const MtpPolicy& policy) {
  GenerateStats st;
  const Model& model = ctx.model();
  const int32_t V = model.hp.n_vocab;
  const Vocab* vocab = model.vocab.get();
  auto is_eog = [&](int32_t t) { return vocab && vocab->is_eog(t); };
  auto finish = [&](Status s) {
    ctx.set_mtp_lazy(false);  // later decodes keep the MTP cache current again
    if (stats_out) *stats_out = st;
    return s;
  };

  // Greedy decoding on a backend that computes the argmax where the logits
  // are (the GPU): the context keeps token ids instead of logits, and MTP
  // speculation runs as Context::speculate_greedy (fewer passes).
  const bool ids = plain_argmax(sampler) && ctx.backend().device_argmax();
  // Other samplers that read only the k best adjusted logits (top-k, or
  // greedy with bias or penalties) on a backend that selects them where the
  // logits are: the context keeps those candidates instead of the row. The
  // request is built when the step is decoded, from the sampler's state then
  // (every emitted token is accepted before its row is decoded).
  // QWEN35_TOPK_CANDIDATES=0 turns this off (A/B tests).
  const char* env_cands = std::getenv("QWEN35_TOPK_CANDIDATES");
  const bool cands = !ids && ctx.backend().device_topk() && !(env_cands && std::string(env_cands) == "0");
  // Samplers without top-k ask for the best kMaxRequestK candidates and the
  // softmax normalizer instead (Sampler::full_request).
  TopKRequest req;
  auto request = [&](TopKRequest* r) { return sampler.topk_request(r) || sampler.full_request(r); };
  auto decode = [&](const int32_t* t, int32_t n) {
    if (ids) return ctx.decode_argmax(t, n, LogitsMode::Last);
    if (cands && request(&req)) {
      ++st.n_candidate_steps;
      return ctx.decode_topk(t, n, req);
    }
    return ctx.decode(t, n, LogitsMode::Last);
  };
  // The token sampled from call row i (logits, the kept argmax, or the kept
  // candidates); -1 with sample_err set if the row could not be fetched.
  Status sample_err;
  auto next_of = [&](int32_t i) -> int32_t {
    if (ctx.logits(i)) return sampler.sample(ctx.logits(i));
    if (TopKResult* c = ctx.topk(i)) {
      if (!sampler.samples_full()) return sampler.sample_topk(c->best);
      const int32_t t = sampler.sample_full(c->best, c->total);
      if (t >= 0) return t;
      // The draw went past the candidates: the same draw on the whole row.
      ++st.n_candidate_misses;
      std::vector<float> row;
      sample_err = ctx.topk_row(i, &row);
      return sample_err.ok() ? sampler.sample_adjusted(row.data()) : -1;
    }
    return ctx.argmax(i);
  };

  // ---- prompt ----
  const auto t0 = Clock::now();
  if (!prompt.empty()) {
    // Penalties over the prompt are recorded after it is decoded: its last
    // row's candidates would miss them, so that row keeps its logits.
    Status s = sampler.options().penalize_prompt ? ctx.decode(prompt.data(), int32_t(prompt.size()), LogitsMode::Last)
                                                 : decode(prompt.data(), int32_t(prompt.size()));
    if (!s.ok()) {
      if (s.code() == QWEN35_ERR_CANCELLED) {
        st.stop = StopReason::Cancelled;
        return finish(Status::Ok());
      }
      return finish(s);
    }
    st.n_prompt = int32_t(prompt.size());
    sampler.accept_prompt(prompt.data(), int32_t(prompt.size()));
    // A checkpoint at the end of the prompt makes a later truncation back to
    // here (the next chat turn re-rendering this reply) free.
    Status cs = ctx.checkpoint();
    (void)cs;  // only an optimization
  } else if (!ctx.logits(-1) && !(ids && ctx.argmax(-1) >= 0)) {
    // No logits for the last row (e.g. the previous call was cancelled):
    // recompute them by re-decoding that row.
    const int32_t np = ctx.n_past();
    if (np == 0 || ctx.tokens().back() < 0)
      return finish(Error(QWEN35_ERR_STATE, "nothing to generate from: give a prompt or decode one first"));
    const int32_t last = ctx.tokens().back();
    QWEN35_TRY(finish(ctx.truncate(np - 1)));
    Status s = decode(&last, 1);
    if (!s.ok()) return finish(s);
  }
  st.t_prompt_ms = ms_since(t0);

  // ---- generation ----
  const auto t1 = Clock::now();
  TextStream text(opt.stop);
  const bool mtp = opt.use_mtp && ctx.mtp_enabled();
  int32_t window_drafts = 0, window_accepted = 0, paused_until = -1, pause = policy.pause_tokens;
  // After a pause: shadow probes (see MtpPolicy) until a window decides.
  bool probing = policy.initial_pause > 0;
  int32_t probes = 0, probe_hits = 0;
  if (probing) paused_until = policy.initial_pause;
  bool stopped = false;

  // Emit one token: record it, stream its text, apply the stop rules.
  // Returns false when generation must stop after this token.
  auto emit = [&](int32_t tok) -> bool {
    sampler.accept(tok);
    ++st.n_generated;
    std::string piece;
    if (vocab) vocab->piece(tok, opt.render_special, &piece);
    std::string out = text.push(piece);
    const bool last = opt.max_tokens > 0 && st.n_generated >= opt.max_tokens;
    if (last && !text.matched()) out += text.flush();
    bool go_on = true;
    if (opt.on_token && !opt.on_token(tok, out)) {
      st.stop = StopReason::Cancelled;
      go_on = false;
    }
    if (text.matched()) {
      st.stop = StopReason::String;
      go_on = false;
    } else if (last && go_on) {
      st.stop = StopReason::MaxTokens;
      go_on = false;
    }
    return go_on;
  };
  // Whether a freshly sampled token ends generation before being emitted.
  auto ends_before_emit = [&](int32_t tok, int32_t rows_needed) -> bool {
    if (ctx.abort.load()) {
      st.stop = StopReason::Cancelled;
      return true;
    }
    if (!opt.ignore_eos && is_eog(tok)) {
      st.stop = StopReason::Eog;
      return true;
    }
    if (ctx.n_past() + rows_needed > ctx.n_ctx()) {
      st.stop = StopReason::ContextFull;
      return true;
    }
    return false;
  };
  // A pass of the loop failed. Every such pass begins with `emitted`, a
  // token already streamed to the caller; `rows` is the context's length
  // before it (without `emitted`). A failed decode leaves the context as it
  // was, but a speculative step can fail after its verify rows went in (in
  // the MTP pass after them). On a cancellation the context is brought to
  // exactly the emitted tokens: `emitted` is decoded (one row, not
  // cancellable) if missing, rows past it (an unemitted draft) are dropped.
  int32_t rows = 0;
  auto on_decode_error = [&](const Status& s, int32_t emitted) -> Status {
    if (s.code() != QWEN35_ERR_CANCELLED) return s;
    st.stop = StopReason::Cancelled;
    ctx.abort.store(false);
    Status keep;
    if (ctx.n_past() == rows) keep = ctx.decode(&emitted, 1, LogitsMode::None);
    else if (ctx.n_past() > rows + 1) keep = ctx.truncate(rows + 1);
    ctx.abort.store(true);
    return keep.code() == QWEN35_ERR_CANCELLED ? Status::Ok() : keep;
  };

  if (opt.max_tokens == 0) {
    st.stop = StopReason::MaxTokens;
    return finish(Status::Ok());
  }
  // The MTP draft of the token after `t`: the argmax of the draft logits,
  // computed where they are when the backend can (whatever the sampler: the
  // draft only decides what is verified, never what is emitted).
  auto draft_of = [&](int32_t t, int32_t* d) -> Status {
    if (ctx.backend().device_argmax()) return ctx.mtp_draft_argmax(t, d);
    const float* dl = nullptr;
    QWEN35_TRY(ctx.mtp_draft(t, &dl));
    *d = argmax_logits(dl, V);
    return Status::Ok();
  };
  int32_t tok = next_of(-1);
  if (tok < 0) return finish(sample_err);
  int32_t draft = -1;  // (ids) the MTP draft of the token after `tok`, from the last speculative step
  while (!stopped) {
    if (ends_before_emit(tok, 1)) break;
    const bool go_on = emit(tok);
    rows = ctx.n_past();  // `tok` is not in the context yet
    // `tok` is emitted; put it in the context (also when stopping, so the
    // context holds exactly the emitted tokens).
    const bool may_draft = go_on && mtp && st.n_generated > paused_until && ctx.n_past() + 2 <= ctx.n_ctx();
    const bool draft_now = may_draft && !probing;
    // While paused, the MTP cache rows of plain steps wait and are computed
    // in one batch when drafting resumes (or a probe drafts).
    if (mtp) ctx.set_mtp_lazy(!draft_now);
    if (may_draft && probing) {
      // Shadow probe: draft the token after `tok`, take a plain step, compare.
      int32_t d = -1;
      Status s = draft_of(tok, &d);
      if (!s.ok()) return finish(on_decode_error(s, tok));
      s = decode(&tok, 1);
      ++st.n_main_passes;
      if (!s.ok()) return finish(on_decode_error(s, tok));
      tok = next_of(-1);
      if (tok < 0) return finish(sample_err);
      draft = -1;
      ++probes;
      if (tok == d) ++probe_hits;
      if (probes >= policy.window) {
        if (double(probe_hits) >= policy.min_rate * double(probes)) {
          probing = false;  // the drafter helps again: draft for real
          pause = policy.pause_tokens;
        } else {
          paused_until = st.n_generated + pause;
          pause = std::min(2 * pause, policy.max_pause);
        }
        probes = probe_hits = 0;
      }
      continue;
    }
    if (!draft_now) {
      Status s = decode(&tok, 1);
      ++st.n_main_passes;
      if (!s.ok()) return finish(on_decode_error(s, tok));
      if (!go_on) break;
      tok = next_of(-1);
      if (tok < 0) return finish(sample_err);
      draft = -1;
      continue;
    }
    if (ids) {
      // Verify [tok, draft]; the context also drafts the token after the next one.
      if (draft < 0) {
        Status s = draft_of(tok, &draft);
        if (!s.ok()) return finish(on_decode_error(s, tok));
      }
      const int32_t d = draft;
      SpecStep r;
      Status s = ctx.speculate_greedy(tok, d, &r);
      ++st.n_main_passes;
      ++st.n_drafted;
      ++window_drafts;
      if (!s.ok()) return finish(on_decode_error(s, tok));
      draft = r.next_draft;
      if (r.accepted && ((is_eog(d) && !opt.ignore_eos) || ctx.abort.load())) {
        // The draft is not emitted: drop its row; the next token is the draft.
        s = ctx.rollback_to_snapshot();
        if (!s.ok()) return finish(s);
        tok = d;
        draft = -1;
      } else if (r.accepted) {
        ++st.n_accepted;
        ++window_accepted;
        if (!emit(d)) break;  // both tokens are in the context
        tok = r.next;
      } else {
        tok = r.next;
      }
    } else {
      // Draft the token after `tok` with the MTP head, verify both in one pass.
      int32_t d = -1;
      Status s = draft_of(tok, &d);
      if (!s.ok()) return finish(on_decode_error(s, tok));
      const int32_t pair[2] = {tok, d};
      // With candidates: row 1 is sampled only after the draft is accepted,
      // so its request already counts the draft.
      TopKRequest reqs[2];
      const bool have_reqs = cands && ((sampler.topk_request(&reqs[0]) && sampler.topk_request_after(d, &reqs[1])) ||
                                       (sampler.full_request(&reqs[0]) && sampler.full_request_after(d, &reqs[1])));
      if (have_reqs) {
        st.n_candidate_steps += 1;
        s = ctx.decode_with_snapshot_topk(pair, 2, reqs);
      } else {
        s = ctx.decode_with_snapshot(pair, 2, LogitsMode::All);
      }
      ++st.n_main_passes;
      ++st.n_drafted;
      ++window_drafts;
      if (!s.ok()) return finish(on_decode_error(s, tok));
      const int32_t y0 = next_of(0);
      if (y0 < 0) return finish(sample_err);
      if (y0 == d && !(is_eog(d) && !opt.ignore_eos) && !ctx.abort.load()) {
        ++st.n_accepted;
        ++window_accepted;
        if (!emit(d)) break;  // both tokens are in the context
        tok = next_of(1);
        if (tok < 0) return finish(sample_err);
      } else {
        // Reject: keep the rows through `tok`, drop the draft's row.
        s = ctx.rollback_to_snapshot();
        if (!s.ok()) return finish(s);
        tok = y0;
      }
    }
    if (window_drafts >= policy.window) {
      if (double(window_accepted) < policy.min_rate * double(window_drafts)) {
        paused_until = st.n_generated + pause;
        pause = std::min(2 * pause, policy.max_pause);
        probing = true;
      } else {
        pause = policy.pause_tokens;
      }
      window_drafts = window_accepted = 0;
    }
  }
  // Release text held back for a possible stop string that never came.
  if (st.stop != StopReason::String && st.stop != StopReason::MaxTokens) {
    std::string rest = text.flush();
    if (!rest.empty() && opt.on_token) opt.on_token(-1, rest);
  }
  st.t_generate_ms = ms_since(t1);
  return finish(Status::Ok());
}

}  // namespace qwen35
