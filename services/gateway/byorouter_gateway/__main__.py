"""`python -m byorouter_gateway`: join the bus, then serve the HTTP API until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from byorouter_common.bus import subscribe_event
from byorouter_common.contracts import events
from byorouter_common.service import ServiceRuntime, run_service
from byorouter_gateway.deps import Gateway
from byorouter_gateway.main import create_app
from byorouter_gateway.settings import GatewaySettings

DESCRIPTION = "OpenAI-compatible HTTP front door of BYORouter."


class _HttpServer(uvicorn.Server):
    """uvicorn inside the service's loop: the runtime owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main(runtime: ServiceRuntime) -> None:
    """Serve until `runtime.stopped` is set (a signal, or a test), then finish open responses."""
    settings = runtime.settings
    assert isinstance(settings, GatewaySettings)
    app = create_app(settings, lambda: runtime.bus)
    gateway: Gateway = app.state.gateway
    # Subscribed before the broker starts, so no revocation can slip in between.
    subscribe_event(runtime.broker, events.APP_KEY_REVOKED, gateway.app_keys.on_key_revoked)
    await runtime.start()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        # Our logging setup (with redaction) handles uvicorn's loggers; no access log of its own.
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = _HttpServer(config)
    serving = asyncio.create_task(server.serve(), name="gateway-http")
    stopped = asyncio.create_task(runtime.stopped.wait(), name="gateway-stopped")
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await serving


if __name__ == "__main__":
    run_service("gateway", GatewaySettings(), main, description=DESCRIPTION)
