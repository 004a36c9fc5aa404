"""Requests larger than one bus message: the first part goes to the subject, the rest to a
subject the responder names.

A request on a queue-group subject must reach one responder whole, so its later parts cannot
simply follow it there (the queue would spread them). The caller sends the first part with
`Byo-Parts: N`; the responder that took it subscribes a subject of its own and answers `more`
with that subject as the body; the caller sends the other N-1 parts there, in order, each
with `Byo-Part: i` (1 .. N-1), so a part out of place or twice is refused rather than joined into
a wrong request. Requests that fit one message (nearly all) cost nothing: one header lookup on
the responder's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Protocol

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_common.errors import ByoError

HDR_PARTS = "Byo-Parts"
# The place of each later part (1 .. N-1); a sender without it (an older copy) is taken in order.
HDR_PART = "Byo-Part"
# The reply kind that asks for the rest of a request sent in parts; its body is the subject.
MORE = "more"
# Room left in a bus message for its subject and headers.
HEADROOM = 4096


class ReplyWriter(Protocol):
    """Where the responder answers: the request's `StreamWriter`."""

    async def send(self, kind: str, data: bytes = b"") -> None: ...


def split_request(data: bytes, max_payload: int) -> list[bytes]:
    """`data` in parts that each fit one bus message (one part when it already fits)."""
    limit = max_payload - HEADROOM
    if len(data) <= limit:
        return [data]
    return [data[i : i + limit] for i in range(0, len(data), limit)]


def parts_of(headers: Mapping[str, str] | None) -> int:
    """How many parts the request carrying `headers` has (1 for a request that fits)."""
    if not headers or HDR_PARTS not in headers:
        return 1
    try:
        parts = int(headers[HDR_PARTS])
    except ValueError:
        return 0
    return parts if 1 <= parts <= 1024 else 0


async def receive_rest(
    nc: NatsClient,
    first: bytes,
    parts: int,
    upload_subject: str,
    writer: ReplyWriter,
    *,
    timeout_s: float,
) -> bytes:
    """The whole request whose first of `parts` parts is `first`: asks for the rest on
    `upload_subject` (a `more` reply on `writer`) and joins what arrives there.

    Raises a 400 `ByoError` when the parts do not all arrive within `timeout_s` each.
    """
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_part(msg: Msg) -> None:
        received.put_nowait(msg)

    sub = await nc.subscribe(upload_subject, cb=on_part)
    pieces = [first]
    try:
        await writer.send(MORE, upload_subject.encode())
        for place in range(1, parts):
            msg = await asyncio.wait_for(received.get(), timeout_s)
            named = (msg.headers or {}).get(HDR_PART)
            if named is not None and named != str(place):
                raise ByoError(400, "bad_request", "The request arrived out of order.")
            pieces.append(msg.data)
    except TimeoutError:
        raise ByoError(400, "bad_request", "The request arrived incomplete.") from None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return b"".join(pieces)
