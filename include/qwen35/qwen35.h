/*
 * qwen35.h - the public C API of the qwen35 inference library.
 *
 * This header is the whole contract: anything not declared here is internal.
 *
 * Conventions (in the spirit of sqlite3.h):
 *  - Opaque handles with paired verbs: *_load / *_create and *_free.
 *    Every *_free(NULL) is a harmless no-op.
 *  - Parameter structs start with `struct_size`; get them from
 *    *_default_params() and change only the fields you need. A library built
 *    against a newer header accepts older (smaller) structs.
 *  - Functions return a qwen35_status (0 = QWEN35_OK). The message of the last
 *    failure is available per context (qwen35_context_errmsg) and per calling
 *    thread (qwen35_errmsg); never process-wide.
 *  - Library code never prints to stdout/stderr, never aborts and never exits.
 *    Diagnostics go to the log callback installed by the embedder.
 *  - Strings are UTF-8, NUL-terminated unless a length is given.
 *
 * Threading, stated per function by a tag at the end of its declaration:
 *  - A qwen35_model, a qwen35_mmproj and a qwen35_image_embed are immutable
 *    once created and may be shared by any number of contexts and threads.
 *  - [any]: may be called from any thread, concurrently with any other call.
 *  - [ctx], [sampler], [detok], [parser]: calls on the same context (sampler,
 *    detokenizer, reply parser) must not overlap; different handles are
 *    independent, so the usual design is one thread per context.
 *    [ctx+sampler]: both. qwen35_context_abort() is the exception: [any].
 *  - [free]: no other call on that handle may overlap it; a model is freed
 *    after its contexts and samplers, a projector after its encodes.
 *
 * Ownership: a pointer a function returns is owned by the handle it came from
 * (valid as that function says), unless the function gives it to the caller
 * and names the matching *_free.
 */
#ifndef QWEN35_H
#define QWEN35_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#if defined(_WIN32) && !defined(QWEN35_STATIC)
#  ifdef QWEN35_BUILD
#    define QWEN35_API __declspec(dllexport)
#  else
#    define QWEN35_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define QWEN35_API __attribute__((visibility("default")))
#else
#  define QWEN35_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                   */
/* ------------------------------------------------------------------------ */

#define QWEN35_VERSION_MAJOR 0
#define QWEN35_VERSION_MINOR 1
#define QWEN35_VERSION_PATCH 0
#define QWEN35_VERSION_STRING "0.1.0"
/* Single number for compile-time comparison: major*10000 + minor*100 + patch. */
#define QWEN35_VERSION_NUMBER 100

/* The version of the library actually linked (compare with the macros). */
QWEN35_API const char * qwen35_version(void); /* [any] */
QWEN35_API int          qwen35_version_number(void); /* [any] */

/* ------------------------------------------------------------------------ */
/* Status codes and errors                                                   */
/* ------------------------------------------------------------------------ */

typedef enum qwen35_status {
    QWEN35_OK                 =  0,
    QWEN35_ERR_INVALID_ARG    = -1,  /* null handle, out-of-range value, bad token id */
    QWEN35_ERR_IO             = -2,  /* file cannot be opened / read / written */
    QWEN35_ERR_FORMAT         = -3,  /* corrupt or truncated file, bad GGUF, bad image */
    QWEN35_ERR_UNSUPPORTED    = -4,  /* valid file but not something this library runs */
    QWEN35_ERR_OUT_OF_MEMORY  = -5,
    QWEN35_ERR_CONTEXT_FULL   = -6,  /* the request does not fit in n_ctx; state unchanged */
    QWEN35_ERR_CANCELLED      = -7,  /* a callback or qwen35_context_abort() stopped the work */
    QWEN35_ERR_BACKEND        = -8,  /* the compute device failed (CUDA error, ...) */
    QWEN35_ERR_STATE          = -9,  /* call not valid in the current state */
    QWEN35_ERR_BUFFER_TOO_SMALL = -10 /* output buffer too small; size reported */
} qwen35_status;

/* Static description of a status code ("invalid argument", ...). Never NULL. */
QWEN35_API const char * qwen35_status_str(qwen35_status status); /* [any] */

/* Message of the most recent failure of a qwen35_* call made by the calling
 * thread ("" if none). Valid until the next failing call on this thread. */
QWEN35_API const char * qwen35_errmsg(void); /* [any] */

/* Logging. The library never prints; it passes messages to this callback.
 * Install one per model (model params) or process-wide default here; NULL
 * silences logging. The callback may be called from worker threads. */
typedef enum qwen35_log_level {
    QWEN35_LOG_ERROR = 0, QWEN35_LOG_WARN = 1, QWEN35_LOG_INFO = 2, QWEN35_LOG_DEBUG = 3
} qwen35_log_level;
typedef void (*qwen35_log_callback)(qwen35_log_level level, const char * message, void * user_data);
/* Process-wide default log callback for models loaded without one (NULL = silent,
 * the initial state). Set it before loading models; thread-safe. */
QWEN35_API void qwen35_log_set(qwen35_log_callback callback, void * user_data); /* [any] */

