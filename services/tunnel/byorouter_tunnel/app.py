"""Tunnel's HTTP application: health probes (the WebSocket endpoint for clients comes later)."""

from __future__ import annotations

from fastapi import FastAPI, Response

from byorouter_common.service import ServiceRuntime


def create_app(runtime: ServiceRuntime) -> FastAPI:
    app = FastAPI(title="BYORouter Tunnel", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, str]:
        # Ready means the bus answers: a tunnel that cannot reach NATS cannot bridge anything.
        if runtime.bus.nc.is_connected:
            return {"status": "ready"}
        response.status_code = 503
        return {"status": "nats disconnected"}

    return app
