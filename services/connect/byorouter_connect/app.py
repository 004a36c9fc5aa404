"""Connect's HTTP application: health probes and, for now, a landing page (the UI comes later)."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse

from byorouter_common.service import ServiceRuntime

LANDING_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>BYORouter Connect</title></head>
<body>
  <h1>BYORouter Connect</h1>
  <p>The Connect UI is coming: this is where people will connect their own provider keys
  to the apps they use.</p>
</body>
</html>
"""


def create_app(runtime: ServiceRuntime) -> FastAPI:
    app = FastAPI(title="BYORouter Connect", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, str]:
        # Ready means the bus answers: without it no page can reach keystore.
        if runtime.bus.nc.is_connected:
            return {"status": "ready"}
        response.status_code = 503
        return {"status": "nats disconnected"}

    @app.get("/", response_class=HTMLResponse)
    async def landing() -> str:
        return LANDING_PAGE

    return app
