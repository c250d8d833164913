"""Loading errors, argument errors and the lifetime of a Llama."""

import pytest

import qwen35


def test_missing_model_file(tmp_path):
    path = str(tmp_path / "missing.gguf")
    with pytest.raises(qwen35.FileError) as e:
        qwen35.Llama(path, n_gpu_layers=0, verbose=False)
    # llama-cpp-python raises ValueError for a bad path; so do we (and OSError).
    assert isinstance(e.value, ValueError) and isinstance(e.value, OSError)
    assert "missing.gguf" in str(e.value)
    assert e.value.status == -2 and e.value.status_name


def test_corrupt_model_files(tmp_path, mtp_model_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(qwen35.FormatError) as e:
        qwen35.Llama(str(junk), verbose=False)
    assert isinstance(e.value, ValueError)
    assert str(e.value)
    data = open(mtp_model_path, "rb").read()
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError):
        qwen35.Llama(str(cut), verbose=False)


def test_constructor_arguments(mtp_model_path):
    with pytest.raises(ValueError):
        qwen35.Llama(mtp_model_path, n_ctx=-5, n_gpu_layers=0, verbose=False)
    with pytest.raises(TypeError):
        qwen35.Llama(mtp_model_path, no_such_option=True, n_gpu_layers=0, verbose=False)
    with pytest.raises(NotImplementedError):
        qwen35.Llama(mtp_model_path, lora_path="adapter.gguf", n_gpu_layers=0, verbose=False)
    with pytest.raises(TypeError):
        qwen35.Llama(None)
    # llama.cpp tuning options are accepted and ignored.
    with qwen35.Llama(mtp_model_path, n_ctx=64, n_threads=1, n_threads_batch=2, use_mlock=True,
                      flash_attn=True, chat_format="chatml", n_gpu_layers=0, verbose=False) as m:
        assert m.n_ctx() == 64


def test_n_ctx_zero_is_the_trained_context(mtp_model_path):
    with qwen35.Llama(mtp_model_path, n_ctx=0, n_threads=1, n_gpu_layers=0, verbose=False) as m:
        assert m.n_ctx() == m._model.n_ctx_train


def test_close_and_context_manager(mtp_model_path):
    with qwen35.Llama(mtp_model_path, n_ctx=64, n_threads=1, n_gpu_layers=0, verbose=False) as m:
        assert m("hi", max_tokens=1, temperature=0)["usage"]["completion_tokens"] <= 1
    with pytest.raises(qwen35.StateError):
        m("hi", max_tokens=1)
    with pytest.raises(qwen35.StateError):
        m.tokenize(b"hi")
    m.close()   # closing twice is fine


def test_close_during_a_stream(mtp_model_path):
    m = qwen35.Llama(mtp_model_path, n_ctx=512, n_threads=1, n_gpu_layers=0, verbose=False)
    tok = m.tokenize(b" hello", add_bos=False)[0]
    stream = m("Go", max_tokens=400, logit_bias={tok: 100.0}, stream=True, temperature=0)
    next(stream)
    m.close()
    assert list(stream) == []


def test_tokenize_and_detokenize(llm):
    toks = llm.tokenize(b"Hello world")
    assert toks == llm.tokenize("Hello world")
    assert llm.detokenize(toks) == b"Hello world"
    im_start = llm.tokenize(b"<|im_start|>", special=True)
    assert len(im_start) == 1
    assert llm.detokenize(im_start) == b""
    assert llm.detokenize(im_start, special=True) == b"<|im_start|>"
    assert len(llm.tokenize(b"<|im_start|>", special=False)) > 1
    assert llm.token_eos() >= 0
    assert llm.n_vocab() == 4122 and llm.n_embd() == 256
    with pytest.raises(TypeError):
        llm.tokenize(123)
    with pytest.raises(ValueError):
        llm.detokenize([10 ** 6])


def test_save_and_load_state(llm):
    llm("Remember this sentence", max_tokens=4, temperature=0)
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens and state.llama_state_size == len(state.llama_state)
    cont = llm("Remember this sentence", max_tokens=8, temperature=0)["choices"][0]["text"]
    llm.reset()
    assert llm.n_tokens == 0
    llm.load_state(state)
    assert llm.n_tokens == state.n_tokens
    assert llm("Remember this sentence", max_tokens=8, temperature=0)["choices"][0]["text"] == cont
    with pytest.raises(TypeError):
        llm.load_state(b"raw bytes")
