"""Shared fixtures: the reference fixture models from ../shared/fixtures (or
$QWEN35_FIXTURES). Tests run on the CPU with one thread: the tiny models are
fastest that way, also on a loaded CI machine, and results do not depend on a
GPU's numerics."""

import os

import pytest

import qwen35

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FIXTURES = os.environ.get("QWEN35_FIXTURES") or os.path.join(os.path.dirname(ROOT), "shared", "fixtures")


def fixture_path(*parts):
    p = os.path.join(FIXTURES, *parts)
    if not os.path.exists(p):
        pytest.fail(f"fixture {p} is missing (set QWEN35_FIXTURES to the fixtures directory)")
    return p


@pytest.fixture
def mtp_model_path():
    return fixture_path("models", "tiny-m-nvfp4.gguf")     # with an MTP layer


@pytest.fixture
def f32_model_path():
    return fixture_path("models", "tiny-a-f32.gguf")       # no MTP layer


@pytest.fixture
def mmproj_path():
    return fixture_path("vision", "tiny-vis.mmproj.gguf")


@pytest.fixture
def llm(mtp_model_path):
    with qwen35.Llama(mtp_model_path, n_ctx=512, n_threads=1, seed=1234, n_gpu_layers=0, verbose=False) as m:
        yield m


def forced_token(llm):
    """A plain token to force with logit_bias, so a generation runs as long
    as asked (a random model may otherwise end early)."""
    return llm.tokenize(b" hello", add_bos=False)[0]
