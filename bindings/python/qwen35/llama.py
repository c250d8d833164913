"""qwen35.Llama: the llama-cpp-python `Llama` interface over the qwen35 C API.

A script written for llama-cpp-python runs by changing its import:

    from qwen35 import Llama            # was: from llama_cpp import Llama
    llm = Llama(model_path="qwen3.5-4b-mtp-nvfp4.gguf", n_ctx=4096)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])
    print(out["choices"][0]["message"]["content"])

Generation runs on a worker thread inside the extension with the GIL
released; streaming iterators read its output as it comes, and leaving a
stream early (break, close(), garbage collection) stops the generation.
"""

import codecs
import hashlib
import json
import logging
import os
import random
import time
import uuid

from . import _chat, _qwen35
from ._vision import ImageEncoder, mmproj_options

LLAMA_DEFAULT_SEED = 0xFFFFFFFF

_log = logging.getLogger("qwen35")

# llama-cpp-python constructor arguments that tune llama.cpp internals with
# no counterpart here; accepted (and ignored) so existing scripts run.
_IGNORED_INIT_ARGS = {
    "split_mode", "tensor_split", "rpc_servers", "vocab_only", "use_mlock", "kv_overrides", "n_ubatch",
    "n_threads_batch", "rope_scaling_type", "pooling_type", "rope_freq_base", "rope_freq_scale",
    "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx",
    "logits_all", "offload_kqv", "flash_attn", "op_offload", "swa_full", "no_perf", "last_n_tokens_size",
    "numa", "chat_format", "type_k", "type_v", "spm_infill", "mul_mat_q", "f16_kv",
}
# Arguments whose non-default values ask for something not available here.
_UNSUPPORTED_INIT_ARGS = {
    "embedding": False, "lora_base": None, "lora_path": None, "lora_scale": 1.0, "draft_model": None,
    "tokenizer": None,
}

_FINISH = {
    _qwen35.STOP_NONE: "stop",
    _qwen35.STOP_EOG: "stop",
    _qwen35.STOP_STRING: "stop",
    _qwen35.STOP_CANCELLED: "stop",
    _qwen35.STOP_MAX_TOKENS: "length",
    _qwen35.STOP_CONTEXT_FULL: "length",
}


def _status_error(cls, status, message):
    e = cls(message)
    e.status = status
    e.status_name = _qwen35.status_str(status)
    return e


def _unsupported(name, value, default):
    if value != default:
        raise NotImplementedError(f"qwen35.Llama does not support {name}={value!r}")


def _stop_list(stop):
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _logit_bias_pairs(logit_bias):
    if not logit_bias:
        return []
    if not isinstance(logit_bias, dict):
        raise TypeError("logit_bias must be a dict {token id: bias}")
    try:
        return [(int(k), float(v)) for k, v in logit_bias.items()]
    except (TypeError, ValueError):
        raise ValueError("logit_bias keys must be token ids and values numbers") from None


def _decoder():
    # Invalid UTF-8 (possible in generated text) becomes U+FFFD; an
    # incremental decoder gives the same text however the bytes are split.
    return codecs.getincrementaldecoder("utf-8")("replace")


class LlamaState:
    """A saved conversation state (Llama.save_state / load_state)."""

    def __init__(self, input_ids, scores, n_tokens, llama_state, llama_state_size, seed, rng_state=None):
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed
        # Where the Llama's seed sequence stood (random.Random.getstate()),
        # so that requests without a seed after load_state repeat those
        # after save_state; None when the Llama was not seeded.
        self.rng_state = rng_state


