"""Liveness and readiness probes: /healthz (this process) and /readyz (it can serve requests)."""

from __future__ import annotations

import asyncio

import nats.errors
from fastapi import APIRouter
from starlette.responses import JSONResponse

from byorouter_gateway.api.schemas import Readiness
from byorouter_gateway.deps import GatewayDep

router = APIRouter(tags=["health"])

# The services a chat request needs, asked through the NATS micro protocol they all answer.
DEPENDENCIES = ("keystore", "router")


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="NATS is connected and keystore and router answer",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    nc = gateway.bus().nc
    if not nc.is_connected:
        missing = ["nats"]
    else:
        timeout = gateway.settings.ready_timeout_s

        async def answers(service: str) -> bool:
            try:
                await nc.request(f"$SRV.PING.{service}", b"", timeout=timeout)
            except (nats.errors.Error, TimeoutError, OSError):
                return False
            return True

        answered = await asyncio.gather(*(answers(s) for s in DEPENDENCIES))
        missing = [s for s, ok in zip(DEPENDENCIES, answered, strict=True) if not ok]
    readiness = Readiness(status="not_ready" if missing else "ready", missing=missing)
    return JSONResponse(readiness.model_dump(), status_code=503 if missing else 200)
