"""Streamed replies: the caller's `ReplyStream` and shared `StreamMux`, the responder's
`StreamWriter`, and the `KeepAliveTicker` that keeps quiet streams alive.

Protocol (ARCHITECTURE.md, "Streaming replies"):
  start -> chunk* -> done | error     each with Byo-Seq 0,1,2,...; keepalive may appear anywhere;
  result                              the single reply of a non-streamed chat request.
A gap in Byo-Seq or silence longer than the idle timeout is an error for the caller. A message
larger than the bus carries goes as several pieces of the same kind, every one but the last
marked `Byo-More`; the caller sees the one message they make up, never a cut.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_common import errors
from byorouter_common.bus.failures import bus_error
from byorouter_common.bus.uploads import HDR_PART, HDR_PARTS, MORE, split_request
from byorouter_common.contracts import HDR_KIND, HDR_MORE, HDR_SEQ
from byorouter_common.errors import ByoError
from byorouter_common.telemetry import inject_headers

START: Final = "start"
CHUNK: Final = "chunk"
DONE: Final = "done"
ERROR: Final = "error"
KEEPALIVE: Final = "keepalive"
RESULT: Final = "result"
TERMINAL: Final = frozenset((DONE, ERROR, RESULT))
# Room left in a bus message for its subject and headers when a reply is split into pieces.
_HEADROOM = 4096
_STATUS_HEADER = "Status"
_NO_RESPONDERS = "503"


class ReplyStream:
    """The caller's end of one streamed reply: `await next()` gives (kind, data) in order."""

    __slots__ = (
        "_due",
        "_expected",
        "_expired",
        "_idle",
        "_inbox",
        "_mux",
        "_pieces",
        "_pieces_kind",
        "_queue",
        "_rest",
        "_timer",
        "_waiter",
        "_what",
        "finished",
        "pass_keepalives",
    )

    def __init__(
        self,
        mux: StreamMux,
        inbox: str,
        queue: asyncio.Queue[Msg],
        idle: float,
        what: str,
        rest: list[bytes] | None = None,
    ) -> None:
        self._mux = mux
        # The parts of a large request still to send, once the responder asks (`uploads`).
        self._rest = rest or []
        self._inbox = inbox
        self._queue = queue
        self._idle = idle
        self._expected = 0
        self._what = what
        self._pieces: list[bytes] = []
        self._pieces_kind = ""
        self.finished = False
        # A caller relaying to a client that needs its own keep-alives (SSE) turns this on.
        self.pass_keepalives = False
        # The idle limit: one timer per stream, moved on lazily (as the router's StreamPace).
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task[Any] | None = None
        self._expired = False

    async def next(self) -> tuple[str, bytes]:
        """The next start/chunk/done/result (or keepalive, if passed) message.

        An error message raises its `ByoError`.
        """
        while True:
            try:
                msg = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                msg = await self._wait()
            headers = msg.headers or {}
            if headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
                self.finished = True
                raise errors.unavailable(f"No {self._what} service is running.")
            seq = headers.get(HDR_SEQ)
            if seq != str(self._expected):
                self.finished = True
                raise ByoError(
                    502, "stream_gap", f"Reply stream from the {self._what} lost a message."
                )
            self._expected += 1
            kind = headers.get(HDR_KIND, "")
            if kind == KEEPALIVE:
                if self.pass_keepalives:
                    return kind, b""
                continue
            data = msg.data
            if kind == MORE and self._rest:
                await self._send_rest(data.decode())
                continue
            if self._pieces and kind != self._pieces_kind:
                # A message began in pieces and another one came before its last piece.
                self.finished = True
                raise ByoError(
                    502, "stream_gap", f"Reply stream from the {self._what} lost a message."
                )
            if HDR_MORE in headers:
                self._pieces.append(data)
                self._pieces_kind = kind
                continue
            if self._pieces:
                self._pieces.append(data)
                data = b"".join(self._pieces)
                self._pieces = []
            if kind == ERROR:
                self.finished = True
                self._stop_timer()
                raise ByoError.from_json(data)
            if kind in TERMINAL:
                self.finished = True
                self._stop_timer()
            return kind, data

    async def _wait(self) -> Msg:
        """The next message, waiting at most the idle limit for it.

        Not `wait_for` (a task per wait) nor an `asyncio.timeout` per wait (a timer set and
        cancelled for every message not there yet): one timer per stream, which, when it fires
        before the limit (moved on by every wait since), sets itself for the new one. Only a
        wait still going past the limit is cancelled, and becomes the timeout; a cancel from
        outside stays a cancel.
        """
        loop = asyncio.get_running_loop()
        self._due = due = loop.time() + self._idle
        if self._timer is None:
            # The limit is the same for every wait, so a timer already set is due no later.
            self._timer = loop.call_at(due, self._check)
        waiter = self._waiter = asyncio.current_task()
        try:
            return await self._queue.get()
        except asyncio.CancelledError:
            if self._expired and waiter is not None:
                self._expired = False
                if waiter.uncancel() == 0:
                    self.finished = True
                    raise errors.timeout(
                        f"The {self._what} sent nothing for {self._idle:g}s."
                    ) from None
            raise
        finally:
            self._waiter = None

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:
            self._timer = loop.call_at(self._due, self._check)
            return
        self._timer = None
        if self._waiter is not None:
            self._expired = True
            self._waiter.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _send_rest(self, subject: str) -> None:
        rest, self._rest = self._rest, []
        try:
            for place, part in enumerate(rest, 1):
                await self._mux.nc.publish(subject, part, headers={HDR_PART: str(place)})
        except (nats.errors.Error, OSError) as exc:
            self.finished = True
            raise bus_error(exc, self._what, self._idle) from None

    def close(self) -> None:
        self._stop_timer()
        self._mux.forget(self._inbox)


