"""The request streams multiplexed over one socket: open each sealed request, forward it, and
seal the answer back frame by frame.

Callable without a socket: `Streams` gets a `send` coroutine for whole frames, so a test can
play the router (seal with `e2e.open_stream`, feed `on_request`, open what `send` received).
Each stream's response frames are sealed and sent by one task, in order, because the nonces are
sequence numbers; different streams interleave freely.

A `cancel` ends the stream's task, which closes the upstream response (the model server stops
generating) and sends nothing more for it: the router has already stopped listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from byorouter_tunnel_client import _json, e2e, protocol
from byorouter_tunnel_client.protocol import RequestHead
from byorouter_tunnel_client.upstream import ForwardError, Upstream, check_request, unreachable

Send = Callable[[bytes], Awaitable[None]]
_log = logging.getLogger(__name__)


class StreamLimit:
    """How many streams may forward at once, shared by every socket of one client (during a
    drain the old and the new socket both carry streams)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


@dataclass
class _Incoming:
    """A stream whose request is still arriving."""

    keys: e2e.ClientStream
    head: RequestHead | None
    body: list[bytes] = field(default_factory=list)
    # A `fail` went back already: the rest of the request is read and dropped.
    rejected: bool = False
    holds_slot: bool = False


def bad_request(message: str) -> ForwardError:
    return ForwardError(400, "bad_request", message)