/* ------------------------------------------------------------------------ */
/* Model                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct qwen35_model   qwen35_model;
typedef struct qwen35_context qwen35_context;
typedef struct qwen35_sampler qwen35_sampler;
typedef int32_t qwen35_token;

typedef enum qwen35_device {
    QWEN35_DEVICE_AUTO = 0,   /* CUDA if a usable GPU is present, else CPU */
    QWEN35_DEVICE_CPU  = 1,
    QWEN35_DEVICE_CUDA = 2
} qwen35_device;

/* Called during loading with progress in [0, 1]. Return false to cancel the
 * load (qwen35_model_load then returns QWEN35_ERR_CANCELLED). */
typedef bool (*qwen35_progress_callback)(float progress, void * user_data);

typedef struct qwen35_model_params {
    size_t struct_size;               /* = sizeof(qwen35_model_params) */
    bool   use_mmap;                  /* map the file (default true); false reads it into memory */
    qwen35_device device;             /* default AUTO */
    int    device_index;              /* CUDA device ordinal (default 0) */
    int    n_gpu_layers;              /* llama.cpp compatibility: 0 forces CPU, anything else is "all" (default -1) */
    qwen35_progress_callback progress_callback; void * progress_user_data;
    qwen35_log_callback      log_callback;      void * log_user_data;
} qwen35_model_params;

QWEN35_API qwen35_model_params qwen35_model_default_params(void); /* [any] */

/* Load a qwen35 GGUF file. On success *out_model owns the mapping/weights;
 * release it with qwen35_model_free() after every context using it is freed.
 * On failure *out_model is NULL and qwen35_errmsg() says what is wrong and
 * where (key or tensor name, byte offset). params may be NULL (defaults). */
QWEN35_API qwen35_status qwen35_model_load(const char * path, const qwen35_model_params * params,
                                           qwen35_model ** out_model); /* [any] */
QWEN35_API void qwen35_model_free(qwen35_model * model); /* [free] */

/* Model facts. All return 0 / NULL for a NULL model. Thread-safe. */
QWEN35_API int32_t qwen35_model_n_vocab(const qwen35_model * model); /* [any] */
QWEN35_API int32_t qwen35_model_n_ctx_train(const qwen35_model * model); /* [any] */
QWEN35_API int32_t qwen35_model_n_embd(const qwen35_model * model); /* [any] */
QWEN35_API int32_t qwen35_model_n_layer(const qwen35_model * model);   /* main layers, without MTP [any] */
QWEN35_API bool    qwen35_model_has_mtp(const qwen35_model * model); /* [any] */
QWEN35_API qwen35_device qwen35_model_device(const qwen35_model * model); /* where it runs: CPU or CUDA [any] */
/* Bytes of weights the model holds in host memory it allocated (0 when mmapped
 * and used in place) and on the device. */
QWEN35_API uint64_t qwen35_model_host_bytes(const qwen35_model * model); /* [any] */
QWEN35_API uint64_t qwen35_model_device_bytes(const qwen35_model * model); /* [any] */
QWEN35_API uint64_t qwen35_model_file_bytes(const qwen35_model * model); /* [any] */
/* Free and total memory of CUDA device device_index, in bytes (for budgeting
 * n_ctx before creating contexts). QWEN35_ERR_UNSUPPORTED when the library was
 * built without CUDA or no device is usable; QWEN35_ERR_INVALID_ARG for a bad
 * index. Thread-safe. */
QWEN35_API qwen35_status qwen35_cuda_memory_info(int device_index, uint64_t * free_bytes, uint64_t * total_bytes); /* [any] */
/* One-line human description, e.g. "qwen35 4.3B NVFP4 (32+1 layers, vocab 248320)". */
QWEN35_API const char * qwen35_model_desc(const qwen35_model * model); /* [any] */

/* Metadata lookup by GGUF key. Scalars are rendered as text ("262144",
 * "1e-06", "true"); strings are returned as is; arrays as "[array of N type]".
 * Writes at most buf_size bytes including the NUL; returns the full length of
 * the value (as snprintf does), or -1 if the key does not exist. */
QWEN35_API int32_t qwen35_model_meta(const qwen35_model * model, const char * key, char * buf, size_t buf_size); /* [any] */
QWEN35_API int32_t qwen35_model_meta_count(const qwen35_model * model); /* [any] */
/* Key of the i-th metadata entry (file order), or NULL if out of range. The
 * string is owned by the model and valid until qwen35_model_free. */
QWEN35_API const char * qwen35_model_meta_key(const qwen35_model * model, int32_t i); /* [any] */

/* ------------------------------------------------------------------------ */
/* Context: the per-conversation state (KV cache, recurrent state)           */
/* ------------------------------------------------------------------------ */

typedef struct qwen35_context_params {
    size_t  struct_size;      /* = sizeof(qwen35_context_params) */
    int32_t n_ctx;            /* maximum tokens held (default 4096; 0 = trained context) */
    int32_t n_batch;          /* max tokens per internal prefill chunk (default 512) */
    int32_t n_threads;        /* CPU threads (default: number of physical cores, max 16) */
    bool    use_mtp;          /* speculative decoding with the model's MTP layer when present (default true) */
    bool    mtp_prenorm;      /* feed the MTP the pre-norm hidden instead of the post-norm one (A/B only; default false) */
    bool    reference;        /* run the slow float reference path (oracle for tests; default false) */
    bool    mtp_logits;       /* with use_mtp: also compute MTP logits for every MTP cache row a decode
                                 fills (testing/analysis; see qwen35_context_mtp_logits; default false) */
} qwen35_context_params;

