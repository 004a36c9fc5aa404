"""The tunnel option: a person's own model server reached through `byorouter-tunnel`.

What the consent and manage pages share: registering and rotating a tunnel (its token is shown
once, in the page body of a `no-store` response, never in a URL or a log), the "Run this on your
server" page with the one command to run, and the tunnel's status as a person sees it: keystore's
record (last seen, last reported models) plus the live clients every tunnel service copy holding
one of its sockets reports on `.status` (no answer at all: offline).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from byorouter_common.bus import gather_replies
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import tunnel as tn
from byorouter_common.errors import ByoError
from byorouter_connect.deps import bus_of, settings_of
from byorouter_connect.pages import render

log = logging.getLogger(__name__)

# How long, after a rotation, the old token still opens new sockets (running ones stay up).
ROTATION_OVERLAP_S: Final = 300
# Every page showing a token says so twice: to the browser and to anything in between.
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class ModelServer:
    """A model server the command can point at: its name and its usual local address."""

    name: str
    url: str


# The first is what the command shows without JavaScript (the page says how to change it).
MODEL_SERVERS: Final = (
    ModelServer("Ollama", "http://127.0.0.1:11434/v1"),
    ModelServer("vLLM", "http://127.0.0.1:8000/v1"),
    ModelServer("llama.cpp server", "http://127.0.0.1:8080/v1"),
    ModelServer("LM Studio", "http://127.0.0.1:1234/v1"),
)


class TunnelStatus(BaseModel):
    """A tunnel's status as the pages show it and their script polls it (JSON)."""

    tunnel_id: str
    state: Literal["online", "offline", "revoked"]
    # Clients connected right now (two when the person runs two for high availability).
    clients: int
    # Live models while online; else the ones the client last reported.
    models: list[str]
    last_seen_at: datetime | None
    # `last_seen_at` as the page shows it ("2026-05-01 12:00 UTC", or "never").
    last_seen: str
    # One sentence for the page's live region, e.g. "Online: 1 client connected, 3 models.".
    summary: str


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _summary(state: str, clients: int, models: list[str], last_seen: datetime | None) -> str:
    if state == "revoked":
        return "Revoked: this tunnel no longer accepts connections."
    if state == "online":
        found = f"{len(models)} model{'' if len(models) == 1 else 's'}" if models else "no models"
        plural = "" if clients == 1 else "s"
        return f"Online: {clients} client{plural} connected, {found} found."
    if last_seen is not None:
        return f"Offline: last connected {_when(last_seen)}."
    return "Offline: waiting for your server to connect."


async def live_clients(request: Request, tunnel_id: str) -> list[tn.TunnelClients]:
    """Every copy holding a socket of the tunnel answers for its sockets; none means offline."""
    bodies = await gather_replies(bus_of(request).nc, tn.status_subject(tunnel_id), b"")
    answers = []
    for body in bodies:
        try:
            answers.append(tn.TunnelClients.model_validate_json(body))
        except ValidationError:
            log.warning("unreadable tunnel status answer", extra={"tunnel_id": tunnel_id})
    return answers


async def tunnel_status(request: Request, info: ks.TunnelInfo) -> TunnelStatus:
    """The tunnel as a person sees it: keystore's record plus its live clients."""
    if info.status == "revoked":
        state: Literal["online", "offline", "revoked"] = "revoked"
        clients, models = 0, list(info.models)
    else:
        answers = await live_clients(request, info.tunnel_id)
        clients = sum(len(a.clients) for a in answers)
        live = sorted({m for a in answers for m in a.models})
        state = "online" if clients else "offline"
        models = live if clients else list(info.models)
    return TunnelStatus(
        tunnel_id=info.tunnel_id,
        state=state,
        clients=clients,
        models=models,
        last_seen_at=info.last_seen_at,
        last_seen=_when(info.last_seen_at) if info.last_seen_at else "never",
        summary=_summary(state, clients, models, info.last_seen_at),
    )


async def tunnel_info(request: Request, app_id: str, tunnel_id: str) -> ks.TunnelInfo:
    """Keystore's record of the app's tunnel; ByoError 404 for a missing or another app's."""
    return await bus_of(request).request(
        ks.TUNNEL_GET, ks.TunnelRef(app_id=app_id, tunnel_id=tunnel_id)
    )


