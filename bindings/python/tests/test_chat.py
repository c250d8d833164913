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
    """Concatenate chat.completion.chunk deltas into a message dict, tool
    calls merged by index as OpenAI clients do (checking the shape: a call is
    announced with id, type and name before its arguments stream)."""
    msg = {}
    for c in chunks[1:]:
        for k, v in c["choices"][0]["delta"].items():
            if k == "tool_calls":
                calls = msg.setdefault(k, [])
                for piece in v:
                    i = piece["index"]
                    if i == len(calls):
                        assert set(piece) == {"index", "id", "type", "function"}
                        assert piece["type"] == "function" and piece["id"].startswith("call_")
                        assert piece["function"]["name"] and piece["function"]["arguments"] == ""
                        calls.append({"index": i, "id": piece["id"], "type": "function",
                                      "function": {"name": piece["function"]["name"], "arguments": ""}})
                    else:
                        assert i < len(calls) and set(piece) == {"index", "function"}
                        assert set(piece["function"]) == {"arguments"} and piece["function"]["arguments"]
                    calls[i]["function"]["arguments"] += piece["function"]["arguments"]
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
        assert streamed == expected   # tool-call ids included: same seed, same ids


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
        split = _chat.ReplyStream(thinking, tools, id_seed=9)
        deltas = []
        pos = 0
        while pos < len(text):
            step = 1 if trial == 0 else rng.randint(1, 6)
            for delta in split.push(text[pos:pos + step]):
                assert all(delta.values())
                deltas.append(delta)
                got = join_stream([None] + [{"choices": [{"delta": d}]} for d in deltas])
                # Every streamed state is a prefix of the final result.
                assert reasoning.startswith(got.get("reasoning_content", ""))
                assert content.startswith(got.get("content", ""))
            pos += step
        deltas += split.finish()
        got = join_stream([None] + [{"choices": [{"delta": d}]} for d in deltas])
        assert (got.get("reasoning_content", ""), got.get("content", "")) == (reasoning, content)
        r, c, calls = split.message()
        assert (r, c) == (reasoning, content)
        assert [dict(call, index=i) for i, call in enumerate(calls)] == got.get("tool_calls", [])
        assert len(calls) == n_calls


def test_reply_stream_holds_back_markers():
    split = _chat.ReplyStream(True, True)
    out = split.push("reason\n</thi")
    assert out == [{"reasoning_content": "reason"}]
    out = split.push("nk>\n\nSure <tool_ca")
    assert out == [{"content": "Sure "}]


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


# ---- streamed tool calls and tool_choice ----------------------------------------------

TOOLS_JSON = _chat.normalize_tools(TOOLS)


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_tool_calls_stream_in_openai_chunks(llm, size):
    # "2" for the string parameter city stays a string (typed by the tool
    # definitions); days is an integer.
    call = WEATHER_CALL.replace("\nParis\n", "\n2\n")
    text = "r\n</think>\n\nLet me check.\n\n" + call + "\n" + WEATHER_CALL
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunks = list(llm._chat_chunks(ReplayGeneration(text, pieces), head, True, True, tools_json=TOOLS_JSON,
                                   id_seed=77))
    full = qwen35.Llama._chat_result(dict(head, object="chat.completion"), ReplayGeneration(text, []).wait(),
                                     True, True, tools_json=TOOLS_JSON, id_seed=77)
    msg = full["choices"][0]["message"]
    assert [json.loads(c["function"]["arguments"]) for c in msg["tool_calls"]] == [
        {"city": "2", "days": 2}, {"city": "Paris", "days": 2}]
    streamed = join_stream(chunks)
    # Same id seed: the stream and the message agree on everything.
    assert streamed["tool_calls"] == [dict(c, index=i) for i, c in enumerate(msg["tool_calls"])]
    assert streamed["content"] == msg["content"] == "Let me check.\n\n"
    assert streamed["reasoning_content"] == msg["reasoning_content"] == "r"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Calls are announced as soon as "<function=NAME>" is complete, and the
    # arguments arrive in pieces while the reply streams.
    pieces_of_first = [p for c in chunks for p in c["choices"][0]["delta"].get("tool_calls", [])
                       if p["index"] == 0]
    assert pieces_of_first[0]["function"] == {"name": "get_weather", "arguments": ""}
    if size < 1000:
        assert len(pieces_of_first) > 3
    # Without an id seed the ids are random, but still call_ + 24 characters.
    other = qwen35.Llama._chat_result(dict(head, object="chat.completion"), ReplayGeneration(text, []).wait(),
                                      True, True, tools_json=TOOLS_JSON)
    ids = [c["id"] for c in other["choices"][0]["message"]["tool_calls"]]
    assert all(len(i) == 29 for i in ids) and ids != [c["id"] for c in msg["tool_calls"]]