class Streams:
    """One socket's streams. `on_request` and `on_cancel` take the frames' headers and payloads."""

    def __init__(
        self,
        private_key: X25519PrivateKey,
        upstream: Upstream,
        send: Send,
        limit: StreamLimit,
    ) -> None:
        self._private_key = private_key
        self._upstream = upstream
        self._send = send
        self._limit = limit
        # Pieces of upstream bytes per `data` frame; the session lowers it to the service's
        # `max_frame` if that is smaller.
        self.frame_payload = protocol.MAX_FRAME_PAYLOAD
        self._incoming: dict[str, _Incoming] = {}
        # Streams whose remaining request frames are dropped until their `last` one: the
        # opening did not open (no keys), or the router cancelled while the body was arriving.
        self._discarding: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._incoming) + len(self._tasks)

    async def wait_idle(self) -> None:
        """Until no stream is being received or answered."""
        while self.in_flight:
            self._idle.clear()
            await self._idle.wait()

    # --- frames from the service ---------------------------------------------------------

    async def on_request(self, header: dict[str, Any], payload: bytes) -> None:
        stream_id = header.get("id")
        if not isinstance(stream_id, str) or not stream_id:
            _log.warning("dropped a req frame without a stream id")
            return
        last = header.get("last") is True
        if stream_id in self._tasks:
            _log.warning("dropped a req frame for stream %s, whose request was complete", stream_id)
            return
        if stream_id in self._discarding:
            if last:
                self._discarding.discard(stream_id)
            return
        incoming = self._incoming.get(stream_id)
        if incoming is None:
            await self._open(stream_id, payload, last)
        else:
            await self._add_body(stream_id, incoming, payload, last)
        self._note_idle()

    def on_cancel(self, header: dict[str, Any]) -> None:
        stream_id = header.get("id")
        if not isinstance(stream_id, str):
            return
        incoming = self._incoming.pop(stream_id, None)
        if incoming is not None:
            self._discarding.add(stream_id)
            if incoming.holds_slot:
                self._limit.release()
        task = self._tasks.get(stream_id)
        if task is not None:
            _log.info("stream %s cancelled by the router; closing its upstream request", stream_id)
            task.cancel()
        self._note_idle()

    async def close(self) -> None:
        """Abort every stream (the socket is gone, nobody reads their answers)."""
        for incoming in self._incoming.values():
            if incoming.holds_slot:
                self._limit.release()
        self._incoming.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._note_idle()

    # --- the request arriving ----------------------------------------------------------

    async def _open(self, stream_id: str, payload: bytes, last: bool) -> None:
        try:
            head_bytes, keys = e2e.accept_stream(self._private_key, stream_id, payload)
        except e2e.DecryptError:
            # Without the stream's keys nothing can be sealed; an unsealed `end` with an error
            # name tells the service (and so the router, which cannot open it) that it failed.
            _log.warning("stream %s: the opening does not open with this client's key", stream_id)
            if not last:
                self._discarding.add(stream_id)
            await self._send(
                protocol.encode({"t": "res", "id": stream_id, "end": True, "error": "decrypt"})
            )
            return
        incoming = _Incoming(keys=keys, head=None)
        try:
            head = RequestHead.from_bytes(head_bytes)
            incoming.head = head
            check_request(head)
            if not self._limit.try_acquire():
                raise ForwardError(
                    429, "tunnel_busy", f"this tunnel already runs {self._limit.limit} requests"
                )
            incoming.holds_slot = True
        except protocol.ProtocolError:
            await self._reject(
                stream_id, incoming, bad_request("the request head is malformed"), last
            )
            return
        except ForwardError as exc:
            await self._reject(stream_id, incoming, exc, last)
            return
        _log.info("stream %s: %s %s", stream_id, head.method, head.path)
        self._incoming[stream_id] = incoming
        await self._add_body(stream_id, incoming, None, last)

    async def _add_body(
        self, stream_id: str, incoming: _Incoming, payload: bytes | None, last: bool
    ) -> None:
        if incoming.rejected:
            if last:
                self._incoming.pop(stream_id, None)
            return
        assert incoming.head is not None
        expected = incoming.head.body_frames
        try:
            if payload is not None:
                incoming.body.append(incoming.keys.open(protocol.BODY, payload))
            if len(incoming.body) > expected or (last and len(incoming.body) != expected):
                raise bad_request(
                    f"the request has {len(incoming.body)} body frames, its head said {expected}"
                )
        except e2e.DecryptError:
            await self._reject(stream_id, incoming, bad_request("a body frame does not open"), last)
            return
        except ForwardError as exc:
            await self._reject(stream_id, incoming, exc, last)
            return
        if last:
            del self._incoming[stream_id]
            body = b"".join(incoming.body)
            task = asyncio.create_task(
                self._answer(stream_id, incoming.keys, incoming.head, body),
                name=f"tunnel-stream-{stream_id}",
            )
            self._tasks[stream_id] = task
            task.add_done_callback(lambda _: self._finished(stream_id))

    async def _reject(
        self, stream_id: str, incoming: _Incoming, error: ForwardError, last: bool
    ) -> None:
        _log.warning("stream %s refused: %s (%s)", stream_id, error.code, error.message)
        if incoming.holds_slot:
            self._limit.release()
            incoming.holds_slot = False
        incoming.rejected = True
        if last:
            self._incoming.pop(stream_id, None)
        else:
            self._incoming[stream_id] = incoming
        await self._seal_and_send(stream_id, incoming.keys, protocol.FAIL, error.envelope(), True)

    def _finished(self, stream_id: str) -> None:
        self._tasks.pop(stream_id, None)
        self._limit.release()
        self._note_idle()

    def _note_idle(self) -> None:
        if not self.in_flight:
            self._idle.set()

    # --- the answer going back --------------------------------------------------------

    async def _seal_and_send(
        self, stream_id: str, keys: e2e.ClientStream, kind: str, data: bytes, end: bool
    ) -> None:
        frame = protocol.encode({"t": "res", "id": stream_id, "end": end}, keys.seal(kind, data))
        await self._send(frame)

    async def _answer(
        self, stream_id: str, keys: e2e.ClientStream, head: RequestHead, body: bytes
    ) -> None:
        """Forward one request and stream its answer back: `head`, `data`*, `end`; or `fail`."""
        sent_head = False
        try:
            async with self._upstream.open(head, body) as response:
                meta = {"status": response.status, "content_type": response.content_type}
                await self._seal_and_send(stream_id, keys, protocol.HEAD, _json.dumps(meta), False)
                sent_head = True
                async for piece in response.pieces():
                    for part in protocol.split(piece, self.frame_payload):
                        await self._seal_and_send(stream_id, keys, protocol.DATA, part, False)
            await self._seal_and_send(stream_id, keys, protocol.END, b"{}", True)
            _log.info("stream %s: answered %d", stream_id, response.status)
        except ForwardError as exc:
            _log.warning("stream %s failed: %s (%s)", stream_id, exc.code, exc.message)
            await self._try_fail(stream_id, keys, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Most likely the socket went away mid-answer; then this FAIL cannot go either.
            _log.warning(
                "stream %s ended early (%s, head sent: %s)",
                stream_id,
                type(exc).__name__,
                sent_head,
            )
            await self._try_fail(stream_id, keys, unreachable("the tunnel client failed"))

    async def _try_fail(self, stream_id: str, keys: e2e.ClientStream, error: ForwardError) -> None:
        with contextlib.suppress(Exception):
            await self._seal_and_send(stream_id, keys, protocol.FAIL, error.envelope(), True)
