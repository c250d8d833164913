"""Chat handlers, for scripts written against llama_cpp.llama_chat_format.

qwen35 always formats chats with the model's own template (Qwen3.5), so the
only job of a chat handler here is to name the vision projector:

    from qwen35 import Llama
    from qwen35.llama_chat_format import Llava15ChatHandler   # or Qwen25VLChatHandler, ...
    llm = Llama("model.gguf", chat_handler=Llava15ChatHandler(clip_model_path="mmproj.gguf"), n_ctx=4096)

which is the same as Llama("model.gguf", mmproj_path="mmproj.gguf", n_ctx=4096).
"""

import os


class VisionChatHandler:
    """Carries the path of a qwen35 vision projector GGUF (mmproj) and,
    as llama-cpp-python's Qwen3VLChatHandler does, optional bounds on the
    tokens per image (None or -1: the vision profile's default)."""

    def __init__(self, clip_model_path, verbose=True, image_min_tokens=None, image_max_tokens=None, **kwargs):
        if not isinstance(clip_model_path, (str, os.PathLike)):
            raise TypeError("clip_model_path must be a path")
        self.clip_model_path = os.fspath(clip_model_path)
        self.verbose = verbose
        self.image_min_tokens = image_min_tokens
        self.image_max_tokens = image_max_tokens


# The names llama-cpp-python uses for its multimodal handlers; all of them
# mean "use this projector with the model's own template" here.
class Llava15ChatHandler(VisionChatHandler):
    pass


class Llava16ChatHandler(VisionChatHandler):
    pass


class MTMDChatHandler(VisionChatHandler):
    pass


class Qwen25VLChatHandler(VisionChatHandler):
    pass


class Qwen3VLChatHandler(VisionChatHandler):
    pass


Qwen35ChatHandler = VisionChatHandler
