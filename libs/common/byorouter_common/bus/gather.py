"""Scatter-gather: one question to every subscriber of a subject, and every answer that came.

For subjects served without a queue group, where each copy answers for what it holds (a tunnel's
`.status`: each tunnel service copy holding one of its sockets answers once per socket). No answer
is an answer too: nobody holds it. NATS tells us at once when nobody subscribes (no-responders),
so an offline tunnel costs no wait at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_common.telemetry import inject_headers

_STATUS = "Status"
_NO_RESPONDERS = "503"


async def gather_replies(
    nc: NatsClient,
    subject: str,
    payload: bytes,
    *,
    first_wait_s: float = 0.3,
    settle_s: float = 0.15,
    max_wait_s: float = 2.0,
    headers: dict[str, str] | None = None,
) -> list[bytes]:
    """Publish `payload` on `subject` and return the bodies of every reply, in arrival order.

    Waits up to `first_wait_s` for a first reply, then until `settle_s` pass without a new one
    (never longer than `max_wait_s` in all): answerers on other copies reply within a few ms of
    each other, so a short settle collects them all without waiting a whole timeout.
    """
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await replies.put(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    bodies: list[bytes] = []
    try:
        await nc.publish(subject, payload, reply=inbox, headers=inject_headers(headers or {}))
        deadline = time.monotonic() + max_wait_s
        wait_s = first_wait_s
        while True:
            left = min(wait_s, deadline - time.monotonic())
            if left <= 0:
                break
            try:
                msg = await asyncio.wait_for(replies.get(), left)
            except TimeoutError:
                break
            if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
                break  # nobody subscribes: no one else will answer either
            if msg.headers and _STATUS in msg.headers and not msg.data:
                continue  # another status message, not an answer
            bodies.append(msg.data)
            wait_s = settle_s
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return bodies