class StreamMux:
    """One wildcard inbox subscription per process, dispatching replies to per-request queues."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Any = None
        self._counter = 0

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._dispatch)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _dispatch(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject)
        if queue is not None:
            queue.put_nowait(msg)

    async def open(
        self, subject: str, data: bytes, headers: dict[str, str], idle: float, what: str
    ) -> ReplyStream:
        self._counter += 1
        inbox = f"{self._prefix}{self._counter}"
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[inbox] = queue
        parts = split_request(data, self.nc.max_payload)
        if len(parts) > 1:
            headers = {**headers, HDR_PARTS: str(len(parts))}
        try:
            await self.nc.publish(subject, parts[0], reply=inbox, headers=inject_headers(headers))
        except (nats.errors.Error, OSError) as exc:
            self._waiting.pop(inbox, None)
            raise bus_error(exc, what, idle) from None
        return ReplyStream(self, inbox, queue, idle, what, parts[1:])

    def forget(self, inbox: str) -> None:
        self._waiting.pop(inbox, None)


class StreamWriter:
    """The responder's end of one streamed reply; numbers every message it sends."""

    __slots__ = ("_nc", "_reply", "_seq", "closed", "last_sent")

    def __init__(self, nc: NatsClient, reply: str) -> None:
        self._nc = nc
        self._reply = reply
        self._seq = 0
        self.closed = False
        self.last_sent = time.monotonic()

    async def send(self, kind: str, data: bytes = b"") -> None:
        if self.closed:
            return
        limit = self._nc.max_payload - _HEADROOM
        while len(data) > limit:
            if not await self._publish(kind, data[:limit], more=True):
                return
            data = data[limit:]
        if kind in TERMINAL:
            self.closed = True
        await self._publish(kind, data)

    async def _publish(self, kind: str, data: bytes, *, more: bool = False) -> bool:
        headers = {HDR_KIND: kind, HDR_SEQ: str(self._seq)}
        if more:
            headers[HDR_MORE] = "1"
        self._seq += 1
        self.last_sent = time.monotonic()
        try:
            await self._nc.publish(self._reply, data, headers=headers)
        except (nats.errors.Error, OSError):
            # The caller is gone or the bus is down; nothing left to tell anyone.
            self.closed = True
            return False
        return True

    async def error(self, error: ByoError) -> None:
        await self.send(ERROR, error.to_json())

    async def keepalive(self) -> None:
        await self.send(KEEPALIVE)


class KeepAliveTicker:
    """One task per process that sends keep-alives on every stream that has been quiet."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._writers: set[StreamWriter] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, writer: StreamWriter) -> None:
        self._writers.add(writer)

    def discard(self, writer: StreamWriter) -> None:
        self._writers.discard(writer)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keepalive-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s / 2)
            now = time.monotonic()
            for writer in list(self._writers):
                if writer.closed:
                    self._writers.discard(writer)
                elif now - writer.last_sent >= self.interval_s:
                    await writer.keepalive()
