"""Tunnel's wiring: its HTTP app (health probes; the clients' WebSocket endpoint) and `SERVICE`."""

from __future__ import annotations

from fastapi import FastAPI

from byorouter_common.health import health_router
from byorouter_common.service import Service, ServiceRuntime
from byorouter_tunnel.settings import TunnelSettings


def create_app(runtime: ServiceRuntime[TunnelSettings]) -> FastAPI:
    app = FastAPI(title="BYORouter Tunnel", docs_url=None, redoc_url=None)
    # Ready means the bus answers: a tunnel that cannot reach NATS cannot bridge anything.
    app.include_router(health_router(lambda: runtime.bus))
    return app


async def register(runtime: ServiceRuntime[TunnelSettings]) -> None:
    settings = runtime.settings
    runtime.serve_http(create_app(runtime), host=settings.host, port=settings.port)


SERVICE = Service("tunnel", "WebSocket tunnels from users' machines to BYORouter.", register)
