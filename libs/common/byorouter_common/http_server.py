"""An HTTP service's server: uvicorn inside the service's own event loop, and its drain.

Imported by `ServiceRuntime` only for a service that serves HTTP (gateway, Connect, tunnel),
so router and keystore never load uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from byorouter_common.settings import ServiceSettings

if TYPE_CHECKING:
    from byorouter_common.service import HttpServing, ServiceRuntime

log = logging.getLogger("byorouter_common.service")


class _HttpServer(uvicorn.Server):
    """uvicorn inside the service's loop: the runtime owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_config(settings: ServiceSettings, http: HttpServing) -> uvicorn.Config:
    """uvicorn's settings for one service's app.

    uvicorn's own logging config and access log are off: its loggers go through our redacting
    handler, and probes are not worth a log line each. Forwarded headers are believed only from
    `settings.trusted_proxies`: uvicorn would otherwise believe any local process (it trusts
    loopback by default), and one forged X-Forwarded-For per request would give every guess a
    fresh client IP.
    """
    trusted = settings.trusted_proxy_list
    return uvicorn.Config(
        http.app,
        host=http.host,
        port=http.port,
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=int(http.grace_s),
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
        **http.options,
    )


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` that other processes may bind too (SO_REUSEPORT):
    copies of one service share its port and the kernel spreads connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_http(runtime: ServiceRuntime[Any], http: HttpServing) -> None:
    """Serve an ASGI app until `runtime.stopped` is set, then drain and let open responses
    finish.

    Draining: /readyz answers 503 at once (`app.state.draining`, see health.py) while the
    server still accepts for `drain_delay_s`, so a load balancer stops sending; then the
    listener closes and open responses (long streams) get `grace_s` to end.
    """
    settings = runtime.settings
    server = _HttpServer(http_config(settings, http))
    sockets = [reuse_port_socket(http.host, http.port)] if settings.reuse_port else None
    serving = asyncio.create_task(server.serve(sockets=sockets), name=f"{runtime.name}-http")
    stopped = asyncio.create_task(runtime.stopped.wait(), name=f"{runtime.name}-stopped")
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    with contextlib.suppress(AttributeError):  # an ASGI app without Starlette's `state`
        http.app.state.draining = True
    await runtime.stopping()
    if settings.drain_delay_s and not serving.done():
        log.info("%s draining", runtime.name, extra={"drain_delay_s": settings.drain_delay_s})
        await asyncio.wait({serving}, timeout=settings.drain_delay_s)
    server.should_exit = True
    stopped.cancel()
    try:
        await serving
    finally:
        for sock in sockets or ():
            sock.close()
