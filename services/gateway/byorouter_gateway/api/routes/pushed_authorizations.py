"""POST /v1/oauth/par: the app's server pushes its authorization request (RFC 9126) and gets a
single-use `request_uri` to send the browser to Connect with (`/authorize?client_id&request_uri`).

This is the one way to narrow the app's provider policy for one person (`allowed_providers`):
the narrowing, the redirect URI, the state and the PKCE challenge never pass through the
browser, so nothing a person edits in the address bar can widen it.
"""

from __future__ import annotations

import base64
from typing import Any, Final, get_args
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.contracts.keystore import provider_policy as pp
from byorouter_common.contracts.keystore.names import PROVIDER_KINDS, ProviderKind
from byorouter_common.errors import ByoError
from byorouter_gateway.api.schemas import APP_ERRORS
from byorouter_gateway.deps import app_principal, bus_of, read_body
from byorouter_gateway.errors import ErrorResponse

router = APIRouter(tags=["connect"])

MAX_BODY: Final = 16 * 1024
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FIELDS: Final = (
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "allowed_providers",
)
_KINDS: Final = frozenset(get_args(ProviderKind))


class PushedAuthorizationResponse(BaseModel):
    request_uri: str
    expires_in: int


def _invalid(message: str, param: str) -> ByoError:
    return errors.bad_request(message, code="invalid_request", param=param)


async def _pushed_fields(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_BODY)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            raise errors.bad_request("The body is not valid UTF-8.") from None
        body: dict[str, Any] = {}
        for name, value in pairs:
            if name in body:
                raise _invalid(f"{name} is given more than once.", name)
            body[name] = value
        return body
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise errors.bad_request(
            "Send a form-encoded body (RFC 9126) or a JSON object with redirect_uri, "
            "code_challenge and code_challenge_method."
        )
    return parsed


def _kinds(value: Any) -> list[ProviderKind] | None:
    """`allowed_providers`: space-separated (as OAuth's scope) or a JSON list of kinds."""
    if value is None or value == "":
        return None
    names = value.split() if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _invalid(
            "allowed_providers must list at least one provider kind.", "allowed_providers"
        )
    unknown = [n for n in names if n not in _KINDS]
    if unknown:
        raise _invalid(
            f"allowed_providers names unknown kinds; use: {', '.join(PROVIDER_KINDS)}.",
            "allowed_providers",
        )
    return [k for k in PROVIDER_KINDS if k in names]


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string.", name)
    return value


def _pushed(body: dict[str, Any], app_id: str, client_id: str) -> pp.PushedAuthorization:
    unknown = [name for name in body if name not in _FIELDS]
    if unknown:
        # A misspelt allowed_providers must not silently allow everything.
        raise _invalid(f"Unknown parameter: {sorted(unknown)[0]}.", sorted(unknown)[0])
    if _text(body, "client_id") not in (None, client_id):
        raise _invalid("client_id is not the app this API key belongs to.", "client_id")
    if _text(body, "response_type") not in (None, "code"):
        raise errors.bad_request(
            "Only response_type=code is supported.",
            code="unsupported_response_type",
            param="response_type",
        )
    redirect_uri = _text(body, "redirect_uri")
    if redirect_uri is None or len(redirect_uri) > 2000:
        raise _invalid("redirect_uri is required.", "redirect_uri")
    challenge = _text(body, "code_challenge")
    if challenge is None or _text(body, "code_challenge_method") != "S256":
        raise _invalid(
            "PKCE is required: send code_challenge and code_challenge_method=S256.",
            "code_challenge",
        )
    if len(challenge) != 43 or not set(challenge) <= _BASE64URL:
        raise _invalid(
            "code_challenge must be the base64url SHA-256 of the code verifier (43 characters).",
            "code_challenge",
        )
    state = _text(body, "state")
    if state is not None and len(state.encode()) > 2048:
        raise _invalid("state is too long.", "state")
    return pp.PushedAuthorization(
        app_id=app_id,
        redirect_uri=redirect_uri,
        state_b64=base64.urlsafe_b64encode(state.encode()).decode() if state is not None else None,
        code_challenge=challenge,
        allowed_providers=_kinds(body.get("allowed_providers")),
    )


_BASE64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# The body is read by hand (form or JSON, duplicates refused), so its document is written here
# to say exactly what `_pushed` takes.
_BODY_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["redirect_uri", "code_challenge", "code_challenge_method"],
    "properties": {
        "redirect_uri": {"type": "string", "minLength": 1, "maxLength": 2000},
        "code_challenge": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
        "code_challenge_method": {"type": "string", "enum": ["S256"]},
        "state": {"type": "string", "minLength": 1, "maxLength": 2048},
        "response_type": {"type": "string", "enum": ["code"]},
        "client_id": {"type": "string", "description": "If given, the API key's own app."},
        "allowed_providers": {
            "type": "string",
            "description": "Space-separated provider kinds: "
            + ", ".join(PROVIDER_KINDS)
            + ". Only narrows the app's policy.",
        },
    },
}
_REQUEST_BODY: Final = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {"schema": _BODY_SCHEMA},
        "application/json": {"schema": _BODY_SCHEMA},
    },
}


@router.post(
    "/v1/oauth/par",
    summary="Push an authorization request (RFC 9126), optionally narrowing the provider policy",
    response_class=Response,
    status_code=201,
    responses={
        201: {"model": PushedAuthorizationResponse, "description": "Send the browser to Connect."},
        **APP_ERRORS,
    },
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def push_authorization(request: Request) -> Response:
    """Body (form or JSON): `redirect_uri`, `code_challenge`, `code_challenge_method=S256`, and
    optionally `state`, `response_type=code`, `client_id`, `allowed_providers`."""
    try:
        principal = await app_principal(request)
        pushed = _pushed(await _pushed_fields(request), principal.app_id, principal.client_id)
        if cn.redirect_uri_problem(pushed.redirect_uri) is not None:
            raise errors.bad_request(
                "redirect_uri is not registered for this app.",
                code="invalid_redirect_uri",
                param="redirect_uri",
            )
        created = await bus_of(request).request(pp.PAR_CREATE, pushed)
    except ByoError as exc:
        response: Response = ErrorResponse(exc)
        response.headers.update(_NO_STORE)
        return response
    body = PushedAuthorizationResponse(
        request_uri=created.request_uri.get_secret_value(), expires_in=created.expires_in
    )
    return Response(
        body.model_dump_json().encode(),
        status_code=201,
        media_type="application/json",
        headers=_NO_STORE,
    )
