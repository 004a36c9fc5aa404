"""POST /v1/connect/sessions: a short-lived link the app sends its user to, to manage a connection.

The link carries a single-use token (256 bits, stored hashed, a few minutes to live) and never
the connection id; Connect trades it for a browser session of its own on first use. Another
app's connection is the same 404 as one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_gateway.api.schemas import APP_ERRORS, inline_schema
from byorouter_gateway.deps import (
    CONNECTION_ID,
    AppPrincipalDep,
    BusDep,
    GatewayDep,
    checked_connection_id,
    read_body,
)

router = APIRouter(tags=["connect"])

MAX_BODY: Final = 8 * 1024
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ManageSessionRequest(BaseModel):
    """The body, for the document only: `_session_request` reads it by hand."""

    connection_id: str = Field(pattern=CONNECTION_ID.pattern)
    return_url: str | None = Field(
        default=None, description="Where Connect sends the user back: a redirect URI's origin."
    )


class ManageSessionLink(BaseModel):
    url: str
    expires_at: datetime


async def _session_request(request: Request) -> tuple[str, str | None]:
    raw = await read_body(request, MAX_BODY)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise errors.bad_request('Send a JSON object: {"connection_id": "conn_...", ...}.')
    connection_id = body.get("connection_id")
    if not isinstance(connection_id, str):
        raise errors.bad_request("connection_id is required.", param="connection_id")
    return_url = body.get("return_url")
    if return_url is not None and not isinstance(return_url, str):
        raise errors.bad_request("return_url must be a string.", param="return_url")
    return checked_connection_id(connection_id), return_url or None


@router.post(
    "/v1/connect/sessions",
    summary="A short-lived link for the user to manage their connection in Connect",
    response_class=Response,
    responses={
        200: {"model": ManageSessionLink, "description": "Redirect the user's browser to url."},
        **APP_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(ManageSessionRequest)}},
        }
    },
)
async def create_manage_session(
    request: Request, principal: AppPrincipalDep, bus: BusDep, gateway: GatewayDep
) -> Response:
    """Body: `connection_id`, and optionally `return_url` (same origin as a redirect URI)."""
    connection_id, return_url = await _session_request(request)
    link = await bus.request(
        cn.MANAGE_LINK_CREATE,
        cn.ManageLinkCreate(
            app_id=principal.app_id,
            connection_id=connection_id,
            return_url=return_url,
            ttl_s=gateway.settings.manage_link_ttl_s,
        ),
    )
    base = gateway.settings.connect_public_url.rstrip("/")
    url = f"{base}/manage/start?{urlencode({'token': link.token.get_secret_value()})}"
    body = ManageSessionLink(url=url, expires_at=link.expires_at)
    return Response(
        body.model_dump_json().encode(), media_type="application/json", headers=_NO_STORE
    )
