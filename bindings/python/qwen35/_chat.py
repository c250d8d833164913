"""OpenAI-style chat requests and replies on top of the qwen35 C API.

- normalize_messages / normalize_tools: OpenAI messages and tool definitions
  into the form the _qwen35 extension passes to qwen35_chat_render /
  qwen35_chat_generate (spec tokenizer-chat.md section 5.4).
- ReplyStream: the library's streaming reply parser (qwen35_reply_parser)
  turning the reply text into OpenAI chunk deltas (reasoning_content, content,
  tool calls with streamed arguments); the non-streaming reply is the same
  parse, so the two always agree (spec section 6.4).
- tool_calls_from_json: the parser's tool calls as OpenAI tool_calls.
"""

import json
import uuid

from . import _qwen35


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


class ReplyStream:
    """The library's streaming reply parser (qwen35_reply_parser, spec
    section 6.4) with OpenAI-shaped output. push(text) and finish() return
    lists of chat.completion.chunk deltas: {"reasoning_content": ...},
    {"content": ...}, and for tool calls {"tool_calls": [{"index", "id",
    "type": "function", "function": {"name", "arguments": ""}}]} when a call
    is announced, then {"tool_calls": [{"index", "function": {"arguments":
    piece}}]} as its arguments grow. Everything streamed adds up exactly to
    message() after finish(); text that may start a marker is held back by
    the parser until it is resolved.

    tools_json: the offered tool definitions (string-typed parameters);
    id_seed: seed of the tool-call ids (0 = random), so that two parses of
    one reply give the same ids."""

    def __init__(self, thinking, tools_offered, tools_json=None, id_seed=0):
        self._parser = _qwen35.ReplyParser(bool(thinking), bool(tools_offered), tools_json, int(id_seed))
        self.ids = []   # tool-call ids, in order

    def push(self, text):
        if not text:
            return []
        return self._deltas(self._parser.push(text))

    def finish(self):
        return self._deltas(self._parser.finish())

    def message(self):
        """(reasoning_content, content, OpenAI tool_calls) of the reply so far."""
        r = self._parser.result()
        return r["reasoning_content"] or "", r["content"], tool_calls_from_json(r["tool_calls_json"], self.ids)

    def _deltas(self, d):
        out = []
        for field in ("reasoning_content", "content"):
            if d[field]:
                out.append({field: d[field]})
        for index, call_id, name, args in d["tool_calls"]:
            if call_id is not None:
                self.ids.append(call_id)
                out.append({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})
            if args:
                out.append({"tool_calls": [{"index": index, "function": {"arguments": args}}]})
        return out


def tool_calls_from_json(text, ids=()):
    """The parser's [{"name", "arguments": {...}}] -> OpenAI tool_calls, with
    the given ids (random ones for calls beyond them)."""
    if not text:
        return []
    calls = []
    for i, call in enumerate(json.loads(text)):
        args = call.get("arguments", {})
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
        calls.append({
            "id": ids[i] if i < len(ids) else "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": call.get("name", ""), "arguments": args},
        })
    return calls
