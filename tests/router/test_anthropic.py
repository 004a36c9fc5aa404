"""The OpenAI <-> Anthropic translation, checked against the exact shapes each side documents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from byorouter_common.errors import ByoError
from byorouter_router.providers.anthropic.provider import anthropic_endpoints
from byorouter_router.providers.anthropic.request import DEFAULT_MAX_TOKENS, to_messages_request
from byorouter_router.providers.anthropic.response import (
    StreamTranslator,
    mid_stream_error,
    to_chat_completion,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(fields)
    return to_messages_request(body, "claude-sonnet-4-5")


# --- requests ---------------------------------------------------------------------------------


def test_plain_request_gets_the_upstream_model_and_a_default_max_tokens() -> None:
    assert _request() == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": DEFAULT_MAX_TOKENS,
    }
    assert DEFAULT_MAX_TOKENS == 4096


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert _request(max_tokens=50)["max_tokens"] == 50
    assert _request(max_tokens=50, max_completion_tokens=70)["max_tokens"] == 70


def test_non_positive_max_tokens_is_refused_without_echoing_it() -> None:
    with pytest.raises(ByoError) as caught:
        _request(max_tokens=-12345)
    assert (caught.value.status, caught.value.param) == (400, "max_tokens")
    assert "-12345" not in caught.value.message


def test_system_and_developer_messages_become_the_top_level_system() -> None:
    single = _request(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert single["system"] == "Be brief."
    assert single["messages"] == [{"role": "user", "content": "hi"}]

    several = _request(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert several["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert all(m["role"] != "system" for m in several["messages"])


def test_text_and_image_parts_become_content_blocks() -> None:
    request = _request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KG"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                ],
            }
        ]
    )
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KG"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_image_that_is_neither_base64_data_nor_http_is_refused() -> None:
    for url in ("data:image/png,notbase64", "ftp://example.com/cat.png"):
        with pytest.raises(ByoError) as caught:
            _request(
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ]
            )
        assert caught.value.status == 400
        assert url not in caught.value.message


def test_audio_parts_are_refused_as_unsupported() -> None:
    with pytest.raises(ByoError) as caught:
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "x"}}],
                }
            ]
        )
    assert (caught.value.status, caught.value.code) == (400, "unsupported_parameter")


def test_stop_string_or_list_becomes_stop_sequences() -> None:
    assert _request(stop="END")["stop_sequences"] == ["END"]
    assert _request(stop=["END", "\n\n"])["stop_sequences"] == ["END", "\n\n"]
    assert "stop_sequences" not in _request(stop=None)


def test_sampling_and_user_pass_through_and_openai_only_fields_do_not() -> None:
    request = _request(
        temperature=0.3,
        top_p=0.9,
        user="end-user-42",
        stream=True,
        stream_options={"include_usage": True},
        presence_penalty=0.5,
        seed=7,
        logprobs=False,
    )
    assert request["temperature"] == 0.3
    assert request["top_p"] == 0.9
    assert request["metadata"] == {"user_id": "end-user-42"}
    assert request["stream"] is True
    for field in ("stream_options", "presence_penalty", "seed", "logprobs", "user"):
        assert field not in request


def test_function_tools_become_anthropic_tools_with_input_schema() -> None:
    request = _request(tools=[WEATHER_TOOL])
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    assert "tool_choice" not in request


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    request = _request(tools=[{"type": "function", "function": {"name": "now"}}])
    assert request["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_maps_to_anthropic(choice: Any, expected: dict[str, Any]) -> None:
    assert _request(tools=[WEATHER_TOOL], tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    request = _request(tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert request["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    request = _request(tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False)
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_tool_round_trip_becomes_tool_use_and_merged_tool_result_blocks() -> None:
    request = _request(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "system", "content": "You know the weather."},
            {"role": "user", "content": "Weather in Paris and Tokyo?"},
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "toolu_02",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18C and sunny"},
            {
                "role": "tool",
                "tool_call_id": "toolu_02",
                "content": [{"type": "text", "text": "25C and cloudy"}],
            },
            {"role": "user", "content": "Which is warmer?"},
        ],
    )
    assert request["system"] == "You know the weather."
    assert request["messages"] == [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C and sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "content": [{"type": "text", "text": "25C and cloudy"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


def test_assistant_tool_call_without_content_has_only_tool_use_blocks() -> None:
    request = _request(
        messages=[
            {"role": "user", "content": "time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "noon"},
        ]
    )
    assert request["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}],
    }
    assert request["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "noon"}],
    }


def test_tool_call_arguments_that_are_not_a_json_object_are_refused() -> None:
    with pytest.raises(ByoError) as caught:
        _request(
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "secret-ish {"},
                        }
                    ],
                },
            ]
        )
    assert caught.value.status == 400
    assert "secret-ish" not in caught.value.message


def test_several_choices_are_refused_and_text_format_is_left_out() -> None:
    with pytest.raises(ByoError) as caught:
        _request(n=2)
    assert caught.value.param == "n"
    assert "response_format" not in _request(response_format={"type": "text"})


def test_base_url_with_or_without_v1_reaches_the_messages_endpoint() -> None:
    for base in ("http://127.0.0.1:9000", "http://127.0.0.1:9000/", "http://127.0.0.1:9000/v1"):
        endpoints = anthropic_endpoints("anthropic", base, True)
        assert str(endpoints.messages) == "http://127.0.0.1:9000/v1/messages"
        assert str(endpoints.models) == "http://127.0.0.1:9000/v1/models"
    with pytest.raises(ByoError) as caught:
        anthropic_endpoints("anthropic", "http://127.0.0.1:9000", False)
    assert caught.value.code == "upstream_not_allowed"


# --- non-streamed answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    completion = to_chat_completion(
        {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}, "m", 1
    )
    assert completion["choices"][0]["finish_reason"] == finish_reason


def test_text_message_becomes_a_chat_completion_with_usage() -> None:
    completion = to_chat_completion(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 3},
        },
        "claude-sonnet-4-5",
        1700000000,
    )
    assert completion == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def test_cached_prompt_tokens_count_as_prompt_tokens() -> None:
    completion = to_chat_completion(
        {
            "content": [],
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 100,
                "output_tokens": 2,
            },
        },
        "m",
        1,
    )
    assert completion["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 2,
        "total_tokens": 117,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 5},
    }


def test_tool_use_message_becomes_tool_calls_with_json_arguments() -> None:
    completion = to_chat_completion(
        {
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_b",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
        "m",
        1,
    )
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {
            "id": "toolu_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
        },
    ]


# --- streamed answers -------------------------------------------------------------------------


def _stream(events: list[dict[str, Any]], *, include_usage: bool = False) -> list[dict[str, Any]]:
    translator = StreamTranslator("claude-sonnet-4-5", 1700000000, include_usage=include_usage)
    lines: list[bytes] = []
    for event in events:
        translator.translate(event, lines)
    return [orjson.loads(line) for line in lines]


MESSAGE_START: dict[str, Any] = {
    "type": "message_start",
    "message": {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    },
}


def _end(stop_reason: str, output_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]


def _delta(chunk: dict[str, Any]) -> dict[str, Any]:
    assert chunk["object"] == "chat.completion.chunk"
    assert len(chunk["choices"]) == 1
    delta: dict[str, Any] = chunk["choices"][0]["delta"]
    return delta


def test_text_stream_becomes_role_content_and_finish_chunks() -> None:
    chunks = _stream(
        [
            MESSAGE_START,
            {"type": "ping"},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
            {"type": "content_block_stop", "index": 0},
            *_end("end_turn", 2),
        ]
    )
    assert chunks[0] == {
        "id": "msg_01",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    assert [_delta(c) for c in chunks[1:3]] == [{"content": "Hel"}, {"content": "lo"}]
    assert chunks[3]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert len(chunks) == 4, "no usage chunk unless the app asked for it"
    assert all(c["id"] == "msg_01" for c in chunks)


def test_usage_chunk_comes_last_with_empty_choices_when_asked() -> None:
    translator = StreamTranslator("m", 1, include_usage=True)
    lines: list[bytes] = []
    events: list[dict[str, Any]] = [
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        *_end("max_tokens", 7),
    ]
    for event in events:
        translator.translate(event, lines)
    chunks = [orjson.loads(line) for line in lines]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 7, "total_tokens": 32}
    assert translator.finished
    assert translator.finish_reason == "length"
    assert translator.usage == chunks[-1]["usage"]


def test_two_parallel_tool_calls_get_indexes_0_and_1_and_their_own_fragments() -> None:
    def args(index: int, fragment: str) -> dict[str, Any]:
        return {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": fragment},
        }

    def tool(index: int, tool_id: str) -> dict[str, Any]:
        return {
            "type": "content_block_start",
            "index": index,
            "content_block": {
                "type": "tool_use",
                "id": tool_id,
                "name": "get_weather",
                "input": {},
            },
        }

    chunks = _stream(
        [
            MESSAGE_START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "On it."},
            },
            {"type": "content_block_stop", "index": 0},
            tool(1, "toolu_a"),
            args(1, ""),
            args(1, '{"city": "Pa'),
            args(1, 'ris"}'),
            {"type": "content_block_stop", "index": 1},
            tool(2, "toolu_b"),
            args(2, '{"city": '),
            args(2, '"Tokyo"}'),
            {"type": "content_block_stop", "index": 2},
            *_end("tool_use", 60),
        ]
    )
    deltas = [_delta(c) for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "On it."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '"Tokyo"}'}}]},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # Accumulated by index, as SDK users do, the calls are whole and distinct.
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", ()):
            into = calls.setdefault(call["index"], {"id": "", "arguments": ""})
            into["id"] = call.get("id") or into["id"]
            into["arguments"] += call["function"]["arguments"]
    assert calls == {
        0: {"id": "toolu_a", "arguments": '{"city": "Paris"}'},
        1: {"id": "toolu_b", "arguments": '{"city": "Tokyo"}'},
    }


def test_thinking_blocks_do_not_shift_tool_call_indexes() -> None:
    chunks = _stream(
        [
            MESSAGE_START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
            *_end("tool_use", 5),
        ]
    )
    # The thinking is its own reasoning_content chunk; the tool call still gets index 0.
    assert _delta(chunks[1]) == {"reasoning_content": "hmm"}
    assert [_delta(c) for c in chunks[2:4]] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "t",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ]


def test_mid_stream_error_event_is_a_502_with_the_upstream_reason() -> None:
    overloaded = mid_stream_error(
        "anthropic", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    assert (overloaded.status, overloaded.code) == (502, "upstream_overloaded")
    assert "Overloaded" in overloaded.message
    failed = mid_stream_error(
        "anthropic", b'{"type":"error","error":{"type":"api_error","message":"Internal"}}'
    )
    assert (failed.status, failed.code) == (502, "upstream_error")
