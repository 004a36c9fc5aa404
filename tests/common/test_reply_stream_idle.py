"""A reader gives up on a bus stream that went silent for its idle limit, and only then: messages
(keep-alives too) move the limit on, and a cancel from outside stays a cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_common.bus import DONE, KEEPALIVE, START, Bus, StreamWriter
from byorouter_common.errors import ByoError

SUBJECT = "byorouter.test.idle"
IDLE_S = 0.4


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def _respond(nc: NatsClient, keepalives: int, every_s: float, then_done: bool) -> None:
    async def respond(msg: Msg) -> None:
        writer = StreamWriter(nc, msg.reply)
        await writer.send(START, b"{}")
        for _ in range(keepalives):
            await asyncio.sleep(every_s)
            await writer.send(KEEPALIVE, b"")
        if then_done:
            await writer.send(DONE, b"{}")

    await nc.subscribe(SUBJECT, cb=respond)


async def test_keep_alives_hold_a_stream_open_past_its_idle_limit(nc: NatsClient) -> None:
    # 8 keep-alives a quarter of the limit apart: twice the limit in all, never silent for it.
    await _respond(nc, keepalives=8, every_s=IDLE_S / 4, then_done=True)
    stream = await Bus(nc).stream(SUBJECT, b"{}", idle_timeout_s=IDLE_S)
    began = time.monotonic()
    try:
        assert await stream.next() == (START, b"{}")
        assert await stream.next() == (DONE, b"{}")
    finally:
        stream.close()
    assert time.monotonic() - began >= 2 * IDLE_S
    assert stream.finished


async def test_a_stream_silent_after_its_keep_alives_times_out_after_the_idle_limit(
    nc: NatsClient,
) -> None:
    await _respond(nc, keepalives=3, every_s=IDLE_S / 4, then_done=False)
    stream = await Bus(nc).stream(SUBJECT, b"{}", idle_timeout_s=IDLE_S)
    try:
        assert await stream.next() == (START, b"{}")
        began = time.monotonic()
        with pytest.raises(ByoError) as raised:
            await stream.next()
        waited = time.monotonic() - began
    finally:
        stream.close()
    assert raised.value.status == 504
    assert stream.finished
    # Silent from the last keep-alive (3/4 of the limit in) for the whole limit.
    assert waited >= IDLE_S + 0.5 * IDLE_S


async def test_a_cancel_from_outside_stays_a_cancel(nc: NatsClient) -> None:
    await _respond(nc, keepalives=0, every_s=0, then_done=False)
    stream = await Bus(nc).stream(SUBJECT, b"{}", idle_timeout_s=IDLE_S)
    try:
        assert await stream.next() == (START, b"{}")
        reader = asyncio.ensure_future(stream.next())
        await asyncio.sleep(IDLE_S / 4)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        # The stream still times out on its own afterwards.
        with pytest.raises(ByoError):
            await stream.next()
    finally:
        stream.close()
