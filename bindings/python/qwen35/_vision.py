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
