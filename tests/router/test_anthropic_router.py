"""The real router, in-process, answering `anthropic/...` models from the fake Anthropic API."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import MODELS
from byorouter_fakes.anthropic import MODELS as FAKE_MODELS
from byorouter_fakes.anthropic import FakeAnthropic
from tests.router.router_client import chat, connect, provider


@pytest.fixture(scope="module")
async def claude() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(stream_chunks=4)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture
async def claude_connection(bus: Bus, claude: FakeAnthropic) -> tuple[ks.ConnectionRef, str]:
    key = "sk-ant-user-" + secrets.token_hex(16)
    return await connect(bus, provider("anthropic", claude.url, key)), key


def _body(model: str, stream: bool, tag: str = "", **fields: Any) -> dict[str, Any]:
    return {
        "model": f"anthropic/{model}",
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three four five six"}],
        "user": tag or "t-" + secrets.token_hex(6),
        **fields,
    }


async def test_streamed_answer_arrives_as_openai_chunks_with_usage(
    bus: Bus, claude: FakeAnthropic, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, key = claude_connection
    tag = "t-" + secrets.token_hex(6)
    answer = await chat(bus, ref, _body("claude-sonnet-4-5", True, tag))
    assert answer.error is None
    assert answer.kinds[0] == "start"
    assert answer.kinds[-1] == "done"
    assert answer.start == {"provider": "anthropic", "model": "claude-sonnet-4-5", "attempts": 1}
    assert answer.text == "one two three four five six"
    assert answer.events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert answer.end is not None
    assert answer.end["finish_reason"] == "stop"
    assert answer.end["usage"]["completion_tokens"] == 6

    [seen] = claude.requests(tag)
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == key
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen["headers"]
    assert seen["body"]["model"] == "claude-sonnet-4-5"
    assert seen["body"]["max_tokens"] == 4096


async def test_non_streamed_answer_is_one_chat_completion(
    bus: Bus, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = claude_connection
    answer = await chat(bus, ref, _body("claude-sonnet-4-5", False, max_tokens=3))
    assert answer.kinds == ["start", "result"]
    assert answer.end is not None
    assert answer.end["object"] == "chat.completion"
    assert answer.end["choices"][0]["message"]["content"] == "one two three "
    assert answer.end["choices"][0]["finish_reason"] == "length"
    assert answer.end["usage"]["total_tokens"] == 6 + 3


async def test_stop_sequence_ends_the_answer_with_stop(
    bus: Bus, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = claude_connection
    answer = await chat(bus, ref, _body("claude-sonnet-4-5", True, stop=["four"]))
    assert answer.text == "one two three "
    assert answer.end is not None
    assert answer.end["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "status", "code", "retry_after"),
    [
        ("fail-529", 502, "upstream_overloaded", None),
        ("fail-429", 429, "upstream_rate_limited", 1.0),
        ("fail-401", 502, "provider_auth_failed", None),
        ("fail-403", 502, "provider_auth_failed", None),
        ("fail-404", 404, "model_not_found", None),
        ("fail-500", 502, "upstream_error", None),
        ("fail-400", 400, "invalid_request", None),
    ],
)
async def test_upstream_errors_map_like_every_provider(
    bus: Bus,
    claude_connection: tuple[ks.ConnectionRef, str],
    stream: bool,
    model: str,
    status: int,
    code: str,
    retry_after: float | None,
) -> None:
    ref, key = claude_connection
    answer = await chat(bus, ref, _body(model, stream))
    assert answer.kinds == ["error"], "nothing may start before the upstream accepted"
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (status, code)
    assert answer.error.retry_after == retry_after
    assert key not in answer.error.message


async def test_request_anthropic_refuses_is_a_400_with_its_reason(
    bus: Bus, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = claude_connection
    # OpenAI allows temperature up to 2, Anthropic up to 1: the app learns why.
    answer = await chat(bus, ref, _body("claude-sonnet-4-5", False, temperature=1.5))
    assert answer.error is not None
    assert answer.error.status == 400
    assert "temperature" in answer.error.message


async def test_request_that_cannot_be_translated_fails_before_calling_anthropic(
    bus: Bus, claude: FakeAnthropic, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = claude_connection
    tag = "t-" + secrets.token_hex(6)
    answer = await chat(bus, ref, _body("claude-sonnet-4-5", True, tag, n=2))
    assert answer.error is not None
    assert (answer.error.status, answer.error.param) == (400, "n")
    assert claude.requests(tag) == []


async def test_error_event_mid_stream_ends_the_answer_with_an_error_after_content(
    bus: Bus, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = claude_connection
    answer = await chat(bus, ref, _body("error-after-5", True))
    assert answer.kinds[0] == "start"
    assert answer.text, "the content before the error was relayed"
    assert answer.kinds[-1] == "error"
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (502, "upstream_overloaded")


async def test_cut_stream_is_an_error_not_a_short_answer(
    bus: Bus, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = claude_connection
    answer = await chat(bus, ref, _body("cut-after-5", True))
    assert "done" not in answer.kinds
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (502, "upstream_error")


async def test_models_are_listed_with_the_anthropic_prefix(
    bus: Bus, claude: FakeAnthropic, claude_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, key = claude_connection
    listing = await bus.request(MODELS, ref)
    assert [card.id for card in listing.data] == [f"anthropic/{m[0]}" for m in FAKE_MODELS]
    assert all(card.created > 0 and card.owned_by == "anthropic" for card in listing.data)
    assert [card.name for card in listing.data] == [m[1] for m in FAKE_MODELS]
    keys = {r["headers"].get("x-api-key") for r in claude.requests() if r["path"] == "/v1/models"}
    assert key in keys
