"""A streamed answer is held to its limits: first token, gap between events, whole answer.

Counted in events, not bytes: the socket read timeout here is far longer than each limit, so
only the event clock can end these streams in time. Each provider is called directly against
the fake upstream, as the chat router calls it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from byorouter_common.errors import ByoError
from byorouter_fakes.openai import FakeOpenAI
from byorouter_router.providers.base import ProviderCredential
from byorouter_router.providers.errors import Timeouts
from byorouter_router.providers.http import StreamPace
from byorouter_router.providers.openai_compat import OpenAICompatProvider
from byorouter_router.settings import RouterSettings
from byorouter_router.upstream import create_session
from tests.router.router_client import Collected

# The socket may stay quiet for 20 s: longer than any test here is allowed to take.
LIMITS = Timeouts(2, 20, 20, first_token_s=1.0, gap_s=1.0, answer_s=2.0)


@pytest.fixture
async def selfhosted(upstream: FakeOpenAI) -> AsyncIterator[OpenAICompatProvider]:
    session = create_session(RouterSettings(allow_private_upstreams=True))
    try:
        yield OpenAICompatProvider(
            "selfhosted", session, LIMITS, default_base_url=upstream.base_url, allow_private=True
        )
    finally:
        await session.close()


async def stream(provider: OpenAICompatProvider, model: str) -> tuple[Collected, ByoError, float]:
    """Streams `model` until it fails; what was relayed, the error and how long it took."""
    credential = ProviderCredential("selfhosted", SecretStr("k-1234567890"), None)
    reply = Collected()
    body = {"stream": True, "messages": [{"role": "user", "content": "a b c d e f g h i j"}]}
    began = time.monotonic()
    with pytest.raises(ByoError) as caught:
        await provider.chat(credential, model, body, reply, deadline=1e12)
    return reply, caught.value, time.monotonic() - began


async def test_an_upstream_that_never_sends_a_token_ends_at_the_first_token_limit(
    selfhosted: OpenAICompatProvider,
) -> None:
    reply, error, took = await stream(selfhosted, "stall-after-0")
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert error.message == "The selfhosted provider did not start its answer within 1s."
    assert reply.kinds == ["start"]
    assert 0.9 < took < 2.5


async def test_keep_alive_comments_are_not_tokens(selfhosted: OpenAICompatProvider) -> None:
    reply, error, took = await stream(selfhosted, "comments-100")
    assert error.message == "The selfhosted provider did not start its answer within 1s."
    assert reply.kinds == ["start"]
    assert took < 2.5


async def test_a_stream_that_goes_silent_midway_ends_at_the_gap_limit(
    selfhosted: OpenAICompatProvider,
) -> None:
    reply, error, took = await stream(selfhosted, "stall-after-2")
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert (
        error.message == "The selfhosted provider did not send anything more of its answer for 1s."
    )
    assert reply.kinds[:2] == ["start", "chunk"]
    assert "done" not in reply.kinds
    assert took < 2.5


async def test_a_steady_stream_that_takes_too_long_ends_at_the_answer_limit(
    selfhosted: OpenAICompatProvider,
) -> None:
    # An event every 0.4 s never trips the 1 s gap, but ten words and more take over 2 s.
    reply, error, took = await stream(selfhosted, "drip-400")
    assert error.message == "The selfhosted provider did not finish its answer within 2s."
    assert reply.kinds.count("chunk") >= 3
    assert "done" not in reply.kinds
    assert 1.9 < took < 3.5


async def test_headers_that_never_come_are_a_first_token_timeout_before_anything_starts(
    selfhosted: OpenAICompatProvider,
) -> None:
    reply, error, took = await stream(selfhosted, "hang")
    assert error.message == "The selfhosted provider did not start its answer within 1s."
    assert reply.kinds == [], "nothing started: the router may still fall back"
    assert took < 2.5


class _Silent:
    """A response body that never sends anything."""

    async def readany(self) -> bytes:
        await asyncio.Event().wait()
        return b""


async def test_a_cancel_from_outside_while_reading_stays_a_cancel_not_a_timeout() -> None:
    # The client went away: the relay must end as cancelled, not report the upstream as slow.
    pace = StreamPace("selfhosted", Timeouts(2, 20, 20, first_token_s=0.2, gap_s=0.2))
    reading = asyncio.create_task(pace.read(_Silent()))
    await asyncio.sleep(0.05)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    pace.close()


async def test_a_read_past_the_limit_is_the_timeout_and_the_task_is_not_left_cancelled() -> None:
    pace = StreamPace("selfhosted", Timeouts(2, 20, 20, first_token_s=0.1, gap_s=0.1))

    async def read_then_go_on() -> bool:
        with pytest.raises(ByoError) as caught:
            await pace.read(_Silent())
        assert (
            caught.value.message == "The selfhosted provider did not start its answer within 0.1s."
        )
        await asyncio.sleep(0.01)  # would raise if the limit's cancel were still pending
        return True

    assert await asyncio.wait_for(read_then_go_on(), 5)
    pace.close()


class _OneEventThenSilent:
    """A response body that sends one event at once, then nothing more."""

    def __init__(self) -> None:
        self._sent = False

    async def readany(self) -> bytes:
        if not self._sent:
            self._sent = True
            return b'data: {"choices":[]}\n\n'
        await asyncio.Event().wait()
        return b""


async def test_a_gap_shorter_than_the_first_token_limit_ends_the_stream_at_the_gap() -> None:
    # The first event swaps a 3 s first-token limit for a 0.2 s gap: the silence after it ends
    # at the gap, not when the first-token limit would have run out.
    pace = StreamPace("selfhosted", Timeouts(2, 20, 20, first_token_s=3.0, gap_s=0.2))
    body = _OneEventThenSilent()
    began = time.monotonic()
    try:
        assert await pace.read(body)
        pace.events_arrived()
        with pytest.raises(ByoError) as caught:
            await asyncio.wait_for(pace.read(body), 10)
    finally:
        pace.close()
    took = time.monotonic() - began
    assert caught.value.message == (
        "The selfhosted provider did not send anything more of its answer for 0.2s."
    )
    assert took < 2.0
