"""POST /v1/oauth/token: an app's server trades an authorization code (+ PKCE verifier) for a
connection id.

The body is JSON or form-encoded (what OAuth libraries send), parsed here by hand so no framework
error ever echoes a submitted code or verifier. Every refusal of the code itself is the same
`invalid_grant`, whatever check failed. Failed attempts are limited per app and per client IP,
and every answer carries `Cache-Control: no-store`.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field, SecretStr
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from byorouter_common.rate_limit import TokenBuckets, client_ip
from byorouter_gateway.api.schemas import APP_ERRORS, ProviderView, inline_schema
from byorouter_gateway.deps import Gateway, app_principal, bus_of, read_body
from byorouter_gateway.errors import ErrorResponse
from byorouter_gateway.settings import GatewaySettings

router = APIRouter(tags=["connect"])

NO_STORE: Final = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
MAX_BODY: Final = 16 * 1024
_VERIFIER: Final = re.compile(cn.CODE_VERIFIER_PATTERN)
_FIELDS: Final = ("grant_type", "code", "redirect_uri", "code_verifier")


class TokenRequest(BaseModel):
    """The body, for the document only: `_token_request` reads it by hand (JSON or form)."""

    grant_type: Literal["authorization_code"] = "authorization_code"
    code: str = Field(min_length=1, max_length=256)
    redirect_uri: str = Field(min_length=1, max_length=2000)
    code_verifier: str = Field(pattern=cn.CODE_VERIFIER_PATTERN)


_TOKEN_REQUEST: Final = inline_schema(TokenRequest)


class TokenResponse(BaseModel):
    """What a successful exchange returns: the connection id and its providers (masked)."""

    connection_id: str
    providers: list[ProviderView]


class CodeExchangeLimits:
    """The per-app and per-IP failure budgets of one gateway copy."""

    def __init__(self, settings: GatewaySettings) -> None:
        # Only failures spend these, so an app connecting many people at once is never slowed
        # down, while guessing codes is.
        message = "Too many failed code exchanges; wait before trying again."
        self.per_app = TokenBuckets.per_minute(settings.oauth_failures_per_app_per_min, message)
        self.per_ip = TokenBuckets.per_minute(settings.oauth_failures_per_ip_per_min, message)

    def check(self, app_id: str, ip: str) -> None:
        self.per_app.check(app_id)
        self.per_ip.check(ip)

    def failed(self, app_id: str, ip: str) -> None:
        self.per_app.spend(app_id)
        self.per_ip.spend(ip)


def _no_store(response: Response) -> Response:
    response.raw_headers.extend(NO_STORE)
    return response


def _invalid_request(message: str) -> ByoError:
    return errors.bad_request(message, code="invalid_request")


def _single_values(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in pairs:
        if name in values:
            # RFC 6749 3.2: parameters must not be sent more than once.
            raise _invalid_request(f"{name} is given more than once.")
        values[name] = value
    return values


async def _token_request(request: Request) -> dict[str, str]:
    """The four OAuth fields from a JSON or form body; messages name fields, never values."""
    raw = await read_body(request, MAX_BODY)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        try:
            body = _single_values(parse_qsl(raw.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise _invalid_request("The body is not valid UTF-8.") from None
    else:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _invalid_request(
                "Send a JSON object or a form-encoded body with code, redirect_uri and "
                "code_verifier."
            ) from None
        if not isinstance(parsed, dict):
            raise _invalid_request("The body must be a JSON object.")
        body = parsed
    fields: dict[str, str] = {}
    for name in _FIELDS:
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise _invalid_request(f"{name} must be a string.")
        fields[name] = value
    return fields


def _checked(fields: dict[str, str]) -> tuple[str, str, str]:
    grant_type = fields.get("grant_type", "authorization_code")
    if grant_type != "authorization_code":
        raise errors.bad_request(
            "grant_type must be authorization_code.", code="unsupported_grant_type"
        )
    for name in ("code", "redirect_uri", "code_verifier"):
        if name not in fields:
            raise _invalid_request(f"{name} is required.")
    if len(fields["code"]) > 256 or len(fields["redirect_uri"]) > 2000:
        raise errors.bad_request("The authorization code is invalid.", code="invalid_grant")
    if not _VERIFIER.match(fields["code_verifier"]):
        raise _invalid_request(
            "code_verifier must be 43 to 128 characters of letters, digits, '-', '.', '_', '~'."
        )
    return fields["code"], fields["redirect_uri"], fields["code_verifier"]


@router.post(
    "/v1/oauth/token",
    summary="Exchange an authorization code (with its PKCE verifier) for a connection id",
    response_class=Response,
    responses={
        200: {"model": TokenResponse, "description": "The connection the person created."},
        **APP_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _TOKEN_REQUEST},
                "application/x-www-form-urlencoded": {"schema": _TOKEN_REQUEST},
            },
        }
    },
)
async def exchange_code(request: Request) -> Response:
    """Body (JSON or form): `code`, `redirect_uri`, `code_verifier`, optional `grant_type`."""
    try:
        principal = await app_principal(request)
        ip = client_ip(request)
        limits: CodeExchangeLimits = request.app.state.code_exchange_limits
        limits.check(principal.app_id, ip)
        try:
            code, redirect_uri, verifier = _checked(await _token_request(request))
            connection = await bus_of(request).request(
                cn.CODE_EXCHANGE,
                cn.CodeExchange(
                    app_id=principal.app_id,
                    code=SecretStr(code),
                    redirect_uri=redirect_uri,
                    code_verifier=SecretStr(verifier),
                ),
            )
        except ByoError as exc:
            if exc.status == 400:
                limits.failed(principal.app_id, ip)
            raise
    except ByoError as exc:
        return _no_store(ErrorResponse(exc))
    body = TokenResponse(
        connection_id=connection.connection_id,
        providers=[ProviderView.of(p) for p in connection.providers],
    )
    return _no_store(Response(body.model_dump_json().encode(), media_type="application/json"))


def install(app: FastAPI) -> None:
    """Include the route and give it this gateway copy's failure budgets."""
    gateway: Gateway = app.state.gateway
    app.state.code_exchange_limits = CodeExchangeLimits(gateway.settings)
    app.include_router(router)
