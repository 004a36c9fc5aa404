"""Fallback without waiting, and cooldowns, through the real router and the fake upstream.

Each test has its own connection: `openai` (what the app asks for, faults chosen by model name)
and, as its fallback, `selfhosted` with a preferred model. The fake records what it was asked
under the `user` tag, so a test tells which provider was asked what. The session's router cools
an upstream down for 3 s (`router_settings`) after 3 failures in 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from byorouter_cli.backends import free_port
from byorouter_common.bus import Bus
from byorouter_common.contracts import HDR_REQUEST_ID
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import EMBEDDINGS, encode_chat_request
from byorouter_fakes.openai import FakeOpenAI
from byorouter_router.handlers import RouterHandlers
from tests.router.router_client import ChatAnswer, chat, connect, read_answer

FALLBACK_MODEL = "gpt-4o-mini"


def _body(model: str, tag: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "user": tag}


def _tag() -> str:
    return "cd-" + secrets.token_hex(6)


def _openai(base_url: str, key: str) -> ks.ProviderCredentialInput:
    return ks.ProviderCredentialInput(provider="openai", api_key=SecretStr(key), base_url=base_url)


def _selfhosted(base_url: str, model: str = FALLBACK_MODEL) -> ks.ProviderCredentialInput:
    return ks.ProviderCredentialInput(
        provider="selfhosted", base_url=base_url, preferred_model=model
    )


def _asked(upstream: FakeOpenAI, tag: str) -> list[str]:
    return [r["body"]["model"] for r in upstream.requests(tag)]


def _cooldowns_started(provider: str) -> float:
    """The router's Prometheus counter of cooldowns started, as a scrape would read it."""
    value = REGISTRY.get_sample_value("byorouter_router_cooldowns_total", {"provider": provider})
    return value or 0.0


def _served(answer: ChatAnswer) -> tuple[str, int]:
    assert answer.start is not None, answer.error
    return answer.start["provider"], answer.start["attempts"]


async def test_a_429_falls_back_at_once_asking_the_first_provider_once(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, _openai(upstream.base_url, "sk-a"), _selfhosted(upstream.base_url))
    tag = _tag()
    answer = await chat(bus, ref, _body("openai/fail-429", tag))
    # fail-429 says retry-after: 1; it was not waited for, nor was openai asked again.
    assert _served(answer) == ("selfhosted", 2)
    assert _asked(upstream, tag) == ["fail-429", FALLBACK_MODEL]


async def test_the_only_provider_rate_limited_is_asked_again_after_its_retry_after(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, _openai(upstream.base_url, "sk-b"))
    tag = _tag()
    began = time.monotonic()
    answer = await chat(bus, ref, _body("openai/fail-429", tag))
    assert answer.error is not None
    assert answer.error.status == 429
    assert _asked(upstream, tag) == ["fail-429", "fail-429"]
    assert time.monotonic() - began >= 0.95  # the fake's retry-after: 1


async def test_embeddings_retry_the_same_provider_and_never_fall_back(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, _openai(upstream.base_url, "sk-c"), _selfhosted(upstream.base_url))
    tag = _tag()
    request_id = "req_" + secrets.token_hex(8)
    body = {"model": "openai/busy-429", "input": "x", "user": tag}
    data = encode_chat_request(request_id, ref.app_id, ref.connection_id, orjson.dumps(body))
    stream = await bus.stream(EMBEDDINGS.subject, data, headers={HDR_REQUEST_ID: request_id})
    answer = await read_answer(stream)
    assert answer.error is not None
    assert answer.error.status == 429
    assert _asked(upstream, tag) == ["busy-429", "busy-429"]


async def test_a_provider_that_keeps_failing_is_skipped_until_its_cooldown_is_over(
    bus: Bus, upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-user-" + secrets.token_hex(16)
    ref = await connect(bus, _openai(upstream.base_url, key), _selfhosted(upstream.base_url))
    caplog.set_level(logging.INFO, logger="byorouter_router.cooldowns")
    started_before = _cooldowns_started("openai")
    for _ in range(3):
        tag = _tag()
        assert _served(await chat(bus, ref, _body("openai/busy-500", tag))) == ("selfhosted", 2)
        assert _asked(upstream, tag) == ["busy-500", FALLBACK_MODEL]

    # Cooling down: the next request goes straight to the fallback.
    tag = _tag()
    assert _served(await chat(bus, ref, _body("openai/busy-500", tag))) == ("selfhosted", 1)
    assert _asked(upstream, tag) == [FALLBACK_MODEL]
    (started,) = [r for r in caplog.records if r.getMessage() == "provider cooling down"]
    assert started.__dict__["provider"] == "openai"
    assert started.__dict__["connection_id"] == ref.connection_id
    assert all(key not in str(r.__dict__) for r in caplog.records)
    assert _cooldowns_started("openai") == started_before + 1

    # After the cooldown one request probes it first again (and, still failing, it cools again).
    deadline = time.monotonic() + 15
    while True:
        tag = _tag()
        answer = await chat(bus, ref, _body("openai/busy-500", tag))
        if _asked(upstream, tag) == ["busy-500", FALLBACK_MODEL]:
            break
        assert _asked(upstream, tag) == [FALLBACK_MODEL]
        assert time.monotonic() < deadline, "the cooled-down provider was never asked again"
        await asyncio.sleep(0.2)
    assert _served(answer) == ("selfhosted", 2)
    tag = _tag()
    assert _served(await chat(bus, ref, _body("openai/busy-500", tag))) == ("selfhosted", 1)


async def test_a_provider_back_after_its_cooldown_serves_again(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    # openai's server is down (nothing listens on its port) until the test starts one there.
    port = free_port()
    ref = await connect(
        bus,
        _openai(f"http://127.0.0.1:{port}/v1", "sk-d"),
        _selfhosted(upstream.base_url),
    )
    for _ in range(3):
        assert _served(await chat(bus, ref, _body("openai/gpt-4o", _tag()))) == ("selfhosted", 2)
    assert _served(await chat(bus, ref, _body("openai/gpt-4o", _tag()))) == ("selfhosted", 1)

    revived = FakeOpenAI()
    await revived.start("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 15
        while _served(await chat(bus, ref, _body("openai/gpt-4o", _tag()))) != ("openai", 1):
            assert time.monotonic() < deadline, "the provider never served again"
            await asyncio.sleep(0.2)
        # The probe's success ended the cooldown: it is first again for every request.
        for _ in range(3):
            assert _served(await chat(bus, ref, _body("openai/gpt-4o", _tag()))) == ("openai", 1)
    finally:
        await revived.stop()


async def test_when_every_provider_is_cooling_down_they_are_still_asked(
    bus: Bus, upstream: FakeOpenAI, router: RouterHandlers
) -> None:
    ref = await connect(
        bus, _openai(upstream.base_url, "sk-e"), _selfhosted(upstream.base_url, "busy-500")
    )
    for _ in range(2):  # each request asks each provider twice: 4 failures apiece
        answer = await chat(bus, ref, _body("openai/busy-500", _tag()))
        assert answer.error is not None
    assert len(router.cooldowns) >= 2

    tag = _tag()
    answer = await chat(bus, ref, _body("openai/busy-500", tag))
    # Both asked, in order, and retried as ever: the app sees the provider's own error.
    assert _asked(upstream, tag) == ["busy-500"] * 4
    assert answer.error is not None
    assert answer.error.code == "upstream_error"
