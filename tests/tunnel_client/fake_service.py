"""A stand-in for the tunnel service's socket end, scripted per test: it records each `hello`,
answers it with what `reply_to_hello` returns, and lets the test send and read frames.

The real service's tests (against this client) live with the service; this fake only speaks
the frames the client's session logic needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from byorouter_tunnel_client import protocol

Frame = tuple[dict[str, Any], bytes]


class FakeTunnelService:
    def __init__(self) -> None:
        self.hellos: list[dict[str, Any]] = []
        self.user_agents: list[str | None] = []
        self.sockets: list[ServerConnection] = []
        # Frames from the client after its hello, per socket (index into `sockets`).
        self.received: list[asyncio.Queue[Frame]] = []
        self.heartbeat_s = 30.0
        self.session_ttl_s = 600.0
        self.answer_refresh = True
        self.reply_to_hello: Callable[[dict[str, Any]], dict[str, Any]] = self.welcome
        self.connected = asyncio.Condition()
        self._server: Server | None = None

    def welcome(self, hello: dict[str, Any]) -> dict[str, Any]:
        return {
            "t": "welcome",
            "tunnel_id": "tun_test1234",
            "session": "sess_" + secrets.token_hex(8),
            "session_ttl_s": self.session_ttl_s,
            "heartbeat_s": self.heartbeat_s,
            "max_frame": 1024 * 1024,
        }

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/tunnel"

    async def start(self) -> None:
        self._server = await serve(self.handle, "127.0.0.1", 0, compression=None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def send(self, socket: int, header: dict[str, Any], payload: bytes = b"") -> None:
        await self.sockets[socket].send(protocol.encode(header, payload))

    async def next_frame(self, socket: int, timeout_s: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout_s):
            return await self.received[socket].get()

    async def wait_for_hellos(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self.connected:
            await self.connected.wait_for(lambda: len(self.hellos) >= count)

    async def handle(self, ws: ServerConnection) -> None:
        raw = await ws.recv()
        assert isinstance(raw, bytes)
        hello, _ = protocol.decode(raw)
        assert ws.request is not None
        reply = self.reply_to_hello(hello)
        index = len(self.sockets)
        self.sockets.append(ws)
        self.received.append(asyncio.Queue())
        async with self.connected:
            self.hellos.append(hello)
            self.user_agents.append(ws.request.headers.get("User-Agent"))
            self.connected.notify_all()
        await ws.send(protocol.encode(reply))
        if reply["t"] != "welcome":
            await ws.close()
            return
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                assert isinstance(message, bytes)
                header, payload = protocol.decode(message)
                if header["t"] == "refresh" and self.answer_refresh:
                    await ws.send(
                        protocol.encode(
                            {
                                "t": "session",
                                "session": "sess_" + secrets.token_hex(8),
                                "session_ttl_s": self.session_ttl_s,
                            }
                        )
                    )
                self.received[index].put_nowait((header, payload))
