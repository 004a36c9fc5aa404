"""The real router, in-process, answering `openrouter/...` models from the fake OpenRouter."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import MODELS
from byorouter_fakes.openrouter import MODELS as FAKE_MODELS
from byorouter_fakes.openrouter import FakeOpenRouter
from byorouter_router.settings import RouterSettings
from tests.router.router_client import chat, connect

LLAMA = "meta-llama/llama-3.1-8b-instruct"


@pytest.fixture(scope="module")
async def openrouter() -> AsyncIterator[FakeOpenRouter]:
    fake = FakeOpenRouter(stream_chunks=4)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


def _openrouter(
    base_url: str, key: str, preferred_model: str | None = None
) -> ks.ProviderCredentialInput:
    return ks.ProviderCredentialInput(
        provider="openrouter",
        api_key=SecretStr(key),
        base_url=base_url,
        preferred_model=preferred_model,
    )


@pytest.fixture
async def openrouter_connection(
    bus: Bus, openrouter: FakeOpenRouter
) -> tuple[ks.ConnectionRef, str]:
    key = "sk-or-v1-" + secrets.token_hex(16)
    return await connect(bus, _openrouter(openrouter.base_url, key, LLAMA)), key


def _tag() -> str:
    return "t-" + secrets.token_hex(6)


def _body(model: str, stream: bool, tag: str = "", **fields: Any) -> dict[str, Any]:
    return {
        "model": f"openrouter/{model}",
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three four five six"}],
        "user": tag or _tag(),
        **fields,
    }


async def test_streamed_answer_reaches_openrouter_with_the_users_key_and_attribution(
    bus: Bus,
    openrouter: FakeOpenRouter,
    openrouter_connection: tuple[ks.ConnectionRef, str],
    router_settings: RouterSettings,
) -> None:
    ref, key = openrouter_connection
    tag = _tag()
    answer = await chat(bus, ref, _body("anthropic/claude-3.5-sonnet", True, tag))
    assert answer.error is None
    assert answer.start == {
        "provider": "openrouter",
        "model": "anthropic/claude-3.5-sonnet",
        "attempts": 1,
    }
    assert answer.text == "one two three four five six"
    assert answer.kinds[-1] == "done"
    assert answer.end is not None
    assert answer.end["finish_reason"] == "stop"
    # Usage from OpenRouter's last chunk is recorded, but the client did not ask to see it.
    assert answer.end["usage"]["completion_tokens"] == 6
    assert all("usage" not in event for event in answer.events)

    [seen] = openrouter.requests(tag)
    assert seen["path"] == "/api/v1/chat/completions"
    assert seen["headers"]["Authorization"] == f"Bearer {key}"
    assert seen["headers"]["HTTP-Referer"] == router_settings.openrouter_referer
    assert seen["headers"]["X-Title"] == "BYORouter"
    assert seen["body"]["model"] == "anthropic/claude-3.5-sonnet"


async def test_client_that_asks_for_usage_gets_openrouters_last_chunk_usage(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    answer = await chat(bus, ref, _body(LLAMA, True, stream_options={"include_usage": True}))
    assert answer.error is None
    usages = [event["usage"] for event in answer.events if event.get("usage")]
    assert usages == [{"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}]


async def test_non_streamed_answer_is_one_chat_completion(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    answer = await chat(bus, ref, _body(LLAMA, False, max_tokens=3))
    assert answer.kinds == ["start", "result"]
    assert answer.end is not None
    assert answer.end["choices"][0]["message"]["content"] == "one two three "
    assert answer.end["usage"]["total_tokens"] == 9


async def test_openrouter_default_asks_for_the_users_preferred_model(
    bus: Bus, openrouter: FakeOpenRouter, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    tag = _tag()
    answer = await chat(bus, ref, _body("default", False, tag))
    assert answer.error is None
    assert answer.kinds == ["start", "result"]
    [seen] = openrouter.requests(tag)
    assert seen["body"]["model"] == LLAMA


async def test_openrouter_default_without_a_preferred_model_is_404_saying_what_to_do(
    bus: Bus, openrouter: FakeOpenRouter
) -> None:
    ref = await connect(bus, _openrouter(openrouter.base_url, "sk-or-v1-" + secrets.token_hex(8)))
    tag = _tag()
    answer = await chat(bus, ref, _body("default", True, tag))
    assert answer.error is not None
    assert answer.error.status == 404
    assert answer.error.code == "model_not_found"
    assert "preferred model" in answer.error.message
    assert openrouter.requests(tag) == []


async def test_a_base_url_given_as_just_the_origin_reaches_the_api_under_api_v1(
    bus: Bus, openrouter: FakeOpenRouter
) -> None:
    ref = await connect(bus, _openrouter(openrouter.url, "sk-or-v1-" + secrets.token_hex(8)))
    tag = _tag()
    answer = await chat(bus, ref, _body(LLAMA, False, tag))
    assert answer.error is None
    assert openrouter.requests(tag)[0]["path"] == "/api/v1/chat/completions"


async def test_error_in_the_middle_of_the_stream_ends_it_with_openrouters_message(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    answer = await chat(bus, ref, _body("fake/error-after-3", True))
    assert answer.text, "the content before the error was relayed"
    assert answer.kinds[-1] == "error"
    assert "done" not in answer.kinds
    assert answer.error is not None
    assert answer.error.code == "upstream_error"
    assert "Provider disconnected unexpectedly" in answer.error.message


async def test_out_of_credits_is_reported_as_the_users_key_not_working(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, key = openrouter_connection
    answer = await chat(bus, ref, _body("fake/fail-402", False))
    assert answer.error is not None
    assert answer.error.code == "provider_auth_failed"
    assert "out of credits" in answer.error.message
    assert key not in answer.error.message


async def test_moderation_refusal_is_the_requests_fault_and_does_not_echo_the_input(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    answer = await chat(bus, ref, _body("fake/fail-403", False))
    assert answer.error is not None
    assert answer.error.status == 400
    assert answer.error.code == "content_flagged"
    assert "flagged part" not in answer.error.message


async def test_rate_limit_from_openrouter_reaches_the_app_as_429_with_its_message(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    answer = await chat(bus, ref, _body("fake/busy-429", True))
    assert answer.error is not None
    assert answer.error.status == 429
    assert answer.error.code == "upstream_rate_limited"
    assert "free-models-per-min" in answer.error.message


async def test_reasoning_reaches_the_client_as_reasoning_content(
    bus: Bus, openrouter_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openrouter_connection
    answer = await chat(bus, ref, _body("deepseek/reasoning-2", True))
    assert answer.error is None
    deltas = [choice["delta"] for event in answer.events for choice in event["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "thought 1. thought 2. "
    assert all("reasoning" not in d for d in deltas)
    assert answer.text == "one two three four five six"


async def test_models_are_openrouters_list_prefixed_using_the_users_key(
    bus: Bus, openrouter: FakeOpenRouter
) -> None:
    key = "sk-or-v1-" + secrets.token_hex(16)
    ref = await connect(bus, _openrouter(openrouter.base_url, key))
    listing = await bus.request(MODELS, ref)
    assert [card.id for card in listing.data] == [f"openrouter/{m[0]}" for m in FAKE_MODELS]
    # What a model picker shows: OpenRouter's own display names and context lengths.
    assert [(c.name, c.context_length, c.kind) for c in listing.data] == [
        (name, context, "chat") for _, name, context in FAKE_MODELS
    ]
    listed = [r for r in openrouter.requests() if r["path"] == "/api/v1/models"]
    assert listed[-1]["headers"]["Authorization"] == f"Bearer {key}"
    assert listed[-1]["headers"]["X-Title"] == "BYORouter"
