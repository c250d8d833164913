"""OpenAI-style chat requests and replies on top of the qwen35 C API.

- normalize_messages / normalize_tools: OpenAI messages and tool definitions
  into the form the _qwen35 extension passes to qwen35_chat_render /
  qwen35_chat_generate (spec tokenizer-chat.md section 5.4).
- ReplyStream: splits the reply text into reasoning_content / content deltas
  while it streams, holding back text that may be the start of a marker
  (spec section 6.4); the final split is always qwen35_chat_parse's.
- tool_calls_from_json: qwen35_chat_parse's tool calls as OpenAI tool_calls.
"""

import json
import logging
import uuid

_log = logging.getLogger("qwen35")

# ASCII whitespace, the set the reply parser strips (not str.isspace's).
_WS = " \t\n\r\f\v"
_THINK_CLOSE = "</think>"
_THINK_TAIL = "\n</think>\n\n"   # the closing marker as the model writes it
_TOOL_OPEN = "<tool_call>"


def _text_of(value, what):
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string or None, not {type(value).__name__}")
    return value


def normalize_tool_calls(tool_calls):
    """OpenAI tool_calls of an assistant message -> JSON array of
    {"name", "arguments": {...}} (arguments given as a JSON string are parsed,
    because the template iterates them as a mapping)."""
    if not tool_calls:
        return None
    calls = []
    for i, call in enumerate(tool_calls):
        if not isinstance(call, dict):
            raise TypeError(f"tool_calls[{i}] must be a dict")
        fn = call.get("function", call)
        name = fn.get("name")
        if not isinstance(name, str):
            raise ValueError(f"tool_calls[{i}] has no function name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"tool_calls[{i}].function.arguments is not valid JSON: {e}") from None
        calls.append({"name": name, "arguments": args})
    return json.dumps(calls, ensure_ascii=False)


def normalize_tools(tools, functions=None):
    """OpenAI tools (or legacy functions) -> JSON text for the template, each
    tool rebuilt as {"type", "function": {"name", "description", "parameters"}}."""
    items = list(tools or [])
    items += [{"type": "function", "function": f} for f in (functions or [])]
    if not items:
        return None
    out = []
    for i, tool in enumerate(items):
        if not isinstance(tool, dict):
            raise TypeError(f"tools[{i}] must be a dict")
        if tool.get("type", "function") != "function":
            raise ValueError(f"tools[{i}]: only tools of type 'function' are supported")
        fn = tool.get("function", tool)
        if not isinstance(fn.get("name"), str):
            raise ValueError(f"tools[{i}] has no function name")
        out.append({"type": "function", "function": {
            "name": fn["name"],
            "description": fn.get("description", ""),
            "parameters": fn.get("parameters", {}),
        }})
    return json.dumps(out, ensure_ascii=False)


def normalize_messages(messages, encode_image):
    """OpenAI chat messages -> list of dicts for _qwen35.chat_render /
    chat_generate. encode_image(url) returns an ImageEmbed for an image_url
    part (and raises when images are not available)."""
    if isinstance(messages, dict) or not hasattr(messages, "__iter__"):
        raise TypeError("messages must be a list of message dicts")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise TypeError(f"messages[{i}] must be a dict, not {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str):
            raise ValueError(f"messages[{i}] has no role")
        if role == "developer":
            role = "system"
        elif role == "function":   # legacy OpenAI function result
            role = "tool"
        m = {"role": role}
        content = msg.get("content")
        if isinstance(content, (list, tuple)):
            m["parts"] = _content_parts(content, i, encode_image)
        else:
            m["content"] = _text_of(content, f"messages[{i}].content") or ""
        m["reasoning_content"] = _text_of(msg.get("reasoning_content"), f"messages[{i}].reasoning_content")
        m["tool_calls_json"] = normalize_tool_calls(msg.get("tool_calls"))
        if m["tool_calls_json"] is None and msg.get("function_call"):
            m["tool_calls_json"] = normalize_tool_calls([{"function": msg["function_call"]}])
        m["name"] = _text_of(msg.get("name"), f"messages[{i}].name")
        out.append(m)
    return out


def _content_parts(content, i, encode_image):
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            parts.append(("text", part))
            continue
        if not isinstance(part, dict):
            raise TypeError(f"messages[{i}].content[{j}] must be a dict")
        kind = part.get("type")
        if kind == "text":
            parts.append(("text", _text_of(part.get("text"), f"messages[{i}].content[{j}].text") or ""))
        elif kind == "image_url":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if not isinstance(url, str):
                raise ValueError(f"messages[{i}].content[{j}]: image_url needs a url string")
            parts.append(("image", encode_image(url)))
        else:
            raise ValueError(f"messages[{i}].content[{j}]: unsupported content part type {kind!r}")
    return parts


def _held_suffix(text, marker):
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ReplyStream:
    """Turns streamed reply text into monotonic reasoning_content / content
    deltas (spec 6.4). push() returns [(field, delta), ...]; finish(parsed)
    returns the remaining deltas so that everything streamed adds up to the
    final parse. Tool calls are reported by the caller at the end."""

    def __init__(self, thinking, tools_offered):
        self.tools = tools_offered
        self.state = "reasoning" if thinking else "content"
        self.text = ""
        self.scan = 0              # where the search for </think> resumes
        self.content_start = 0     # index in text where the content begins
        self.sent = {"reasoning_content": "", "content": ""}

    def _emit(self, field, value, out):
        sent = self.sent[field]
        if len(value) > len(sent) and value.startswith(sent):
            out.append((field, value[len(sent):]))
            self.sent[field] = value

    def push(self, piece):
        out = []
        if not piece:
            return out
        self.text += piece
        if self.state == "reasoning":
            k = self.text.find(_THINK_CLOSE, max(0, self.scan - len(_THINK_CLOSE) + 1))
            if k < 0:
                self.scan = len(self.text)
                r = self.text[:len(self.text) - _held_suffix(self.text, _THINK_TAIL)]
                if r.strip(_WS):   # whitespace-only reasoning becomes "" at the end
                    self._emit("reasoning_content", r, out)
                return out
            r = self.text[:k]
            if r.endswith("\n"):
                r = r[:-1]
            if r.strip(_WS):
                self._emit("reasoning_content", r, out)
            self.state = "content"
            self.content_start = k + len(_THINK_CLOSE)
        if self.state == "content":
            rest = self.text[self.content_start:].lstrip(_WS)
            if self.tools:
                k = rest.find(_TOOL_OPEN)
                if k >= 0:
                    # Everything from here on is tool calls (or, if malformed,
                    # text the final parse puts back into the content).
                    self._emit("content", rest[:k], out)
                    self.state = "tools"
                    return out
                rest = rest[:len(rest) - _held_suffix(rest, _TOOL_OPEN)]
            self._emit("content", rest, out)
        return out

    def finish(self, reasoning, content):
        """Deltas that complete the stream to the final parse."""
        out = []
        for field, value in (("reasoning_content", reasoning or ""), ("content", content or "")):
            sent = self.sent[field]
            if not value.startswith(sent):
                _log.warning("qwen35: streamed %s differs from the final parse", field)
                continue
            if len(value) > len(sent):
                out.append((field, value[len(sent):]))
                self.sent[field] = value
        return out


def tool_calls_from_json(text):
    """qwen35_chat_parse's [{"name", "arguments": {...}}] -> OpenAI tool_calls."""
    if not text:
        return []
    calls = []
    for call in json.loads(text):
        args = call.get("arguments", {})
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
        calls.append({
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": call.get("name", ""), "arguments": args},
        })
    return calls
