"""One WebSocket session with the tunnel service: hello, welcome, then frames until it ends.

The session answers pings, refreshes its session token in-band (so rotation never drops the
socket), hands request frames to its `Streams`, and counts the service dead after three
heartbeats of silence. A `drain` marks it draining: the client dials a new session while this
one finishes its streams, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from byorouter_tunnel_client import __version__, protocol
from byorouter_tunnel_client.config import TunnelConfig, is_loopback_host
from byorouter_tunnel_client.credentials import Credentials
from byorouter_tunnel_client.streams import StreamLimit, Streams
from byorouter_tunnel_client.upstream import USER_AGENT, Upstream

# Incoming frames: a request body frame is at most MAX_FRAME_PAYLOAD plus its header.
MAX_MESSAGE = 2 * 2**20
# Room for a `res` frame's header and the AEAD tag when a `data` piece is sized to `max_frame`.
_FRAME_OVERHEAD = 1024
_log = logging.getLogger(__name__)


class Refused(Exception):
    """The service said no (`refused`); `final` means retrying cannot help."""

    def __init__(self, code: str, message: str, final: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.final = final


class ServiceSilent(Exception):
    """No frame for three heartbeats: the service or the path to it is gone."""


@dataclass(frozen=True)
class Welcome:
    tunnel_id: str
    session_ttl_s: float
    heartbeat_s: float
    max_frame: int | None


def _welcome(header: dict[str, Any]) -> tuple[Welcome, str]:
    try:
        max_frame = header.get("max_frame")
        welcome = Welcome(
            tunnel_id=str(header["tunnel_id"]),
            session_ttl_s=float(header["session_ttl_s"]),
            heartbeat_s=float(header["heartbeat_s"]),
            max_frame=int(max_frame) if max_frame is not None else None,
        )
        session = str(header["session"])
    except (KeyError, TypeError, ValueError):
        raise protocol.ProtocolError("welcome frame is malformed") from None
    if welcome.heartbeat_s <= 0 or welcome.session_ttl_s <= 0:
        raise protocol.ProtocolError("welcome frame has no usable timers")
    return welcome, session


def _refused(header: dict[str, Any]) -> Refused:
    return Refused(
        str(header.get("code", "refused")),
        str(header.get("message", "the tunnel service refused the connection")),
        header.get("final") is True,
    )


class Connection:
    """One socket. `run()` dials and serves until the socket ends; it raises `Refused` when the
    service refuses, `ServiceSilent` on missed heartbeats, and the network's errors as they are."""

    def __init__(
        self,
        config: TunnelConfig,
        private_key: X25519PrivateKey,
        public_key: str,
        upstream: Upstream,
        credentials: Credentials,
        limit: StreamLimit,
    ) -> None:
        self._config = config
        self._private_key = private_key
        self._public_key = public_key
        self._upstream = upstream
        self._credentials = credentials
        self._limit = limit
        self.welcome: Welcome | None = None
        self.models: list[str] = []
        self.connected_at: float | None = None
        self.connected = asyncio.Event()
        self.drain_requested = asyncio.Event()
        self.drain_delay_s = 0.0
        self._streams: Streams | None = None
        self._session_arrived = asyncio.Event()
        self._session_ttl_s = 0.0

    @property
    def in_flight(self) -> int:
        return self._streams.in_flight if self._streams is not None else 0

    def uptime_s(self) -> float:
        return 0.0 if self.connected_at is None else time.monotonic() - self.connected_at

    async def run(self) -> None:
        self.models = await self._upstream.list_models()
        host = urlsplit(self._config.url).hostname or ""
        async with connect(
            self._config.url,
            # Frames are ciphertext: compressing them wastes CPU and could leak lengths.
            compression=None,
            max_size=MAX_MESSAGE,
            # The service pings at the protocol level (`ping` frames) and measures the RTT.
            ping_interval=None,
            user_agent_header=USER_AGENT,
            open_timeout=self._config.handshake_timeout_s,
            # A proxy never helps reach this machine; for a remote service the system's may.
            proxy=None if is_loopback_host(host) else True,
        ) as ws:
            streams = Streams(self._private_key, self._upstream, ws.send, self._limit)
            self._streams = streams
            try:
                await self._hello(ws, streams)
                await self._serve(ws, streams)
            finally:
                await streams.close()

    async def _hello(self, ws: ClientConnection, streams: Streams) -> None:
        hello = {
            "t": "hello",
            "version": __version__,
            "public_key": self._public_key,
            "models": self.models,
            "max_concurrency": self._config.max_concurrency,
            **self._credentials.hello_fields(),
        }
        await ws.send(protocol.encode(hello))
        async with asyncio.timeout(self._config.handshake_timeout_s):
            while True:
                header, _ = protocol.decode(await _recv_bytes(ws))
                if header["t"] == "refused":
                    raise _refused(header)
                if header["t"] == "ping":
                    await ws.send(protocol.encode({"t": "pong", "ts": header.get("ts")}))
                    continue
                if header["t"] == "welcome":
                    break
                raise protocol.ProtocolError(f"expected welcome, got {header['t']!r}")
        welcome, session = _welcome(header)
        self._credentials.got_session(session, welcome.session_ttl_s)
        if welcome.max_frame is not None:
            streams.frame_payload = max(
                _FRAME_OVERHEAD,
                min(protocol.MAX_FRAME_PAYLOAD, welcome.max_frame - _FRAME_OVERHEAD),
            )
        self.welcome = welcome
        self.connected_at = time.monotonic()
        self.connected.set()
        _log.info(
            "connected: tunnel %s, %d model(s) reported, heartbeat %gs",
            welcome.tunnel_id,
            len(self.models),
            welcome.heartbeat_s,
        )

    async def _serve(self, ws: ClientConnection, streams: Streams) -> None:
        reader = asyncio.create_task(self._read_frames(ws, streams), name="tunnel-reader")
        refresher = asyncio.create_task(self._refresh_sessions(ws), name="tunnel-refresh")
        drained = asyncio.create_task(self._drained(streams), name="tunnel-drained")
        try:
            done, _ = await asyncio.wait({reader, drained}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
        finally:
            for task in (reader, refresher, drained):
                task.cancel()
            await asyncio.gather(reader, refresher, drained, return_exceptions=True)

    async def _drained(self, streams: Streams) -> None:
        await self.drain_requested.wait()
        await streams.wait_idle()
        _log.info("drained: the old connection's streams are done; closing it")

    async def _read_frames(self, ws: ClientConnection, streams: Streams) -> None:
        assert self.welcome is not None
        silence_s = 3 * self.welcome.heartbeat_s
        while True:
            try:
                async with asyncio.timeout(silence_s):
                    raw = await _recv_bytes(ws)
            except TimeoutError:
                raise ServiceSilent(f"no frame from the service for {silence_s:g}s") from None
            except ConnectionClosed:
                if self.drain_requested.is_set():
                    return  # the draining copy closed us: expected
                raise
            except protocol.ProtocolError as exc:
                _log.warning("dropped a malformed frame: %s", exc)
                continue
            try:
                header, payload = protocol.decode(raw)
            except protocol.ProtocolError as exc:
                _log.warning("dropped a malformed frame: %s", exc)
                continue
            await self._on_frame(ws, streams, header, payload)

    async def _on_frame(
        self, ws: ClientConnection, streams: Streams, header: dict[str, Any], payload: bytes
    ) -> None:
        kind = header["t"]
        if kind == "req":
            await streams.on_request(header, payload)
        elif kind == "ping":
            await ws.send(protocol.encode({"t": "pong", "ts": header.get("ts")}))
        elif kind == "cancel":
            streams.on_cancel(header)
        elif kind == "session":
            self._on_session(header)
        elif kind == "drain":
            delay_ms = header.get("reconnect_after_ms", 0)
            self.drain_delay_s = (
                max(0.0, float(delay_ms)) / 1000 if isinstance(delay_ms, int | float) else 0.0
            )
            _log.info(
                "the service is draining this connection; reconnecting in %gs", self.drain_delay_s
            )
            self.drain_requested.set()
        elif kind == "refused":
            raise _refused(header)
        else:
            _log.debug("ignored a %r frame", kind)

    def _on_session(self, header: dict[str, Any]) -> None:
        session, ttl = header.get("session"), header.get("session_ttl_s")
        if not isinstance(session, str) or not isinstance(ttl, int | float) or ttl <= 0:
            _log.warning("ignored a malformed session frame")
            return
        self._credentials.got_session(session, float(ttl))
        self._session_ttl_s = float(ttl)
        self._session_arrived.set()
        _log.debug("session refreshed (valid %gs)", ttl)

    async def _refresh_sessions(self, ws: ClientConnection) -> None:
        """Ask for a new session token at 2/3 of each one's life, so a reconnect can use it."""
        assert self.welcome is not None
        self._session_ttl_s = self.welcome.session_ttl_s
        while True:
            ttl = self._session_ttl_s
            await asyncio.sleep(ttl * 2 / 3)
            self._session_arrived.clear()
            await ws.send(protocol.encode({"t": "refresh"}))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ttl / 3):
                    await self._session_arrived.wait()
                continue
            _log.warning("the service did not refresh the session; a reconnect will use the token")


async def _recv_bytes(ws: ClientConnection) -> bytes:
    message = await ws.recv()
    if isinstance(message, str):
        raise protocol.ProtocolError("text frame on the tunnel socket")
    return message
