"""Checking an authorization request (RFC 9700) and answering the app at its redirect URI.

A bad `client_id` or `redirect_uri` gets an error page and never a redirect (the redirect URI is
not trusted until it matches a registered one exactly); any other problem goes back to the app as
`error=...` with its `state`. `state` is returned byte for byte: it is read from the raw query
string, carried through the forms base64url-encoded, and percent-encoded again from the same
bytes. PKCE S256 is required. Every POST is checked again from scratch, CSRF token first.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote

from fastapi import Request
from pydantic import SecretStr
from starlette.responses import RedirectResponse, Response

from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.contracts.keystore import provider_policy as pp
from byorouter_common.errors import ByoError
from byorouter_connect.deps import bus_of, settings_of
from byorouter_connect.pages import PageError
from byorouter_connect.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    content_security_policy,
    read_form,
    tokens_match,
)

log = logging.getLogger(__name__)

MAX_STATE_BYTES: Final = 2048
_Params = Mapping[str, list[bytes]]


class ErrorRedirect(Exception):
    """An authorization problem the app should hear about: 303 to its redirect URI."""

    def __init__(
        self, authorization: Authorization, error: str, description: str, error_uri: str = ""
    ) -> None:
        super().__init__(description)
        extra = {"error_uri": error_uri} if error_uri else {}
        self.url = authorization.redirect_url(error=error, error_description=description, **extra)
        self.csp = authorization.csp


@dataclass(frozen=True)
class Authorization:
    """A checked authorization request: the app, where to send the answer, and PKCE."""

    app: cn.ConsentApp
    redirect_uri: str
    state: bytes | None
    code_challenge: str = ""
    # Set when the app's server pushed the request (RFC 9126): the forms then carry only it and
    # the client id, and every post reads the rest (and the narrowed policy) from keystore again.
    request_uri: str | None = None
    allowed_providers: tuple[str, ...] = ()

    def allows(self, kind: str) -> bool:
        return kind in (self.allowed_providers or self.app.allowed_providers)

    def redirect_url(self, **params: str) -> str:
        """The redirect URI with `params` and the original state appended (RFC 6749 4.1.2)."""
        pairs = [f"{name}={quote(value, safe='')}" for name, value in params.items()]
        if self.state is not None:
            pairs.append(f"state={quote(self.state, safe='')}")
        separator = "&" if "?" in self.redirect_uri else "?"
        return self.redirect_uri + separator + "&".join(pairs)

    @property
    def csp(self) -> str:
        # Chrome applies form-action to where a form's POST redirects: the app's origin too.
        return content_security_policy([cn.origin_of(self.redirect_uri)])

    def hidden_fields(self) -> dict[str, str]:
        """What the page's forms carry back (the state base64url-encoded, byte for byte)."""
        if self.request_uri is not None:
            return {"client_id": self.app.client_id, "request_uri": self.request_uri}
        fields = {
            "client_id": self.app.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        if self.state is not None:
            fields["state_b64"] = base64.urlsafe_b64encode(self.state).decode()
        return fields


def query_params(request: Request) -> dict[str, list[bytes]]:
    """The raw query string as bytes per name: percent-decoding only, no charset guessing."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    params: dict[str, list[bytes]] = {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, encoding="latin-1", max_num_fields=50)
    except ValueError:
        pairs = []
    for name, value in pairs:
        params.setdefault(name, []).append(value.encode("latin-1"))
    return params


def form_params(form: Mapping[str, str]) -> dict[str, list[bytes]]:
    params = {
        name: [form[name].encode()]
        for name in (
            "client_id",
            "redirect_uri",
            "code_challenge",
            "code_challenge_method",
            "request_uri",
        )
        if name in form
    }
    if "state_b64" in form:
        try:
            params["state"] = [base64.urlsafe_b64decode(form["state_b64"].encode())]
        except (binascii.Error, ValueError):
            params["state"] = []
    return params


def _single_text(params: _Params, name: str) -> str | None:
    values = params.get(name, [])
    if len(values) != 1:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _unknown_app() -> PageError:
    return PageError(
        400,
        "Unknown app",
        "The app that sent you here is not registered with this BYORouter, so nothing was "
        "shared. Go back to the app and try again, or tell its developers.",
    )


def _bad_redirect_uri() -> PageError:
    return PageError(
        400,
        "This link cannot be used",
        "The app that sent you here asked to send you back to an address it has not "
        "registered. To keep your keys safe, BYORouter will not send you there. Go back to the "
        "app and try again, or tell its developers.",
    )


def unavailable(exc: ByoError) -> PageError:
    log.warning("keystore call failed", extra={"code": exc.code, "status": exc.status})
    return PageError(
        503,
        "Connect is not available right now",
        "BYORouter could not reach its key store. Nothing was saved; please try again in a minute.",
    )


async def check_authorization(
    request: Request, params: _Params, *, opening: bool = False
) -> Authorization:
    """The request's app and redirect URI (else `PageError`), then the rest (else redirect).

    `opening`: the GET that starts the consent, which spends a pushed request's request_uri.
    """
    client_id = _single_text(params, "client_id")
    if not client_id or len(client_id) > 200:
        raise _unknown_app()
    try:
        app = await bus_of(request).request(
            cn.CONSENT_APP_GET, cn.ConsentAppGet(client_id=client_id)
        )
    except ByoError as exc:
        if exc.status == 404:
            raise _unknown_app() from None
        raise unavailable(exc) from None
    if "request_uri" in params:
        return await _pushed_authorization(request, app, params, opening=opening)
    redirect_uri = _single_text(params, "redirect_uri")
    # A plain string compare: no normalising of case, slashes, ports or escapes.
    if (
        redirect_uri is None
        or redirect_uri not in app.redirect_uris
        or cn.redirect_uri_problem(redirect_uri) is not None
    ):
        raise _bad_redirect_uri()
    states = params.get("state", [])
    authorization = Authorization(app, redirect_uri, states[0] if len(states) == 1 else None)
    if len(states) > 1 or any(len(values) > 1 for values in params.values()):
        raise ErrorRedirect(authorization, "invalid_request", "A parameter was given twice.")
    if authorization.state is not None and len(authorization.state) > MAX_STATE_BYTES:
        raise ErrorRedirect(authorization, "invalid_request", "state is too long.")
    response_type = _single_text(params, "response_type")
    if "response_type" in params and response_type != "code":
        raise ErrorRedirect(
            authorization, "unsupported_response_type", "Only response_type=code is supported."
        )
    challenge = _single_text(params, "code_challenge")
    method = _single_text(params, "code_challenge_method")
    missing = [name for name in _PKCE_PARAMS if not _single_text(params, name)]
    if missing or not challenge:
        raise ErrorRedirect(
            authorization,
            "invalid_request",
            _missing_pkce(missing, "response_type" not in params),
            settings_of(request).connect_guide_url,
        )
    if method != "S256":
        raise ErrorRedirect(authorization, "invalid_request", "code_challenge_method must be S256.")
    if len(challenge) != 43 or not set(challenge) <= _BASE64URL:
        raise ErrorRedirect(
            authorization,
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the code verifier (43 characters).",
        )
    return Authorization(app, redirect_uri, authorization.state, challenge)


_PKCE_PARAMS: Final = ("code_challenge", "code_challenge_method")
GUIDE_SECTION: Final = "docs/connect.md#1-send-the-browser-to-connect"


def _missing_pkce(missing: list[str], no_response_type: bool) -> str:
    """What a first try that followed only client_id, redirect_uri and state must add."""
    also = " (and response_type=code, assumed when absent)" if no_response_type else ""
    return (
        f"Missing {', '.join(missing)}{also}. BYORouter requires PKCE with S256: send "
        "code_challenge=BASE64URL(SHA256(code_verifier)) and code_challenge_method=S256, then "
        f"code_verifier with the code exchange. Guide: {GUIDE_SECTION}."
    )


def _expired_request() -> PageError:
    return PageError(
        400,
        "This link has expired",
        "The link that sent you here can be used once and only for a few minutes. Go back to "
        "the app and start again.",
    )


async def _pushed_authorization(
    request: Request, app: cn.ConsentApp, params: _Params, *, opening: bool
) -> Authorization:
    """What the app's server pushed; every other query parameter is ignored (RFC 9126 4), so
    nothing the browser adds or changes can widen the flow."""
    request_uri = _single_text(params, "request_uri")
    if not request_uri or len(request_uri) > 200:
        raise _expired_request()
    try:
        pushed = await bus_of(request).request(
            pp.PAR_OPEN,
            pp.PushedAuthorizationOpen(
                client_id=app.client_id, request_uri=SecretStr(request_uri), open=opening
            ),
        )
    except ByoError as exc:
        if exc.status in (400, 404):
            raise _expired_request() from None
        raise unavailable(exc) from None
    state = base64.urlsafe_b64decode(pushed.state_b64) if pushed.state_b64 is not None else None
    return Authorization(
        app,
        pushed.redirect_uri,
        state,
        pushed.code_challenge,
        request_uri=request_uri,
        allowed_providers=tuple(pushed.allowed_providers),
    )


_BASE64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def error_redirect(exc: ErrorRedirect) -> Response:
    return RedirectResponse(exc.url, status_code=303, headers={"Content-Security-Policy": exc.csp})


async def checked_post(request: Request) -> tuple[dict[str, str], Authorization]:
    """The form (CSRF-checked) and its authorization request, checked again from scratch."""
    form = await read_form(request)
    if not tokens_match(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
        raise PageError(
            403,
            "This form has expired",
            "For your safety this form could not be accepted (its security token is missing "
            "or wrong). Go back to the app and start again.",
        )
    return form, await check_authorization(request, form_params(form))


def back_to_app(authorization: Authorization, code: str) -> Response:
    # 303, never 307/308: the browser must not re-send the form (and its keys) to the app.
    return RedirectResponse(
        authorization.redirect_url(code=code),
        status_code=303,
        headers={"Content-Security-Policy": authorization.csp},
    )


def well_formed_code(value: str | None) -> str | None:
    """`value` if it can be one of keystore's codes (base64url), else None."""
    if value is None or not 16 <= len(value) <= 256 or not set(value) <= _BASE64URL:
        return None
    return value