QWEN35_API qwen35_context_params qwen35_context_default_params(void); /* [any] */

/* Create a context on a model. The model must outlive the context. */
QWEN35_API qwen35_status qwen35_context_create(qwen35_model * model, const qwen35_context_params * params,
                                               qwen35_context ** out_ctx); /* [any] */
QWEN35_API void qwen35_context_free(qwen35_context * ctx); /* [free] */

/* Message of the last failure on this context ("" if none). Owned by ctx. */
QWEN35_API const char * qwen35_context_errmsg(const qwen35_context * ctx); /* [ctx] */
QWEN35_API const qwen35_model * qwen35_context_model(const qwen35_context * ctx); /* [ctx] */
QWEN35_API int32_t qwen35_context_n_ctx(const qwen35_context * ctx); /* [ctx] */
/* Number of rows (tokens or image embeddings) currently held. */
QWEN35_API int32_t qwen35_context_n_past(const qwen35_context * ctx); /* [ctx] */
/* Bytes of state this context allocated (KV cache, recurrent state, scratch). */
QWEN35_API uint64_t qwen35_context_memory_bytes(const qwen35_context * ctx); /* [ctx] */

/* Which rows of a decode call produce logits. */
typedef enum qwen35_logits_mode {
    QWEN35_LOGITS_LAST = 0,   /* only the last row (default) */
    QWEN35_LOGITS_ALL  = 1,   /* every row */
    QWEN35_LOGITS_NONE = 2    /* none (prefill only) */
} qwen35_logits_mode;

/* Append n tokens and run the model over them. On error the context is left
 * exactly as before the call (bad token id, QWEN35_ERR_CONTEXT_FULL, ...). */
QWEN35_API qwen35_status qwen35_context_decode(qwen35_context * ctx, const qwen35_token * tokens, int32_t n,
                                               qwen35_logits_mode mode); /* [ctx] */

/* Logits of row i of the last decode call (i = -1: its last row). Returns a
 * pointer to n_vocab floats owned by ctx, valid until the next call that
 * changes the context, or NULL if that row has no logits. */
QWEN35_API const float * qwen35_context_logits(qwen35_context * ctx, int32_t i); /* [ctx] */
/* Post-output_norm hidden state of row i of the last decode call (n_embd
 * floats), same rules as qwen35_context_logits. Available for every row. */
QWEN35_API const float * qwen35_context_hidden(qwen35_context * ctx, int32_t i); /* [ctx] */
/* MTP head ("NextN" layer, models with qwen35_model_has_mtp only).
 * When the context was created with use_mtp, every decode call also keeps the
 * MTP layer's own KV cache complete: row i's hidden state is paired with the
 * token of row i+1 (the last row waits for the next call's first token).
 * qwen35_context_mtp_draft() runs the head on the last decoded row paired with
 * next_token (normally the token just sampled from that row's logits) and
 * returns the draft logits for the token after it (n_vocab floats, owned by
 * ctx, valid until the next call). The MTP cache entry it adds is provisional
 * and replaced by the next decode. */
QWEN35_API qwen35_status qwen35_context_mtp_draft(qwen35_context * ctx, qwen35_token next_token,
                                                  const float ** out_logits); /* [ctx] */

/* With mtp_logits: the MTP logits of MTP row `pos` (the prediction of the
 * token at row pos+2 from the hidden of row pos and the token of row pos+1)
 * if the last decode call filled that row, else NULL. */
QWEN35_API const float * qwen35_context_mtp_logits(qwen35_context * ctx, int32_t pos); /* [ctx] */

/* Forget everything (n_past = 0). */
QWEN35_API void qwen35_context_reset(qwen35_context * ctx); /* [ctx] */
/* Keep only the first n_keep rows (0 <= n_keep <= n_past). Exact: the
 * recurrent state is restored from a checkpoint and replayed if necessary. */
QWEN35_API qwen35_status qwen35_context_truncate(qwen35_context * ctx, int32_t n_keep); /* [ctx] */
/* Tokens held by the context (image rows read as -1). Returns the count. */
QWEN35_API int32_t qwen35_context_tokens(const qwen35_context * ctx, qwen35_token * out, int32_t max); /* [ctx] */

/* Ask a running decode/generation on ctx to stop as soon as possible. Safe to
 * call from any thread; the running call returns QWEN35_ERR_CANCELLED (generation
 * returns QWEN35_OK with stop reason CANCELLED). The flag clears when the next call starts. */
QWEN35_API void qwen35_context_abort(qwen35_context * ctx); /* [any] */

/* Snapshot of the whole conversation state (tokens, KV cache, recurrent
 * state, MTP cache). The snapshot is tied to the model file (checked on load).
 * A save that fails leaves the context as it was. A load checks the whole
 * snapshot first: one that fails those checks leaves the context as it was;
 * one that fails while writing the caches (a device error) leaves it empty. */