def rendered_prompt(llm, messages, enable_thinking, tools):
    msgs = _chat.normalize_messages(messages, None)
    return _qwen35.chat_render(llm._model, msgs, _chat.normalize_tools(tools), True, enable_thinking)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_names_a_function(llm, stream):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    kw = dict(tools=TOOLS, tool_choice=choice, enable_thinking=False, max_tokens=6, seed=3, **RANDOM)
    full = llm.create_chat_completion(USER, **kw)
    prefix = b"<tool_call>\n<function=get_weather>\n"
    prompt = rendered_prompt(llm, USER, 0, TOOLS) + prefix
    assert full["usage"]["prompt_tokens"] == len(llm.tokenize(prompt, add_bos=False, special=True))
    msg = full["choices"][0]["message"]
    # The call is forced: whatever the (random) model writes next, the reply
    # is a call of get_weather.
    assert full["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather"
    json.loads(msg["tool_calls"][0]["function"]["arguments"])
    if stream:
        chunks = list(llm.create_chat_completion(USER, stream=True, **kw))
        streamed = join_stream(chunks)
        assert streamed["tool_calls"] == [dict(c, index=i) for i, c in enumerate(msg["tool_calls"])]
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        assert chunks[-1]["usage"] == full["usage"]
    # The legacy function_call form forces the same.
    legacy = dict(kw, tool_choice=None, function_call={"name": "get_weather"})
    assert llm.create_chat_completion(USER, **legacy)["choices"][0]["message"] == msg


def test_tool_choice_required_and_errors(llm, caplog):
    kw = dict(tools=TOOLS, enable_thinking=False, max_tokens=4, seed=3, **RANDOM)
    r = llm.create_chat_completion(USER, tool_choice="required", **kw)
    prompt = rendered_prompt(llm, USER, 0, TOOLS) + b"<tool_call>\n<function="
    assert r["usage"]["prompt_tokens"] == len(llm.tokenize(prompt, add_bos=False, special=True))
    with pytest.raises(ValueError, match="not among the tools"):
        llm.create_chat_completion(USER, tool_choice={"type": "function", "function": {"name": "nope"}}, **kw)
    with pytest.raises(ValueError, match="needs tools"):
        llm.create_chat_completion(USER, tool_choice="required", enable_thinking=False, max_tokens=1)
    with pytest.raises(ValueError, match="unsupported tool_choice"):
        llm.create_chat_completion(USER, tool_choice="sometimes", **kw)
    # Thinking on: the call cannot be forced exactly; a warning says so and
    # the request runs unforced.
    with caplog.at_level("WARNING", logger="qwen35"):
        r = llm.create_chat_completion(USER, tools=TOOLS, tool_choice="required", max_tokens=2, **GREEDY)
    assert "not forced while thinking" in caplog.text
    assert r["usage"]["prompt_tokens"] == len(rendered_tokens(llm, USER, tools=TOOLS))


def test_load_state_restores_the_seed_sequence(llm):
    kw = dict(max_tokens=8, **RANDOM)
    llm("Once upon", **kw)
    state = llm.save_state()
    a = [llm("Once upon", **kw)["choices"][0]["text"] for _ in range(2)]
    llm.load_state(state)
    assert [llm("Once upon", **kw)["choices"][0]["text"] for _ in range(2)] == a


def test_low_level_reply_parser():
    p = _qwen35.ReplyParser(True, True, TOOLS_JSON, id_seed=5)
    d = p.push("r\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPa")
    assert d["reasoning_content"] == "r" and d["content"] == ""
    ((index, call_id, name, args),) = d["tool_calls"]
    assert (index, name, args) == (0, "get_weather", '{"city":"Pa')
    assert call_id.startswith("call_")
    assert p.result()["n_tool_calls"] == 0   # the open call is not complete JSON yet
    d = p.push(b"ris\n</parameter>\n</function>\n</tool_call>")
    assert d["tool_calls"] == [(0, None, None, 'ris"}')]
    assert p.finish() == {"reasoning_content": "", "content": "", "tool_calls": []}
    assert p.result() == {"reasoning_content": "r", "content": "", "n_tool_calls": 1,
                          "tool_calls_json": '[{"name":"get_weather","arguments":{"city":"Paris"}}]'}
    with pytest.raises(qwen35.StateError, match="finished"):
        p.push("more")
    with pytest.raises(qwen35.InvalidArgumentError, match="tools_json"):
        _qwen35.ReplyParser(False, True, '{"not": "a list"}')
