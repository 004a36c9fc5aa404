"""The fake Anthropic upstream refuses what Anthropic refuses, so translation bugs cannot hide."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from byorouter_fakes.anthropic import FakeAnthropic

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def _post(
    fake: FakeAnthropic, body: dict[str, Any], headers: dict[str, str] = HEADERS
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake.url + "/v1/messages", json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


def _body(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": messages, **fields}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        (_body([{"role": "system", "content": "x"}]), 'Unexpected role "system"'),
        (_body([{"role": "assistant", "content": "x"}]), "first message"),
        (
            _body([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            "alternate",
        ),
        (
            _body(
                [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": [USE]},
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_other"}],
                    },
                ]
            ),
            "unexpected `tool_use_id`",
        ),
        (_body([{"role": "user", "content": "a"}], stream_options={}), "Extra inputs"),
    ],
)
async def test_fake_refuses_requests_anthropic_refuses(
    fake: FakeAnthropic, body: dict[str, Any], says: str
) -> None:
    status, error = await _post(fake, body)
    assert status == 400
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert says in error["error"]["message"]


async def test_fake_wants_x_api_key_not_a_bearer_token(fake: FakeAnthropic) -> None:
    status, error = await _post(
        fake,
        _body([{"role": "user", "content": "hi"}]),
        {"Authorization": "Bearer sk-ant-test", "anthropic-version": "2023-06-01"},
    )
    assert status == 401
    assert error["error"]["type"] == "authentication_error"


async def test_fake_answers_a_valid_tool_round_trip(fake: FakeAnthropic) -> None:
    status, message = await _post(
        fake,
        _body(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": [USE]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}],
                },
            ]
        ),
    )
    assert status == 200
    assert message["content"] == [{"type": "text", "text": "42"}]
