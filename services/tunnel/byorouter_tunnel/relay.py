"""One tunnel client's socket, bridged to the bus: its requests in, its sealed answers out.

A `ClientSocket` exists once the client's `hello` was accepted. While it lives, it is one queue
member of its tunnel's `.http` subject, so NATS hands it requests; each becomes a stream on the
socket, and every `res` frame the client sends goes back to the caller's inbox as one `chunk`
(the last as `done`). The relay never opens a payload: it sees stream ids, sizes and timing.

When the socket drops or the client stops answering pings, every stream in flight gets a
`tunnel_disconnected` error at once: the app's user sees an error event, never a silent end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from byorouter_common.bus import (
    CHUNK,
    DONE,
    KeepAliveTicker,
    StreamWriter,
    parts_of,
    receive_rest,
)
from byorouter_common.contracts import tunnel as tn
from byorouter_common.errors import ByoError
from byorouter_tunnel.metrics import BUSY_REFUSALS
from byorouter_tunnel.tracing import UNTRACED, RelaySpan, relay_span
from byorouter_tunnel_client import protocol
from byorouter_tunnel_client.fingerprints import fingerprint

log = logging.getLogger(__name__)

SendFrame = Callable[[bytes], Awaitable[None]]


def disconnected() -> ByoError:
    return ByoError(502, "tunnel_disconnected", "The tunnel to the self-hosted server dropped.")


def busy(limit: int) -> ByoError:
    return ByoError(
        429,
        "tunnel_busy",
        f"The self-hosted server is already answering {limit} requests; try again shortly.",
        retry_after=1.0,
    )


def draining() -> ByoError:
    return ByoError(
        503,
        "tunnel_draining",
        "The tunnel is moving to another server; try again.",
        retry_after=1.0,
    )


@dataclass
class Stream:
    """One request in flight on a socket: where its answer goes."""

    stream_id: str
    writer: StreamWriter
    span: RelaySpan = UNTRACED


@dataclass(eq=False)  # identity: each socket is its own, and lives in sets
class ClientSocket:
    """One authenticated client: its frames out (bounded queue), its streams, its liveness."""

    tunnel_id: str
    connection_id: str
    app_id: str
    public_key: str
    client_version: str
    models: list[str]
    max_concurrency: int
    nc: NatsClient
    keepalive: KeepAliveTicker
    send_frame: SendFrame
    queue_frames: int
    connected_since: datetime = field(default_factory=lambda: datetime.now(UTC))
    rtt_ms: float | None = None
    last_heard: float = field(default_factory=time.monotonic)
    accepting: bool = True
    streams: dict[str, Stream] = field(default_factory=dict)
    _subs: list[Subscription] = field(default_factory=list)
    _queue: asyncio.Queue[bytes | None] = field(init=False)
    _sender: asyncio.Task[None] | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(self.queue_frames)

    # --- the socket side ---------------------------------------------------------------------

    async def start(self) -> None:
        """Send queued frames, then join the tunnel's queue group: requests may now arrive."""
        self._sender = asyncio.create_task(self._send_loop(), name=f"tunnel-send-{self.tunnel_id}")
        tid = self.tunnel_id
        self._subs = [
            await self.nc.subscribe(tn.http_subject(tid), tn.queue_group(tid), cb=self._on_http),
            await self.nc.subscribe(tn.cancel_subject(tid), cb=self._on_cancel),
            await self.nc.subscribe(tn.status_subject(tid), cb=self._on_status),
        ]

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Queue one frame; waits only when this client is slow (its queue is full)."""
        if not self._closed.is_set():
            await self._queue.put(protocol.encode(header, payload))

    async def _send_loop(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            try:
                await self.send_frame(frame)
            except Exception:  # the socket is gone; the reader notices and closes us
                return

    async def on_res(self, header: dict[str, Any], payload: bytes) -> None:
        """A sealed answer frame from the client: relay it to the caller, in order."""
        stream = self.streams.get(str(header.get("id", "")))
        if stream is None:
            return  # cancelled, or never ours: nothing waits for it
        stream.span.received(payload)
        if header.get("end"):
            del self.streams[stream.stream_id]
            self.keepalive.discard(stream.writer)
            if header.get("error") == "decrypt":
                stream.span.end("tunnel_key_mismatch")
                # The one unsealed answer: the client could not open the request at all.
                await stream.writer.error(
                    ByoError(
                        502,
                        "tunnel_key_mismatch",
                        "The tunnel client could not open the request: its key is not the one "
                        "bound to this tunnel.",
                    )
                )
                return
            stream.span.end("ok")
            await stream.writer.send(DONE, payload)
        else:
            await stream.writer.send(CHUNK, payload)

    async def stop_accepting(self) -> None:
        """Leave the queue group: new requests go to the tunnel's other sockets, or fall back."""
        self.accepting = False
        if self._subs:
            with contextlib.suppress(nats.errors.Error):
                await self._subs[0].unsubscribe()

    async def close(self, error: ByoError | None = None) -> None:
        """Forget the socket: unsubscribe, and fail every stream still in flight."""
        if self._closed.is_set():
            return
        self._closed.set()
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        failure = error or disconnected()
        for stream in list(self.streams.values()):
            self.keepalive.discard(stream.writer)
            stream.span.end(failure.code)
            await stream.writer.error(failure)
        self.streams.clear()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        if self._sender is not None:
            self._sender.cancel()

    async def wait_idle(self, timeout_s: float) -> None:
        """Until no stream is in flight, or `timeout_s` passed (a drain)."""
        deadline = time.monotonic() + timeout_s
        while self.streams and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
            await asyncio.sleep(0.05)

    # --- the bus side ------------------------------------------------------------------------

    async def _on_http(self, msg: Msg) -> None:
        writer = StreamWriter(self.nc, msg.reply)
        headers = msg.headers or {}
        stream_id = headers.get(tn.HDR_STREAM, "")
        if not stream_id or stream_id in self.streams:
            await writer.error(ByoError(400, "bad_request", "Tunnel request without a stream id."))
            return
        if not self.accepting:
            await writer.error(draining())
            return
        if len(self.streams) >= self.max_concurrency:
            BUSY_REFUSALS.inc()
            await writer.error(busy(self.max_concurrency))
            return
        stream = Stream(stream_id, writer, relay_span(msg.headers, self.tunnel_id))
        self.streams[stream_id] = stream
        self.keepalive.add(writer)
        try:
            parts = protocol.unpack_parts(await self._whole(msg, stream_id, writer))
        except (ByoError, protocol.ProtocolError) as exc:
            self.streams.pop(stream_id, None)
            self.keepalive.discard(writer)
            error = exc if isinstance(exc, ByoError) else None
            stream.span.end(error.code if error else "bad_request")
            await writer.error(
                error or ByoError(400, "bad_request", "Tunnel request is malformed.")
            )
            return
        if stream_id not in self.streams:
            return  # cancelled, or the socket went away, while the parts arrived
        stream.span.sent(parts)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            await self.send({"t": "req", "id": stream_id, "last": last}, part)

    async def _whole(self, msg: Msg, stream_id: str, writer: StreamWriter) -> bytes:
        """The request's payload, with the rest of its parts if it came in several."""
        parts = parts_of(msg.headers)
        if parts == 1:
            return msg.data
        if parts < 1:
            raise ByoError(400, "bad_request", "Tunnel request has a malformed Byo-Parts header.")

        return await receive_rest(
            self.nc,
            msg.data,
            parts,
            tn.upload_subject(self.tunnel_id, stream_id),
            writer,
            timeout_s=self.keepalive.interval_s * 2,
        )

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = tn.TunnelCancel.model_validate_json(msg.data)
        except ValueError:
            return
        stream = self.streams.pop(cancel.stream_id, None)
        if stream is not None:
            self.keepalive.discard(stream.writer)
            stream.span.end("cancelled")
            stream.writer.closed = True
            await self.send({"t": "cancel", "id": cancel.stream_id})

    async def _on_status(self, msg: Msg) -> None:
        if not msg.reply:
            return
        status = tn.TunnelClients(
            tunnel_id=self.tunnel_id,
            models=self.models,
            clients=[
                tn.ClientStatus(
                    connected_since=self.connected_since,
                    rtt_ms=self.rtt_ms,
                    client_version=self.client_version,
                    in_flight=len(self.streams),
                    max_concurrency=self.max_concurrency,
                    public_key_fingerprint=fingerprint(self.public_key),
                )
            ],
        )
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(msg.reply, status.model_dump_json().encode())
