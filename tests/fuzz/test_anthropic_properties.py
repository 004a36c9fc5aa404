"""Property tests of the OpenAI <-> Anthropic translation.

Requests: whatever an app sends, the translation is a request Anthropic's Messages API takes or a
400 `ByoError` naming the parameter, never another exception. Answers: an Anthropic message
streamed as events, however its text and tool input are cut into deltas, reassembles from the
OpenAI chunks into what the non-streamed translation of the same message says.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byorouter_common.errors import ByoError
from byorouter_router.providers.anthropic.request import to_messages_request
from byorouter_router.providers.anthropic.response import StreamTranslator, to_chat_completion

PROPERTY = settings(max_examples=200, deadline=None)

# --- requests -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.text(max_size=8)
text_parts = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
image_parts = st.fixed_dictionaries(
    {
        "type": st.just("image_url"),
        "image_url": st.fixed_dictionaries(
            {
                "url": st.sampled_from(
                    ["https://example.com/a.png", "data:image/png;base64,iVBORw0=", "ftp://x", ""]
                )
            }
        ),
    }
)
contents = st.one_of(texts, st.lists(text_parts | image_parts, max_size=3), st.none(), json_values)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.text(min_size=1, max_size=6),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {
                    "name": st.text(min_size=1, max_size=6),
                    "arguments": st.sampled_from(['{"city":"Paris"}', "{}", "", "[1]", "not json"]),
                }
            ),
        }
    ),
    max_size=2,
)
messages = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]), "content": contents}),
    st.fixed_dictionaries({"role": st.just("user"), "content": contents}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": contents},
        optional={"tool_calls": tool_calls | json_values},
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": contents},
        optional={"tool_call_id": st.text(max_size=6) | json_values},
    ),
    st.fixed_dictionaries({"role": json_values, "content": contents}),
    json_values,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["function", "web_search"]),
            "function": st.fixed_dictionaries(
                {"name": st.text(min_size=1, max_size=6)},
                optional={"parameters": json_values, "description": json_values},
            ),
        }
    )
    | json_values,
    max_size=3,
)
requests = st.fixed_dictionaries(
    {"model": st.just("anthropic/claude-sonnet-4-5"), "messages": st.lists(messages, max_size=6)},
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(-2, 10) | json_values,
        "max_completion_tokens": st.integers(1, 10),
        "temperature": st.floats(0, 1),
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2) | json_values,
        "n": st.integers(0, 3),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "tools": tools | json_values,
        "tool_choice": st.sampled_from(
            [
                "auto",
                "none",
                "required",
                "sometimes",
                {"type": "function", "function": {"name": "f"}},
            ]
        )
        | json_values,
        "parallel_tool_calls": st.booleans(),
        "user": json_values,
    },
)

_BLOCK_TYPES = {"text", "image", "tool_use", "tool_result"}


def assert_valid_messages_request(request: dict[str, Any]) -> None:
    """What Anthropic's Messages API documents as a well-formed request."""
    assert type(request["model"]) is str
    assert type(request["max_tokens"]) is int
    assert request["max_tokens"] >= 1
    turns = request["messages"]
    assert turns, "Anthropic refuses a request without messages"
    for before, after in itertools.pairwise(turns):
        assert before["role"] != after["role"], "turns must alternate"
    for turn in turns:
        assert turn["role"] in ("user", "assistant")
        content = turn["content"]
        if type(content) is str:
            continue
        assert type(content) is list
        assert content
        for block in content:
            assert block["type"] in _BLOCK_TYPES
            if block["type"] == "text":
                assert type(block["text"]) is str
            if block["type"] == "tool_use":
                assert turn["role"] == "assistant"
                assert type(block["input"]) is dict
            if block["type"] == "tool_result":
                assert turn["role"] == "user"
    system = request.get("system")
    assert system is None or type(system) is str or type(system) is list
    for tool in request.get("tools", []):
        assert type(tool["name"]) is str
        assert type(tool["input_schema"]) is dict
    if "tool_choice" in request:
        assert request["tool_choice"]["type"] in ("auto", "any", "none", "tool")
    if "stop_sequences" in request:
        assert all(type(s) is str and s for s in request["stop_sequences"])


@PROPERTY
@given(body=requests)
def test_any_request_translates_to_a_valid_messages_request_or_a_clear_400(
    body: dict[str, Any],
) -> None:
    try:
        request = to_messages_request(body, "claude-sonnet-4-5")
    except ByoError as error:
        refused: ByoError | None = error
    else:
        refused = None
        assert_valid_messages_request(request)
    if refused is not None:
        assert refused.status == 400
        assert refused.param


well_formed = st.builds(
    lambda system, turns, stream: {
        "model": "anthropic/claude-sonnet-4-5",
        "messages": system
        + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": content}
            for i, content in enumerate(turns)
        ],
        "stream": stream,
    },
    st.lists(st.fixed_dictionaries({"role": st.just("system"), "content": texts}), max_size=2),
    st.lists(texts | st.lists(text_parts, min_size=1, max_size=2), min_size=1, max_size=5),
    st.booleans(),
)


