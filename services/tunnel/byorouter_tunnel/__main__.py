"""`python -m byorouter_tunnel`: join the bus, then serve the tunnel HTTP app until stopped."""

from __future__ import annotations

from byorouter_common.service import ServiceRuntime, run_service, serve_http
from byorouter_tunnel.app import create_app
from byorouter_tunnel.settings import TunnelSettings


async def main(runtime: ServiceRuntime) -> None:
    settings = runtime.settings
    assert isinstance(settings, TunnelSettings)
    await runtime.start()
    await serve_http(runtime, create_app(runtime), host=settings.host, port=settings.port)


if __name__ == "__main__":
    run_service(
        "tunnel",
        TunnelSettings(),
        main,
        description="WebSocket tunnels from users' machines to BYORouter.",
    )
