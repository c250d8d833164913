// C API: qwen35_chat_generate — render a conversation, reuse the prefix the
// context already holds, decode the rest (text and images), generate.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "bindings/c/handles.h"
#include "chat/chat.h"
#include "sampler.h"
#include "tokenizer.h"
#include "vision/vision.h"

namespace qwen35 {

Status ConvertChatRequest(const qwen35_chat_message* messages, size_t n, const qwen35_chat_params* params,
                          std::vector<ChatMessage>* msgs, ChatOptions* opt);
qwen35_status run_generate(qwen35_context* ctx, qwen35_sampler* sampler, const std::vector<int32_t>& prompt,
                           const qwen35_generate_params* params, qwen35_generate_stats* stats);
Sampler* sampler_impl(qwen35_sampler* s);

namespace {

// The prompt as rows: token ids, with image rows as -1 plus their embedding.
struct PromptRows {
  std::vector<int32_t> tokens;           // per row; -1 = image row
  std::vector<const float*> embd;        // per row: embedding for image rows
  struct Image {
    int32_t row0;                        // first image row (right after <|vision_start|>)
    const vision::ImageEmbed* e;
  };
  std::vector<Image> images;
};

Status build_rows(const Model& model, const RenderedChat& r, PromptRows* out) {
  const Vocab& vocab = *model.vocab;
  std::vector<int32_t> toks;
  QWEN35_TRY(vocab.tokenize(r.prompt, /*add_special=*/true, /*parse_special=*/true, &toks));
  const int32_t pad = vocab.find("<|image_pad|>");
  const int32_t video_pad = vocab.find("<|video_pad|>");
  size_t media_i = 0;
  for (int32_t t : toks) {
    const bool is_pad = t >= 0 && (t == pad || t == video_pad);
    if (!is_pad) {
      out->tokens.push_back(t);
      out->embd.push_back(nullptr);
      continue;
    }
    // Pads come from media parts, in order (RenderedChat::media).
    if (media_i >= r.media.size())
      return Error(QWEN35_ERR_INVALID_ARG, "the prompt has more image placeholders than the messages have images");
    const ContentPart& part = r.media[media_i++];
    if (part.type == ContentPart::Type::Video)
      return Error(QWEN35_ERR_UNSUPPORTED, "video input is not supported");
    if (!part.media)
      return Error(QWEN35_ERR_INVALID_ARG, "an image part has no encoded image (qwen35_image_encode it first)");
    const auto* h = static_cast<const qwen35_image_embed*>(part.media);
    const vision::ImageEmbed& e = h->e;
    if (e.n_embd != model.hp.n_embd)
      return Error(QWEN35_ERR_INVALID_ARG, "an image was encoded for width {} but the model has {}", e.n_embd,
                   model.hp.n_embd);
    if (out->tokens.empty() || out->tokens.back() != vocab.find("<|vision_start|>"))
      return Error(QWEN35_ERR_FORMAT, "the chat template put an image placeholder outside <|vision_start|>");
    out->images.push_back({int32_t(out->tokens.size()), &e});
    for (int32_t m = 0; m < e.n_tokens(); ++m) {
      out->tokens.push_back(-1);
      out->embd.push_back(e.data.data() + size_t(m) * size_t(e.n_embd));
    }
  }
  return Status::Ok();
}

// Rows the context already holds that equal the new prompt's first rows.
int32_t common_prefix(const Context& ctx, const PromptRows& p, size_t D) {
  const auto& have = ctx.tokens();
  const size_t n = std::min(have.size(), p.tokens.size());
  size_t i = 0;
  for (; i < n; ++i) {
    if (have[i] != p.tokens[i]) break;
    if (have[i] < 0) {
      const float* e = ctx.row_embedding(int32_t(i));
      if (!e || std::memcmp(e, p.embd[i], D * sizeof(float)) != 0) break;
    }
  }
  return int32_t(i);
}

}  // namespace
}  // namespace qwen35

using namespace qwen35;

