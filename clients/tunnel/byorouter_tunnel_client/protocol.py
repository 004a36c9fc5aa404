"""The tunnel wire protocol: frames on the client's WebSocket, and the sealed request layout.

Every WebSocket message is one binary frame::

    u16 header length (big-endian) | header: a JSON object, "t" names the type | payload bytes

The header is routing metadata the tunnel service reads; the payload of `req` and `res` frames is
ciphertext only the router and the client can open (see `e2e`). Frame types:

client -> service
    hello    {token | session, version, public_key, models, max_concurrency}   first frame
    pong     {ts}                        answers a ping (the service measures round-trip time)
    models   {models}                    the upstream's model list changed
    res      {id, end}                   one sealed response frame of stream `id`; `end` on the last
    refresh  {}                          asks for a new session token before the current expires
service -> client
    welcome  {tunnel_id, session, session_ttl_s, heartbeat_s, max_frame}
    refused  {code, message, final}      then the socket closes; `final` means do not retry
    ping     {ts}                        every heartbeat; three unanswered and the peer is dead
    req      {id, last}                  one sealed request frame of stream `id`
    cancel   {id}                        the app's client went away: abort the upstream request
    session  {session, session_ttl_s}    a refreshed session token
    drain    {reconnect_after_ms}        this service copy is stopping: reconnect, finish streams

Inside a stream (sealed, in order): the request is the HPKE opening (a JSON `RequestHead`) then
`body` frames; the response is `head` (JSON status and content type), `data` frames (the
upstream's bytes as they arrived), then `end`, or `fail` (an error envelope) instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from byorouter_tunnel_client import _json


class DecryptError(Exception):
    """A frame that does not open: tampered, replayed, reordered, or for another key.

    Defined here, not in `e2e` (which re-exports it), so the router can catch it without
    loading `cryptography` before its first tunnel request."""


VERSION = 1
# A frame's payload stays far below both the WebSocket and the NATS message limits.
MAX_FRAME_PAYLOAD = 256 * 1024
MAX_HEADER = 16 * 1024

# Request paths a client forwards: only what an OpenAI-compatible model server needs.
ALLOWED_PATHS = frozenset(
    ("/chat/completions", "/completions", "/embeddings", "/responses", "/models")
)

# Sealed frame kinds (part of each frame's associated data, so a relabelled frame fails).
OPEN = "open"
BODY = "body"
HEAD = "head"
DATA = "data"
END = "end"
FAIL = "fail"


class ProtocolError(Exception):
    """A frame that is not well formed."""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = _json.dumps(header)
    if len(head) > MAX_HEADER:
        raise ProtocolError("frame header too large")
    return struct.pack(">H", len(head)) + head + payload


def decode(frame: bytes) -> tuple[dict[str, Any], bytes]:
    if len(frame) < 2:
        raise ProtocolError("frame too short")
    (size,) = struct.unpack_from(">H", frame)
    if size > MAX_HEADER or len(frame) < 2 + size:
        raise ProtocolError("frame header length is wrong")
    try:
        header = _json.loads(frame[2 : 2 + size])
    except ValueError:
        raise ProtocolError("frame header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header has no type")
    return header, frame[2 + size :]


def pack_parts(parts: list[bytes]) -> bytes:
    """Several sealed frames in one message: each `u32 length | bytes`."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def unpack_parts(data: bytes) -> list[bytes]:
    parts: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise ProtocolError("truncated part length")
        (size,) = struct.unpack_from(">I", data, at)
        at += 4
        if at + size > len(data):
            raise ProtocolError("truncated part")
        parts.append(data[at : at + size])
        at += size
    return parts


@dataclass(frozen=True)
class RequestHead:
    """What the router asks the client's upstream, sealed in the stream's opening."""

    method: str
    path: str
    stream: bool
    body_frames: int
    # The model server's own key, from the connection's encrypted credential; a key the
    # client has locally wins over it.
    upstream_key: str | None = None

    def to_bytes(self) -> bytes:
        return _json.dumps(self.__dict__)

    @classmethod
    def from_bytes(cls, data: bytes) -> RequestHead:
        try:
            raw = _json.loads(data)
            return cls(
                method=str(raw["method"]),
                path=str(raw["path"]),
                stream=bool(raw["stream"]),
                body_frames=int(raw["body_frames"]),
                upstream_key=raw.get("upstream_key"),
            )
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("request head is malformed") from None


def split(data: bytes, size: int = MAX_FRAME_PAYLOAD) -> list[bytes]:
    """`data` in pieces of at most `size` bytes (one empty piece for empty data)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
