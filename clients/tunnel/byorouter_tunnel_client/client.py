"""The client's run loop: keep one session with the tunnel service up, reconnecting with backoff,
until stopped or finally refused.

In-process use (tests, the dev launcher)::

    client = TunnelClient(config)
    task = asyncio.create_task(client.run())
    await client.wait_connected()
    ...  client.state.tunnel_id, client.state.models
    client.stop()
    await task
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from websockets.exceptions import ConnectionClosed, InvalidStatus

from byorouter_tunnel_client import e2e
from byorouter_tunnel_client.backoff import Backoff
from byorouter_tunnel_client.config import TunnelConfig
from byorouter_tunnel_client.connection import Connection, Refused
from byorouter_tunnel_client.credentials import Credentials
from byorouter_tunnel_client.streams import StreamLimit
from byorouter_tunnel_client.upstream import Upstream

# The refusal that means "the session token you sent is unknown or expired": retried at once
# with the long-lived token.
SESSION_INVALID = "session_invalid"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientState:
    """A snapshot of the client for tests and status output."""

    connected: bool
    tunnel_id: str | None
    models: list[str] = field(default_factory=list)
    public_key: str = ""
    fingerprint: str = ""
    # Sockets open and welcomed: two while a drained one finishes its streams.
    connections: int = 0
    in_flight: int = 0
    # Failed attempts and lost connections since the client started.
    reconnects: int = 0
    last_error: str | None = None


class TunnelClient:
    """`await run()` serves until `stop()` (returns) or a final refusal (raises `Refused`)."""

    def __init__(
        self,
        config: TunnelConfig,
        *,
        private_key: X25519PrivateKey | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.private_key = (
            private_key
            if private_key is not None
            else e2e.load_or_create_private_key(config.key_file.expanduser())
        )
        self.public_key = e2e.public_key_text(self.private_key.public_key())
        self.backoff = backoff or Backoff()
        self.credentials = Credentials(config.token)
        self._limit = StreamLimit(config.max_concurrency)
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        # Every connection whose task still runs (the current one and any draining).
        self._live: dict[Connection, asyncio.Task[None]] = {}
        self._tunnel_id: str | None = None
        self._models: list[str] = []
        self._reconnects = 0
        self._last_error: str | None = None

    @property
    def state(self) -> ClientState:
        welcomed = [c for c in self._live if c.welcome is not None]
        return ClientState(
            connected=bool(welcomed),
            tunnel_id=self._tunnel_id,
            models=list(self._models),
            public_key=self.public_key,
            fingerprint=e2e.fingerprint(self.public_key),
            connections=len(welcomed),
            in_flight=self._limit.active,
            reconnects=self._reconnects,
            last_error=self._last_error,
        )

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Until a session is welcomed (at once if one is)."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    def stop(self) -> None:
        """Ask `run()` to close the socket(s), abort open streams and return."""
        self._stopping.set()

    async def run(self) -> None:
        upstream = Upstream(
            self.config.upstream,
            self.config.upstream_key,
            connect_timeout_s=self.config.upstream_connect_timeout_s,
            models_timeout_s=self.config.models_timeout_s,
            max_connections=self.config.max_concurrency + 2,
        )
        try:
            await self._keep_connected(upstream)
        finally:
            tasks = list(self._live.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._live.clear()
            self._connected.clear()
            await upstream.aclose()

    async def _keep_connected(self, upstream: Upstream) -> None:
        retried_with_token = False
        while not self._stopping.is_set():
            connection = Connection(
                self.config,
                self.private_key,
                self.public_key,
                upstream,
                self.credentials,
                self._limit,
            )
            used_session = self.credentials.has_session
            task = asyncio.create_task(self._run_connection(connection), name="tunnel-connection")
            self._live[connection] = task
            await _first(task, connection.drain_requested, self._stopping)
            if self._stopping.is_set():
                return
            self.backoff.connection_lasted(connection.uptime_s())
            if connection.welcome is not None:
                retried_with_token = False
            if connection.drain_requested.is_set():
                # This connection finishes its streams while the next one dials.
                task.add_done_callback(_log_drained_end)
                await self._pause(connection.drain_delay_s)
                continue
            error = task.exception()
            error_text = "the service closed the connection" if error is None else _describe(error)
            if isinstance(error, Refused):
                if error.code == SESSION_INVALID and used_session and not retried_with_token:
                    _log.info("the session token was not accepted; connecting with the token")
                    self.credentials.forget_session()
                    retried_with_token = True
                    continue
                if error.final:
                    _log.error("the tunnel service refused this client: %s", error.message)
                    raise error
            self._reconnects += 1
            self._last_error = error_text
            delay = self.backoff.next_delay()
            _log.warning("tunnel connection lost (%s); reconnecting in %.2fs", error_text, delay)
            await self._pause(delay)

    async def _run_connection(self, connection: Connection) -> None:
        watcher = asyncio.create_task(self._note_welcome(connection))
        try:
            await connection.run()
        finally:
            watcher.cancel()
            self._live.pop(connection, None)
            if not any(c.welcome is not None for c in self._live):
                self._connected.clear()

    async def _note_welcome(self, connection: Connection) -> None:
        await connection.connected.wait()
        assert connection.welcome is not None
        self._tunnel_id = connection.welcome.tunnel_id
        self._models = connection.models
        self._connected.set()

    async def _pause(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._stopping.wait()


async def _first(task: asyncio.Task[None], *events: asyncio.Event) -> None:
    """Until `task` ends or one of `events` is set; `task` keeps running in the latter case."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait([task, *waiters], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def _log_drained_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.info("the drained connection ended: %s", _describe(error))


def _describe(error: BaseException) -> str:
    """A connection error in one line for the log (never a frame's content)."""
    if isinstance(error, Refused):
        return f"refused: {error.code}: {error.message}"
    if isinstance(error, InvalidStatus):
        return f"HTTP {error.response.status_code} at the WebSocket upgrade"
    if isinstance(error, ConnectionClosed):
        return f"socket closed ({error.rcvd.code if error.rcvd else 'no close frame'})"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
