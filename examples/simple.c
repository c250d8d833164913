/* simple.c - the smallest qwen35 chat: load, chat, stream, free.
 *   usage: simple MODEL.gguf ["your question"] */
#include <stdio.h>
#include <string.h>

#include "qwen35/qwen35.h"

static bool on_token(qwen35_token token, const char * piece, size_t len, void * user_data) {
    (void) token; (void) user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true; /* keep going */
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [\"question\"]\n", argv[0]);
        return 2;
    }
    const char * question = argc > 2 ? argv[2] : "Give me three facts about the Moon.";

    qwen35_model * model = NULL;
    if (qwen35_model_load(argv[1], NULL, &model) != QWEN35_OK) {
        fprintf(stderr, "load failed: %s\n", qwen35_errmsg());
        return 1;
    }
    qwen35_context * ctx = NULL;
    qwen35_context_params cparams = qwen35_context_default_params();
    cparams.n_ctx = 2048;
    if (qwen35_context_create(model, &cparams, &ctx) != QWEN35_OK) {
        fprintf(stderr, "context failed: %s\n", qwen35_errmsg());
        qwen35_model_free(model);
        return 1;
    }
    qwen35_sampler_params sparams = qwen35_sampler_default_params(false); /* non-thinking defaults */
    qwen35_sampler * sampler = NULL;
    qwen35_sampler_create(model, &sparams, &sampler);

    qwen35_chat_message msg;
    memset(&msg, 0, sizeof msg);
    msg.role = "user";
    msg.content = question;
    qwen35_chat_params chat = qwen35_chat_default_params();
    chat.enable_thinking = 0;

    qwen35_generate_params gen = qwen35_generate_default_params();
    gen.max_tokens = 256;
    gen.on_token = on_token;
    qwen35_generate_stats stats;
    qwen35_status st = qwen35_chat_generate(ctx, sampler, &msg, 1, &chat, &gen, &stats);
    printf("\n");
    if (st != QWEN35_OK) fprintf(stderr, "generation failed: %s\n", qwen35_context_errmsg(ctx));
    else fprintf(stderr, "%d tokens, %.1f tok/s\n", stats.n_generated, stats.generate_tokens_per_s);

    qwen35_sampler_free(sampler);
    qwen35_context_free(ctx);
    qwen35_model_free(model);
    return st == QWEN35_OK ? 0 : 1;
}
