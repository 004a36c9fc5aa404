"""Dependency aliases the routes declare: who is calling, for which connection, over which bus.

The gateway's shared objects live in one `Gateway` on `app.state`; these small functions hand
routes what they need from it, so a route reads as its contract and nothing else. Every
dependency is `async def`: FastAPI runs a plain `def` dependency in a thread pool, which would
cost more than the whole hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Final, TypeVar

from fastapi import Depends, Header, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from byorouter_common import errors
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.rate_limit import TokenBuckets, client_ip
from byorouter_gateway.auth import AppKeyAuth
from byorouter_gateway.limits import RequestLimits
from byorouter_gateway.middleware import APP_ID_SCOPE_KEY, request_id_of
from byorouter_gateway.settings import GatewaySettings

CONNECTION_HEADER: Final = "x-byorouter-connection"
CONNECTION_ID: Final = re.compile(r"^conn_[A-Za-z0-9]{8,64}$")
CREDENTIAL_TESTS_MESSAGE: Final = "Too many key tests for this app; wait a minute, then test again."


@dataclass(frozen=True)
class Gateway:
    """Everything a request handler shares with the others in this process."""

    settings: GatewaySettings
    bus: Callable[[], Bus]
    app_keys: AppKeyAuth
    # Per app and per connection, shared by every gateway copy.
    limits: RequestLimits
    # Key tests (POST /v1/credentials/test) per app: each makes the router call a provider of
    # the caller's choosing, so unthrottled it would check stolen keys for anyone.
    credential_tests: TokenBuckets = field(
        default_factory=lambda: TokenBuckets.per_minute(30, CREDENTIAL_TESTS_MESSAGE)
    )


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def current_gateway(request: Request) -> Gateway:
    return gateway_of(request)


class AppKeyBearer(SecurityBase):
    """The raw `Authorization` header, documented in OpenAPI as the app's bearer key."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="byo_sk_<key_id>_<secret>",
            description="The app's API key, as issued by `byorouter app create`.",
        )
        self.scheme_name = "AppKey"

    async def __call__(self, request: Request) -> str | None:
        return request.headers.get("authorization")


_app_key_bearer = AppKeyBearer()


# --- plain functions: what the dependencies do, callable directly on the hot path -------------


async def app_principal(request: Request) -> ks.AppPrincipal:
    """The app whose key authorizes `request` (401 otherwise), within its rate limit (429)."""
    gateway = gateway_of(request)
    principal = await gateway.app_keys.authenticate(
        request.headers.get("authorization"), client_ip(request)
    )
    request.scope[APP_ID_SCOPE_KEY] = principal.app_id
    await gateway.limits.admit_app(principal)
    return principal


def bus_of(request: Request) -> Bus:
    bus = gateway_of(request).bus()
    if not bus.nc.is_connected:
        # While nats-py reconnects it would buffer the request; failing fast is kinder.
        raise errors.unavailable("The message bus is unavailable.")
    return bus


def checked_connection_id(connection_id: str) -> str:
    # fullmatch: `$` alone would let a trailing newline through.
    if not CONNECTION_ID.fullmatch(connection_id):
        raise errors.bad_request(
            "Malformed connection id: expected conn_ followed by 8 to 64 letters or digits.",
            code="invalid_connection_id",
        )
    return connection_id


def connection_id_of(request: Request) -> str:
    """The end user's connection named by the `X-Byorouter-Connection` header."""
    connection_id = request.headers.get(CONNECTION_HEADER)
    if not connection_id:
        raise errors.bad_request(
            "Missing X-Byorouter-Connection header: say which user's connection to use.",
            code="missing_connection",
        )
    return checked_connection_id(connection_id)


async def admitted_connection_id(request: Request, principal: ks.AppPrincipal) -> str:
    """`connection_id_of`, within the connection's rate limit (429): for calls that reach a
    provider (chat, embeddings, responses), where one user's runaway loop would cost money."""
    connection_id = connection_id_of(request)
    await gateway_of(request).limits.admit_connection(principal, connection_id)
    return connection_id


# --- dependencies: the same, plus what OpenAPI should document -----------------------------


async def current_app(
    request: Request, _authorization: Annotated[str | None, Depends(_app_key_bearer)]
) -> ks.AppPrincipal:
    return await app_principal(request)


async def current_bus(request: Request) -> Bus:
    return bus_of(request)


async def current_connection_id(
    request: Request,
    _x_byorouter_connection: Annotated[
        str | None,
        Header(
            alias=CONNECTION_HEADER,
            description="The end user's connection id (`conn_...`) to route through.",
        ),
    ] = None,
) -> str:
    return connection_id_of(request)


async def current_request_id(request: Request) -> str:
    return request_id_of(request.scope)


AppPrincipalDep = Annotated[ks.AppPrincipal, Depends(current_app)]
BusDep = Annotated[Bus, Depends(current_bus)]
ConnectionIdDep = Annotated[str, Depends(current_connection_id)]
GatewayDep = Annotated[Gateway, Depends(current_gateway)]
RequestIdDep = Annotated[str, Depends(current_request_id)]


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    too_large = errors.too_large(f"Request body is larger than {limit} bytes.")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise errors.bad_request("Malformed Content-Length header.")
        if int(declared) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise errors.bad_request("The client closed the request.", code="client_closed") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


Body = TypeVar("Body", bound=BaseModel)


async def json_body(request: Request, model: type[Body], limit: int) -> Body:
    """`model` from the JSON body (at most `limit` bytes); a refusal names the field and the
    rule, never the value sent (it may be a key)."""
    raw = await read_body(request, limit)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise errors.bad_request(f"Invalid request body: {first['msg']}.", param=param) from None
