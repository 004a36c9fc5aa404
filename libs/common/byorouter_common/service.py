"""How every service process starts and stops: logging, tracing, uvloop, signals, the broker.

Every service describes itself with one `Service`: its name, one line on what it does, and a
`register(runtime)` that subscribes its handlers and, for the HTTP services, hands the runtime
the app to serve. Every `__main__.py` is then the same three lines::

    run_service(handlers.SERVICE, RouterSettings())

`register` runs before the broker starts (so no message can arrive before its subscriber exists);
what needs the connected bus goes in `runtime.on_started`, cleanup in `runtime.on_stop`. Ctrl-C
or SIGTERM stops the HTTP server (letting open responses finish), runs the stop hooks in reverse
order, drains the NATS connection and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import uvloop
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware

from byorouter_common.bus import Bus, Discovery, make_broker
from byorouter_common.logging import setup_logging
from byorouter_common.metrics import serve_metrics
from byorouter_common.redact import safe_url
from byorouter_common.settings import ServiceSettings
from byorouter_common.telemetry import setup_tracing

VERSION = "0.1.0"

S = TypeVar("S", bound=ServiceSettings)
Hook = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpServing:
    """What an HTTP service serves next to its bus subscriptions."""

    app: Any
    host: str
    port: int
    grace_s: float = 10.0
    # Extra uvicorn settings (the tunnel's WebSocket limits, say).
    options: Mapping[str, Any] = field(default_factory=dict)


class ServiceRuntime(Generic[S]):
    """One service process's broker, bus, discovery responder and lifecycle hooks."""

    def __init__(self, name: str, settings: S, description: str) -> None:
        self.name = name
        self.settings: S = settings
        self.broker: NatsBroker = make_broker(settings, name)
        self.broker.add_middleware(NatsTelemetryMiddleware())
        self.discovery = Discovery(name, VERSION, description)
        self.stopped = asyncio.Event()
        self.http: HttpServing | None = None
        self._bus: Bus | None = None
        self._on_started: list[Hook] = []
        self._on_stopping: list[Hook] = []
        self._on_stop: list[Hook] = []

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "runtime.start() first"
        return self._bus

    def on_started(self, hook: Hook) -> None:
        """Run `hook` once the bus is connected and every subscriber is live."""
        self._on_started.append(hook)

    def on_stopping(self, hook: Hook) -> None:
        """Run `hook` as soon as the service is told to stop, while HTTP still serves (drain)."""
        self._on_stopping.append(hook)

    async def stopping(self) -> None:
        for hook in self._on_stopping:
            try:
                await hook()
            except Exception:
                log.exception("%s: a stopping hook failed", self.name)

    def on_stop(self, hook: Hook) -> None:
        """Run `hook` at shutdown, before the bus closes; hooks run in reverse order."""
        self._on_stop.append(hook)

    def serve_http(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        grace_s: float = 10.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Serve `app` until the service stops (one HTTP server per service)."""
        self.http = HttpServing(app, host, port, grace_s, options or {})

    async def start(self) -> None:
        """Connect, start every registered subscriber, answer discovery, run the start hooks."""
        await self.broker.start()
        nc = await self.broker.connect()
        self._bus = Bus(
            nc,
            timeout_s=self.settings.bus_timeout_s,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
        )
        await self.discovery.start(nc)
        for hook in self._on_started:
            await hook()
        log.info("%s ready", self.name, extra={"nats": safe_url(self.settings.nats_url)})

    async def run_until_stopped(self) -> None:
        """Serve HTTP if the service has an app, else just wait for `stopped`."""
        if self.http is None:
            await self.stopped.wait()
            await self.stopping()
        else:
            # uvicorn is imported here: router and keystore, serving no HTTP, never load it.
            from byorouter_common.http_server import serve_http

            await serve_http(self, self.http)

    async def close(self) -> None:
        for hook in reversed(self._on_stop):
            try:
                await hook()
            except Exception:  # one failing cleanup must not skip the others
                log.exception("%s: a stop hook failed", self.name)
        if self._bus is not None:
            await self._bus.close()
        await self.broker.stop()


Register = Callable[[ServiceRuntime[S]], Awaitable[None]]


@dataclass(frozen=True)
class Service(Generic[S]):
    """A service's name, what it does in one line, and how it wires itself onto a runtime.

    `commands` are extra one-shot subcommands beside the default `serve` (keystore's `migrate`).
    """

    name: str
    description: str
    register: Register[S]
    commands: Mapping[str, Callable[[S], None]] = field(default_factory=dict)


async def run_runtime(service: Service[S], settings: S) -> None:
    """Build the runtime, register the service, serve until stopped, then close everything."""
    runtime = ServiceRuntime(service.name, settings, service.description)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runtime.stopped.set)
    # Up before the bus, so a scrape sees a copy that is still connecting (or cannot).
    metrics = serve_metrics(settings.metrics_host, settings.metrics_port)
    try:
        await service.register(runtime)
        await runtime.start()
        await runtime.run_until_stopped()
    finally:
        await runtime.close()
        if metrics is not None:
            metrics.stop()
        log.info("%s stopped", service.name)


def run_service(service: Service[S], settings: S, argv: Sequence[str] | None = None) -> None:
    """`python -m byorouter_<name> [serve|<command>]`: serve (the default) or run a command."""
    parser = argparse.ArgumentParser(
        prog=f"python -m byorouter_{service.name}", description=service.description
    )
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", *service.commands))
    args = parser.parse_args(argv)
    setup_logging(service.name, settings.log_level, settings.log_format)
    # Every service's per-request lines go to this one logger (docs/operations.md).
    logging.getLogger("byorouter.access").disabled = not settings.access_log
    if args.command != "serve":
        service.commands[args.command](settings)
        return
    setup_tracing(service.name, settings.otel_exporter, version=VERSION)
    uvloop.run(run_runtime(service, settings))
