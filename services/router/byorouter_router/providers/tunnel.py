"""The route to a self-hosted server through its tunnel: a sealed request out, an HTTP answer back.

`TunnelTransport.call` seals the request to the tunnel client's public key (`e2e.open_stream`)
and sends it on `byorouter.tunnel.<id>.http`; the client opens it, calls its model server and
seals the answer back frame by frame. What comes out is a `TunnelResponse` shaped like the
`aiohttp` response the direct route reads (`status`, `headers`, `content.readany()`, `close`),
so the self-hosted provider relays both routes with the same code: one SSE reader, one set of
quirks.

No client connected means no subscriber: NATS answers no-responders at once and `call` raises
`TunnelOffline` before anything was sent upstream, so the router can use the direct URL or fall
back. Cancelling the task that reads the answer tells the client to abort its upstream request.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDict, CIMultiDictProxy
from nats.errors import Error as NatsError

from byorouter_common.bus import CHUNK, DONE, Bus, ReplyStream
from byorouter_common.contracts import tunnel as tn
from byorouter_common.errors import ByoError
from byorouter_tunnel_client import protocol
from byorouter_tunnel_client._json import loads
from byorouter_tunnel_client.protocol import DecryptError

if TYPE_CHECKING:
    from byorouter_tunnel_client.e2e import RouterStream

OFFLINE_CODE: Final = "tunnel_offline"
# Cancels in flight, referenced so the loop does not drop them before they are sent.
_CANCELS: set[asyncio.Future[None]] = set()


class TunnelOffline(ByoError):
    """No client of this tunnel is connected right now."""

    def __init__(self) -> None:
        super().__init__(
            503,
            OFFLINE_CODE,
            "The self-hosted server's tunnel is offline: no tunnel client is connected.",
        )


class _Content:
    """`readany()` over the answer's sealed `data` frames, as the direct route's body reads."""

    __slots__ = ("_response",)

    def __init__(self, response: TunnelResponse) -> None:
        self._response = response

    async def readany(self) -> bytes:
        return await self._response.next_data()

    async def read(self, n: int = -1) -> bytes:
        # One frame, whatever `n`: callers that cap a body (`http.read_at_most`) count what
        # comes back, and a frame is at most one bus message.
        return await self._response.next_data()


class TunnelResponse:
    """The model server's answer as the client sealed it back, frame by frame, in order."""

    def __init__(
        self,
        replies: ReplyStream,
        keys: RouterStream,
        status: int,
        content_type: str,
        cancel: Callable[[], object],
    ) -> None:
        self._replies = replies
        self._keys = keys
        self.status = status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(
            CIMultiDict({"Content-Type": content_type})
        )
        self.content = _Content(self)
        self._ended = False
        self._cancel = cancel

    async def next_data(self) -> bytes:
        """The next piece of the body; b"" once it has ended."""
        while not self._ended:
            kind, sealed = await self._replies.next()
            if kind == CHUNK:
                try:
                    data = self._keys.open(protocol.DATA, sealed)
                except DecryptError:
                    self.close()
                    raise ByoError(
                        502, "upstream_error", "The tunnel client's answer does not open."
                    ) from None
                if data:
                    return data
            elif kind == DONE:
                self._ended = True
                _finish(self._keys, sealed)
        return b""

    def release(self) -> None:
        self._replies.close()

    def close(self) -> None:
        """Stop reading: if the answer had not ended, the client aborts its upstream request."""
        if not self._ended:
            self._ended = True
            self._cancel()
        self._replies.close()


def _finish(keys: RouterStream, sealed: bytes) -> None:
    """The last frame: a clean `end`, or the client's `fail` raised as the error it carries."""
    try:
        keys.open(protocol.END, sealed)
        return
    except DecryptError:
        pass
    try:
        failure = keys.open(protocol.FAIL, sealed)
    except DecryptError:
        raise ByoError(502, "upstream_error", "The tunnel client's answer does not open.") from None
    raise _failure(failure)


def _failure(data: bytes) -> ByoError:
    try:
        error = loads(data)["error"]
        return ByoError(
            int(error.get("status", 502)),
            str(error.get("code", "upstream_error")),
            str(error.get("message", "The tunnel client could not reach the server.")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ByoError(502, "upstream_error", "The tunnel client reported a failure.")


class TunnelTransport:
    """Sends requests through tunnels on the router's bus connection."""

    def __init__(self, bus: Callable[[], Bus]) -> None:
        self._bus = bus

    async def call(
        self,
        tunnel_id: str,
        public_key: str,
        method: str,
        path: str,
        body: bytes,
        *,
        stream: bool,
        upstream_key: str | None,
    ) -> TunnelResponse:
        """Send one request through `tunnel_id`; returns once the answer's head arrived."""
        if not tn.is_tunnel_id(tunnel_id):
            raise ByoError(400, "provider_misconfigured", "The tunnel id is malformed.")
        bus = self._bus()
        stream_id = secrets.token_urlsafe(12)
        pieces = protocol.split(body) if body else []
        head = protocol.RequestHead(method, path, stream, len(pieces), upstream_key)
        # Imported at the first tunnel request: a router whose users have no self-hosted server
        # never loads `cryptography` (7 MiB resident); the first import takes about 15 ms.
        from byorouter_tunnel_client import e2e

        opening, keys = e2e.open_stream(e2e.load_public_key(public_key), stream_id, head.to_bytes())
        frames = [opening, *(keys.seal(protocol.BODY, piece) for piece in pieces)]
        # One payload; the bus sends it in parts when it is larger than one message.
        payload = protocol.pack_parts(frames)
        headers = {tn.HDR_STREAM: stream_id}

        def cancel() -> None:
            payload = tn.TunnelCancel(stream_id=stream_id).model_dump_json().encode()
            task = asyncio.ensure_future(bus.nc.publish(tn.cancel_subject(tunnel_id), payload))
            _CANCELS.add(task)
            task.add_done_callback(_CANCELS.discard)

        try:
            replies = await bus.stream(
                tn.http_subject(tunnel_id), payload, headers=headers, what="tunnel"
            )
        except ByoError as exc:
            raise _offline_or(exc) from None
        try:
            kind, sealed = await replies.next()
        except ByoError as exc:
            replies.close()
            raise _offline_or(exc) from None
        except (NatsError, OSError):
            replies.close()
            raise ByoError(503, "service_unavailable", "The message bus is unavailable.") from None
        except BaseException:
            replies.close()
            cancel()
            raise
        if kind == DONE:
            replies.close()
            _finish(keys, sealed)  # raises the client's failure; an empty answer otherwise
            raise ByoError(502, "upstream_error", "The tunnel client sent no answer.")
        try:
            head_json = loads(keys.open(protocol.HEAD, sealed))
            status, content_type = int(head_json["status"]), str(head_json["content_type"])
        except (DecryptError, ValueError, KeyError, TypeError):
            replies.close()
            cancel()
            raise ByoError(
                502, "upstream_error", "The tunnel client's answer is malformed."
            ) from None
        return TunnelResponse(replies, keys, status, content_type, cancel)


def _offline_or(error: ByoError) -> ByoError:
    """No-responders on a tunnel subject means no client is connected: the tunnel is offline."""
    if error.status == 503 and error.code == "service_unavailable":
        return TunnelOffline()
    return error