extern "C" qwen35_status qwen35_chat_generate(qwen35_context* ctx, qwen35_sampler* sampler,
                                              const qwen35_chat_message* messages, size_t n,
                                              const qwen35_chat_params* chat_params,
                                              const qwen35_generate_params* params, qwen35_generate_stats* stats) {
  if (stats) std::memset(stats, 0, sizeof *stats);
  if (!ctx || !sampler) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_generate: ctx and sampler must not be NULL");
  clear_error(ctx);
  const Model& model = *ctx->model->m;
  if (!model.vocab) return set_error(QWEN35_ERR_UNSUPPORTED, "qwen35_chat_generate: the model has no tokenizer", ctx);
  if (n == 0) return set_error(QWEN35_ERR_INVALID_ARG, "qwen35_chat_generate: no messages", ctx);
  ctx->ctx->abort.store(false);
  try {
    std::vector<ChatMessage> msgs;
    ChatOptions opt;
    Status st = ConvertChatRequest(messages, n, chat_params, &msgs, &opt);
    if (!st.ok()) return set_error(st.prefix("qwen35_chat_generate: "), ctx);
    RenderedChat r;
    st = RenderChat(model, msgs, opt, &r);
    if (!st.ok()) return set_error(st, ctx);
    PromptRows rows;
    st = build_rows(model, r, &rows);
    if (!st.ok()) return set_error(st, ctx);
    if (rows.tokens.empty()) return set_error(QWEN35_ERR_INVALID_ARG, "the rendered prompt is empty", ctx);
    Context& c = *ctx->ctx;
    if (int64_t(rows.tokens.size()) > c.n_ctx())
      return set_error(Error(QWEN35_ERR_CONTEXT_FULL, "the prompt has {} rows but the context holds {}",
                             rows.tokens.size(), c.n_ctx()),
                       ctx);

    // Reuse what the context already holds; at least the last row is
    // decoded again so that its logits exist.
    const auto t0 = std::chrono::steady_clock::now();
    int32_t keep = common_prefix(c, rows, size_t(model.hp.n_embd));
    if (keep >= int32_t(rows.tokens.size())) keep = int32_t(rows.tokens.size()) - 1;
    // Never resume inside an image: its rows are decoded as one unit right
    // after <|vision_start|>, so back up to that token.
    for (const PromptRows::Image& im : rows.images)
      if (keep > im.row0 - 1 && keep < im.row0 + im.e->n_tokens()) keep = im.row0 - 1;
    st = c.truncate(keep);
    if (!st.ok()) return set_error(st, ctx);

    // Decode the rest: token runs and whole images, logits for the last row only.
    const int32_t total = int32_t(rows.tokens.size());
    int32_t at = keep;
    size_t img = 0;
    while (img < rows.images.size() && rows.images[img].row0 < at) ++img;
    while (at < total) {
      const int32_t run_end = img < rows.images.size() ? rows.images[img].row0 : total;
      if (at < run_end) {
        st = c.decode(rows.tokens.data() + at, run_end - at,
                      run_end == total ? LogitsMode::Last : LogitsMode::None);
        if (!st.ok()) break;
        at = run_end;
      }
      if (at == total) break;
      const PromptRows::Image& im = rows.images[img++];
      st = vision::DecodeImageRows(c, *im.e, LogitsMode::None);
      if (!st.ok()) break;
      at += im.e->n_tokens();
    }
    if (!st.ok()) {
      // Leave the context at the reused prefix (exact), report the failure.
      Status ts = c.truncate(keep);
      (void)ts;
      return set_error(st, ctx);
    }
    const double prompt_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const int32_t n_prompt = total - keep;
    Status cs = c.checkpoint();  // the next turn usually truncates back to here
    (void)cs;
    std::vector<int32_t> prompt_tokens;
    for (int32_t t : rows.tokens)
      if (t >= 0) prompt_tokens.push_back(t);
    sampler_impl(sampler)->accept_prompt(prompt_tokens.data(), int32_t(prompt_tokens.size()));

    qwen35_status rs = run_generate(ctx, sampler, {}, params, stats);
    if (stats) {
      stats->n_prompt = n_prompt;
      stats->t_prompt_ms = prompt_ms;
      stats->prompt_tokens_per_s = prompt_ms > 0 ? 1000.0 * n_prompt / prompt_ms : 0;
    }
    return rs;
  } catch (const std::bad_alloc&) {
    return set_error(QWEN35_ERR_OUT_OF_MEMORY, "qwen35_chat_generate: out of memory", ctx);
  } catch (const std::exception& e) {
    return set_error(QWEN35_ERR_BACKEND, fmt::format("qwen35_chat_generate: {}", e.what()), ctx);
  }
}