QWEN35_API uint64_t      qwen35_context_state_size(qwen35_context * ctx); /* [ctx] */
QWEN35_API qwen35_status qwen35_context_state_save(qwen35_context * ctx, void * buf, uint64_t buf_size, uint64_t * written); /* [ctx] */
QWEN35_API qwen35_status qwen35_context_state_load(qwen35_context * ctx, const void * buf, uint64_t size); /* [ctx] */
QWEN35_API qwen35_status qwen35_context_state_save_file(qwen35_context * ctx, const char * path); /* [ctx] */
QWEN35_API qwen35_status qwen35_context_state_load_file(qwen35_context * ctx, const char * path); /* [ctx] */

/* ------------------------------------------------------------------------ */
/* Tokenizer                                                                 */
/* ------------------------------------------------------------------------ */
/* The functions below that return a count return INT32_MIN on error (NULL
 * model, a model without tokenizer, bad arguments, a bad token id) with the
 * reason in qwen35_errmsg(); the queries return -1 / false / NULL. A
 * vocabulary-only GGUF loads with qwen35_model_load for these functions
 * (contexts refuse it). Invalid UTF-8 input never fails: each bad byte is
 * tokenized as U+FFFD. */

QWEN35_API qwen35_token qwen35_token_eos(const qwen35_model * model); /* [any] */
QWEN35_API qwen35_token qwen35_token_bos(const qwen35_model * model);   /* -1 if none [any] */
QWEN35_API bool         qwen35_token_is_eog(const qwen35_model * model, qwen35_token token); /* [any] */
QWEN35_API bool         qwen35_token_is_control(const qwen35_model * model, qwen35_token token); /* [any] */
/* Raw vocabulary text of a token (byte-encoded form), NULL if out of range. */
QWEN35_API const char * qwen35_token_text(const qwen35_model * model, qwen35_token token); /* [any] */
/* Id of the token whose vocabulary text is exactly `text`, or -1. */
QWEN35_API qwen35_token qwen35_token_lookup(const qwen35_model * model, const char * text); /* [any] */

/* Tokenize len bytes of text. parse_special: match control tokens such as
 * <|im_start|> in the text (user-defined tokens like <think> always match).
 * add_special: prepend BOS if the model asks for it (Qwen3.5 does not).
 * Writes up to max_tokens ids; returns the number of tokens, or
 * -(needed) if max_tokens is too small (nothing useful written then). */
QWEN35_API int32_t qwen35_tokenize(const qwen35_model * model, const char * text, size_t len,
                                   qwen35_token * tokens, int32_t max_tokens,
                                   bool add_special, bool parse_special); /* [any] */

/* Bytes of one token (may be an incomplete UTF-8 sequence). Control tokens
 * are empty unless render_special. Returns the length, or -(needed) if
 * buf_size is too small; no NUL is written. */
QWEN35_API int32_t qwen35_token_to_piece(const qwen35_model * model, qwen35_token token,
                                         char * buf, int32_t buf_size, bool render_special); /* [any] */

/* Detokenize a sequence into buf (NUL-terminated if room). Returns the length
 * without NUL, or -(needed+1) if buf_size is too small. Invalid UTF-8 is kept
 * as bytes. */
QWEN35_API int32_t qwen35_detokenize(const qwen35_model * model, const qwen35_token * tokens, int32_t n,
                                     char * buf, int32_t buf_size, bool render_special); /* [any] */

/* Streaming detokenizer: feed tokens one at a time and get back only complete
 * UTF-8 text (bytes of a character split across tokens are held back). */
typedef struct qwen35_detok qwen35_detok;
QWEN35_API qwen35_status qwen35_detok_create(const qwen35_model * model, bool render_special, qwen35_detok ** out); /* [any] */
QWEN35_API void qwen35_detok_free(qwen35_detok * d); /* [free] */
/* Returns a pointer to the newly completed text (NUL-terminated, owned by d,
 * valid until the next call) and its length in *len. The text is valid UTF-8:
 * invalid bytes become U+FFFD. NULL (and *len = 0) for a bad token id. */
QWEN35_API const char * qwen35_detok_push(qwen35_detok * d, qwen35_token token, size_t * len); /* [detok] */
/* Emit whatever is still held back (at end of generation). */
QWEN35_API const char * qwen35_detok_flush(qwen35_detok * d, size_t * len); /* [detok] */

/* ------------------------------------------------------------------------ */
/* Chat                                                                      */
/* ------------------------------------------------------------------------ */

typedef struct qwen35_image_embed qwen35_image_embed;   /* see Vision */

typedef enum qwen35_part_type {
    QWEN35_PART_TEXT  = 0,
    QWEN35_PART_IMAGE = 1,
    QWEN35_PART_VIDEO = 2
} qwen35_part_type;

/* One part of a multi-part message (OpenAI "content": [ ... ]). */
typedef struct qwen35_content_part {
    qwen35_part_type type;
    const char * text;                      /* TEXT */
    const qwen35_image_embed * image;       /* IMAGE: an encoded image; NULL renders the placeholder only */
} qwen35_content_part;

