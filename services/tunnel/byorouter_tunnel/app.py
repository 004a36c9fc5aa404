"""Tunnel's wiring: the clients' WebSocket endpoint, health probes, revocation events; `SERVICE`."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket

from byorouter_common.access import AccessMiddleware
from byorouter_common.bus import subscribe_event
from byorouter_common.contracts import events
from byorouter_common.health import health_router
from byorouter_common.service import Service, ServiceRuntime
from byorouter_tunnel.downloads import default_dist_dir, downloads_router
from byorouter_tunnel.hub import Hub
from byorouter_tunnel.metrics import watch_hub
from byorouter_tunnel.settings import TunnelSettings

# The path clients dial: `wss://<host>/tunnel`.
TUNNEL_PATH = "/tunnel"


def create_app(runtime: ServiceRuntime[TunnelSettings], hub: Hub) -> FastAPI:
    app = FastAPI(title="BYORouter Tunnel", docs_url=None, redoc_url=None, openapi_url=None)
    # Ready means the bus answers: a tunnel that cannot reach NATS cannot bridge anything.
    app.include_router(health_router(lambda: runtime.bus))
    app.include_router(downloads_router(runtime.settings.client_dist_dir or default_dist_dir()))

    @app.websocket(TUNNEL_PATH)
    async def tunnel_socket(ws: WebSocket) -> None:
        await hub.serve(ws)

    app.add_middleware(AccessMiddleware)
    return app


async def register(runtime: ServiceRuntime[TunnelSettings]) -> None:
    settings = runtime.settings
    hub = Hub(settings, lambda: runtime.bus)
    watch_hub(hub)
    subscribe_event(runtime.broker, events.TUNNEL_CHANGED, hub.on_tunnel_changed)

    async def started() -> None:
        await hub.start()

    runtime.on_started(started)
    runtime.on_stopping(hub.drain)
    runtime.on_stop(hub.stop)
    runtime.serve_http(
        create_app(runtime, hub),
        host=settings.host,
        port=settings.port,
        grace_s=settings.drain_grace_s,
        # Frames are ciphertext: compressing them gains nothing and leaks lengths.
        options={"ws_per_message_deflate": False, "ws_max_size": 4 * 1024 * 1024},
    )


SERVICE = Service("tunnel", "WebSocket tunnels from users' machines to BYORouter.", register)
