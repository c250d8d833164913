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
    assert proj.device == _qwen35.DEVICE_CPU  # AUTO follows the model (on the CPU)
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


def _max_token_rel(got, ref, n_embd=256):
    worst = 0.0
    for t in range(len(ref) // n_embd):
        row, rrow = got[t * n_embd:(t + 1) * n_embd], ref[t * n_embd:(t + 1) * n_embd]
        err = math.sqrt(sum((a - b) ** 2 for a, b in zip(row, rrow)))
        worst = max(worst, err / math.sqrt(sum(b * b for b in rrow)))
    return worst


def _fixture_f32(name):
    return array.array("f", pathlib.Path(fixture_path("vision", name)).read_bytes())


def test_mmproj_switches_low_level(f32_model_path, mmproj_path):
    model = _qwen35.Model(f32_model_path, device=_qwen35.DEVICE_CPU)
    img = _qwen35.Image.from_file(fixture_path("vision", "wide160x96.png"))
    want_lc, want_ref = _fixture_f32("wide160x96.emb.f32"), _fixture_f32("wide160x96.ref.emb.f32")
    # The LC preset with the two REF encoder switches is the REF encoder.
    proj = _qwen35.Mmproj(mmproj_path, model, n_threads=1, llamacpp_compat=True,
                          pos_interp=_qwen35.VISION_POS_INTERP_ALIGN_CORNERS, merger_gelu=_qwen35.VISION_GELU_ERF)
    assert _max_token_rel(array.array("f", proj.encode(img).data()), want_ref) <= 1e-4
    # The REF preset, pixels kept (min 8 tokens), LC encoder switches: LC.
    proj = _qwen35.Mmproj(mmproj_path, model, n_threads=1, image_min_tokens=8,
                          pos_interp=_qwen35.VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS,
                          merger_gelu=_qwen35.VISION_GELU_TANH)
    assert _max_token_rel(array.array("f", proj.encode(img).data()), want_lc) <= 1e-4
    # The preprocessing switch alone brings REF's 64-token minimum.
    proj = _qwen35.Mmproj(mmproj_path, model, n_threads=1, llamacpp_compat=True,
                          preprocess=_qwen35.VISION_PREPROCESS_REF)
    assert proj.encode(img).n_tokens >= 64
    with pytest.raises(qwen35.InvalidArgumentError, match="pos_interp"):
        _qwen35.Mmproj(mmproj_path, model, pos_interp=7)
    with pytest.raises(qwen35.InvalidArgumentError, match=r"\[100, 50\]"):
        _qwen35.Mmproj(mmproj_path, model, image_min_tokens=100, image_max_tokens=50)


def _llama(f32_model_path, mmproj_path, **kw):
    return qwen35.Llama(f32_model_path, mmproj_path=mmproj_path, n_ctx=512, n_threads=1, n_gpu_layers=0,
                        verbose=False, **kw)


def test_llama_vision_profile(f32_model_path, mmproj_path):
    png = fixture_path("vision", "tall64x128.png")
    want_lc, want_ref = _fixture_f32("tall64x128.emb.f32"), _fixture_f32("tall64x128.ref.emb.f32")
    usage = {}
    for kw in ({}, {"mmproj_profile": "ref"}, {"mmproj_profile": "lc"}):
        with _llama(f32_model_path, mmproj_path, **kw) as m:
            r = m.create_chat_completion(image_message(png), **GREEDY)
            usage[kw.get("mmproj_profile")] = r["usage"]["prompt_tokens"]
            if kw:
                embed = m._images(png)
                got = array.array("f", embed.data())
                if kw["mmproj_profile"] == "lc":
                    assert embed.n_tokens == 8
                    assert _max_token_rel(got, want_lc) <= 1e-4
                else:
                    assert embed.n_tokens >= 64      # REF's minimum upscales the 8-token image
    assert usage[None] == usage["ref"]
    assert usage["ref"] - usage["lc"] >= 56

    # Individual switches: the LC profile with REF encoder items and REF with
    # LC items, on the pixels as they are.
    with _llama(f32_model_path, mmproj_path, mmproj_profile="lc", mmproj_pos_interp="ref",
                mmproj_merger_gelu="ref") as m:
        assert _max_token_rel(array.array("f", m._images(png).data()), want_ref) <= 1e-4
    with _llama(f32_model_path, mmproj_path, mmproj_pos_interp="lc", mmproj_merger_gelu="lc",
                image_min_tokens=8) as m:
        assert _max_token_rel(array.array("f", m._images(png).data()), want_lc) <= 1e-4
    with _llama(f32_model_path, mmproj_path, mmproj_profile="lc", mmproj_preprocess="ref") as m:
        assert m._images(png).n_tokens >= 64
    with _llama(f32_model_path, mmproj_path, mmproj_profile="lc", image_max_tokens=12) as m:
        assert m._images(fixture_path("vision", "sq128.png")).n_tokens == 9     # 128x128 -> 96x96
    # Token bounds from a llama-cpp-python style chat handler.
    handler = Qwen25VLChatHandler(mmproj_path, image_min_tokens=8)
    with qwen35.Llama(f32_model_path, chat_handler=handler, n_ctx=512, n_threads=1, n_gpu_layers=0,
                      verbose=False) as m:
        assert m._images(png).n_tokens == 8


def test_llama_vision_profile_errors(f32_model_path, mmproj_path):
    with pytest.raises(ValueError, match="mmproj_profile"):
        _llama(f32_model_path, mmproj_path, mmproj_profile="hf")
    with pytest.raises(ValueError, match="mmproj_merger_gelu"):
        _llama(f32_model_path, mmproj_path, mmproj_merger_gelu="erf")
    with pytest.raises(ValueError, match="image_min_tokens"):
        _llama(f32_model_path, mmproj_path, image_min_tokens=-2)
    with pytest.raises(qwen35.InvalidArgumentError, match="token bounds"):
        _llama(f32_model_path, mmproj_path, mmproj_profile="lc", image_min_tokens=5000)