typedef struct qwen35_chat_message {
    const char * role;                      /* "system", "user", "assistant", "tool" */
    const char * content;                   /* text content, used when n_parts == 0 (may be NULL) */
    const qwen35_content_part * parts;      /* optional multi-part content */
    size_t n_parts;
    const char * reasoning_content;         /* assistant: optional reasoning text */
    const char * tool_calls_json;           /* assistant: optional JSON array of
                                               {"name": ..., "arguments": {...}} or OpenAI
                                               {"type":"function","function":{...}} objects */
    const char * name;                      /* optional (tool name for role "tool") */
} qwen35_chat_message;

typedef struct qwen35_chat_params {
    size_t struct_size;                     /* = sizeof(qwen35_chat_params) */
    const char * tools_json;                /* optional JSON array of OpenAI tool definitions */
    bool add_generation_prompt;             /* default true */
    int  enable_thinking;                   /* -1 = template default (on), 0 = off, 1 = on */
    const char * template_override;         /* optional Jinja template to use instead of the model's */
} qwen35_chat_params;

QWEN35_API qwen35_chat_params qwen35_chat_default_params(void); /* [any] */

/* Render a conversation with the model's chat template (tokenizer.chat_template).
 * Writes the prompt into buf (NUL-terminated if room) and returns its length,
 * or a negative qwen35_status on error (message in qwen35_errmsg()); if the
 * result does not fit, returns QWEN35_ERR_BUFFER_TOO_SMALL and sets *needed. */
QWEN35_API int32_t qwen35_chat_render(const qwen35_model * model, const qwen35_chat_message * messages, size_t n,
                                      const qwen35_chat_params * params, char * buf, size_t buf_size, size_t * needed); /* [any] */

/* A parsed assistant reply. Strings are owned by the struct. */
typedef struct qwen35_chat_reply {
    char * reasoning_content;               /* NULL if none */
    char * content;                         /* never NULL after a successful parse */
    char * tool_calls_json;                 /* JSON array of {"name":..,"arguments":{..}}, NULL if none */
    int32_t n_tool_calls;
} qwen35_chat_reply;

/* Parse generated text (detokenized without special tokens) into reasoning,
 * content and tool calls. thinking: whether the prompt ended inside <think>.
 * tools_offered: whether tools were given (tool calls are parsed only then). */
QWEN35_API qwen35_status qwen35_chat_parse(const char * text, size_t len, bool thinking, bool tools_offered,
                                           qwen35_chat_reply * out); /* [any] */
QWEN35_API void qwen35_chat_reply_free(qwen35_chat_reply * reply); /* [free] */

/* Streaming reply parser (spec tokenizer-chat.md section 6.4): the parse of
 * qwen35_chat_parse, fed the generated text as it arrives and reporting what
 * each piece added. Any chunking works, also inside a marker; text split
 * inside a UTF-8 character gives deltas split there too.
 * Text that may be the start of a marker ("\n</thi", "<tool_ca", ...) is held
 * back until it is resolved; a tool call is announced (id, name) once its
 * "<function=NAME>" is complete and its arguments then stream as JSON text.
 * Every field only grows, and after qwen35_reply_parser_finish the result is
 * exactly qwen35_chat_parse of the whole text (with string-typed parameters
 * from tools_json; qwen35_chat_parse has no tools, so it types none).
 *
 * Threading: a parser is used by one thread at a time; different parsers are
 * independent. Failures set qwen35_errmsg() of the calling thread. */
typedef struct qwen35_reply_parser qwen35_reply_parser;

/* One tool call's part of a delta. */
typedef struct qwen35_tool_call_delta {
    int32_t index;                          /* the call, 0-based in order of appearance */
    const char * id;                        /* set in the delta that announces the call ("call_" + 24
                                               alphanumerics), else NULL */
    const char * name;                      /* the function name, set with id, else NULL */
    const char * arguments;                 /* JSON text appended to the call's arguments (never NULL) */
    size_t arguments_len;
} qwen35_tool_call_delta;

/* What one push / finish added to the reply. Text is appended to the field of
 * the same name; strings are NUL-terminated ("" when nothing was added). All
 * pointers are owned by the parser and stay valid until the next
 * qwen35_reply_parser_push / _finish / _free on it. */
typedef struct qwen35_reply_delta {
    const char * reasoning_content;
    size_t reasoning_content_len;
    const char * content;
    size_t content_len;
    const qwen35_tool_call_delta * tool_calls;   /* in order; NULL when n_tool_calls == 0 */
    size_t n_tool_calls;
} qwen35_reply_delta;

/* Create a parser. thinking / tools_offered: as for qwen35_chat_parse.
 * tools_json: optional JSON array of the offered tool definitions (as in
 * qwen35_chat_params); parameters whose schema type is "string" are then
 * emitted as JSON strings as they stream, others as JSON values when they
 * parse (spec section 6.2). id_seed: seed of the tool-call id generator, so
 * that two parses of the same reply can agree on ids; 0 = random. On success
 * *out owns a new parser (free with qwen35_reply_parser_free); on failure
 * *out is NULL and QWEN35_ERR_INVALID_ARG is returned for a NULL out or
 * tools_json that is not a JSON array. */
QWEN35_API qwen35_status qwen35_reply_parser_create(bool thinking, bool tools_offered, const char * tools_json,
                                                    uint64_t id_seed, qwen35_reply_parser ** out); /* [any] */
