"""Llama.create_chat_completion: OpenAI shapes, thinking, streaming deltas,
tool calls, multi-turn prefix reuse and errors."""

import json
import random

import pytest

import qwen35
from qwen35 import _chat, _qwen35

GREEDY = dict(temperature=0.0)
RANDOM = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]


def rendered_tokens(llm, messages, enable_thinking=-1, tools=None):
    msgs = _chat.normalize_messages(messages, None)
    prompt = _qwen35.chat_render(llm._model, msgs, _chat.normalize_tools(tools), True, enable_thinking)
    return llm.tokenize(prompt, add_bos=False, special=True)


def join_stream(chunks):
    """Concatenate chat.completion.chunk deltas into a message dict."""
    msg = {}
    for c in chunks[1:]:
        for k, v in c["choices"][0]["delta"].items():
            if k == "tool_calls":
                msg.setdefault(k, []).extend(v)
            else:
                msg[k] = msg.get(k, "") + v
    return msg


def test_chat_shape(llm):
    r = llm.create_chat_completion(USER, max_tokens=10, **GREEDY)
    assert r["object"] == "chat.completion"
    assert r["id"].startswith("chatcmpl-")
    assert r["model"] == llm.model_path
    (choice,) = r["choices"]
    assert choice["index"] == 0
    msg = choice["message"]
    assert msg["role"] == "assistant"
    assert isinstance(msg["content"], str)
    assert set(msg) <= {"role", "content", "reasoning_content", "tool_calls"}
    assert choice["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["prompt_tokens"] == len(rendered_tokens(llm, USER))
    assert 0 < u["completion_tokens"] <= 10
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_thinking_modes(llm):
    # Thinking on (the template default): the reply starts inside <think>,
    # so a short reply of a random model is reasoning.
    on = llm.create_chat_completion(USER, max_tokens=12, **GREEDY)["choices"][0]["message"]
    off = llm.create_chat_completion(USER, max_tokens=12, enable_thinking=False, **GREEDY)["choices"][0]["message"]
    assert "reasoning_content" not in off
    assert on.get("reasoning_content") or on["content"]
    kw = llm.create_chat_completion(USER, max_tokens=12, chat_template_kwargs={"enable_thinking": False}, **GREEDY)
    assert kw["choices"][0]["message"] == off


@pytest.mark.parametrize("thinking", [None, False])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_stream_equals_non_stream(llm, thinking, tools):
    for seed in (1, 2):
        kw = dict(max_tokens=40, seed=seed, enable_thinking=thinking, tools=tools, **RANDOM)
        full = llm.create_chat_completion(USER, **kw)
        chunks = list(llm.create_chat_completion(USER, stream=True, **kw))
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        for c in chunks:
            assert c["object"] == "chat.completion.chunk"
            assert c["id"] == chunks[0]["id"]
            assert set(c["choices"][0]["delta"]) <= {"role", "content", "reasoning_content", "tool_calls"}
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
        last = chunks[-1]["choices"][0]
        assert last["delta"] == {}
        assert last["finish_reason"] == full["choices"][0]["finish_reason"]
        assert chunks[-1]["usage"] == full["usage"]
        streamed = join_stream(chunks)
        expected = dict(full["choices"][0]["message"])
        del expected["role"]
        if expected.get("content") is None:
            expected.pop("content")
        streamed = {k: v for k, v in streamed.items() if v}
        expected = {k: v for k, v in expected.items() if v}
        for call in streamed.get("tool_calls", []):
            call.pop("index")
            call.pop("id")
        for call in expected.get("tool_calls", []):
            call.pop("id")
        assert streamed == expected


def test_stop_strings(llm):
    kw = dict(max_tokens=30, enable_thinking=False, **GREEDY)
    text = llm.create_chat_completion(USER, **kw)["choices"][0]["message"]["content"]
    stop = next((text[i:i + 3] for i in range(3, len(text) - 3)
                 if text[i:i + 3].isascii() and text[i:i + 3].strip() and text.find(text[i:i + 3]) > 0), None)
    if stop is None:
        pytest.fail(f"no usable stop string in {text!r}")
    r = llm.create_chat_completion(USER, stop=[stop], **kw)
    assert r["choices"][0]["message"]["content"] == text[:text.find(stop)].lstrip(" \t\n\r")
    assert r["choices"][0]["finish_reason"] == "stop"


def test_multi_turn_reuses_prefix_exactly(mtp_model_path, llm):
    kw = dict(max_tokens=12, enable_thinking=False, **GREEDY)
    first = llm.create_chat_completion(USER, **kw)
    history = USER + [first["choices"][0]["message"], {"role": "user", "content": "And three more?"}]
    second = llm.create_chat_completion(history, **kw)
    assert second["usage"]["prompt_tokens"] == len(rendered_tokens(llm, history, 0))
    assert second["usage"]["prompt_tokens"] > first["usage"]["total_tokens"] - 12
    with qwen35.Llama(mtp_model_path, n_ctx=512, n_threads=1, n_gpu_layers=0, verbose=False) as fresh:
        ref = fresh.create_chat_completion(history, **kw)
    assert second["choices"][0]["message"] == ref["choices"][0]["message"]


def test_chat_seeds(llm):
    a = llm.create_chat_completion(USER, max_tokens=16, seed=5, **RANDOM)["choices"][0]["message"]
    b = llm.create_chat_completion(USER, max_tokens=16, seed=5, **RANDOM)["choices"][0]["message"]
    assert a == b


def test_breaking_a_chat_stream(llm):
    tok = llm.tokenize(b" hello", add_bos=False)[0]
    stream = llm.create_chat_completion(USER, max_tokens=400, logit_bias={tok: 100.0}, stream=True, **GREEDY)
    next(stream)
    next(stream)
    stream.close()
    assert llm.n_tokens < len(rendered_tokens(llm, USER)) + 400
    assert llm.create_chat_completion(USER, max_tokens=2, **GREEDY)["usage"]["completion_tokens"] <= 2


def test_chat_errors(llm):
    with pytest.raises(ValueError):
        llm.create_chat_completion([])
    with pytest.raises(ValueError):
        llm.create_chat_completion([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError):
        llm.create_chat_completion([{"content": "no role"}])
    with pytest.raises(TypeError):
        llm.create_chat_completion([{"role": "user", "content": 42}])
    with pytest.raises(TypeError):
        llm.create_chat_completion("not a list")
    with pytest.raises(ValueError, match="vision projector"):
        llm.create_chat_completion([{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "file:///nonexistent.png"}}]}])
    with pytest.raises(ValueError, match="arguments"):
        llm.create_chat_completion([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{bad json"}}]},
            {"role": "tool", "content": "sunny"}], tools=TOOLS)
    with pytest.raises(NotImplementedError):
        llm.create_chat_completion(USER, response_format={"type": "json_object"})
    assert llm.create_chat_completion(USER, max_tokens=1)["usage"]["completion_tokens"] == 1


def test_tool_call_history_is_accepted(llm):
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ]
    r = llm.create_chat_completion(history, tools=TOOLS, max_tokens=4, **GREEDY)
    assert r["usage"]["prompt_tokens"] == len(rendered_tokens(llm, history, tools=TOOLS))
    prompt = llm.detokenize(rendered_tokens(llm, history, tools=TOOLS), special=True).decode()
    assert "get_weather" in prompt and "Paris" in prompt