async def register(request: Request, app_id: str, connection_id: str) -> ks.TunnelToken:
    """A tunnel for the connection's self-hosted provider (created keyless if it has none)."""
    return await bus_of(request).request(
        ks.TUNNEL_REGISTER, ks.TunnelRegister(app_id=app_id, connection_id=connection_id)
    )


async def rotate(request: Request, app_id: str, tunnel_id: str) -> ks.TunnelToken:
    return await bus_of(request).request(
        ks.TUNNEL_ROTATE,
        ks.TunnelRotate(app_id=app_id, tunnel_id=tunnel_id, overlap_s=ROTATION_OVERLAP_S),
    )


async def revoke(request: Request, app_id: str, tunnel_id: str) -> ks.TunnelRevoked:
    return await bus_of(request).request(
        ks.TUNNEL_REVOKE, ks.TunnelRef(app_id=app_id, tunnel_id=tunnel_id)
    )


def offline_status(tunnel_id: str) -> TunnelStatus:
    """A tunnel registered a moment ago: nobody can have connected yet."""
    return TunnelStatus(
        tunnel_id=tunnel_id,
        state="offline",
        clients=0,
        models=[],
        last_seen_at=None,
        last_seen="never",
        summary=_summary("offline", 0, [], None),
    )


@dataclass(frozen=True)
class StatusSource:
    """Where the page's script (and its "Check status" button) asks for the status: the
    consent pages POST their form (no session to carry it), the manage pages GET with the
    session cookie."""

    action: str
    method: Literal["get", "post"]
    # The POSTed form's hidden fields (consent: the authorization request, CSRF, the code).
    fields: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ContinueForm:
    """The consent page's way back to the app: POSTs the code for the 303 redirect."""

    app_name: str
    fields: Mapping[str, str]
    code_expires_at: datetime


def token_page(
    request: Request,
    *,
    page_title: str,
    tunnel_id: str,
    token: str | None,
    status: TunnelStatus,
    source: StatusSource,
    headers: Mapping[str, str] | None = None,
    continue_form: ContinueForm | None = None,
    previous_valid_until: datetime | None = None,
    problems: list[str] | None = None,
    back_to_manage: str | None = None,
    status_code: int = 200,
) -> Response:
    """ "Run this on your server": the token and the command (once), and the live status."""
    context: dict[str, Any] = {
        "page_title": page_title,
        "tunnel_id": tunnel_id,
        "token": token,
        "tunnel_url": settings_of(request).tunnel_public_url,
        "client_url": client_download_url(settings_of(request).tunnel_public_url),
        "servers": MODEL_SERVERS,
        "tunnel": status,
        "source": source,
        "continue_form": continue_form,
        "code_expires": _when(continue_form.code_expires_at) if continue_form else None,
        "previous_valid_until": _when(previous_valid_until) if previous_valid_until else None,
        "overlap_minutes": ROTATION_OVERLAP_S // 60,
        "problems": problems or [],
        "back_to_manage": back_to_manage,
    }
    return render(
        "tunnel_token.html",
        status_code,
        headers={**(headers or {}), **NO_STORE},
        **context,
    )


def failure(exc: ByoError) -> str:
    """What a person reads when a tunnel call failed (never the bus's own words)."""
    log.warning("tunnel call failed", extra={"code": exc.code, "status": exc.status})
    if exc.status == 403:
        return "This tunnel was revoked. Set up a new one."
    if exc.status == 404:
        return "This tunnel no longer exists. Set up a new one."
    return "The tunnel could not be reached right now; please try again in a minute."


def client_download_url(tunnel_public_url: str) -> str:
    """The tunnel service's page that says how to pip-install the client from this deployment:
    `/client` beside the clients' WebSocket endpoint (ws -> http, wss -> https)."""
    url = tunnel_public_url.removesuffix("/tunnel")
    if url.startswith("wss://"):
        url = "https://" + url.removeprefix("wss://")
    elif url.startswith("ws://"):
        url = "http://" + url.removeprefix("ws://")
    return url + "/client"
