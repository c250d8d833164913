"""Images in chat messages (image_url parts) through the vision projector."""

import array
import base64
import math
import pathlib

import pytest

import qwen35
from conftest import fixture_path
from qwen35 import _qwen35
from qwen35.llama_chat_format import Llava15ChatHandler, Qwen25VLChatHandler

GREEDY = dict(temperature=0.0, max_tokens=6, enable_thinking=False)


def image_message(url):
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture
def vlm(f32_model_path, mmproj_path):
    with qwen35.Llama(f32_model_path, mmproj_path=mmproj_path, n_ctx=512, n_threads=1, n_gpu_layers=0,
                      verbose=False) as m:
        yield m


def test_encode_matches_the_fixture(f32_model_path, mmproj_path):
    model = _qwen35.Model(f32_model_path, device=_qwen35.DEVICE_CPU)
    # llama.cpp preprocessing keeps this image as it is, like the fixture
    # (the reference preprocessing would upscale it to 64 tokens).
    proj = _qwen35.Mmproj(mmproj_path, model, n_threads=1, llamacpp_compat=True)
    img = _qwen35.Image.from_file(fixture_path("vision", "sq128.png"))
    assert (img.width, img.height) == (128, 128)
    emb = proj.encode(img)
    assert (emb.n_tokens, emb.n_embd) == (16, 256)
    assert emb.grid == (4, 4, 128, 128)
    got = array.array("f", emb.data())
    ref = array.array("f", pathlib.Path(fixture_path("vision", "sq128.emb.f32")).read_bytes())
    assert len(got) == len(ref)
    for t in range(16):
        row, rrow = got[t * 256:(t + 1) * 256], ref[t * 256:(t + 1) * 256]
        err = math.sqrt(sum((a - b) ** 2 for a, b in zip(row, rrow)))
        assert err <= 5e-3 * math.sqrt(sum(b * b for b in rrow))


def test_image_url_forms_agree(vlm):
    png = fixture_path("vision", "sq128.png")
    data_uri = "data:image/png;base64," + base64.b64encode(pathlib.Path(png).read_bytes()).decode()
    replies = [vlm.create_chat_completion(image_message(url), **GREEDY) for url in
               (png, "file://" + png, data_uri)]
    assert all(r["choices"][0]["message"] == replies[0]["choices"][0]["message"] for r in replies)
    assert all(r["usage"] == replies[0]["usage"] for r in replies)
    text_only = vlm.create_chat_completion([{"role": "user", "content": "What is in this picture?"}], **GREEDY)
    assert replies[0]["usage"]["prompt_tokens"] >= text_only["usage"]["prompt_tokens"] + 16


def test_streaming_with_an_image(vlm):
    png = fixture_path("vision", "wide160x96.png")
    full = vlm.create_chat_completion(image_message(png), **GREEDY)
    chunks = list(vlm.create_chat_completion(image_message(png), stream=True, **GREEDY))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == full["choices"][0]["message"]["content"]


def test_chat_handler_is_the_same_as_mmproj_path(f32_model_path, mmproj_path, vlm):
    png = fixture_path("vision", "tall64x128.png")
    ref = vlm.create_chat_completion(image_message(png), **GREEDY)
    for handler in (Llava15ChatHandler(clip_model_path=mmproj_path), Qwen25VLChatHandler(mmproj_path)):
        with qwen35.Llama(f32_model_path, chat_handler=handler, n_ctx=512, n_threads=1, n_gpu_layers=0,
                          verbose=False) as m:
            r = m.create_chat_completion(image_message(png), **GREEDY)
        assert r["choices"][0]["message"] == ref["choices"][0]["message"]


def test_image_errors(vlm, tmp_path, f32_model_path):
    with pytest.raises(ValueError, match="not an existing file"):
        vlm.create_chat_completion(image_message(str(tmp_path / "none.png")))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError):
        vlm.create_chat_completion(image_message(str(bad)))
    with pytest.raises(ValueError):
        vlm.create_chat_completion(image_message("data:image/png,rawbytes"))
    with pytest.raises(qwen35.FileError):
        qwen35.Llama(f32_model_path, mmproj_path=str(tmp_path / "none.gguf"), verbose=False)
    # The conversation still works after the failures.
    assert vlm.create_chat_completion([{"role": "user", "content": "hi"}], **GREEDY)["choices"]
