"""An upstream answer larger than any real one is refused with a 502, quickly and in bounded memory.

One user's self-hosted URL can answer anything; the router every tenant shares must not read
gigabytes (or decompress a gzip bomb) into memory on its behalf.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from byorouter_common.bus import CHUNK, DONE, Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_fakes.oversized import gzip_bomb
from byorouter_router.providers.base import ProviderCredential
from byorouter_router.providers.errors import Timeouts
from byorouter_router.providers.openai_compat import SelfHostedProvider
from byorouter_router.providers.tunnel import TunnelResponse
from byorouter_router.settings import RouterSettings
from byorouter_router.upstream import create_session
from byorouter_tunnel_client import e2e, protocol
from tests.router.router_client import ChatAnswer, Collected, chat

T = TypeVar("T")
# The most the router's memory may grow while it refuses one oversized answer.
MAX_RSS_GROWTH = 200 * 1024 * 1024


class PeakRss:
    """The process's highest resident set size while it runs, sampled from a thread."""

    def __init__(self) -> None:
        self.start = self.peak = psutil.Process().memory_info().rss

    def watch(self, stop: threading.Event) -> None:
        process = psutil.Process()
        while not stop.wait(0.005):
            self.peak = max(self.peak, process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


@contextmanager
def peak_rss() -> Iterator[PeakRss]:
    rss = PeakRss()
    stop = threading.Event()
    sampler = threading.Thread(target=rss.watch, args=(stop,), daemon=True)
    sampler.start()
    try:
        yield rss
    finally:
        stop.set()
        sampler.join()


async def _timed(call: Awaitable[T]) -> tuple[T, float, int]:
    with peak_rss() as rss:
        started = time.monotonic()
        result = await call
        elapsed = time.monotonic() - started
    return result, elapsed, rss.growth


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["openai/gzip-bomb", "openai/huge-60"])
async def test_oversized_upstream_answer_is_502_quickly_in_bounded_memory(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], model: str, stream: bool
) -> None:
    await asyncio.to_thread(gzip_bomb)  # the fake builds it once; not the router's time
    ref, _ = openai_connection
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    answer: ChatAnswer
    answer, elapsed, growth = await _timed(chat(bus, ref, body))
    print(f"{model} stream={stream}: {elapsed:.2f}s, peak RSS growth {growth / 2**20:.0f} MiB")
    assert answer.error is not None
    assert answer.error.status == 502
    if not stream:
        assert answer.error.code == "upstream_too_large"
        assert "MiB" in answer.error.message
    assert elapsed < 5
    assert growth < MAX_RSS_GROWTH


class _SealedFrames:
    """A tunnel client's reply stream: `frames` sealed 1 MiB data frames, then a clean end."""

    def __init__(self, keys: e2e.ClientStream, frames: int) -> None:
        self._keys = keys
        self._left = frames
        self.read = 0
        self.closed = False

    async def next(self) -> tuple[str, bytes]:
        if self._left == 0:
            return DONE, self._keys.seal(protocol.END, b"")
        self._left -= 1
        self.read += 1
        return CHUNK, self._keys.seal(protocol.DATA, b" " * 2**20)

    def close(self) -> None:
        self.closed = True


class _OneAnswerTunnel:
    """A `TunnelTransport` whose every call gets the same answer."""

    def __init__(self, response: TunnelResponse) -> None:
        self._response = response

    async def call(self, *args: object, **kwargs: object) -> TunnelResponse:
        return self._response


async def test_oversized_answer_through_a_tunnel_is_502_without_reading_it_all() -> None:
    client_key = X25519PrivateKey.generate()
    public_key = e2e.public_key_text(client_key.public_key())
    opening, router_keys = e2e.open_stream(client_key.public_key(), "stream-1", b"")
    _, client_keys = e2e.accept_stream(client_key, "stream-1", opening)
    frames = _SealedFrames(client_keys, 40)
    cancelled: list[bool] = []
    answer = TunnelResponse(
        frames,  # type: ignore[arg-type]
        router_keys,
        200,
        "application/json",
        lambda: cancelled.append(True),
    )
    session = create_session(RouterSettings(allow_private_upstreams=True))
    try:
        selfhosted = SelfHostedProvider(
            session,
            Timeouts(2, 2, 5),
            allow_private=True,
            tunnels=_OneAnswerTunnel(answer),  # type: ignore[arg-type]
        )
        credential = ProviderCredential(
            "selfhosted", None, None, tunnel_id="tun_" + "a" * 16, tunnel_public_key=public_key
        )
        reply = Collected()
        with pytest.raises(ByoError) as caught:
            await selfhosted.chat(
                credential,
                "llama3",
                {"messages": [{"role": "user", "content": "hi"}]},
                reply,
                deadline=time.monotonic() + 5,
            )
    finally:
        await session.close()
    assert (caught.value.status, caught.value.code) == (502, "upstream_too_large")
    assert frames.read <= 17, "the router stops reading at the cap"
    assert cancelled == [True], "the tunnel client is told to stop sending"
    assert reply.kinds == []