QWEN35_API void qwen35_reply_parser_free(qwen35_reply_parser * p); /* [free] */

/* Feed len bytes of generated text (detokenized without special tokens;
 * text may be NULL when len is 0). delta may be NULL; otherwise it is filled
 * with what this call added. Errors: QWEN35_ERR_INVALID_ARG (NULL parser, or
 * NULL text with len > 0), QWEN35_ERR_STATE after qwen35_reply_parser_finish;
 * the parser is unchanged and *delta empty then. */
QWEN35_API qwen35_status qwen35_reply_parser_push(qwen35_reply_parser * p, const char * text, size_t len,
                                                  qwen35_reply_delta * delta); /* [parser] */
/* The end of the text: resolve and report what is still held back (delta may
 * be NULL). Only one finish per parser: later pushes and finishes return
 * QWEN35_ERR_STATE. */
QWEN35_API qwen35_status qwen35_reply_parser_finish(qwen35_reply_parser * p, qwen35_reply_delta * delta); /* [parser] */
/* The reply so far, in qwen35_chat_parse's form (the caller owns the strings:
 * free with qwen35_chat_reply_free). Before finish, tool_calls_json and
 * n_tool_calls hold only the calls whose arguments are complete, so the JSON
 * is always valid; after finish, everything. Does not change the parser. */
QWEN35_API qwen35_status qwen35_reply_parser_result(const qwen35_reply_parser * p, qwen35_chat_reply * out); /* [parser] */

/* ------------------------------------------------------------------------ */
/* Sampling                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct qwen35_logit_bias { qwen35_token token; float bias; } qwen35_logit_bias;

typedef struct qwen35_sampler_params {
    size_t   struct_size;       /* = sizeof(qwen35_sampler_params) */
    float    temperature;       /* <= 0: greedy (argmax) */
    int32_t  top_k;             /* <= 0: off */
    float    top_p;             /* >= 1: off */
    float    min_p;             /* <= 0: off */
    float    repeat_penalty;    /* 1: off (llama.cpp style: divide positive logits, multiply negative) */
    float    presence_penalty;  /* 0: off (subtract once from every seen token) */
    float    frequency_penalty; /* 0: off (subtract count * value) */
    int32_t  penalty_last_n;    /* window of the penalties: -1 = all generated tokens (default), 0 = none */
    bool     penalize_prompt;   /* also count prompt tokens in the window (llama.cpp; default false) */
    uint64_t seed;              /* RNG seed; same seed, same output on every machine */
    const qwen35_logit_bias * logit_bias; size_t n_logit_bias;   /* copied at create */
} qwen35_sampler_params;

/* Qwen3.5 recommended settings: thinking on -> temp 1.0, top_p 0.95, top_k 20,
 * presence 1.5; thinking off -> temp 0.7, top_p 0.8, top_k 20, presence 1.5. */
QWEN35_API qwen35_sampler_params qwen35_sampler_default_params(bool thinking); /* [any] */
/* Greedy: temperature 0, no penalties. */
QWEN35_API qwen35_sampler_params qwen35_sampler_greedy_params(void); /* [any] */

QWEN35_API qwen35_status qwen35_sampler_create(const qwen35_model * model, const qwen35_sampler_params * params,
                                               qwen35_sampler ** out); /* [any] */
QWEN35_API void qwen35_sampler_free(qwen35_sampler * s); /* [free] */
/* Pick a token from n_vocab logits (not modified). Does not record it: call
 * qwen35_sampler_accept for every token that becomes part of the output. */
QWEN35_API qwen35_token qwen35_sampler_sample(qwen35_sampler * s, const float * logits); /* [sampler] */
QWEN35_API void qwen35_sampler_accept(qwen35_sampler * s, qwen35_token token); /* [sampler] */
/* Record prompt tokens (used by the penalties only when penalize_prompt). */
QWEN35_API void qwen35_sampler_accept_prompt(qwen35_sampler * s, const qwen35_token * tokens, int32_t n); /* [sampler] */
/* Clear the history and reseed (seed as at creation if seed == UINT64_MAX). */
QWEN35_API void qwen35_sampler_reset(qwen35_sampler * s, uint64_t seed); /* [sampler] */

/* ------------------------------------------------------------------------ */
/* Generation                                                                */
/* ------------------------------------------------------------------------ */

typedef enum qwen35_stop_reason {
    QWEN35_STOP_NONE = 0,
    QWEN35_STOP_EOG = 1,        /* end-of-generation token (not emitted) */
    QWEN35_STOP_MAX_TOKENS = 2,
    QWEN35_STOP_STRING = 3,     /* a stop string matched (it is not emitted) */
    QWEN35_STOP_CANCELLED = 4,  /* callback returned false or qwen35_context_abort() */
    QWEN35_STOP_CONTEXT_FULL = 5
} qwen35_stop_reason;

/* Streaming callback: a generated token and the text it completes (may be
 * empty when a UTF-8 character is split across tokens, or held back while it
 * might start a stop string). The text is always valid UTF-8: ill-formed
 * bytes (byte tokens that do not form a character) arrive as U+FFFD. Text
 * still held back when generation ends is delivered by one last call with
 * token == -1. Return false to stop
 * generation. Called on the thread that runs qwen35_generate. */
