"""Through the official `openai` SDK and the whole stack to the fake Anthropic: thinking comes
back as `reasoning_content`, and a JSON-schema `response_format` comes back as JSON that fits."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from byorouter_fakes.anthropic import FakeAnthropic
from tests.e2e.conftest import AppWithConnection, sdk_client
from tests.e2e.test_anthropic_e2e import claude, claude_tenant  # noqa: F401 (fixtures)

SCHEMA: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "days", "sunny"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA}}


def fits(value: Any) -> bool:
    """Whether `value` matches SCHEMA (its three typed, required properties and nothing else)."""
    return (
        type(value) is dict
        and set(value) == {"city", "days", "sunny"}
        and type(value["city"]) is str
        and type(value["days"]) is int
        and type(value["sunny"]) is bool
    )


async def test_a_thinking_stream_shows_reasoning_content_before_the_answer(
    stack: Any,
    claude: FakeAnthropic,  # noqa: F811
    claude_tenant: AppWithConnection,  # noqa: F811
) -> None:
    tag = "t-" + secrets.token_hex(6)
    client = sdk_client(stack, claude_tenant)
    stream = await client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "think about four words"}],
        reasoning_effort="low",
        stream=True,
        user=tag,
    )
    order: list[str] = []
    reasoning: list[str] = []
    content: list[str] = []
    async for chunk in stream:
        delta: Any = chunk.choices[0].delta if chunk.choices else None
        thought = getattr(delta, "reasoning_content", None)
        if thought:
            reasoning.append(thought)
            order.append("reasoning")
        if delta is not None and delta.content:
            content.append(delta.content)
            order.append("content")
    assert "".join(reasoning) == "Let me think. The user said 4 words."
    assert len(reasoning) > 1
    assert "".join(content) == "think about four words"
    assert order.index("content") > order.index("reasoning")
    (seen,) = claude.requests(tag)
    assert seen["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_non_streamed_thinking_is_the_messages_reasoning_content(
    stack: Any,
    claude_tenant: AppWithConnection,  # noqa: F811
) -> None:
    completion = await sdk_client(stack, claude_tenant).chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "two words"}],
        extra_body={"thinking": {"type": "enabled", "budget_tokens": 2000}},
    )
    message: Any = completion.choices[0].message
    assert message.reasoning_content == "Let me think. The user said 2 words."
    assert message.content == "two words"


async def test_a_json_schema_answer_from_anthropic_parses_and_fits_the_schema(
    stack: Any,
    claude: FakeAnthropic,  # noqa: F811
    claude_tenant: AppWithConnection,  # noqa: F811
) -> None:
    tag = "t-" + secrets.token_hex(6)
    client = sdk_client(stack, claude_tenant)
    completion = await client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Forecast for Oslo"}],
        response_format=FORMAT,
        user=tag,
    )
    choice = completion.choices[0]
    assert fits(orjson.loads(choice.message.content or ""))
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    (seen,) = claude.requests(tag)
    assert seen["body"]["tool_choice"] == {"type": "tool", "name": "forecast"}

    stream = await client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Forecast for Oslo"}],
        response_format=FORMAT,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1, "the JSON should stream in pieces"
    assert fits(orjson.loads("".join(pieces)))


async def test_json_object_from_anthropic_is_a_json_object(
    stack: Any,
    claude_tenant: AppWithConnection,  # noqa: F811
) -> None:
    completion = await sdk_client(stack, claude_tenant).chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Any JSON please"}],
        response_format={"type": "json_object"},
    )
    assert type(orjson.loads(completion.choices[0].message.content or "")) is dict
