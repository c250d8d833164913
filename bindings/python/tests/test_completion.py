"""Llama.create_completion / __call__: result shapes, streaming, stop strings,
seeds, logit bias, prefix reuse, MTP, cancellation and argument errors."""

import pytest

import qwen35
from conftest import forced_token

GREEDY = dict(temperature=0.0)
RANDOM = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


def test_completion_shape(llm):
    r = llm("The capital of France is", max_tokens=8, **GREEDY)
    assert r["object"] == "text_completion"
    assert r["id"].startswith("cmpl-")
    assert isinstance(r["created"], int)
    assert r["model"] == llm.model_path
    (choice,) = r["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert isinstance(choice["text"], str)
    assert choice["index"] == 0
    assert choice["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["prompt_tokens"] == len(llm.tokenize(b"The capital of France is"))
    assert 0 < u["completion_tokens"] <= 8
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_max_tokens_gives_length(llm):
    tok = forced_token(llm)
    r = llm.create_completion("Say hello", max_tokens=5, logit_bias={tok: 100.0}, **GREEDY)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 5
    piece = llm.detokenize([tok]).decode()
    assert r["choices"][0]["text"] == piece * 5


def test_stream_equals_non_stream(llm):
    for sampling in (GREEDY, RANDOM):
        full = llm("Once upon a time", max_tokens=24, seed=7, **sampling)
        chunks = list(llm("Once upon a time", max_tokens=24, seed=7, stream=True, **sampling))
        assert all(c["object"] == "text_completion" for c in chunks)
        assert all(c["id"] == chunks[0]["id"] for c in chunks)
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
        text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == full["choices"][0]["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
        assert chunks[-1]["usage"] == full["usage"]


def test_stop_strings(llm):
    text = llm("Once upon a time", max_tokens=40, **GREEDY)["choices"][0]["text"]
    # A stop string taken from the middle of the greedy output.
    stop = next(text[i:i + 3] for i in range(3, len(text) - 3)
                if text[i:i + 3].isascii() and text[i:i + 3].strip() and text.find(text[i:i + 3]) > 0)
    cut = text[:text.find(stop)]
    for stops in (stop, [stop], ["\x00never", stop]):
        r = llm("Once upon a time", max_tokens=40, stop=stops, **GREEDY)
        assert r["choices"][0]["text"] == cut
        assert r["choices"][0]["finish_reason"] == "stop"
        streamed = "".join(c["choices"][0]["text"]
                           for c in llm("Once upon a time", max_tokens=40, stop=stops, stream=True, **GREEDY))
        assert streamed == cut


def test_seeds(mtp_model_path, llm):
    a = llm("Random words:", max_tokens=16, seed=11, **RANDOM)["choices"][0]["text"]
    b = llm("Random words:", max_tokens=16, seed=11, **RANDOM)["choices"][0]["text"]
    assert a == b
    outs = {llm("Random words:", max_tokens=16, seed=s, **RANDOM)["choices"][0]["text"] for s in range(20, 25)}
    assert len(outs) > 1
    # A fixed Llama seed makes the sequence of unseeded calls reproducible.
    runs = []
    for _ in range(2):
        with qwen35.Llama(mtp_model_path, n_ctx=256, n_threads=1, seed=99, n_gpu_layers=0, verbose=False) as m:
            runs.append([m("Random words:", max_tokens=10, **RANDOM)["choices"][0]["text"] for _ in range(2)])
    assert runs[0] == runs[1]


def test_echo_and_token_prompt(llm):
    prompt = "Echo this"
    r = llm(prompt, max_tokens=4, echo=True, **GREEDY)
    assert r["choices"][0]["text"].startswith(prompt)
    toks = llm.tokenize(prompt.encode())
    r2 = llm(toks, max_tokens=4, **GREEDY)
    assert prompt + r2["choices"][0]["text"] == r["choices"][0]["text"]


def test_prefix_reuse_matches_fresh_context(mtp_model_path, llm):
    llm("A long shared prefix, then one ending", max_tokens=6, **GREEDY)
    again = llm("A long shared prefix, then another ending", max_tokens=12, **GREEDY)
    with qwen35.Llama(mtp_model_path, n_ctx=512, n_threads=1, n_gpu_layers=0, verbose=False) as fresh:
        ref = fresh("A long shared prefix, then another ending", max_tokens=12, **GREEDY)
    assert again["choices"][0]["text"] == ref["choices"][0]["text"]


def test_mtp_is_exact_for_greedy(mtp_model_path):
    outs = []
    for use_mtp in (True, False):
        with qwen35.Llama(mtp_model_path, n_ctx=256, n_threads=1, use_mtp=use_mtp, n_gpu_layers=0, verbose=False) as m:
            outs.append(m("Speculative decoding keeps", max_tokens=30, **GREEDY)["choices"][0]["text"])
    assert outs[0] == outs[1]


def test_breaking_a_stream_stops_generation(llm):
    tok = forced_token(llm)
    n_prompt = len(llm.tokenize(b"Count"))
    stream = llm("Count", max_tokens=400, logit_bias={tok: 100.0}, stream=True, **GREEDY)
    for _ in stream:
        break
    stream.close()
    assert llm.n_tokens < n_prompt + 400
    # The context is usable again, and a stream left open is stopped by the next call.
    open_stream = llm("Count", max_tokens=400, logit_bias={tok: 100.0}, stream=True, **GREEDY)
    next(open_stream)
    r = llm("Count", max_tokens=3, **GREEDY)
    assert r["usage"]["completion_tokens"] <= 3
    assert list(open_stream) == []           # the old iterator just ends


def test_prompt_longer_than_context(mtp_model_path):
    with qwen35.Llama(mtp_model_path, n_ctx=16, n_threads=1, n_gpu_layers=0, verbose=False) as m:
        with pytest.raises(ValueError, match="exceed context window"):
            m("word " * 50, max_tokens=4)
        with pytest.raises(qwen35.ContextFullError):
            m("word " * 50, max_tokens=4)


def test_bad_arguments(llm):
    with pytest.raises(ValueError):
        llm("x", top_p=-1.0)
    with pytest.raises(ValueError):
        llm("x", min_p=2.0)
    with pytest.raises(ValueError):
        llm("x", repeat_penalty=0.0)
    with pytest.raises(ValueError):
        llm("x", logit_bias={llm.n_vocab() + 10: 1.0})
    with pytest.raises(ValueError):
        llm("")
    with pytest.raises(TypeError):
        llm("x", stop=[1, 2])
    with pytest.raises(NotImplementedError):
        llm("x", grammar="root ::= 'a'")
    with pytest.raises(NotImplementedError):
        llm("x", logprobs=5)
    with pytest.raises(TypeError):
        llm("x", no_such_argument=1)
    # Nothing above broke the context.
    assert llm("x", max_tokens=2, **GREEDY)["usage"]["completion_tokens"] <= 2


def test_generate_and_eval(llm):
    prompt = llm.tokenize(b"Token by token")
    ref = llm(prompt, max_tokens=8, **GREEDY)
    got = []
    for tok in llm.generate(prompt, temp=0.0):
        got.append(tok)
        if len(got) == 8:
            break
    assert llm.detokenize(got).decode("utf-8", "replace") == ref["choices"][0]["text"]
    llm.reset()
    llm.eval(prompt)
    assert llm.n_tokens == len(prompt)
    with pytest.raises(NotImplementedError):
        llm.create_embedding("x")
