"""A streamed answer's upstream connection goes back to the pool even when the upstream ends its
body a little after its last event (as many do, and the paced fake does): the next stream
reuses it rather than opening a new one, and the caller's answer never waits for that end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pydantic import SecretStr

from byorouter_router.providers.base import ProviderCredential
from byorouter_router.providers.errors import Timeouts
from byorouter_router.providers.openai_compat import OpenAICompatProvider
from byorouter_router.settings import RouterSettings
from byorouter_router.upstream import create_session
from tests.router.router_client import Collected

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
LAST = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'


class LateEnd:
    """An upstream that streams an answer, then ends the body `end_after_s` after [DONE]."""

    def __init__(self, end_after_s: float) -> None:
        self.end_after_s = end_after_s
        self.peers: list[object] = []
        self.ended = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.peers.append(
            request.transport.get_extra_info("peername") if request.transport else None
        )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(EVENT + LAST + b"data: [DONE]\n\n")
        try:
            await asyncio.sleep(self.end_after_s)
            await response.write_eof()
        finally:
            # Counted also when the client closed the connection first.
            self.ended += 1
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def late_end() -> AsyncIterator[LateEnd]:
    upstream = LateEnd(0.5)
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


async def stream_once(provider: OpenAICompatProvider) -> Collected:
    credential = ProviderCredential("selfhosted", SecretStr("k-1234567890"), None)
    reply = Collected()
    body = {"stream": True, "messages": [{"role": "user", "content": "hello"}]}
    await provider.chat(credential, "m", body, reply, deadline=1e12)
    return reply


async def test_a_stream_whose_body_ends_after_its_last_event_leaves_its_connection_reusable(
    late_end: LateEnd,
) -> None:
    session = create_session(RouterSettings(allow_private_upstreams=True))
    limits = Timeouts(2, 20, 20, first_token_s=5.0, gap_s=5.0, answer_s=10.0)
    provider = OpenAICompatProvider(
        "selfhosted", session, limits, default_base_url=late_end.base_url, allow_private=True
    )
    try:
        first = await stream_once(provider)
        # The answer was complete for the caller before the upstream ended its body.
        assert first.kinds == ["start", "chunk", "done"]
        assert late_end.ended == 0
        async with asyncio.timeout(10):
            while late_end.ended < 1:
                await asyncio.sleep(0.01)
        second = await stream_once(provider)
        assert second.kinds == ["start", "chunk", "done"]
    finally:
        await session.close()
    assert len(late_end.peers) == 2
    assert late_end.peers[0] == late_end.peers[1], "the second stream opened a new connection"