# ---- reply parsing (spec tokenizer-chat.md 6.3 / 6.4) -------------------------------

WEATHER_CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>")
REPLIES = [
    # (generated text, thinking, tools, reasoning, content, number of calls)
    ("I'm\nthinking\n</think>\n\nHello, world!", True, False, "I'm\nthinking", "Hello, world!", 0),
    ("\n\nLead newlines\n\n</think>\n\nAnswer", True, False, "\n\nLead newlines\n", "Answer", 0),
    ("reason\n\n</think>\n\n\n\nAnswer\n\n", True, False, "reason\n", "Answer\n\n", 0),
    ("No close tag, truncated reasoning", True, False, "No close tag, truncated reasoning", "", 0),
    ("reason\n</think>", True, False, "reason", "", 0),
    ("\n</think>\n\nAnswer", True, False, "", "Answer", 0),
    ("reason\n</think>\n\nfirst\n</think>\n\nsecond", True, False, "reason", "first\n</think>\n\nsecond", 0),
    ("reason\n", True, False, "reason", "", 0),
    ("Need weather.\n</think>\n\n" + WEATHER_CALL, True, True, "Need weather.", "", 1),
    ("r\n</think>\n\nLet me check.\n\n" + WEATHER_CALL + "\n" + WEATHER_CALL, True, True, "r", "Let me check.\n\n", 2),
    ("Hello there.", False, False, "", "Hello there.", 0),
    ("\n\nLeading", False, False, "", "Leading", 0),
    ("<think>\nunexpected\n</think>\n\nHi", False, False, "", "<think>\nunexpected\n</think>\n\nHi", 0),
    ("Sure <tool_ca", False, True, "", "Sure <tool_ca", 0),
]


