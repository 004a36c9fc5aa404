"""The sockets this tunnel service copy holds: accepting a client, keeping it alive, letting go.

A client's first frame is `hello`; keystore checks its token or session (and binds its public key
at first connect) before anything else happens. Then the copy pings it every heartbeat; a client
that answers nothing for 2.5 intervals (killed, hung, its network gone) is dropped and its
streams fail at once. A revoked tunnel's sockets close as soon as keystore's event arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from byorouter_common.bus import Bus, KeepAliveTicker
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_tunnel.relay import ClientSocket, draining
from byorouter_tunnel.settings import TunnelSettings
from byorouter_tunnel_client import protocol

log = logging.getLogger(__name__)

# WebSocket close codes (4000-4999 are the application's).
CLOSE_REFUSED = 4003
CLOSE_DEAD = 4008
CLOSE_DRAIN = 4012
_MISSED_BEATS = 2.5


class Hub:
    def __init__(self, settings: TunnelSettings, bus: Any) -> None:
        self.settings = settings
        self._bus = bus  # a callable returning the runtime's Bus once connected
        self.keepalive = KeepAliveTicker(settings.keepalive_interval_s)
        self.sockets: dict[str, set[ClientSocket]] = {}
        self._websockets: dict[int, WebSocket] = {}
        self.draining = False

    @property
    def bus(self) -> Bus:
        bus: Bus = self._bus()
        return bus

    async def start(self) -> None:
        self.keepalive.start()

    async def stop(self) -> None:
        await self.keepalive.stop()

    # --- one client ---------------------------------------------------------------------------

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        if self.draining:
            await self._refuse(ws, "draining", "This tunnel server is restarting.", final=False)
            return
        try:
            hello = await self._hello(ws)
        except (TimeoutError, WebSocketDisconnect, protocol.ProtocolError):
            await self._close(ws, CLOSE_REFUSED)
            return
        session = await self._authenticate(ws, hello)
        if session is None:
            return
        client = ClientSocket(
            tunnel_id=session.tunnel_id,
            connection_id=session.connection_id,
            app_id=session.app_id,
            public_key=str(hello["public_key"]),
            client_version=str(hello.get("version", "unknown"))[:64],
            models=[str(m)[:200] for m in hello.get("models", [])][:1000],
            max_concurrency=min(
                int(hello.get("max_concurrency") or self.settings.max_concurrency),
                self.settings.max_concurrency,
            ),
            nc=self.bus.nc,
            keepalive=self.keepalive,
            send_frame=ws.send_bytes,
            queue_frames=self.settings.send_queue_frames,
        )
        await client.send(
            {
                "t": "welcome",
                "tunnel_id": session.tunnel_id,
                "session": session.session.get_secret_value(),
                "session_ttl_s": session.session_ttl_s,
                "heartbeat_s": self.settings.heartbeat_s,
                "max_frame": protocol.MAX_FRAME_PAYLOAD,
            }
        )
        reader: asyncio.Task[None] | None = None
        beats: asyncio.Task[None] | None = None
        try:
            await client.start()
            self.sockets.setdefault(client.tunnel_id, set()).add(client)
            self._websockets[id(client)] = ws
            await self._presence(client, online=True)
            log.info(
                "tunnel client connected",
                extra={"tunnel_id": client.tunnel_id, "client_version": client.client_version},
            )
            reader = asyncio.create_task(self._read(ws, client), name="tunnel-read")
            beats = asyncio.create_task(self._heartbeat(ws, client), name="tunnel-heartbeat")
            await asyncio.wait({reader, beats}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [task for task in (reader, beats) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._forget(client)
            await self._close(ws, CLOSE_DEAD)

    async def _hello(self, ws: WebSocket) -> dict[str, Any]:
        frame = await asyncio.wait_for(ws.receive_bytes(), self.settings.hello_timeout_s)
        header, _ = protocol.decode(frame)
        if header["t"] != "hello" or not isinstance(header.get("public_key"), str):
            raise protocol.ProtocolError("the first frame must be hello")
        return header

    async def _authenticate(self, ws: WebSocket, hello: dict[str, Any]) -> ks.TunnelSession | None:
        token, session = hello.get("token"), hello.get("session")
        try:
            request = ks.TunnelAuthenticate(
                token=token if isinstance(token, str) and not session else None,
                session=session if isinstance(session, str) else None,
                public_key=hello["public_key"],
            )
        except ValueError:
            await self._refuse(ws, "bad_hello", "The client's hello is malformed.", final=True)
            return None
        try:
            return await self.bus.request(ks.TUNNEL_AUTHENTICATE, request)
        except ByoError as exc:
            # A bad or revoked token, or another client's key, will not get better by retrying;
            # an expired session and a keystore outage will.
            final = exc.status in (401, 403) and exc.code != "session_invalid"
            await self._refuse(ws, exc.code, exc.message, final=final)
            return None

    async def _read(self, ws: WebSocket, client: ClientSocket) -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                return  # text frames are not part of the protocol
            client.last_heard = time.monotonic()
            try:
                header, payload = protocol.decode(data)
            except protocol.ProtocolError:
                return
            kind = header["t"]
            if kind == "res":
                await client.on_res(header, payload)
            elif kind == "pong":
                sent = header.get("ts")
                if isinstance(sent, int | float):
                    client.rtt_ms = round((time.monotonic() - sent) * 1000, 2)
            elif kind == "refresh":
                await self._refresh(client)
            elif kind == "models":
                client.models = [str(m)[:200] for m in header.get("models", [])][:1000]
                await self._presence(client, online=True)

    async def _heartbeat(self, ws: WebSocket, client: ClientSocket) -> None:
        interval = self.settings.heartbeat_s
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if now - client.last_heard > interval * _MISSED_BEATS:
                log.warning(
                    "tunnel client stopped answering", extra={"tunnel_id": client.tunnel_id}
                )
                return
            if now >= next_ping:
                await client.send({"t": "ping", "ts": now})
                next_ping = now + interval
            await asyncio.sleep(interval / 4)

    async def _refresh(self, client: ClientSocket) -> None:
        try:
            fresh = await self.bus.request(
                ks.TUNNEL_SESSION_REFRESH, ks.TunnelSessionRefresh(tunnel_id=client.tunnel_id)
            )
        except ByoError as exc:
            log.warning("tunnel session refresh refused", extra={"code": exc.code})
            return
        await client.send(
            {
                "t": "session",
                "session": fresh.session.get_secret_value(),
                "session_ttl_s": fresh.session_ttl_s,
            }
        )

    async def _presence(self, client: ClientSocket, *, online: bool) -> None:
        still = online or bool(self.sockets.get(client.tunnel_id))
        try:
            await self.bus.request(
                ks.TUNNEL_PRESENCE,
                ks.TunnelPresence(
                    tunnel_id=client.tunnel_id,
                    online=still,
                    models=client.models,
                    client_version=client.client_version,
                ),
            )
        except ByoError as exc:  # presence is for the status page; routing never waits on it
            log.warning("tunnel presence not recorded", extra={"code": exc.code})

    async def _forget(self, client: ClientSocket) -> None:
        await client.close()
        held = self.sockets.get(client.tunnel_id)
        if held is not None:
            held.discard(client)
            if not held:
                del self.sockets[client.tunnel_id]
        self._websockets.pop(id(client), None)
        await self._presence(client, online=False)
        log.info("tunnel client gone", extra={"tunnel_id": client.tunnel_id})

    async def _refuse(self, ws: WebSocket, code: str, message: str, *, final: bool) -> None:
        frame = protocol.encode({"t": "refused", "code": code, "message": message, "final": final})
        with contextlib.suppress(Exception):
            await ws.send_bytes(frame)
        await self._close(ws, CLOSE_REFUSED)

    @staticmethod
    async def _close(ws: WebSocket, code: int) -> None:
        if ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(code)

    # --- events and shutdown ------------------------------------------------------------------

    async def on_tunnel_changed(self, event: events.TunnelChangedEvent) -> None:
        """A revoked tunnel's sockets close now; its streams fail with a clear error."""
        if not event.revoked:
            return
        for client in list(self.sockets.get(event.tunnel_id, ())):
            ws = self._websockets.get(id(client))
            await client.send(
                {
                    "t": "refused",
                    "code": "revoked",
                    "message": "This tunnel was revoked.",
                    "final": True,
                }
            )
            await client.close(ByoError(502, "tunnel_revoked", "The tunnel was revoked."))
            if ws is not None:
                await self._close(ws, CLOSE_REFUSED)

    async def drain(self) -> None:
        """SIGTERM: take no new requests, tell clients to reconnect elsewhere, let streams end."""
        self.draining = True
        clients = [c for held in self.sockets.values() for c in held]
        for client in clients:
            await client.stop_accepting()
            await client.send({"t": "drain", "reconnect_after_ms": 0})
        await asyncio.gather(
            *(c.wait_idle(self.settings.drain_grace_s) for c in clients), return_exceptions=True
        )
        for client in clients:
            await client.close(draining())
            ws = self._websockets.get(id(client))
            if ws is not None:
                await self._close(ws, CLOSE_DRAIN)