typedef bool (*qwen35_token_callback)(qwen35_token token, const char * piece, size_t piece_len, void * user_data);

typedef struct qwen35_generate_params {
    size_t  struct_size;            /* = sizeof(qwen35_generate_params) */
    int32_t max_tokens;             /* default -1: until EOG or the context is full */
    const char * const * stop;      /* stop strings (not emitted, matched across token boundaries) */
    size_t  n_stop;
    bool    ignore_eos;             /* keep going past end-of-generation tokens */
    int     use_mtp;                /* -1 = context setting (default), 0 = off, 1 = on */
    qwen35_token_callback on_token; void * user_data;
} qwen35_generate_params;

QWEN35_API qwen35_generate_params qwen35_generate_default_params(void); /* [any] */

typedef struct qwen35_generate_stats {
    int32_t n_prompt;               /* prompt rows evaluated by this call (after prefix reuse) */
    int32_t n_generated;            /* tokens emitted */
    double  t_prompt_ms;
    double  t_generate_ms;
    double  prompt_tokens_per_s;
    double  generate_tokens_per_s;
    int32_t n_drafted;              /* MTP draft tokens verified (the adaptive pause's shadow probes,
                                       drafts checked without a verify pass, are not counted) */
    int32_t n_accepted;             /* ... and accepted */
    int32_t n_main_passes;          /* forward passes of the main model during generation */
    qwen35_stop_reason stop_reason;
} qwen35_generate_stats;

/* Append the prompt tokens to the context, then sample and append tokens
 * until a stop condition. Every emitted token is passed to the callback and
 * recorded in the sampler; generated tokens stay in the context (so the next
 * turn can continue). stats may be NULL. When the sampler needs only the
 * argmax or the k best logits of a row (greedy, or top-k up to 1024) the
 * backend selects them where the logits are (on the GPU: on the device) and
 * the rows are not kept: afterwards qwen35_context_logits may return NULL.
 * The tokens are the same as sampling from the rows. */
QWEN35_API qwen35_status qwen35_generate(qwen35_context * ctx, qwen35_sampler * sampler,
                                         const qwen35_token * prompt, int32_t n_prompt,
                                         const qwen35_generate_params * params, qwen35_generate_stats * stats); /* [ctx+sampler] */

/* Render messages with the chat template, reuse the longest common prefix of
 * what the context already holds, decode the rest (images included) and
 * generate the assistant reply. The reply text (without special tokens) is
 * streamed through params->on_token. */
QWEN35_API qwen35_status qwen35_chat_generate(qwen35_context * ctx, qwen35_sampler * sampler,
                                              const qwen35_chat_message * messages, size_t n,
                                              const qwen35_chat_params * chat_params,
                                              const qwen35_generate_params * params, qwen35_generate_stats * stats); /* [ctx+sampler] */

/* ------------------------------------------------------------------------ */
/* Vision                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct qwen35_mmproj qwen35_mmproj;
typedef struct qwen35_image  qwen35_image;

/* The items where llama.cpp (LC) and the transformers reference (REF) differ
 * (spec vision.md section 8), one switch each. Every switch's 0 value means
 * "as the preset says": the preset is qwen35_mmproj_params.llamacpp_compat
 * (false: REF, true: LC), so setting only llamacpp_compat selects the whole
 * profile and setting a switch overrides just that item. */
typedef enum qwen35_vision_preprocess {
    QWEN35_VISION_PREPROCESS_PRESET = 0,
    QWEN35_VISION_PREPROCESS_REF    = 1,  /* float64 smart resize with halves to even, PIL bicubic
                                             (antialiased) stretch; default token bounds 64..16384 */
    QWEN35_VISION_PREPROCESS_LC     = 2   /* float32 smart resize with halves away from zero, align-corners
                                             bilinear fit + centred black letterbox; default bounds 8..4096 */
} qwen35_vision_preprocess;

typedef enum qwen35_vision_pos_interp {
    QWEN35_VISION_POS_INTERP_PRESET               = 0,
    QWEN35_VISION_POS_INTERP_ALIGN_CORNERS        = 1,  /* REF: align-corners bilinear */
    QWEN35_VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS = 2   /* LC: half-pixel bilinear with antialiasing */
} qwen35_vision_pos_interp;

typedef enum qwen35_vision_gelu {
    QWEN35_VISION_GELU_PRESET = 0,
    QWEN35_VISION_GELU_ERF    = 1,  /* REF: exact (erf) GELU */
    QWEN35_VISION_GELU_TANH   = 2   /* LC: tanh approximation */
} qwen35_vision_gelu;

