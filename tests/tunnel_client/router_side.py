"""The router's end of a tunnel stream, for tests: seal a request, open the client's answer.

`Wire` is the `send` a `Streams` writes to: it keeps every frame, so a test reads the sealed
answer back exactly as the tunnel service would relay it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from byorouter_tunnel_client import _json, e2e, protocol
from byorouter_tunnel_client.protocol import RequestHead


class Wire:
    """Frames the client sent, in order."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[dict[str, Any], bytes]] = asyncio.Queue()

    async def send(self, frame: bytes) -> None:
        self.frames.put_nowait(protocol.decode(frame))

    async def next(self, timeout_s: float = 5.0) -> tuple[dict[str, Any], bytes]:
        async with asyncio.timeout(timeout_s):
            return await self.frames.get()


def request_frames(
    public_key: X25519PublicKey,
    stream_id: str,
    body: bytes,
    *,
    path: str = "/chat/completions",
    method: str = "POST",
    stream: bool = True,
    upstream_key: str | None = None,
    piece: int = protocol.MAX_FRAME_PAYLOAD,
) -> tuple[list[tuple[dict[str, Any], bytes]], e2e.RouterStream]:
    """The `req` frames of one request (opening, then the body in pieces) and the router's keys."""
    pieces = protocol.split(body, piece) if body else []
    head = RequestHead(method, path, stream, len(pieces), upstream_key)
    opening, keys = e2e.open_stream(public_key, stream_id, head.to_bytes())
    payloads = [opening] + [keys.seal(protocol.BODY, p) for p in pieces]
    frames = [
        ({"t": "req", "id": stream_id, "last": i == len(payloads) - 1}, payload)
        for i, payload in enumerate(payloads)
    ]
    return frames, keys


@dataclass
class Answer:
    """A stream's answer as the router opens it."""

    status: int | None = None
    content_type: str | None = None
    data: list[bytes] = field(default_factory=list)
    ended: bool = False
    error: dict[str, Any] | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


async def read_answer(wire: Wire, keys: e2e.RouterStream, timeout_s: float = 5.0) -> Answer:
    """Open `res` frames of `keys`' stream until its `end` frame."""
    answer = Answer()
    while True:
        header, payload = await wire.next(timeout_s)
        assert header["t"] == "res"
        assert header["id"] == keys.stream_id
        if answer.status is None and answer.error is None:
            try:
                meta = _json.loads(keys.open(protocol.HEAD, payload))
                answer.status, answer.content_type = meta["status"], meta["content_type"]
                assert header["end"] is False
                continue
            except e2e.DecryptError:
                pass
            answer.error = _json.loads(keys.open(protocol.FAIL, payload))["error"]
            assert header["end"] is True
            return answer
        if header["end"]:
            try:
                assert keys.open(protocol.END, payload) == b"{}"
                answer.ended = True
            except e2e.DecryptError:
                answer.error = _json.loads(keys.open(protocol.FAIL, payload))["error"]
            return answer
        answer.data.append(keys.open(protocol.DATA, payload))
