"""The _qwen35 extension over the C API: handles, tokens, decode, sampler,
state, errors and the context guard."""

import threading
import time

import pytest

import qwen35
from qwen35 import _qwen35


def test_version():
    assert qwen35.__version__ == _qwen35.version()
    assert _qwen35.version_number() >= 100


def test_error_hierarchy():
    assert issubclass(qwen35.InvalidArgumentError, qwen35.Error)
    assert issubclass(qwen35.InvalidArgumentError, ValueError)
    assert issubclass(qwen35.FileError, OSError) and issubclass(qwen35.FileError, ValueError)
    assert issubclass(qwen35.ContextFullError, ValueError)
    assert issubclass(qwen35.OutOfMemoryError, MemoryError)
    assert issubclass(qwen35.Error, RuntimeError)


def test_cuda_memory_info():
    # Without a usable GPU (or a CUDA build) it raises the library's error;
    # with one it reports the device's memory.
    try:
        free, total = _qwen35.cuda_memory_info(0)
    except qwen35.Error as e:
        assert str(e)
    else:
        assert 0 < free <= total
    with pytest.raises(qwen35.Error):
        _qwen35.cuda_memory_info(-1)


def test_model_facts(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    assert m.n_vocab == 4122
    assert m.n_embd == 256
    assert m.has_mtp
    assert m.device == _qwen35.DEVICE_CPU
    assert m.meta("general.architecture") == "qwen35"
    assert m.meta("no.such.key") is None
    assert "general.architecture" in m.meta_keys()
    assert "qwen35" in m.desc
    m.close()
    assert m.closed
    with pytest.raises(qwen35.StateError):
        m.n_vocab


def test_tokenize_roundtrip(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    text = "Hello, world! Ünïcödé 😀 <|im_start|>".encode()
    toks = m.tokenize(text, parse_special=True)
    assert all(isinstance(t, int) for t in toks)
    assert m.detokenize(toks, render_special=True) == text
    # Without special parsing the control token is plain text.
    assert len(m.tokenize(text, parse_special=False)) > len(toks)
    pieces = b"".join(m.token_to_piece(t, render_special=True) for t in toks)
    assert pieces == text
    d = _qwen35.Detokenizer(m, render_special=True)
    streamed = b"".join(d.push(t) for t in toks) + d.flush()
    assert streamed == text
    with pytest.raises(qwen35.InvalidArgumentError):
        m.token_to_piece(m.n_vocab)
    with pytest.raises(ValueError):
        m.detokenize([-1])


def test_decode_logits_and_sampler(mtp_model_path):
    import array
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=128, n_threads=1)
    toks = m.tokenize(b"The quick brown fox")
    ctx.decode(toks)
    assert ctx.n_past == len(toks)
    assert ctx.tokens() == toks
    logits = array.array("f", ctx.logits())
    assert len(logits) == m.n_vocab
    assert ctx.logits(0) is None            # only the last row was kept
    hidden = array.array("f", ctx.hidden())
    assert len(hidden) == m.n_embd
    greedy = _qwen35.Sampler(m)              # temperature 0
    best = max(range(len(logits)), key=logits.__getitem__)
    assert greedy.sample(ctx) == best
    ctx.decode(toks[:2], logits=_qwen35.LOGITS_ALL)
    assert ctx.logits(0) is not None and ctx.logits(1) is not None
    with pytest.raises(qwen35.InvalidArgumentError):
        ctx.decode([m.n_vocab + 5])
    assert ctx.n_past == len(toks) + 2       # a failed decode changes nothing
    ctx.truncate(3)
    assert ctx.tokens() == toks[:3]
    ctx.reset()
    assert ctx.n_past == 0


def test_context_full(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=8, n_threads=1)
    with pytest.raises(qwen35.ContextFullError):
        ctx.decode(list(range(100, 120)))
    assert ctx.n_past == 0


def test_state_roundtrip(mtp_model_path, tmp_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=128, n_threads=1)
    ctx.decode(m.tokenize(b"State of the conversation"))
    state = ctx.state_save()
    assert len(state) > 0
    ctx.decode([42])
    after = ctx.logits()
    ctx.state_load(state)
    ctx.decode([42])
    assert ctx.logits() == after
    path = str(tmp_path / "state.bin")
    ctx.state_save_file(path)
    ctx.reset()
    ctx.state_load_file(path)
    assert ctx.n_past == len(m.tokenize(b"State of the conversation")) + 1
    with pytest.raises(qwen35.Error):
        ctx.state_load(b"not a state")
    with pytest.raises(qwen35.FileError):
        ctx.state_load_file(str(tmp_path / "missing.bin"))


def test_model_outlives_python_references(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=64, n_threads=1)
    with pytest.raises(qwen35.StateError):
        m.close()                            # a context still uses it
    del m                                    # the context keeps it alive
    ctx.decode([1, 2, 3])
    assert ctx.n_past == 3


def test_generation_claims_the_context(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=512, n_threads=1)
    tok = m.tokenize(b" hello")[0]
    sampler = _qwen35.Sampler(m, logit_bias=[(tok, 100.0)])
    prompt = m.tokenize(b"Go")
    gen = _qwen35.generate(ctx, sampler, prompt, max_tokens=400, stream=True)
    first = gen.next_chunk()
    assert first[0] == tok
    with pytest.raises(qwen35.StateError):
        ctx.decode([1])                      # the worker owns the context
    with pytest.raises(qwen35.StateError):
        sampler.accept(1)
    gen.cancel()
    r = gen.wait()
    assert r["stop_reason"] == _qwen35.STOP_CANCELLED
    assert r["n_generated"] < 400
    # The context holds the prompt and exactly the emitted tokens, wherever
    # the cancel landed (in a forward pass or between two).
    assert ctx.n_past == len(prompt) + r["n_generated"]
    ctx.decode([1])                          # free again


def test_generate_wait_result(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=256, n_threads=1)
    r = _qwen35.generate(ctx, _qwen35.Sampler(m), m.tokenize(b"Once upon a time"), max_tokens=12).wait()
    assert r["n_generated"] == len(r["tokens"]) <= 12
    assert m.detokenize(r["tokens"]) == r["text"]
    assert r["n_past"] == len(m.tokenize(b"Once upon a time")) + r["n_generated"]
    assert r["stop_reason"] in (_qwen35.STOP_EOG, _qwen35.STOP_MAX_TOKENS)


def test_generation_releases_the_gil(mtp_model_path):
    m = _qwen35.Model(mtp_model_path, device=_qwen35.DEVICE_CPU)
    ctx = _qwen35.Context(m, n_ctx=512, n_threads=1)
    tok = m.tokenize(b" hello")[0]
    sampler = _qwen35.Sampler(m, logit_bias=[(tok, 100.0)])
    gen = _qwen35.generate(ctx, sampler, m.tokenize(b"Go"), max_tokens=200)
    result = {}
    t = threading.Thread(target=lambda: result.update(gen.wait()))
    t.start()
    ticks = 0
    while t.is_alive():
        ticks += 1                           # Python keeps running meanwhile
        time.sleep(0.0005)
    t.join()
    assert result["n_generated"] == 200
    assert ticks > 20