typedef struct qwen35_mmproj_params {
    size_t struct_size;         /* = sizeof(qwen35_mmproj_params) */
    bool   use_mmap;            /* default true */
    int    n_threads;           /* encoder CPU threads (default: physical cores) */
    bool   llamacpp_compat;     /* the preset of the switches below: behave like llama.cpp (May 2026) instead of
                                   the transformers reference (default false): 8..4096 tokens, bilinear resize +
                                   letterbox, half-pixel antialiased position-table interpolation, tanh GELU in
                                   the merger (spec vision.md section 8) */
    qwen35_device device;       /* AUTO (default): the GPU encoder when `model` runs on CUDA (the
                                   CPU encoder if that upload fails, logged), else the CPU; CPU: the
                                   CPU encoder; CUDA: the GPU encoder (an error without one) */
    /* Individual switches (fields added after `device`; a caller built against
     * an older header gets the preset for all of them). Default: 0 each.
     * qwen35_mmproj_load refuses (QWEN35_ERR_INVALID_ARG) an unknown switch
     * value, a negative token bound and bounds that leave no valid size. */
    qwen35_vision_preprocess preprocess;  /* image preprocessing: smart-resize rounding, resize filter,
                                             letterbox and default token bounds (spec sections 3.2-3.3) */
    qwen35_vision_pos_interp pos_interp;  /* learned position table resampled to the patch grid (section 4.2) */
    qwen35_vision_gelu merger_gelu;       /* activation between the merger's two linear layers (section 4.5);
                                             the ViT MLP uses the tanh GELU in both profiles */
    int32_t image_min_tokens;   /* fewest merged tokens an image is resized to (0 = the preprocessing
                                   profile's default: REF 64, LC 8) */
    int32_t image_max_tokens;   /* most merged tokens an image is resized to (0 = REF 16384, LC 4096) */
    bool   reference;           /* run the slow plain-loop float encoder (oracle for tests; default false) */
} qwen35_mmproj_params;

QWEN35_API qwen35_mmproj_params qwen35_mmproj_default_params(void); /* [any] */
/* Load a vision projector GGUF. If model is not NULL, the projector must fit it
 * (projection width == n_embd). Free with qwen35_mmproj_free(); it may be
 * shared across threads like a model. */
QWEN35_API qwen35_status qwen35_mmproj_load(const char * path, const qwen35_model * model,
                                            const qwen35_mmproj_params * params, qwen35_mmproj ** out); /* [any] */
QWEN35_API void qwen35_mmproj_free(qwen35_mmproj * mmproj); /* [free] */
/* Where the projector encodes images: QWEN35_DEVICE_CUDA or QWEN35_DEVICE_CPU
 * (also for NULL). Tells which one AUTO picked. */
QWEN35_API qwen35_device qwen35_mmproj_device(const qwen35_mmproj * mmproj); /* [any] */

/* Images: decoded RGB8 pixels. From a file (PNG, JPEG, BMP, PPM/PGM) or from
 * memory (an encoded file in memory, or raw pixels). */
QWEN35_API qwen35_status qwen35_image_load_file(const char * path, qwen35_image ** out); /* [any] */
QWEN35_API qwen35_status qwen35_image_load_memory(const void * data, size_t size, qwen35_image ** out); /* [any] */
/* Raw pixels: channels 3 (RGB) or 4 (RGBA, alpha dropped); stride in bytes (0 = width*channels). */
QWEN35_API qwen35_status qwen35_image_from_pixels(const uint8_t * pixels, int32_t width, int32_t height,
                                                  int32_t channels, int32_t stride, qwen35_image ** out); /* [any] */
QWEN35_API void    qwen35_image_free(qwen35_image * image); /* [free] */
QWEN35_API int32_t qwen35_image_width(const qwen35_image * image); /* [any] */
QWEN35_API int32_t qwen35_image_height(const qwen35_image * image); /* [any] */

/* Encode an image into LLM-space embeddings (one per merged 2x2 patch). The
 * result is immutable and can be reused across turns and contexts. */
QWEN35_API qwen35_status qwen35_image_encode(qwen35_mmproj * mmproj, const qwen35_image * image,
                                             qwen35_image_embed ** out); /* [any] */
QWEN35_API void    qwen35_image_embed_free(qwen35_image_embed * embed); /* [free] */
QWEN35_API int32_t qwen35_image_embed_n_tokens(const qwen35_image_embed * embed); /* [any] */
QWEN35_API int32_t qwen35_image_embed_n_embd(const qwen35_image_embed * embed); /* [any] */
/* Merged grid size (nx * ny == n_tokens) and the preprocessed pixel size. */
QWEN35_API void    qwen35_image_embed_grid(const qwen35_image_embed * embed, int32_t * nx, int32_t * ny,
                                           int32_t * width, int32_t * height); /* [any] */
/* n_tokens x n_embd floats, row-major, merged-token (row-major grid) order. */
QWEN35_API const float * qwen35_image_embed_data(const qwen35_image_embed * embed); /* [any] */

/* Append an image to the context: <|vision_start|>, the embeddings with
 * M-RoPE positions, <|vision_end|>. Text positions continue as the spec says
 * (at p0 + max(nx, ny), p0 = the position after <|vision_start|>). Afterwards
 * qwen35_context_logits(ctx, -1) holds the logits of <|vision_end|>. On error
 * (QWEN35_ERR_CONTEXT_FULL when n_tokens + 2 rows do not fit, a width that
 * differs from the model's, a vocabulary without the delimiters) the context
 * is left as it was. */
QWEN35_API qwen35_status qwen35_context_decode_image(qwen35_context * ctx, const qwen35_image_embed * embed); /* [ctx] */

#ifdef __cplusplus
}
#endif

#endif /* QWEN35_H */
