"""How every service process starts and stops: logging, tracing, uvloop, signals, the broker.

A service's `__main__` builds its settings and calls `run_service` with an async `main` that
receives a `ServiceRuntime`; `main` registers handlers, calls `await runtime.start()`, then waits
on `runtime.stopped`. Ctrl-C or SIGTERM drains the NATS connection and exits cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
import uvloop
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware

from byorouter_common.bus import Bus, Discovery, make_broker
from byorouter_common.logging import setup_logging
from byorouter_common.settings import ServiceSettings
from byorouter_common.telemetry import setup_tracing

VERSION = "0.1.0"

log = logging.getLogger(__name__)


class ServiceRuntime:
    def __init__(self, name: str, settings: ServiceSettings, description: str) -> None:
        self.name = name
        self.settings = settings
        self.broker: NatsBroker = make_broker(settings, name)
        self.broker.add_middleware(NatsTelemetryMiddleware())
        self.discovery = Discovery(name, VERSION, description)
        self.stopped = asyncio.Event()
        self._bus: Bus | None = None

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "runtime.start() first"
        return self._bus

    async def start(self) -> None:
        """Connect, start every registered subscriber, and answer discovery."""
        await self.broker.start()
        nc = await self.broker.connect()
        self._bus = Bus(
            nc,
            timeout_s=self.settings.bus_timeout_s,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
        )
        await self.discovery.start(nc)
        log.info("%s ready", self.name, extra={"nats": self.settings.nats_url})

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
        await self.broker.stop()


class _HttpServer(uvicorn.Server):
    """uvicorn inside the service's loop: the runtime owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(
    runtime: ServiceRuntime, app: Any, *, host: str, port: int, grace_s: float = 10.0
) -> None:
    """Serve an ASGI app until `runtime.stopped` is set, then let open responses finish.

    uvicorn's own logging config and access log are off: its loggers go through our redacting
    handler, and probes are not worth a log line each.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=int(grace_s),
    )
    server = _HttpServer(config)
    serving = asyncio.create_task(server.serve(), name=f"{runtime.name}-http")
    stopped = asyncio.create_task(runtime.stopped.wait(), name=f"{runtime.name}-stopped")
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await serving


def run_service(
    name: str,
    settings: ServiceSettings,
    main: Callable[[ServiceRuntime], Awaitable[None]],
    *,
    description: str,
) -> None:
    setup_logging(name, settings.log_level, settings.log_format)
    setup_tracing(name, settings.otel_exporter)

    async def runner() -> None:
        runtime = ServiceRuntime(name, settings, description)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runtime.stopped.set)
        try:
            await main(runtime)
        finally:
            await runtime.close()
            log.info("%s stopped", name)

    uvloop.run(runner())
