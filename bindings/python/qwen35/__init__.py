"""qwen35: Python bindings of the qwen35 inference library (Qwen3.5-4B).

    from qwen35 import Llama
    with Llama("model.gguf", n_ctx=4096, verbose=False) as llm:
        r = llm.create_chat_completion([{"role": "user", "content": "Hello"}])
        print(r["choices"][0]["message"]["content"])

`Llama` mirrors llama-cpp-python's class of the same name; `_qwen35` is the
low-level extension over the C API (Model, Context, Sampler, generate, ...).
"""

import pkgutil

# The extension may be built apart from these sources (a CMake build tree
# puts it in <build>/bindings/python/qwen35/): let the package span both.
__path__ = pkgutil.extend_path(__path__, __name__)

from . import _qwen35  # noqa: E402
from ._qwen35 import (  # noqa: E402,F401
    BackendError,
    CancelledError,
    ContextFullError,
    Error,
    FileError,
    FormatError,
    InvalidArgumentError,
    OutOfMemoryError,
    StateError,
    UnsupportedError,
)
from . import llama_chat_format  # noqa: E402,F401
from .llama import LLAMA_DEFAULT_SEED, Llama, LlamaState  # noqa: E402,F401

__version__ = _qwen35.version()

__all__ = [
    "Llama", "LlamaState", "LLAMA_DEFAULT_SEED", "llama_chat_format", "Error", "InvalidArgumentError",
    "FileError", "FormatError", "UnsupportedError", "OutOfMemoryError", "ContextFullError", "CancelledError",
    "BackendError", "StateError", "__version__",
]
