"""`python -m byorouter_tunnel`: join the bus, then serve the tunnel HTTP app until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from byorouter_common.service import ServiceRuntime, run_service
from byorouter_tunnel.app import create_app
from byorouter_tunnel.settings import TunnelSettings


class _HttpServer(uvicorn.Server):
    """uvicorn inside the service's loop: the runtime owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main(runtime: ServiceRuntime) -> None:
    settings = runtime.settings
    assert isinstance(settings, TunnelSettings)
    await runtime.start()
    config = uvicorn.Config(
        create_app(runtime),
        host=settings.host,
        port=settings.port,
        # Our logging setup (with redaction) handles uvicorn's loggers; probes are not logged.
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = _HttpServer(config)
    serving = asyncio.create_task(server.serve(), name="tunnel-http")
    stopped = asyncio.create_task(runtime.stopped.wait(), name="tunnel-stopped")
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await serving


if __name__ == "__main__":
    run_service(
        "tunnel",
        TunnelSettings(),
        main,
        description="WebSocket tunnels from users' machines to BYORouter.",
    )
