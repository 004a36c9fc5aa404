"""Anthropic's thinking as `reasoning_content`, and JSON `response_format` as a forced tool call:
the translation both ways, without a network."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from byorouter_common.errors import ByoError
from byorouter_router.providers.anthropic.request import (
    DEFAULT_MAX_TOKENS,
    json_tool_name,
    to_messages_request,
)
from byorouter_router.providers.anthropic.response import StreamTranslator, to_chat_completion

SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
JSON_SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "forecast", "schema": SCHEMA, "strict": True},
}


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "anthropic/x", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_reasoning_effort_turns_thinking_on_with_room_for_the_answer() -> None:
    request = to_messages_request(_body(reasoning_effort="medium"), "claude")
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert request["max_tokens"] == 2048 + DEFAULT_MAX_TOKENS
    assert "thinking" not in to_messages_request(_body(reasoning_effort="none"), "claude")


def test_anthropic_thinking_passes_through_and_its_limits_are_said_before_calling() -> None:
    thinking = {"type": "enabled", "budget_tokens": 3000}
    request = to_messages_request(_body(thinking=thinking, max_tokens=8000), "claude")
    assert request["thinking"] == thinking
    assert request["max_tokens"] == 8000
    for fields, param in (
        ({"thinking": thinking, "max_tokens": 3000}, "max_tokens"),
        ({"reasoning_effort": "low", "temperature": 0.2}, "temperature"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking"),
        ({"reasoning_effort": "high", "response_format": JSON_SCHEMA_FORMAT}, "response_format"),
    ):
        with pytest.raises(ByoError) as caught:
            to_messages_request(_body(**fields), "claude")
        assert (caught.value.status, caught.value.param) == (400, param)


def test_json_schema_becomes_a_forced_call_of_a_tool_made_from_the_schema() -> None:
    body = _body(response_format=JSON_SCHEMA_FORMAT)
    request = to_messages_request(body, "claude")
    (tool,) = request["tools"]
    assert (tool["name"], tool["input_schema"]) == ("forecast", SCHEMA)
    assert request["tool_choice"] == {"type": "tool", "name": "forecast"}
    assert json_tool_name(body) == "forecast"
    assert json_tool_name(_body(response_format={"type": "text"})) is None


def test_json_object_is_forced_through_a_tool_that_takes_any_object() -> None:
    request = to_messages_request(_body(response_format={"type": "json_object"}), "claude")
    assert request["tools"][0]["input_schema"]["type"] == "object"
    assert request["tool_choice"]["type"] == "tool"


def test_json_formats_anthropic_cannot_emulate_are_a_clear_400() -> None:
    for fmt in (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}},
        {"type": "json_schema"},
        {"type": "yaml"},
    ):
        with pytest.raises(ByoError) as caught:
            to_messages_request(_body(response_format=fmt), "claude")
        assert caught.value.param == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(ByoError) as caught:
        to_messages_request(_body(response_format=JSON_SCHEMA_FORMAT, tools=[tool]), "claude")
    assert "cannot be combined with tools" in caught.value.message


def test_thinking_and_a_forced_json_call_read_back_as_reasoning_and_content() -> None:
    message = {
        "id": "msg_1",
        "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "Weighing it.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "forecast", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 5},
    }
    choice = to_chat_completion(message, "claude", 0, json_tool="forecast")["choices"][0]
    assert choice["message"]["reasoning_content"] == "Weighing it."
    assert orjson.loads(choice["message"]["content"]) == {"city": "Oslo"}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    # Without a JSON format the same call is a tool call for the app.
    plain = to_chat_completion(message, "claude", 0)["choices"][0]
    assert plain["message"]["tool_calls"][0]["function"]["name"] == "forecast"


def _stream(translator: StreamTranslator, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[bytes] = []
    for event in events:
        translator.translate(event, out)
    return [orjson.loads(line) for line in out]


def test_streamed_thinking_and_forced_json_arrive_as_reasoning_content_and_content() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "m", "model": "claude", "usage": {}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hm. "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Yes."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "s"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "forecast", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Os'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'lo"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    chunks = _stream(
        StreamTranslator("claude", 0, include_usage=False, json_tool="forecast"), events
    )
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Hm. Yes."
    assert orjson.loads("".join(d.get("content", "") for d in deltas)) == {"city": "Oslo"}
    assert not any("tool_calls" in d for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
