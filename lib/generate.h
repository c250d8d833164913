// Token generation over a Context: sampling, stop conditions, streaming text,
// and MTP speculative decoding (spec §5.5). The loop only talks to the
// Context, so it drives every backend (CPU now, CUDA the same way).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "context.h"
#include "sampler.h"
#include "status.h"

namespace qwen35 {

enum class StopReason { None = 0, Eog = 1, MaxTokens = 2, String = 3, Cancelled = 4, ContextFull = 5 };

struct GenerateOptions {
  int32_t max_tokens = -1;              // -1: until EOG or the context is full
  std::vector<std::string> stop;        // stop strings, never emitted
  bool ignore_eos = false;
  bool use_mtp = true;                  // draft with the MTP head when the context has it
  bool render_special = false;          // include control tokens in the streamed text
  // Called for every emitted token with the text it completes (possibly
  // empty). Return false to stop.
  std::function<bool(int32_t token, const std::string& piece)> on_token;
};

struct GenerateStats {
  int32_t n_prompt = 0;
  int32_t n_generated = 0;
  double t_prompt_ms = 0;
  double t_generate_ms = 0;
  int32_t n_drafted = 0;
  int32_t n_accepted = 0;
  int32_t n_main_passes = 0;
  int32_t n_candidate_steps = 0;  // main passes that returned sampling candidates (Backend::eval_topk)
  int32_t n_candidate_misses = 0; // samples without top-k that needed the whole row after all
  StopReason stop = StopReason::None;
};

// Adaptive drafting: after a window of drafts with low acceptance the loop
// stops drafting for a while, then probes again; every failed probe doubles
// the pause, so a drafter that never helps costs almost nothing in the long
// run (only the MTP cache upkeep). Probes are shadow drafts: the MTP head
// drafts the next token, the step runs without it (no two-row verify, no
// rollback) and the draft is compared with the token the step produces;
// real drafting resumes when a window of probes reaches min_rate. Exposed
// for tests.
struct MtpPolicy {
  int32_t window = 4;           // drafts (or probes) per acceptance measurement
  double min_rate = 0.25;       // below this the drafter is paused
  int32_t pause_tokens = 32;    // first pause (tokens generated without drafting)
  int32_t max_pause = 1024;     // longest pause
  int32_t initial_pause = 0;    // tokens before the first probe (0: draft from the start)
};

// Decode `prompt` (may be empty when the context already has logits for its
// last row), then generate. Every emitted token is recorded in the sampler
// and stays in the context; an end-of-generation token is neither emitted
// nor decoded.
Status Generate(Context& ctx, Sampler& sampler, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                GenerateStats* stats, const MtpPolicy& policy = MtpPolicy());

}  // namespace qwen35
