"""A reply larger than one bus message arrives whole: split by the responder, joined by the
caller, in order with the stream's other messages (a non-streamed answer over 1 MiB, say)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_common.bus import CHUNK, DONE, KEEPALIVE, RESULT, START, Bus, StreamWriter

SUBJECT = "byorouter.test.pieces"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def _answer_with(nc: NatsClient, messages: list[tuple[str, bytes]]) -> None:
    async def respond(msg: Msg) -> None:
        writer = StreamWriter(nc, msg.reply)
        for kind, data in messages:
            await writer.send(kind, data)

    await nc.subscribe(SUBJECT, cb=respond)


async def test_a_result_three_times_the_bus_limit_arrives_whole(nc: NatsClient) -> None:
    answer = os.urandom(3 * nc.max_payload + 123)
    await _answer_with(nc, [(START, b"{}"), (RESULT, answer)])
    stream = await Bus(nc).stream(SUBJECT, b"{}")
    try:
        assert await stream.next() == (START, b"{}")
        kind, data = await stream.next()
    finally:
        stream.close()
    assert kind == RESULT
    assert data == answer
    assert stream.finished


async def test_pieces_keep_their_place_among_the_other_messages(nc: NatsClient) -> None:
    big = os.urandom(nc.max_payload + 1)
    await _answer_with(
        nc,
        [
            (START, b"s"),
            (CHUNK, b"one"),
            (KEEPALIVE, b""),
            (CHUNK, big),
            (CHUNK, b"three"),
            (DONE, b"d"),
        ],
    )
    stream = await Bus(nc).stream(SUBJECT, b"{}")
    try:
        got = [await stream.next() for _ in range(5)]
    finally:
        stream.close()
    assert got == [(START, b"s"), (CHUNK, b"one"), (CHUNK, big), (CHUNK, b"three"), (DONE, b"d")]


async def test_a_message_within_the_limit_is_sent_as_one(nc: NatsClient) -> None:
    seen: list[Msg] = []
    inbox = nc.new_inbox()

    async def record(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(inbox, cb=record)
    writer = StreamWriter(nc, inbox)
    await writer.send(CHUNK, b"x" * (nc.max_payload // 2))
    await writer.send(DONE, b"end")
    for _ in range(200):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.01)
    assert len(seen) == 2
    assert "Byo-More" not in (seen[0].headers or {})