class Llama:
    """A qwen35 model with one conversation context (llama-cpp-python's Llama).

    Differences from llama-cpp-python: the chat template is always the
    model's own (Qwen3.5); n_gpu_layers only chooses CPU (0) or the GPU
    (anything else, the default -1); use_mtp turns MTP speculative decoding
    on or off; images come from mmproj_path= or a chat_handler from
    qwen35.llama_chat_format.

    The vision encoder follows the transformers reference by default;
    mmproj_profile="lc" makes it behave like llama.cpp (spec vision.md
    section 8), and mmproj_preprocess / mmproj_pos_interp /
    mmproj_merger_gelu ("ref" or "lc") override single items of the profile.
    image_min_tokens / image_max_tokens bound the tokens per image (None: the
    profile's default; also taken from the chat handler, as in
    llama-cpp-python's Qwen3VLChatHandler(..., image_max_tokens=...)).
    """

    def __init__(self, model_path, *, n_gpu_layers=-1, main_gpu=0, use_mmap=True, seed=LLAMA_DEFAULT_SEED,
                 n_ctx=512, n_batch=512, n_threads=None, use_mtp=True, mmproj_path=None, chat_handler=None,
                 mmproj_profile=None, mmproj_preprocess=None, mmproj_pos_interp=None, mmproj_merger_gelu=None,
                 image_min_tokens=None, image_max_tokens=None, verbose=True, **kwargs):
        self._ctx = None
        self._model = None
        self._images = None
        self._active = None
        for name, value in kwargs.items():
            if name in _UNSUPPORTED_INIT_ARGS:
                _unsupported(name, value, _UNSUPPORTED_INIT_ARGS[name])
            elif name not in _IGNORED_INIT_ARGS:
                raise TypeError(f"Llama() got an unexpected keyword argument {name!r}")
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError("model_path must be a path")
        if n_ctx is None or int(n_ctx) < 0:
            raise _status_error(_qwen35.InvalidArgumentError, _qwen35.ERR_INVALID_ARG,
                                f"n_ctx must be >= 0 (0: the trained context), got {n_ctx}")
        # Checked before anything is loaded.
        vision = mmproj_options(
            mmproj_profile, mmproj_preprocess, mmproj_pos_interp, mmproj_merger_gelu,
            image_min_tokens if image_min_tokens is not None else getattr(chat_handler, "image_min_tokens", None),
            image_max_tokens if image_max_tokens is not None else getattr(chat_handler, "image_max_tokens", None))
        self.model_path = os.fspath(model_path)
        self.verbose = verbose
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.chat_format = "qwen35"
        self.chat_handler = chat_handler
        self._seed = seed
        self._rng = random.Random(seed) if seed != LLAMA_DEFAULT_SEED else None

        device = _qwen35.DEVICE_CPU if n_gpu_layers == 0 else _qwen35.DEVICE_AUTO
        self._model = _qwen35.Model(self.model_path, use_mmap=use_mmap, device=device, device_index=main_gpu,
                                    n_gpu_layers=n_gpu_layers, log_level=2 if verbose else -1)
        self._ctx = _qwen35.Context(self._model, n_ctx=int(n_ctx), n_batch=n_batch or 0,
                                    n_threads=n_threads or 0, use_mtp=use_mtp)
        if chat_handler is not None:
            clip = getattr(chat_handler, "clip_model_path", None)
            if clip is None:
                raise NotImplementedError("qwen35.Llama only accepts the vision chat handlers of "
                                          "qwen35.llama_chat_format (they carry clip_model_path)")
            if mmproj_path is not None and os.fspath(mmproj_path) != os.fspath(clip):
                raise ValueError("give either mmproj_path or a chat_handler, not both")
            mmproj_path = clip
        if mmproj_path is not None:
            proj = _qwen35.Mmproj(os.fspath(mmproj_path), self._model, n_threads=n_threads or 0, **vision)
            self._images = ImageEncoder(proj)
        self.metadata = {k: self._model.meta(k) for k in self._model.meta_keys()}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise NotImplementedError("qwen35.Llama does not download models: download the GGUF file and "
                                  "pass its path as model_path")

    # ---- lifetime -----------------------------------------------------------

    def close(self):
        """Free the context, projector and model (the object is unusable after)."""
        self._stop_active()
        if self._images is not None:
            self._images.close()
            self._images = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        if self._model is not None:
            try:
                self._model.close()
            except _qwen35.StateError:
                pass   # still referenced elsewhere (e.g. a traceback): freed with its last user
            self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check(self):
        if self._ctx is None:
            raise _status_error(_qwen35.StateError, _qwen35.ERR_STATE, "this Llama is closed")

    def _stop_active(self):
        # A stream that was left unfinished still holds the context: stop it.
        gen, self._active = self._active, None
        if gen is not None and not gen.done:
            gen.cancel()
            try:
                gen.wait()
            except _qwen35.Error:
                pass

    # ---- model facts and tokens ---------------------------------------------

    def n_ctx(self):
        self._check()
        return self._ctx.n_ctx

    def n_vocab(self):
        self._check()
        return self._model.n_vocab

    def n_embd(self):
        self._check()
        return self._model.n_embd

    def token_eos(self):
        self._check()
        return self._model.token_eos

    def token_bos(self):
        self._check()
        return self._model.token_bos

    def token_nl(self):
        return self.tokenize(b"\n", add_bos=False)[-1]

    @property
    def n_tokens(self):
        """Rows the context holds (tokens and image embeddings)."""
        self._check()
        return self._ctx.n_past

    def tokenize(self, text, add_bos=True, special=False):
        """Token ids of text (bytes, or str as UTF-8). special: also match
        control tokens such as <|im_start|> in the text."""
        self._check()
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, (bytes, bytearray, memoryview)):
            raise TypeError("tokenize() needs bytes or str")
        return self._model.tokenize(bytes(text), add_special=add_bos, parse_special=special)

    def detokenize(self, tokens, prev_tokens=None, special=False):
        """Bytes of a token sequence (control tokens only when special)."""
        self._check()
        return self._model.detokenize(list(tokens), render_special=special)

    def reset(self):
        """Forget the conversation held by the context."""
        self._check()
        self._stop_active()
        self._ctx.reset()

    def set_seed(self, seed):
        self._seed = seed
        self._rng = random.Random(seed) if seed != LLAMA_DEFAULT_SEED else None

    # ---- state --------------------------------------------------------------

    def save_state(self):
        self._check()
        self._stop_active()
        data = self._ctx.state_save()
        ids = self._ctx.tokens()
        return LlamaState(input_ids=ids, scores=None, n_tokens=len(ids), llama_state=data,
                          llama_state_size=len(data), seed=self._seed,
                          rng_state=self._rng.getstate() if self._rng is not None else None)

    def load_state(self, state):
        """Restore the context and the seed sequence: the next requests
        without an explicit seed sample as they did after save_state()."""
        self._check()
        self._stop_active()
        if not isinstance(state, LlamaState):
            raise TypeError("load_state() needs a LlamaState from save_state()")
        self._ctx.state_load(state.llama_state)
        self.set_seed(state.seed)
        rng_state = getattr(state, "rng_state", None)
        if self._rng is not None and rng_state is not None:
            self._rng.setstate(rng_state)

    # ---- sampling -----------------------------------------------------------

    def _next_seed(self, seed):
        if seed is not None:
            return int(seed) & 0xFFFFFFFFFFFFFFFF
        if self._rng is not None:
            return self._rng.getrandbits(64)
        return int.from_bytes(os.urandom(8), "little")

    def _sampler(self, temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty,
                 seed, logit_bias):
        return _qwen35.Sampler(
            self._model, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
            min_p=float(min_p), repeat_penalty=float(repeat_penalty), presence_penalty=float(presence_penalty),
            frequency_penalty=float(frequency_penalty), seed=self._next_seed(seed),
            logit_bias=_logit_bias_pairs(logit_bias))

    # ---- tokens in, tokens out ------------------------------------------------

    def eval(self, tokens):
        """Append tokens to the context and run the model over them."""
        self._check()
        self._stop_active()
        self._ctx.decode([int(t) for t in tokens])

    def _start(self, tokens, sampler, max_tokens, stop, stream):
        # Reuse what the context already holds of this prompt (the last prompt
        # token is always decoded again, for its logits).
        held = self._ctx.tokens()
        keep = 0
        limit = min(len(held), len(tokens) - 1)
        while keep < limit and held[keep] == tokens[keep]:
            keep += 1
        gen = _qwen35.generate(self._ctx, sampler, tokens[keep:], keep=keep, max_tokens=max_tokens, stop=stop,
                               stream=stream)
        self._active = gen
        return gen

    def generate(self, tokens, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0, temp=0.80, repeat_penalty=1.0,
                 reset=True, frequency_penalty=0.0, presence_penalty=0.0, tfs_z=1.0, mirostat_mode=0,
                 mirostat_tau=5.0, mirostat_eta=0.1, penalize_nl=True, logits_processor=None,
                 stopping_criteria=None, grammar=None, seed=None, logit_bias=None):
        """Yield generated token ids after the prompt `tokens` until an
        end-of-generation token (not yielded) or the context is full; stop
        earlier by leaving the loop. reset=False is accepted for
        compatibility: the held prefix is reused either way."""
        self._check()
        self._stop_active()
        for name, value, default in (("typical_p", typical_p, 1.0), ("tfs_z", tfs_z, 1.0),
                                     ("mirostat_mode", mirostat_mode, 0), ("grammar", grammar, None),
                                     ("logits_processor", logits_processor, None),
                                     ("stopping_criteria", stopping_criteria, None)):
            _unsupported(name, value, default)
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise _status_error(_qwen35.InvalidArgumentError, _qwen35.ERR_INVALID_ARG,
                                "generate() needs at least one prompt token")
        sampler = self._sampler(temp, top_k, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty,
                                seed, logit_bias)
        gen = self._start(tokens, sampler, -1, [], True)
        return self._token_stream(gen)

    def _token_stream(self, gen):
        try:
            while True:
                c = gen.next_chunk()
                if c is None:
                    break
                if c[0] >= 0:
                    yield c[0]
        finally:
            gen.cancel()
            if self._active is gen:
                self._stop_active()

    def create_embedding(self, *args, **kwargs):
        raise NotImplementedError("qwen35.Llama does not compute embeddings")

    embed = create_embedding

    # ---- completion ---------------------------------------------------------

    def __call__(self, prompt, *args, **kwargs):
        return self.create_completion(prompt, *args, **kwargs)

    def create_completion(self, prompt, suffix=None, max_tokens=16, temperature=0.8, top_p=0.95, min_p=0.05,
                          typical_p=1.0, logprobs=None, echo=False, stop=None, frequency_penalty=0.0,
                          presence_penalty=0.0, repeat_penalty=1.0, top_k=40, stream=False, seed=None, tfs_z=1.0,
                          mirostat_mode=0, mirostat_tau=5.0, mirostat_eta=0.1, model=None,
                          stopping_criteria=None, logits_processor=None, grammar=None, logit_bias=None):
        """Continue a text prompt (str or token ids). Returns an OpenAI
        text_completion dict, or an iterator of chunks when stream=True."""
        self._check()
        self._stop_active()
        for name, value, default in (("suffix", suffix or None, None), ("logprobs", logprobs, None),
                                     ("typical_p", typical_p, 1.0), ("tfs_z", tfs_z, 1.0),
                                     ("mirostat_mode", mirostat_mode, 0), ("grammar", grammar, None),
                                     ("stopping_criteria", stopping_criteria, None),
                                     ("logits_processor", logits_processor, None)):
            _unsupported(name, value, default)
        if isinstance(prompt, (str, bytes)):
            text = prompt.encode("utf-8") if isinstance(prompt, str) else prompt
            tokens = self.tokenize(text, add_bos=True, special=True)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise _status_error(_qwen35.InvalidArgumentError, _qwen35.ERR_INVALID_ARG, "the prompt is empty")
        n_ctx = self._ctx.n_ctx
        if len(tokens) > n_ctx:
            raise _status_error(_qwen35.ContextFullError, _qwen35.ERR_CONTEXT_FULL,
                                f"Requested tokens ({len(tokens)}) exceed context window of {n_ctx}")
        sampler = self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty,
                                frequency_penalty, seed, logit_bias)
        gen = self._start(tokens, sampler, -1 if max_tokens is None or max_tokens <= 0 else int(max_tokens),
                          _stop_list(stop), bool(stream))
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        prefix = self.detokenize(tokens).decode("utf-8", "replace") if echo else ""
        if stream:
            return self._completion_chunks(gen, head, prefix, len(tokens))
        r = gen.wait()
        self._active = None
        return dict(head, choices=[{
            "text": prefix + r["text"].decode("utf-8", "replace"), "index": 0, "logprobs": None,
            "finish_reason": _FINISH.get(r["stop_reason"], "stop"),
        }], usage=self._usage(len(tokens), r))

    @staticmethod
    def _usage(n_prompt, r):
        return {"prompt_tokens": n_prompt, "completion_tokens": r["n_generated"],
                "total_tokens": n_prompt + r["n_generated"]}

    def _completion_chunks(self, gen, head, prefix, n_prompt):
        def chunk(text, finish=None):
            return dict(head, choices=[{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}])
        try:
            if prefix:
                yield chunk(prefix)
            dec = _decoder()
            while True:
                c = gen.next_chunk()
                if c is None:
                    break
                text = dec.decode(c[1])
                if text:
                    yield chunk(text)
            r = gen.wait()
            if r["stop_reason"] == _qwen35.STOP_CANCELLED:
                return   # stopped by a later call on this Llama
            tail = dec.decode(b"", final=True)
            last = chunk(tail, _FINISH.get(r["stop_reason"], "stop"))
            last["usage"] = self._usage(n_prompt, r)
            yield last
        finally:
            gen.cancel()
            if self._active is gen:
                self._stop_active()

    # ---- chat ---------------------------------------------------------------

    def _encode_image(self, url):
        if self._images is None:
            raise ValueError("this model was loaded without a vision projector: pass mmproj_path=... "
                             "(or chat_handler=Llava15ChatHandler(clip_model_path=...)) to Llama()")
        return self._images(url)

    def create_chat_completion(self, messages, functions=None, function_call=None, tools=None, tool_choice=None,
                               temperature=0.2, top_p=0.95, top_k=40, min_p=0.05, typical_p=1.0, stream=False,
                               stop=None, seed=None, response_format=None, max_tokens=None, presence_penalty=0.0,
                               frequency_penalty=0.0, repeat_penalty=1.0, tfs_z=1.0, mirostat_mode=0,
                               mirostat_tau=5.0, mirostat_eta=0.1, model=None, logits_processor=None, grammar=None,
                               logit_bias=None, logprobs=None, top_logprobs=None, enable_thinking=None,
                               chat_template_kwargs=None):
        """Answer a conversation (OpenAI messages; content may hold image_url
        parts). Returns an OpenAI chat.completion dict whose message carries
        content, reasoning_content (thinking mode) and tool_calls, or an
        iterator of chat.completion.chunk dicts when stream=True.
        enable_thinking: None = the template default (on)."""
        self._check()
        self._stop_active()
        for name, value, default in (("typical_p", typical_p, 1.0), ("tfs_z", tfs_z, 1.0),
                                     ("mirostat_mode", mirostat_mode, 0), ("grammar", grammar, None),
                                     ("logits_processor", logits_processor, None),
                                     ("logprobs", logprobs or None, None), ("top_logprobs", top_logprobs or None, None)):
            _unsupported(name, value, default)
        if response_format is not None and response_format.get("type", "text") != "text":
            raise NotImplementedError("qwen35.Llama does not support response_format (no grammar sampling)")
        if enable_thinking is None and chat_template_kwargs:
            enable_thinking = chat_template_kwargs.get("enable_thinking")
        thinking_flag = -1 if enable_thinking is None else int(bool(enable_thinking))
        choice = tool_choice if tool_choice is not None else function_call
        offer_tools = choice != "none"
        tools_json = _chat.normalize_tools(tools, functions) if offer_tools else None
        msgs = _chat.normalize_messages(messages, self._encode_image)
        # The rendered prompt says whether the reply starts inside <think>.
        prompt = _qwen35.chat_render(self._model, msgs, tools_json, True, thinking_flag)
        thinking = prompt.endswith(b"<think>\n")
        tools_offered = tools_json is not None
        forced, template = self._force_tool_call(choice, tools_json, msgs, thinking_flag, prompt, thinking)
        seed = self._next_seed(seed)
        sampler = self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty,
                                frequency_penalty, seed, logit_bias)
        # Tool-call ids follow the seed and the prompt: a streamed and a
        # non-streamed request with the same seed get the same ids.
        id_seed = int.from_bytes(hashlib.blake2b(prompt + seed.to_bytes(8, "little"), digest_size=8).digest(),
                                 "little") or 1
        gen = _qwen35.chat_generate(self._ctx, sampler, msgs, tools_json, thinking_flag, template,
                                    max_tokens=-1 if max_tokens is None or max_tokens <= 0 else int(max_tokens),
                                    stop=_stop_list(stop), stream=bool(stream))
        self._active = gen
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        parse = dict(tools_json=tools_json, id_seed=id_seed, prefix=forced)
        if stream:
            head["object"] = "chat.completion.chunk"
            return self._chat_chunks(gen, head, thinking, tools_offered, **parse)
        r = gen.wait()
        self._active = None
        return self._chat_result(head, r, thinking, tools_offered, **parse)

    def _force_tool_call(self, choice, tools_json, msgs, thinking_flag, prompt, thinking):
        """tool_choice "required" or naming a function: the opening of the call
        ("<tool_call>\n<function=" [+ NAME + ">\n"], spec sections 5.3 and
        6.2) is appended to the prompt, through a template override that is the
        model's template plus that text, and put in front of the generated
        text before parsing. Returns (prefix, template override) or ("", None)
        when the choice forces nothing or cannot be forced exactly (a
        warning is logged then)."""
        if choice is None or choice in ("auto", "none"):
            return "", None
        if isinstance(choice, dict):
            fn = choice.get("function", choice)
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError("tool_choice must name a function: {\"type\": \"function\", \"function\": "
                                 "{\"name\": ...}}")
            if tools_json is None or name not in [t["function"]["name"] for t in json.loads(tools_json)]:
                raise ValueError(f"tool_choice names the function {name!r}, which is not among the tools")
            prefix = f"<tool_call>\n<function={name}>\n"
        elif choice == "required":
            if tools_json is None:
                raise ValueError("tool_choice='required' needs tools")
            prefix = "<tool_call>\n<function="
        else:
            raise ValueError(f"unsupported tool_choice {choice!r} (use 'auto', 'none', 'required' or "
                             "{'type': 'function', 'function': {'name': ...}})")
        if thinking:
            # The call would have to follow the reasoning, whose end is not
            # known before it is generated.
            _log.warning("qwen35: tool_choice=%r is not forced while thinking is on (the call would have to "
                         "follow the reasoning); pass enable_thinking=False to force it", choice)
            return "", None
        source = self.metadata.get("tokenizer.chat_template")
        if isinstance(source, bytes):
            source = source.decode("utf-8", "replace")
        template = None
        if isinstance(source, str) and source:
            template = source + "{{- " + _jinja_literal(prefix) + " }}"
            try:
                forced = _qwen35.chat_render(self._model, msgs, tools_json, True, thinking_flag, template)
            except _qwen35.Error:
                forced = None
            if forced != prompt + prefix.encode("utf-8"):
                template = None
        if template is None:
            _log.warning("qwen35: tool_choice=%r is not forced: the model's chat template cannot be extended "
                         "with the opening of the call", choice)
            return "", None
        return prefix, template

    @classmethod
    def _chat_result(cls, head, r, thinking, tools_offered, tools_json=None, id_seed=0, prefix=""):
        reasoning, content, calls = cls._parse_reply(r["text"], thinking, tools_offered, tools_json, id_seed, prefix)
        message = {"role": "assistant", "content": content if content or not calls else None}
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = calls
        return dict(head, choices=[{"index": 0, "message": message, "logprobs": None,
                                    "finish_reason": cls._chat_finish(r, calls)}],
                    usage=cls._chat_usage(r))

    @staticmethod
    def _parse_reply(text, thinking, tools_offered, tools_json=None, id_seed=0, prefix=""):
        """(reasoning_content, content, OpenAI tool_calls) of generated text
        (bytes); prefix: text forced into the prompt before it (tool_choice).
        The same parse as the streamed one (_chat_chunks)."""
        split = _chat.ReplyStream(thinking, tools_offered, tools_json, id_seed)
        split.push(prefix)
        split.push(text.decode("utf-8", "replace"))
        split.finish()
        return split.message()

    @staticmethod
    def _chat_finish(r, calls):
        return "tool_calls" if calls else _FINISH.get(r["stop_reason"], "stop")

    @staticmethod
    def _chat_usage(r):
        # The context holds the whole prompt (after prefix reuse too) plus
        # every emitted token.
        n_prompt = r["n_past"] - r["n_generated"]
        return {"prompt_tokens": n_prompt, "completion_tokens": r["n_generated"],
                "total_tokens": n_prompt + r["n_generated"]}

    def _chat_chunks(self, gen, head, thinking, tools_offered, tools_json=None, id_seed=0, prefix=""):
        def chunk(delta, finish=None):
            return dict(head, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        try:
            yield chunk({"role": "assistant"})
            dec = _decoder()
            split = _chat.ReplyStream(thinking, tools_offered, tools_json, id_seed)
            for delta in split.push(prefix):
                yield chunk(delta)
            while True:
                c = gen.next_chunk()
                if c is None:
                    break
                for delta in split.push(dec.decode(c[1])):
                    yield chunk(delta)
            r = gen.wait()
            if r["stop_reason"] == _qwen35.STOP_CANCELLED:
                return   # stopped by a later call on this Llama
            for delta in split.push(dec.decode(b"", final=True)) + split.finish():
                yield chunk(delta)
            last = chunk({}, self._chat_finish(r, split.ids))
            last["usage"] = self._chat_usage(r)
            yield last
        finally:
            gen.cancel()
            if self._active is gen:
                self._stop_active()


def _jinja_literal(text):
    """A Jinja string literal whose value is text."""
    out = []
    for ch in text:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append("\\x%02x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
