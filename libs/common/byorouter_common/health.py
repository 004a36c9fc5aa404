"""The liveness and readiness probes every HTTP service serves: /healthz and /readyz.

/healthz says the process is alive. /readyz says it can serve requests: NATS is connected and
each service it depends on answers the NATS micro protocol's `$SRV.PING.<service>`. A service
told to stop answers 503 `draining` (the runtime sets `app.state.draining`), so a load balancer
sends its requests elsewhere while open streams finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Literal

import nats.errors
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from byorouter_common.bus import Bus


class Readiness(BaseModel):
    status: Literal["ready", "not_ready", "draining"]
    missing: list[str] = Field(default_factory=list)


def health_router(
    bus: Callable[[], Bus], *, dependencies: Sequence[str] = (), timeout_s: float = 1.0
) -> APIRouter:
    """Probes for a service whose bus is `bus()` once connected and that needs `dependencies`."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="NATS is connected and the services this one needs answer",
        response_model=Readiness,
        responses={503: {"model": Readiness}},
    )
    async def readyz(request: Request) -> JSONResponse:
        if getattr(request.app.state, "draining", False):
            return JSONResponse(Readiness(status="draining").model_dump(), status_code=503)
        missing = await _missing(bus(), dependencies, timeout_s)
        readiness = Readiness(status="not_ready" if missing else "ready", missing=missing)
        return JSONResponse(readiness.model_dump(), status_code=503 if missing else 200)

    return router


async def _missing(bus: Bus, dependencies: Sequence[str], timeout_s: float) -> list[str]:
    nc = bus.nc
    if not nc.is_connected:
        return ["nats"]

    async def answers(service: str) -> bool:
        try:
            await nc.request(f"$SRV.PING.{service}", b"", timeout=timeout_s)
        except (nats.errors.Error, TimeoutError, OSError):
            return False
        return True

    answered = await asyncio.gather(*(answers(s) for s in dependencies))
    return [s for s, ok in zip(dependencies, answered, strict=True) if not ok]