@pytest.mark.parametrize("text,thinking,tools,reasoning,content,n_calls", REPLIES)
def test_reply_parse(text, thinking, tools, reasoning, content, n_calls):
    r, c, calls = qwen35.Llama._parse_reply(text.encode(), thinking, tools)
    assert (r, c, len(calls)) == (reasoning, content, n_calls)


@pytest.mark.parametrize("text,thinking,tools,reasoning,content,n_calls", REPLIES)
def test_reply_stream_adds_up_to_the_parse(text, thinking, tools, reasoning, content, n_calls):
    rng = random.Random(len(text))
    for trial in range(20):
        split = _chat.ReplyStream(thinking, tools)
        got = {"reasoning_content": "", "content": ""}
        pos = 0
        while pos < len(text):
            step = 1 if trial == 0 else rng.randint(1, 6)
            for field, delta in split.push(text[pos:pos + step]):
                assert delta
                got[field] += delta
                # Every streamed state is a prefix of the final result.
                assert (reasoning if field == "reasoning_content" else content).startswith(got[field])
            pos += step
        for field, delta in split.finish(reasoning, content):
            got[field] += delta
        assert got == {"reasoning_content": reasoning, "content": content}


def test_reply_stream_holds_back_markers():
    split = _chat.ReplyStream(True, True)
    out = split.push("reason\n</thi")
    assert out == [("reasoning_content", "reason")]
    out = split.push("nk>\n\nSure <tool_ca")
    assert out == [("content", "Sure ")]


def test_tool_calls_are_openai_shaped():
    _, content, calls = qwen35.Llama._parse_reply(("x\n</think>\n\n" + WEATHER_CALL).encode(), True, True)
    assert content == ""
    (call,) = calls
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}


class ReplayGeneration:
    """Test double of _qwen35.Generation that replays a canned reply, so the
    chunk shaping can be checked on replies a random model never writes."""

    def __init__(self, text, pieces):
        self.text, self.pieces, self.done = text.encode(), [p.encode() for p in pieces], False

    def next_chunk(self):
        return (1, self.pieces.pop(0)) if self.pieces else None

    def wait(self):
        self.done = True
        return {"text": self.text, "tokens": [], "n_generated": 9, "n_past": 30,
                "stop_reason": _qwen35.STOP_EOG}

    def cancel(self):
        pass


@pytest.mark.parametrize("text,thinking,tools,reasoning,content,n_calls", REPLIES)
def test_chat_chunks_add_up_to_the_message(llm, text, thinking, tools, reasoning, content, n_calls):
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunks = list(llm._chat_chunks(ReplayGeneration(text, pieces), head, thinking, tools))
    full = qwen35.Llama._chat_result(dict(head, object="chat.completion"), ReplayGeneration(text, []).wait(),
                                     thinking, tools)
    msg = full["choices"][0]["message"]
    streamed = join_stream(chunks)
    assert streamed.get("reasoning_content", "") == msg.get("reasoning_content", "")
    assert streamed.get("content", "") == (msg["content"] or "")
    calls = streamed.get("tool_calls", [])
    assert [c["index"] for c in calls] == list(range(n_calls))
    assert [c["function"] for c in calls] == [c["function"] for c in msg.get("tool_calls", [])]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert full["choices"][0]["finish_reason"] == ("tool_calls" if n_calls else "stop")
    if n_calls:
        assert msg["content"] is None if not content else msg["content"] == content
    assert chunks[-1]["usage"] == full["usage"] == {"prompt_tokens": 21, "completion_tokens": 9,
                                                     "total_tokens": 30}
