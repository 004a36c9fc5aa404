"""Self-hosted servers differ from OpenAI in small ways; clients still get OpenAI's answers.

The first upstream here is a few lines of aiohttp that write a stream the way llama.cpp-style
servers and proxies do: CRLF line endings, comment keep-alives, events split across TCP writes,
and no `[DONE]` at the end. The rest use the fake OpenAI's quirk modes: `reasoning` instead of
`reasoning_content`, usage always or never, and Ollama's refusal of a non-local Host header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from byorouter_common.bus import Bus
from byorouter_fakes.openai import FakeOpenAI
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


# --- quirks the fake OpenAI plays on request (its model name picks the quirk) ---------------


def _ask(model: str, stream: bool, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three"}],
        **fields,
    }


async def test_ollama_style_reasoning_reaches_the_client_as_reasoning_content(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    streamed = await chat(bus, ref, _ask("selfhosted/reasoning-3", True))
    assert streamed.error is None
    deltas = [choice["delta"] for event in streamed.events for choice in event["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == (
        "thought 1. thought 2. thought 3. "
    )
    assert all("reasoning" not in d for d in deltas)
    assert streamed.text == "one two three"

    whole = await chat(bus, ref, _ask("selfhosted/reasoning-2", False))
    assert whole.end is not None
    message = whole.end["choices"][0]["message"]
    assert message["reasoning_content"] == "thought 1. thought 2. "
    assert "reasoning" not in message
    assert message["content"] == "one two three"


async def test_answers_without_reasoning_are_relayed_byte_for_byte(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    answer = await chat(
        bus, ref, _ask("selfhosted/plain", True, stream_options={"include_usage": True})
    )
    assert answer.error is None
    # The fake's own compact encoding, untouched: no re-serialised chunk loses "usage":null.
    assert all(b'"usage":null' in line for line in b"\n".join(answer.chunks).split(b"\n")[:-1])


async def test_server_that_always_sends_usage_shows_it_only_to_clients_that_asked(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    unasked = await chat(bus, ref, _ask("selfhosted/usage-always", True))
    assert unasked.error is None
    assert all("usage" not in event for event in unasked.events)
    assert unasked.end is not None
    assert unasked.end["usage"]["completion_tokens"] == 3

    asked = await chat(
        bus, ref, _ask("selfhosted/usage-always", True, stream_options={"include_usage": True})
    )
    assert [e["usage"]["total_tokens"] for e in asked.events if e.get("usage")] == [6]


async def test_server_that_never_sends_usage_still_ends_the_stream_with_done(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    answer = await chat(
        bus, ref, _ask("selfhosted/usage-never", True, stream_options={"include_usage": True})
    )
    assert answer.error is None
    assert answer.text == "one two three"
    assert answer.kinds[-1] == "done"
    assert answer.end == {"finish_reason": "stop", "usage": None}


async def test_ollama_behind_a_tunnel_that_keeps_the_host_header_says_what_to_fix(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    answer = await chat(bus, ref, _ask("selfhosted/ollama-host", False))
    assert answer.error is not None
    # Not "your key was rejected": this server has no key; its proxy needs fixing.
    assert answer.error.code == "provider_misconfigured"
    assert "Host header" in answer.error.message
