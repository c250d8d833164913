"""Images for chat messages: OpenAI image_url values -> encoded embeddings.

Accepted urls: a local file path, a file:// URL, a data: URI with base64
content (data:image/png;base64,...) or an http(s) URL (fetched with urllib).
Encoded images are cached by content, so a multi-turn conversation does not
re-encode the images of earlier turns.
"""

import base64
import binascii
import collections
import hashlib
import os
import threading
import urllib.parse
import urllib.request

from . import _qwen35


def _read_source(url):
    """(cache key, loader) for an image url; loader() returns an Image."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise ValueError("image data URI must be base64 encoded (data:image/...;base64,...)")
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"image data URI is not valid base64: {e}") from None
        return ("sha256", hashlib.sha256(data).hexdigest()), lambda: _qwen35.Image.from_memory(data)
    if url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
        return ("sha256", hashlib.sha256(data).hexdigest()), lambda: _qwen35.Image.from_memory(data)
    if url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        path = urllib.parse.unquote(parsed.path)
        if parsed.netloc and parsed.netloc != "localhost":
            path = "//" + parsed.netloc + path
    else:
        path = url
    try:
        st = os.stat(path)
    except OSError:
        raise ValueError(
            f"image {url[:80]!r} is not an existing file, a file:// URL, a base64 data URI or an http(s) URL"
        ) from None
    key = ("file", os.path.abspath(path), st.st_mtime_ns, st.st_size)
    return key, lambda: _qwen35.Image.from_file(path)


_PROFILES = ("ref", "lc")


def _profile_switch(name, value, ref, lc, preset):
    if value is None:
        return preset
    if value not in _PROFILES:
        raise ValueError(f"{name} must be 'ref' or 'lc', got {value!r}")
    return ref if value == "ref" else lc


def _token_bound(name, value):
    if value is None or value == -1:   # -1: llama-cpp-python's "not set"
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (0 or None: the profile's default), got {value!r}")
    return value


def mmproj_options(profile=None, preprocess=None, pos_interp=None, merger_gelu=None, image_min_tokens=None,
                   image_max_tokens=None):
    """Keyword arguments of _qwen35.Mmproj for the vision profile switches.

    profile: "ref" (transformers, the default) or "lc" (llama.cpp): the preset
    of every switch (spec vision.md section 8). preprocess, pos_interp and
    merger_gelu ("ref" or "lc", None: as the profile) override one item each:
    the image preprocessing (smart-resize rounding, resize filter, letterbox,
    default token bounds), the position-table interpolation, the merger GELU.
    image_min_tokens / image_max_tokens bound the tokens an image is resized
    to (None or 0: the preprocessing's default, REF 64..16384, LC 8..4096).
    """
    if profile is not None and profile not in _PROFILES:
        raise ValueError(f"mmproj_profile must be 'ref' or 'lc', got {profile!r}")
    return dict(
        llamacpp_compat=profile == "lc",
        preprocess=_profile_switch("mmproj_preprocess", preprocess, _qwen35.VISION_PREPROCESS_REF,
                                   _qwen35.VISION_PREPROCESS_LC, _qwen35.VISION_PREPROCESS_PRESET),
        pos_interp=_profile_switch("mmproj_pos_interp", pos_interp, _qwen35.VISION_POS_INTERP_ALIGN_CORNERS,
                                   _qwen35.VISION_POS_INTERP_HALF_PIXEL_ANTIALIAS, _qwen35.VISION_POS_INTERP_PRESET),
        merger_gelu=_profile_switch("mmproj_merger_gelu", merger_gelu, _qwen35.VISION_GELU_ERF,
                                    _qwen35.VISION_GELU_TANH, _qwen35.VISION_GELU_PRESET),
        image_min_tokens=_token_bound("image_min_tokens", image_min_tokens),
        image_max_tokens=_token_bound("image_max_tokens", image_max_tokens),
    )


class ImageEncoder:
    """Encodes image urls with a projector, keeping the last few results."""

    def __init__(self, mmproj, cache_size=16):
        self.mmproj = mmproj
        self.cache_size = cache_size
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, url):
        key, load = _read_source(url)
        with self._lock:
            embed = self._cache.get(key)
            if embed is not None:
                self._cache.move_to_end(key)
                return embed
        embed = self.mmproj.encode(load())
        with self._lock:
            self._cache[key] = embed
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embed

    def close(self):
        with self._lock:
            self._cache.clear()
        self.mmproj.close()