@PROPERTY
@given(body=well_formed)
def test_a_well_formed_conversation_always_translates(body: dict[str, Any]) -> None:
    assert_valid_messages_request(to_messages_request(body, "claude-sonnet-4-5"))


def test_a_user_message_with_an_empty_content_list_is_a_clear_400() -> None:
    body = {"model": "anthropic/x", "messages": [{"role": "user", "content": []}]}
    with pytest.raises(ByoError) as caught:
        to_messages_request(body, "x")
    assert (caught.value.status, caught.value.param) == (400, "messages")


def test_a_request_of_only_system_messages_is_refused_before_it_reaches_anthropic() -> None:
    body = {"model": "anthropic/x", "messages": [{"role": "system", "content": "Be brief."}]}
    with pytest.raises(ByoError) as caught:
        to_messages_request(body, "x")
    assert caught.value.status == 400
    assert caught.value.param == "messages"


# --- answers --------------------------------------------------------------------------------

tool_inputs = st.dictionaries(st.text(max_size=4), json_values, max_size=3)
blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": st.text(min_size=1, max_size=8).map(lambda s: "toolu_" + s),
            "name": st.text(min_size=1, max_size=8),
            "input": tool_inputs,
        }
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": st.text(max_size=10)}),
)
anthropic_messages = st.fixed_dictionaries(
    {
        "id": st.just("msg_01"),
        "type": st.just("message"),
        "role": st.just("assistant"),
        "model": st.just("claude-sonnet-4-5"),
        "content": st.lists(blocks, max_size=4),
        "stop_reason": st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence"]),
        "usage": st.fixed_dictionaries(
            {"input_tokens": st.integers(0, 100), "output_tokens": st.integers(0, 100)}
        ),
    }
)


def _pieces(draw: st.DrawFn, whole: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=4)))
    bounds = [0, *cuts, len(whole)]
    return [whole[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def streamed(draw: st.DrawFn, message: dict[str, Any]) -> list[dict[str, Any]]:
    """The events Anthropic streams for `message`, deltas cut anywhere, pings anywhere."""
    usage = message["usage"]
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
            },
        }
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": t} for t in _pieces(draw, block["text"])]
        elif block["type"] == "tool_use":
            start = {**block, "input": {}}
            # Anthropic sends an empty input as one empty fragment.
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in _pieces(
                    draw, orjson.dumps(block["input"]).decode() if block["input"] else ""
                )
            ]
        else:
            start = {"type": "thinking", "thinking": ""}
            deltas = [{"type": "thinking_delta", "thinking": block["thinking"]}]
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        for delta in deltas:
            if draw(st.booleans()):
                events.append({"type": "ping"})
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"]},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def reassemble(chunks: list[bytes]) -> dict[str, Any]:
    """What an OpenAI SDK makes of the chunks: the text, the tool calls, finish reason, usage."""
    text = ""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    for raw in chunks:
        chunk = orjson.loads(raw)
        assert chunk["object"] == "chat.completion.chunk"
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls", []):
                into = calls.setdefault(call["index"], {"arguments": ""})
                for key in ("id", "type"):
                    if key in call:
                        into[key] = call[key]
                if "name" in call["function"]:
                    into["name"] = call["function"]["name"]
                into["arguments"] += call["function"].get("arguments", "")
            finish = choice["finish_reason"] or finish
    return {
        "text": text,
        "calls": [calls[i] for i in sorted(calls)],
        "finish": finish,
        "usage": usage,
    }


@PROPERTY
@given(data=st.data(), message=anthropic_messages)
def test_a_streamed_answer_reassembles_into_the_non_streamed_translation(
    data: st.DataObject, message: dict[str, Any]
) -> None:
    whole = to_chat_completion(message, "claude-sonnet-4-5", created=1)
    translator = StreamTranslator("claude-sonnet-4-5", 1, include_usage=True)
    chunks: list[bytes] = []
    for event in data.draw(streamed(message)):
        translator.translate(event, chunks)
    got = reassemble(chunks)

    answer = whole["choices"][0]
    assert got["text"] == (answer["message"]["content"] or "")
    expected_calls = [
        {
            "id": call["id"],
            "name": call["function"]["name"],
            "arguments": orjson.loads(call["function"]["arguments"]),
        }
        for call in answer["message"].get("tool_calls", [])
    ]
    assert [
        {"id": c["id"], "name": c["name"], "arguments": orjson.loads(c["arguments"])}
        for c in got["calls"]
    ] == expected_calls
    assert got["finish"] == answer["finish_reason"]
    assert got["usage"] == whole["usage"]


def test_a_streamed_tool_call_without_arguments_gets_an_empty_json_object() -> None:
    # OpenAI clients parse the arguments as JSON; "" is not JSON, "{}" is what the
    # non-streamed answer says for the same call.
    translator = StreamTranslator("claude", 1, include_usage=False)
    chunks: list[bytes] = []
    for event in (
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude"}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
        {"type": "message_stop"},
    ):
        translator.translate(event, chunks)
    assert reassemble(chunks)["calls"] == [
        {"id": "toolu_1", "type": "function", "name": "now", "arguments": "{}"}
    ]
