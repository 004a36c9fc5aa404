"""The official openai SDK, unchanged, through the whole stack to a fake Anthropic upstream."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_fakes.anthropic import FakeAnthropic
from tests.e2e.conftest import AppWithConnection, sdk_client

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
async def claude() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(stream_chunks=4)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture
async def claude_tenant(bus: Bus, claude: FakeAnthropic) -> AppWithConnection:
    """A fresh app with one connection whose only provider is the fake Anthropic upstream."""
    app = await bus.request(
        ks.APP_CREATE,
        ks.AppCreate(name="anthropic e2e app", redirect_uris=["http://localhost:3000/cb"]),
    )
    key = "sk-ant-api03-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="anthropic", api_key=SecretStr(key), base_url=claude.url
                )
            ],
        ),
    )
    return AppWithConnection(
        client_id=app.client_id,
        app_id=app.app_id,
        app_api_key=app.app_api_key.get_secret_value(),
        connection_id=conn.connection_id,
        provider_key=key,
    )


def _tag() -> str:
    return "t-" + secrets.token_hex(6)


async def test_non_streamed_answer_reaches_anthropic_with_the_users_key(
    stack: Any, claude: FakeAnthropic, claude_tenant: AppWithConnection
) -> None:
    tag = _tag()
    client = sdk_client(stack, claude_tenant)
    completion = await client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[
            {"role": "system", "content": "Echo the user."},
            {"role": "user", "content": "hello from byorouter"},
        ],
        user=tag,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "hello from byorouter"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3

    [seen] = claude.requests(tag)
    assert seen["headers"]["x-api-key"] == claude_tenant.provider_key
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen["headers"]
    assert claude_tenant.app_api_key not in orjson.dumps(seen).decode()
    assert seen["body"]["model"] == "claude-sonnet-4-5"
    assert seen["body"]["system"] == "Echo the user."
    assert seen["body"]["messages"] == [{"role": "user", "content": "hello from byorouter"}]


async def test_streamed_answer_arrives_in_pieces_with_usage_last(
    stack: Any, claude_tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, claude_tenant)
    stream = await client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "one two three four five six seven eight"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas: list[str] = []
    finish = None
    usage = None
    async for chunk in stream:
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        elif chunk.usage is not None:
            usage = chunk.usage
    assert "".join(deltas) == "one two three four five six seven eight"
    assert len([d for d in deltas if d]) > 1, "text should arrive as several chunks"
    assert finish == "stop"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (8, 8)


async def test_two_parallel_tool_calls_stream_as_two_distinct_calls(
    stack: Any, claude: FakeAnthropic, claude_tenant: AppWithConnection
) -> None:
    tag = _tag()
    client = sdk_client(stack, claude_tenant)
    stream = await client.chat.completions.create(
        model="anthropic/tools-2",
        messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        stream=True,
        user=tag,
    )
    # Accumulated by index, the way apps using the SDK rebuild streamed tool calls.
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for call in chunk.choices[0].delta.tool_calls or ():
            into = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            into["id"] += call.id or ""
            if call.function is not None:
                into["name"] += call.function.name or ""
                into["arguments"] += call.function.arguments or ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]
    assert all(call["id"].startswith("toolu_") for call in calls.values())
    assert [call["name"] for call in calls.values()] == ["get_weather", "get_weather"]
    assert [orjson.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]

    [seen] = claude.requests(tag)
    assert seen["body"]["tools"] == [
        {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert seen["body"]["tool_choice"] == {"type": "auto"}


async def test_tool_results_go_back_as_tool_result_blocks_and_get_an_answer(
    stack: Any, claude: FakeAnthropic, claude_tenant: AppWithConnection
) -> None:
    tag = _tag()
    client = sdk_client(stack, claude_tenant)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    first = await client.chat.completions.create(
        model="anthropic/tools-2", messages=messages, tools=[WEATHER_TOOL], user=tag
    )
    asked = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert asked.tool_calls is not None
    assert len(asked.tool_calls) == 2
    messages.append(asked.model_dump(exclude_none=True))
    weather = {"Paris": "18C and sunny", "Tokyo": "25C and cloudy"}
    for call in asked.tool_calls:
        assert call.type == "function"
        city = orjson.loads(call.function.arguments)["city"]
        messages.append({"role": "tool", "tool_call_id": call.id, "content": weather[city]})

    second = await client.chat.completions.create(
        model="anthropic/tools-2", messages=messages, tools=[WEATHER_TOOL], user=tag
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "18C and sunny 25C and cloudy"

    sent = claude.requests(tag)[1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    tool_uses = [b["id"] for b in sent[1]["content"] if b["type"] == "tool_use"]
    tool_results = [b["tool_use_id"] for b in sent[2]["content"]]
    assert tool_uses == [call.id for call in asked.tool_calls] == tool_results


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_overloaded_is_a_502_the_sdk_reports(
    stack: Any, claude_tenant: AppWithConnection, stream: bool
) -> None:
    client = sdk_client(stack, claude_tenant)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="anthropic/fail-529", messages=[{"role": "user", "content": "x"}], stream=stream
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_overloaded"


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_rate_limit_is_a_429_with_retry_after(
    stack: Any, claude_tenant: AppWithConnection, stream: bool
) -> None:
    client = sdk_client(stack, claude_tenant)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="anthropic/fail-429", messages=[{"role": "user", "content": "x"}], stream=stream
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers.get("retry-after") == "1"
    assert claude_tenant.provider_key not in caught.value.response.text


async def test_error_in_the_middle_of_the_stream_raises_after_some_content(
    stack: Any, claude_tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, claude_tenant)
    stream = await client.chat.completions.create(
        model="anthropic/error-after-5",
        messages=[{"role": "user", "content": "one two three four five six seven eight"}],
        stream=True,
    )
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await read_all()
    assert "".join(received), "the content before the error reached the app"
    assert "overloaded" in caught.value.message
