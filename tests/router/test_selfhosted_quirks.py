"""Self-hosted servers frame their streams less tidily than OpenAI; answers still arrive whole.

The quirky upstream here is a few lines of aiohttp that write a stream the way llama.cpp-style
servers and proxies do: CRLF line endings, comment keep-alives, events split across TCP writes,
and no `[DONE]` at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from byorouter_common.bus import Bus
from tests.router.router_client import chat, connect, provider


def _event(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    chunk = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"


async def _quirky_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    stream = b"".join(
        [
            b": keep-alive\r\n\r\n",
            _event("Hello"),
            _event(", "),
            _event("world"),
            _event(None, "stop"),
        ]
    )
    # Uneven pieces, so events and even CRLF pairs are split between reads.
    for start in range(0, len(stream), 37):
        await response.write(stream[start : start + 37])
        await asyncio.sleep(0.002)
    await response.write_eof()
    return response


@pytest.fixture
async def quirky_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _quirky_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_crlf_split_stream_without_done_is_relayed_whole_and_ends_with_done(
    bus: Bus, quirky_upstream: str
) -> None:
    ref = await connect(bus, provider("selfhosted", quirky_upstream))
    answer = await chat(
        bus,
        ref,
        {
            "model": "selfhosted/llama3",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert answer.error is None
    assert answer.text == "Hello, world"
    assert answer.kinds[-1] == "done"
    assert answer.end == {"finish_reason": "stop", "usage": None}
