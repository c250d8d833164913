// C API: sampler and generation.
#include <chrono>
#include <new>

#include "bindings/c/handles.h"
#include "generate.h"
#include "sampler.h"

using namespace qwen35;

struct qwen35_sampler {
  std::unique_ptr<Sampler> s;
  int32_t n_vocab = 0;
};

namespace qwen35 {
Sampler* sampler_impl(qwen35_sampler* s) { return s ? s->s.get() : nullptr; }
}  // namespace qwen35

extern "C" {

qwen35_sampler_params qwen35_sampler_default_params(bool thinking) {
  qwen35_sampler_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  // Qwen3.5 model-card recommendations (spec tokenizer-chat.md §7.2).
  p.temperature = thinking ? 1.0f : 0.7f;
  p.top_p = thinking ? 0.95f : 0.8f;
  p.top_k = 20;
  p.min_p = 0.0f;
  p.presence_penalty = 1.5f;
  p.repeat_penalty = 1.0f;
  p.frequency_penalty = 0.0f;
  p.penalty_last_n = -1;
  p.seed = 0x5EEDull;
  return p;
}

qwen35_sampler_params qwen35_sampler_greedy_params(void) {
  qwen35_sampler_params p = qwen35_sampler_default_params(false);
  p.temperature = 0.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.presence_penalty = 0.0f;
  return p;
}

qwen35_status qwen35_sampler_create(const qwen35_model* model, const qwen35_sampler_params* params,
                                    qwen35_sampler** out) {
  if (out) *out = nullptr;
  if (!model || !out) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_sampler_create: NULL argument");
  const qwen35_sampler_params p = read_params(params, qwen35_sampler_default_params(true));
  if (!(p.temperature >= 0.0f || p.temperature < 0.0f) || p.top_p < 0.0f || p.min_p < 0.0f || p.min_p > 1.0f ||
      !(p.repeat_penalty > 0.0f))
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_sampler_create: temperature must be a number, top_p >= 0, "
                                             "0 <= min_p <= 1 and repeat_penalty > 0");
  if (p.n_logit_bias && !p.logit_bias)
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_sampler_create: logit_bias is NULL but n_logit_bias > 0");
  SamplerOptions o;
  o.temperature = p.temperature;
  o.top_k = p.top_k;
  o.top_p = p.top_p;
  o.min_p = p.min_p;
  o.repeat_penalty = p.repeat_penalty;
  o.presence_penalty = p.presence_penalty;
  o.frequency_penalty = p.frequency_penalty;
  o.penalty_last_n = p.penalty_last_n;
  o.penalize_prompt = p.penalize_prompt;
  o.seed = p.seed;
  const int32_t V = model->m->hp.n_vocab;
  for (size_t i = 0; i < p.n_logit_bias; ++i) {
    const qwen35_logit_bias& b = p.logit_bias[i];
    if (b.token < 0 || b.token >= V)
      return set_error(QWEN35_ERR_INVALID_ARG, fmt::format("logit_bias token {} is out of range [0, {})", b.token, V));
    o.logit_bias.push_back({b.token, b.bias});
  }
  std::unique_ptr<qwen35_sampler> h(new (std::nothrow) qwen35_sampler());
  if (!h) return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  try {
    h->s = std::make_unique<Sampler>(V, o);
  } catch (const std::bad_alloc&) {
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, "out of memory");
  }
  h->n_vocab = V;
  *out = h.release();
  return QWEN35_OK;
}

void qwen35_sampler_free(qwen35_sampler* s) { delete s; }

qwen35_token qwen35_sampler_sample(qwen35_sampler* s, const float* logits) {
  if (!s || !logits) {
    set_error(QWEN35_ERR_INVALID_ARG, "qwen35_sampler_sample: NULL argument");
    return -1;
  }
  return s->s->sample(logits);
}

void qwen35_sampler_accept(qwen35_sampler* s, qwen35_token token) {
  if (s && token >= 0 && token < s->n_vocab) s->s->accept(token);
}

void qwen35_sampler_accept_prompt(qwen35_sampler* s, const qwen35_token* tokens, int32_t n) {
  if (s && tokens && n > 0) s->s->accept_prompt(tokens, n);
}

void qwen35_sampler_reset(qwen35_sampler* s, uint64_t seed) {
  if (s) s->s->reset(seed == UINT64_MAX ? s->s->options().seed : seed);
}

qwen35_generate_params qwen35_generate_default_params(void) {
  qwen35_generate_params p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.max_tokens = -1;
  p.use_mtp = -1;
  return p;
}

}  // extern "C"

namespace qwen35 {

// Shared by qwen35_generate and qwen35_chat_generate.
qwen35_status run_generate(qwen35_context* ctx, qwen35_sampler* sampler, const std::vector<int32_t>& prompt,
                           const qwen35_generate_params* params, qwen35_generate_stats* stats) {
  const qwen35_generate_params p = read_params(params, qwen35_generate_default_params());
  if (p.n_stop && !p.stop) return set_error(QWEN35_ERR_INVALID_ARG, "stop is NULL but n_stop > 0", ctx);
  GenerateOptions o;
  o.max_tokens = p.max_tokens;
  o.ignore_eos = p.ignore_eos;
  o.use_mtp = p.use_mtp < 0 ? true : p.use_mtp != 0;
  for (size_t i = 0; i < p.n_stop; ++i)
    if (p.stop[i] && *p.stop[i]) o.stop.emplace_back(p.stop[i]);
  if (p.on_token) {
    auto cb = p.on_token;
    void* ud = p.user_data;
    o.on_token = [cb, ud](int32_t tok, const std::string& piece) { return cb(tok, piece.data(), piece.size(), ud); };
  }
  GenerateStats st;
  Status s = guarded("generation", [&] { return Generate(*ctx->ctx, *sampler->s, prompt, o, &st); });
  if (stats) {
    stats->n_prompt = st.n_prompt;
    stats->n_generated = st.n_generated;
    stats->t_prompt_ms = st.t_prompt_ms;
    stats->t_generate_ms = st.t_generate_ms;
    stats->prompt_tokens_per_s = st.t_prompt_ms > 0 ? 1000.0 * st.n_prompt / st.t_prompt_ms : 0;
    stats->generate_tokens_per_s = st.t_generate_ms > 0 ? 1000.0 * st.n_generated / st.t_generate_ms : 0;
    stats->n_drafted = st.n_drafted;
    stats->n_accepted = st.n_accepted;
    stats->n_main_passes = st.n_main_passes;
    stats->stop_reason = qwen35_stop_reason(st.stop);
  }
  return s.ok() ? QWEN35_OK : set_error(s, ctx);
}

}  // namespace qwen35

extern "C" qwen35_status qwen35_generate(qwen35_context* ctx, qwen35_sampler* sampler, const qwen35_token* prompt,
                                         int32_t n_prompt, const qwen35_generate_params* params,
                                         qwen35_generate_stats* stats) {
  if (stats) std::memset(stats, 0, sizeof *stats);
  if (!ctx || !sampler) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_generate: ctx and sampler must not be NULL");
  clear_error(ctx);
  if (n_prompt < 0 || (n_prompt > 0 && !prompt))
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_generate: bad prompt", ctx);
  if (sampler->n_vocab != ctx->model->m->hp.n_vocab)
    return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_generate: the sampler was made for another model", ctx);
  ctx->ctx->abort.store(false);
  std::vector<int32_t> p(prompt, prompt + n_prompt);
  return run_generate(ctx, sampler, p, params, stats);
}
