"""Relays one router reply stream to the HTTP client: a JSON result or server-sent events.

A raw ASGI response rather than Starlette's `StreamingResponse`: it watches for the client going
away itself (one task, no anyio task group per request), and when that happens before the reply
is complete it publishes the request's cancel subject so the router aborts the upstream call.

Before the router's `start` message nothing has been sent, so a failure there is an ordinary
HTTP error. After it, a streamed reply can only report a failure in-band: a final
`data: {"error": ...}` event and no `[DONE]`, so the client never mistakes it for a full answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from byorouter_common.bus import CHUNK, DONE, KEEPALIVE, RESULT, START, ReplyStream
from byorouter_common.contracts import router
from byorouter_common.contracts.router import StreamStart
from byorouter_common.errors import ByoError
from byorouter_gateway.errors import JSON, error_headers
from byorouter_gateway.metrics import STREAMS_IN_FLIGHT

log = logging.getLogger(__name__)

DONE_EVENT: Final = b"data: [DONE]\n\n"
# An SSE comment: clients ignore it, proxies with idle timeouts see the stream is alive.
KEEPALIVE_COMMENT: Final = b": keep-alive\n\n"
_SSE_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Reverse proxies (nginx) must pass each event on at once, not buffer the stream.
    (b"x-accel-buffering", b"no"),
)
_PROVIDER: Final = b"x-byorouter-provider"
_ATTEMPTS: Final = b"x-byorouter-attempts"


def sse_events(lines: bytes) -> bytes:
    """`data: <line>\\n\\n` for every JSON line of one chunk message, as one bytes object."""
    lines = lines.strip(b"\n")
    if b"\n\n" in lines:
        lines = b"\n".join(line for line in lines.split(b"\n") if line)
    if not lines:
        return b""
    return b"data: " + lines.replace(b"\n", b"\n\ndata: ") + b"\n\n"


def named_sse_events(lines: bytes) -> bytes:
    """`event: <type>\\ndata: <line>\\n\\n` for every JSON line: a Responses API stream, whose
    clients dispatch on the event name, which each event also carries as its `type`."""
    out: list[bytes] = []
    for line in lines.split(b"\n"):
        if not line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        kind = event.get("type") if type(event) is dict else None
        name = kind.encode() if type(kind) is str and kind.isprintable() else b"message"
        out.append(b"event: " + name + b"\ndata: " + line + b"\n\n")
    return b"".join(out)


def _unexpected(kind: str) -> ByoError:
    log.warning("router sent %r where the protocol does not allow it", kind)
    return ByoError(502, "bad_router_reply", "The router sent a reply the gateway cannot use.")


def _start_headers(start: bytes) -> list[tuple[bytes, bytes]]:
    try:
        info = StreamStart.model_validate_json(start)
    except ValidationError:
        return []
    return [(_PROVIDER, info.provider.encode()), (_ATTEMPTS, str(info.attempts).encode())]


class ChatRelay(Response):
    """The ASGI response for one chat completion whose request is already on the bus."""

    def __init__(
        self,
        stream: ReplyStream,
        nc: NatsClient,
        request_id: str,
        *,
        streaming: bool,
        named_events: bool = False,
    ) -> None:
        self._stream = stream
        self._nc = nc
        self._request_id = request_id
        self._streaming = streaming
        # A Responses stream: `event:` lines, no `[DONE]`, an error as `event: error`.
        self._named_events = named_events
        # The router has said its last word: nothing upstream is left to cancel.
        self._complete = False
        # The last body message is on its way: a disconnect from now on is just the end.
        self._responded = False
        self._client_gone = False
        self.background = None
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        watcher = asyncio.get_running_loop().create_task(self._watch_client(receive, relay))
        STREAMS_IN_FLIGHT.inc()
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            if not self._client_gone:
                raise  # the server is shutting down: let it
            # We cancelled ourselves because the client left; that is a normal end.
            relay.uncancel()
        finally:
            STREAMS_IN_FLIGHT.dec()
            watcher.cancel()
            self._stream.close()
            if not self._complete:
                await self._cancel_upstream()

    async def _watch_client(self, receive: Receive, relay: asyncio.Task[object]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not self._responded:
            self._client_gone = True
            relay.cancel()

    async def _cancel_upstream(self) -> None:
        try:
            await self._nc.publish(router.cancel_subject(self._request_id), b"")
        except (nats.errors.Error, OSError):
            log.debug("could not publish cancel", extra={"request_id": self._request_id})

    async def _relay(self, send: Send) -> None:
        stream = self._stream
        try:
            kind, data = await stream.next()
            if kind != START:
                raise _unexpected(kind)
            headers = _start_headers(data)
            if not self._streaming:
                kind, data = await stream.next()
                if kind != RESULT:
                    raise _unexpected(kind)
        except ByoError as error:
            await self._send_error_response(send, error)
            return

        if not self._streaming:
            self._complete = True
            headers += ((b"content-type", JSON), (b"content-length", str(len(data)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self._responded = True
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return

        headers.extend(_SSE_HEADERS)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        stream.pass_keepalives = True
        while True:
            try:
                kind, data = await stream.next()
            except ByoError as error:
                # In-band, and without [DONE]: the answer is incomplete and the client must see so.
                await self._finish(send, self._error_event(error))
                return
            if kind == CHUNK:
                events = named_sse_events(data) if self._named_events else sse_events(data)
                if events:
                    await send({"type": "http.response.body", "body": events, "more_body": True})
            elif kind == KEEPALIVE:
                await send(
                    {"type": "http.response.body", "body": KEEPALIVE_COMMENT, "more_body": True}
                )
            elif kind == DONE:
                self._complete = True
                await self._finish(send, b"" if self._named_events else DONE_EVENT)
                return
            else:
                await self._finish(send, self._error_event(_unexpected(kind)))
                return

    def _error_event(self, error: ByoError) -> bytes:
        name = b"event: error\n" if self._named_events else b""
        return name + b"data: " + error.to_json() + b"\n\n"

    async def _finish(self, send: Send, last: bytes) -> None:
        self._responded = True
        await send({"type": "http.response.body", "body": last, "more_body": False})

    async def _send_error_response(self, send: Send, error: ByoError) -> None:
        # `_complete` stays False: after a timeout the router may still be working, and a
        # needless cancel costs one publish.
        body = error.to_json()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": error_headers(error, len(body)),
            }
        )
        self._responded = True
        await send({"type": "http.response.body", "body": body, "more_body": False})
