"""Seed 002's tunnel API: register a tunnel for a user's connection, see its status, rotate, revoke.

The token is in the register and rotate responses only (never a log line, `Cache-Control:
no-store`); keystore keeps its hash. A tunnel belongs to the app of its connection: another app's
tunnel is the same 404 as one that does not exist. Whether a tunnel is online is asked of the
tunnel service copies holding its sockets, live, by one scatter-gather on its `.status` subject.
"""

from __future__ import annotations

import contextlib
import shlex
from typing import Final, TypeVar

from fastapi import APIRouter, Request
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.bus import gather_replies
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import tunnel as tn
from byorouter_gateway.api.schemas import (
    APP_ERRORS,
    DeclaredModelView,
    TunnelClientView,
    TunnelRegistered,
    TunnelRegisterRequest,
    TunnelRevokedView,
    TunnelRotated,
    TunnelRotateRequest,
    TunnelStatusView,
)
from byorouter_gateway.deps import (
    AppPrincipalDep,
    BusDep,
    ConnectionIdDep,
    GatewayDep,
    read_body,
)

router = APIRouter(tags=["tunnels"])

MAX_BODY: Final = 16 * 1024
# The model server the command points at when the app does not say: Ollama's OpenAI API.
DEFAULT_UPSTREAM: Final = "http://127.0.0.1:11434/v1"
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Status: wait this long for a first answer, then this long after each for the others (copies
# holding a socket answer within a few ms of each other), never longer than the cap.
_FIRST_ANSWER_S: Final = 0.3
_SETTLE_S: Final = 0.15
_MAX_WAIT_S: Final = 1.0

Body = TypeVar("Body", bound=BaseModel)


async def _optional_body(request: Request, model: type[Body]) -> Body:
    """`model` from the JSON body; an empty body is all defaults."""
    raw = await read_body(request, MAX_BODY)
    if not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        # The field's name and the rule, never the value sent.
        raise errors.bad_request(f"Invalid request body: {first['msg']}.", param=param) from None


def _checked_tunnel_id(tunnel_id: str) -> str:
    if not tn.is_tunnel_id(tunnel_id):
        raise errors.bad_request(
            "Malformed tunnel id: expected tun_ followed by letters, digits, - or _.",
            code="invalid_tunnel_id",
        )
    return tunnel_id


def _command(token: str, connect_url: str) -> str:
    return (
        f"BYOROUTER_TUNNEL_TOKEN={shlex.quote(token)} byorouter-tunnel "
        f"--url {shlex.quote(connect_url)} --upstream {DEFAULT_UPSTREAM}"
    )


def _no_store(body: BaseModel, status_code: int = 200) -> Response:
    return Response(
        body.model_dump_json().encode(),
        status_code=status_code,
        media_type="application/json",
        headers=_NO_STORE,
    )


async def _live_clients(nc: NatsClient, tunnel_id: str) -> list[tn.TunnelClients]:
    """Every answer to the tunnel's `.status`: one per tunnel service copy holding a socket.

    No subscriber at all is NATS no-responders, at once: the tunnel is offline.
    """
    found: list[tn.TunnelClients] = []
    for body in await gather_replies(
        nc,
        tn.status_subject(tunnel_id),
        b"{}",
        first_wait_s=_FIRST_ANSWER_S,
        settle_s=_SETTLE_S,
        max_wait_s=_MAX_WAIT_S,
    ):
        with contextlib.suppress(ValueError):
            found.append(tn.TunnelClients.model_validate_json(body))
    return found


@router.post(
    "/api/tunnel/register",
    summary="Register a tunnel for the user's self-hosted model server (token shown once)",
    status_code=201,
    response_class=Response,
    responses={201: {"model": TunnelRegistered}, **APP_ERRORS},
)
async def register_tunnel(
    request: Request,
    principal: AppPrincipalDep,
    connection_id: ConnectionIdDep,
    bus: BusDep,
    gateway: GatewayDep,
) -> Response:
    """Body (all optional): `{"userId", "name", "modelInfo": {"name", "capabilities"}}`."""
    body = await _optional_body(request, TunnelRegisterRequest)
    issued = await bus.request(
        ks.TUNNEL_REGISTER,
        ks.TunnelRegister(
            app_id=principal.app_id,
            connection_id=connection_id,
            name=body.name,
            models=body.declared_models(),
        ),
    )
    token = issued.token.get_secret_value()
    connect_url = gateway.settings.tunnel_public_url
    registered = TunnelRegistered(
        tunnel_id=issued.tunnel_id,
        token=token,
        connect_url=connect_url,
        command=_command(token, connect_url),
    )
    return _no_store(registered, status_code=201)


@router.get(
    "/api/tunnel/status/{tunnel_id}",
    summary="Whether a tunnel is online now, its clients and models",
    responses=APP_ERRORS,
)
async def tunnel_status(
    tunnel_id: str, principal: AppPrincipalDep, bus: BusDep
) -> TunnelStatusView:
    info = await bus.request(
        ks.TUNNEL_GET,
        ks.TunnelRef(app_id=principal.app_id, tunnel_id=_checked_tunnel_id(tunnel_id)),
    )
    live = await _live_clients(bus.nc, info.tunnel_id) if info.status == "active" else []
    clients = [c for answer in live for c in answer.clients]
    models = sorted({m for answer in live for m in answer.models}) if clients else info.models
    return TunnelStatusView(
        tunnel_id=info.tunnel_id,
        connection_id=info.connection_id,
        state="online" if clients else "offline",
        status=info.status,
        clients=[TunnelClientView(**c.model_dump()) for c in clients],
        last_seen=info.last_seen_at,
        models=models,
        requests_in_flight=sum(c.in_flight for c in clients),
        declared_models=[
            DeclaredModelView(name=m.name, capabilities=m.capabilities)
            for m in info.declared_models
        ],
    )


@router.post(
    "/api/tunnel/{tunnel_id}/rotate",
    summary="A new token; the old one opens new sockets only during the overlap",
    response_class=Response,
    responses={200: {"model": TunnelRotated}, **APP_ERRORS},
)
async def rotate_tunnel(
    tunnel_id: str, request: Request, principal: AppPrincipalDep, bus: BusDep, gateway: GatewayDep
) -> Response:
    """Body (optional): `{"overlap_seconds": 300}`; sockets already up are never cut."""
    body = await _optional_body(request, TunnelRotateRequest)
    issued = await bus.request(
        ks.TUNNEL_ROTATE,
        ks.TunnelRotate(
            app_id=principal.app_id,
            tunnel_id=_checked_tunnel_id(tunnel_id),
            overlap_s=body.overlap_seconds,
        ),
    )
    token = issued.token.get_secret_value()
    rotated = TunnelRotated(
        tunnel_id=issued.tunnel_id,
        token=token,
        previous_valid_until=issued.previous_valid_until,
        command=_command(token, gateway.settings.tunnel_public_url),
    )
    return _no_store(rotated)


@router.post(
    "/api/tunnel/{tunnel_id}/revoke",
    summary="Revoke a tunnel now: every token and session refused, every socket closed",
    responses=APP_ERRORS,
)
async def revoke_tunnel(
    tunnel_id: str, principal: AppPrincipalDep, bus: BusDep
) -> TunnelRevokedView:
    revoked = await bus.request(
        ks.TUNNEL_REVOKE,
        ks.TunnelRef(app_id=principal.app_id, tunnel_id=_checked_tunnel_id(tunnel_id)),
    )
    return TunnelRevokedView(tunnel_id=revoked.tunnel_id, revoked=revoked.revoked)
