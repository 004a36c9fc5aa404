"""Streams end to end through the client's frame handling: the test plays the router (sealing
requests with the client's public key, opening the answers) and the fake OpenAI is the model
server. No socket: `Streams` writes to a `Wire`."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from byorouter_fakes.openai import FakeOpenAI
from byorouter_tunnel_client import protocol
from byorouter_tunnel_client.streams import StreamLimit, Streams
from byorouter_tunnel_client.upstream import Upstream
from tests.tunnel_client.router_side import Wire, read_answer, request_frames


@pytest.fixture
async def upstream(openai_upstream: FakeOpenAI) -> AsyncIterator[Upstream]:
    client = Upstream(openai_upstream.base_url, connect_timeout_s=2)
    yield client
    await client.aclose()


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
async def streams(
    private_key: X25519PrivateKey, upstream: Upstream, wire: Wire
) -> AsyncIterator[Streams]:
    handler = Streams(private_key, upstream, wire.send, StreamLimit(2))
    yield handler
    await handler.close()


def chat(tag: str, model: str = "gpt-4o", *, stream: bool = True, text: str = "a b c d e") -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "stream": stream,
            "user": tag,
            "messages": [{"role": "user", "content": text}],
        }
    )


async def feed(streams: Streams, frames: list[tuple[dict[str, object], bytes]]) -> None:
    for header, payload in frames:
        await streams.on_request(header, payload)


async def test_a_streamed_chat_round_trips_sealed_both_ways(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey, openai_upstream: FakeOpenAI
) -> None:
    tag = "rt-" + secrets.token_hex(4)
    # A body in several frames, as a large request arrives.
    frames, keys = request_frames(private_key.public_key(), "s1", chat(tag), piece=40)
    assert len(frames) > 3
    await feed(streams, frames)
    answer = await read_answer(wire, keys)
    assert answer.status == 200
    assert answer.content_type is not None
    assert answer.content_type.startswith("text/event-stream")
    assert answer.ended
    assert b"data: [DONE]" in answer.body
    assert b'"content":"a ' in answer.body
    # The model server got the request as the app sent it, and nothing of BYORouter.
    (seen,) = openai_upstream.requests(tag)
    assert seen["body"]["messages"][0]["content"] == "a b c d e"
    assert "authorization" not in {k.lower() for k in seen["headers"]}
    await streams.wait_idle()
    assert streams.in_flight == 0


async def test_a_large_answer_comes_back_in_frames_of_bounded_size(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey
) -> None:
    streams.frame_payload = 1000
    text = " ".join(["word"] * 3000)
    frames, keys = request_frames(
        private_key.public_key(), "big", chat("big", stream=False, text=text)
    )
    await feed(streams, frames)
    answer = await read_answer(wire, keys)
    assert answer.status == 200
    assert answer.ended
    assert len(answer.data) > 10
    assert all(len(piece) <= 1000 for piece in answer.data)
    assert orjson.loads(answer.body)["choices"][0]["message"]["content"] == text


async def test_pieces_are_sent_as_the_upstream_sends_them(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey
) -> None:
    frames, keys = request_frames(private_key.public_key(), "drip", chat("drip", "drip-150"))
    await feed(streams, frames)
    arrivals: list[float] = []
    _, payload = await wire.next()
    keys.open(protocol.HEAD, payload)
    while True:
        header, payload = await wire.next()
        if header["end"]:
            break
        keys.open(protocol.DATA, payload)
        arrivals.append(time.monotonic())
    # Seven events 150 ms apart: they arrive spread out, not in one buffered lump at the end.
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] > 0.5


async def test_cancel_closes_the_upstream_request(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey, openai_upstream: FakeOpenAI
) -> None:
    tag = "cancel-" + secrets.token_hex(4)
    frames, keys = request_frames(private_key.public_key(), "c1", chat(tag, "drip-200"))
    await feed(streams, frames)
    header, payload = await wire.next()
    keys.open(protocol.HEAD, payload)
    streams.on_cancel({"t": "cancel", "id": "c1"})
    began = time.monotonic()
    while openai_upstream.disconnects(tag) < 1:
        assert time.monotonic() - began < 2, "the model server is still generating"
        await asyncio.sleep(0.02)
    await streams.wait_idle()
    # Nothing more is sent for a cancelled stream (the router stopped listening).
    while not wire.frames.empty():
        header, _ = wire.frames.get_nowait()
        assert header["end"] is False


async def test_a_refused_upstream_connection_is_a_fail_not_a_silent_end(
    private_key: X25519PrivateKey, wire: Wire
) -> None:
    dead = Upstream("http://127.0.0.1:9/v1", connect_timeout_s=2)
    streams = Streams(private_key, dead, wire.send, StreamLimit(2))
    try:
        frames, keys = request_frames(private_key.public_key(), "dead", chat("dead"))
        await feed(streams, frames)
        answer = await read_answer(wire, keys)
    finally:
        await streams.close()
        await dead.aclose()
    assert answer.error is not None
    assert (answer.error["status"], answer.error["code"]) == (502, "upstream_unreachable")


async def test_an_upstream_that_breaks_off_mid_answer_ends_with_a_fail(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey
) -> None:
    frames, keys = request_frames(private_key.public_key(), "cut", chat("cut", "cut-after-2"))
    await feed(streams, frames)
    answer = await read_answer(wire, keys)
    assert answer.status == 200
    assert not answer.ended
    assert answer.error is not None
    assert answer.error["code"] == "upstream_unreachable"


async def test_an_upstream_error_status_is_passed_through(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey
) -> None:
    frames, keys = request_frames(private_key.public_key(), "e429", chat("e", "fail-429"))
    await feed(streams, frames)
    answer = await read_answer(wire, keys)
    assert answer.status == 429
    assert answer.ended
    assert orjson.loads(answer.body)["error"]["code"] == "rate_limit_exceeded"


async def test_a_path_outside_the_allow_list_fails_with_403(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey, openai_upstream: FakeOpenAI
) -> None:
    before = len(openai_upstream.requests())
    frames, keys = request_frames(
        private_key.public_key(), "ssrf", chat("ssrf"), path="/../admin", piece=10
    )
    await feed(streams, frames)
    answer = await read_answer(wire, keys)
    assert answer.error is not None
    assert (answer.error["status"], answer.error["code"]) == (403, "path_not_allowed")
    assert len(openai_upstream.requests()) == before
    assert streams.in_flight == 0


async def test_requests_beyond_max_concurrency_fail_with_429(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey
) -> None:
    public = private_key.public_key()
    held = []
    for name in ("h1", "h2"):
        frames, keys = request_frames(public, name, chat(name, "drip-300"))
        await feed(streams, frames)
        held.append(keys)
    frames, keys = request_frames(public, "h3", chat("h3"))
    await feed(streams, frames)
    # The refusal goes out before the held streams' heads may have: pick it out by id.
    refusal = None
    while refusal is None:
        header, payload = await wire.next()
        if header["id"] == "h3":
            refusal = orjson.loads(keys.open(protocol.FAIL, payload))["error"]
    assert (refusal["status"], refusal["code"]) == (429, "tunnel_busy")
    for name in ("h1", "h2"):
        streams.on_cancel({"t": "cancel", "id": name})
    await streams.wait_idle()


async def test_an_opening_for_another_key_is_answered_with_an_error_end(
    streams: Streams, wire: Wire
) -> None:
    stranger = X25519PrivateKey.generate().public_key()
    frames, _ = request_frames(stranger, "alien", chat("alien"), piece=20)
    await feed(streams, frames)
    header, payload = await wire.next()
    assert header == {"t": "res", "id": "alien", "end": True, "error": "decrypt"}
    assert payload == b""
    # Its body frames are dropped, not taken for new streams.
    await asyncio.sleep(0.05)
    assert wire.frames.empty()
    assert streams.in_flight == 0


async def test_a_tampered_body_frame_fails_with_400(
    streams: Streams, wire: Wire, private_key: X25519PrivateKey
) -> None:
    frames, keys = request_frames(private_key.public_key(), "tamper", chat("t"), piece=20)
    header, payload = frames[2]
    frames[2] = (header, payload[:-1] + bytes([payload[-1] ^ 1]))
    await feed(streams, frames)
    answer = await read_answer(wire, keys)
    assert answer.error is not None
    assert (answer.error["status"], answer.error["code"]) == (400, "bad_request")
    await asyncio.sleep(0.05)
    assert wire.frames.empty()
    assert streams.in_flight == 0
