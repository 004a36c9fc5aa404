"""A caller that goes away stops the upstream call: the user stops paying for unread tokens."""

from __future__ import annotations

import asyncio
import secrets
import time

from nats.aio.client import Client as NatsClient

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import cancel_subject
from byorouter_fakes.openai import FakeOpenAI
from tests.router.router_client import chat, open_chat


async def _wait_for_disconnect(upstream: FakeOpenAI, tag: str, within_s: float) -> float:
    began = time.monotonic()
    while upstream.disconnects(tag) < 1:
        assert time.monotonic() - began < within_s, "upstream still answering after the cancel"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def test_cancel_mid_stream_closes_the_upstream_connection_within_a_second(
    bus: Bus,
    client_nc: NatsClient,
    openai_connection: tuple[ks.ConnectionRef, str],
    upstream: FakeOpenAI,
) -> None:
    ref, _ = openai_connection
    tag = "cancel-" + secrets.token_hex(6)
    request_id = "req_" + secrets.token_hex(8)
    body = {
        "model": "openai/drip-200",
        "stream": True,
        "user": tag,
        "messages": [{"role": "user", "content": "a b c d e f g h i j k l"}],
    }
    stream = await open_chat(bus, ref, body, request_id=request_id)
    assert (await stream.next())[0] == "start"
    assert (await stream.next())[0] == "chunk"
    stream.close()
    await client_nc.publish(cancel_subject(request_id), b"")
    await _wait_for_disconnect(upstream, tag, within_s=1.0)
    assert len(upstream.requests(tag)) == 1


async def test_cancel_before_the_upstream_answered_closes_the_connection_too(
    bus: Bus,
    client_nc: NatsClient,
    openai_connection: tuple[ks.ConnectionRef, str],
    upstream: FakeOpenAI,
) -> None:
    ref, _ = openai_connection
    tag = "cancel-" + secrets.token_hex(6)
    request_id = "req_" + secrets.token_hex(8)
    body = {
        "model": "openai/hang",
        "user": tag,
        "messages": [{"role": "user", "content": "never answered"}],
    }
    stream = await open_chat(bus, ref, body, request_id=request_id)
    while not upstream.requests(tag):
        await asyncio.sleep(0.01)
    stream.close()
    await client_nc.publish(cancel_subject(request_id), b"")
    await _wait_for_disconnect(upstream, tag, within_s=1.0)


async def test_cancel_of_an_unknown_request_changes_nothing(
    bus: Bus, client_nc: NatsClient, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    await client_nc.publish(cancel_subject("req_" + secrets.token_hex(8)), b"")
    answer = await chat(
        bus,
        ref,
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "still fine"}]},
    )
    assert answer.kinds == ["start", "result"]
