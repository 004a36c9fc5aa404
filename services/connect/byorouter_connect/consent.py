"""The consent page: `/authorize`, where a person connects their own AI keys to an app.

RFC 9700 throughout: a bad `client_id` or `redirect_uri` gets an error page and never a redirect
(the redirect URI is not trusted until it matches a registered one exactly); any other problem
goes back to the app as `error=...` with its `state`. `state` is returned byte for byte: it is
read from the raw query string, carried through the form base64url-encoded, and percent-encoded
again from the same bytes. PKCE S256 is required.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Request
from pydantic import SecretStr
from starlette.responses import JSONResponse, RedirectResponse, Response

from byorouter_common.contracts import connect as cn
from byorouter_common.contracts.keystore import PROVIDERS, ProviderName
from byorouter_common.errors import ByoError
from byorouter_connect.deps import bus_of, settings_of
from byorouter_connect.forms import ProviderValues, all_provider_values, problems_of
from byorouter_connect.pages import PROVIDER_FORMS, PageError, render
from byorouter_connect.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    consent_csrf_token,
    content_security_policy,
    read_form,
    set_cookie,
    tokens_match,
)

log = logging.getLogger(__name__)

router = APIRouter()

MAX_STATE_BYTES: Final = 2048
_Params = Mapping[str, list[bytes]]


class ErrorRedirect(Exception):
    """An authorization problem the app should hear about: 303 to its redirect URI."""

    def __init__(self, authorization: Authorization, error: str, description: str) -> None:
        super().__init__(description)
        self.url = authorization.redirect_url(error=error, error_description=description)
        self.csp = authorization.csp


@dataclass(frozen=True)
class Authorization:
    """A checked authorization request: the app, where to send the answer, and PKCE."""

    app: cn.ConsentApp
    redirect_uri: str
    state: bytes | None
    code_challenge: str = ""

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
        fields = {
            "client_id": self.app.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        if self.state is not None:
            fields["state_b64"] = base64.urlsafe_b64encode(self.state).decode()
        return fields


def _query_params(request: Request) -> dict[str, list[bytes]]:
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


def _form_params(form: Mapping[str, str]) -> dict[str, list[bytes]]:
    params = {
        name: [form[name].encode()]
        for name in ("client_id", "redirect_uri", "code_challenge", "code_challenge_method")
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


async def check_authorization(request: Request, params: _Params) -> Authorization:
    """The request's app and redirect URI (else `PageError`), then the rest (else redirect)."""
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
    if not challenge:
        raise ErrorRedirect(
            authorization, "invalid_request", "PKCE is required: send code_challenge (S256)."
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


_BASE64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def consent_page(
    request: Request,
    authorization: Authorization,
    *,
    status: int = 200,
    values: Mapping[ProviderName, ProviderValues] | None = None,
    results: Mapping[str, cn.ProviderTestResult] | None = None,
    problems: list[str] | None = None,
    fallback_to_default: bool = False,
) -> Response:
    csrf, new = consent_csrf_token(request)
    shown = {
        provider: (values[provider] if values else ProviderValues(provider, priority=i + 1)).shown()
        for i, provider in enumerate(PROVIDERS)
    }
    response = render(
        "authorize.html",
        status,
        headers={"Content-Security-Policy": authorization.csp},
        page_title=f"Connect your AI keys to {authorization.app.name}",
        app=authorization.app,
        return_to=cn.origin_of(authorization.redirect_uri),
        hidden=authorization.hidden_fields(),
        csrf_token=csrf,
        providers=PROVIDER_FORMS,
        shown=shown,
        results=results or {},
        problems=problems or [],
        fallback_to_default=fallback_to_default,
        priorities=range(1, len(PROVIDERS) + 1),
    )
    if new:
        set_cookie(
            response, request, CSRF_COOKIE, csrf, force_secure=settings_of(request).cookie_secure
        )
    return response


def _error_redirect(exc: ErrorRedirect) -> Response:
    return RedirectResponse(exc.url, status_code=303, headers={"Content-Security-Policy": exc.csp})


@router.get("/authorize")
async def authorize(request: Request) -> Response:
    try:
        authorization = await check_authorization(request, _query_params(request))
    except ErrorRedirect as exc:
        return _error_redirect(exc)
    return consent_page(request, authorization)


async def _checked_post(request: Request) -> tuple[dict[str, str], Authorization]:
    """The form (CSRF-checked) and its authorization request, checked again from scratch."""
    form = await read_form(request)
    if not tokens_match(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
        raise PageError(
            403,
            "This form has expired",
            "For your safety this form could not be accepted (its security token is missing "
            "or wrong). Go back to the app and start again.",
        )
    return form, await check_authorization(request, _form_params(form))


def _fallback(form: Mapping[str, str], authorization: Authorization) -> bool:
    return authorization.app.offers_default_provider and form.get("fallback_to_default") == "on"


@router.post("/authorize/test")
async def test_provider(request: Request) -> Response:
    """A Test button: try one provider's key and show the answer (JSON for the page's script)."""
    try:
        form, authorization = await _checked_post(request)
    except ErrorRedirect as exc:
        return _error_redirect(exc)
    values = all_provider_values(form)
    provider = form.get("test", "")
    result = await run_test(request, chosen_provider(values, provider))
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(result.model_dump(mode="json"))
    return consent_page(
        request,
        authorization,
        values=values,
        results={provider: result},
        fallback_to_default=_fallback(form, authorization),
    )


def chosen_provider(
    values: Mapping[ProviderName, ProviderValues], provider: str
) -> ProviderValues | None:
    for name, provider_values in values.items():
        if name == provider:
            return provider_values
    return None


async def run_test(request: Request, values: ProviderValues | None) -> cn.ProviderTestResult:
    """Ask the router to try the key; problems with the fields are answered without it."""
    if values is None:
        return cn.ProviderTestResult(ok=False, message="Choose a provider to test.")
    problems = problems_of(values)
    if problems:
        return cn.ProviderTestResult(ok=False, message=" ".join(problems))
    try:
        return await bus_of(request).request(
            cn.PROVIDER_TEST,
            cn.ProviderTest(
                provider=values.provider,
                api_key=SecretStr(values.api_key) if values.api_key else None,
                base_url=values.base_url or None,
            ),
            timeout_s=settings_of(request).provider_test_timeout_s,
        )
    except ByoError as exc:
        log.warning("provider test failed to run", extra={"code": exc.code})
        return cn.ProviderTestResult(
            ok=False, message="The test could not run right now; try again in a minute."
        )


@router.post("/authorize")
async def connect(request: Request) -> Response:
    """Connect: store the keys, issue a code, and send the browser back to the app (303)."""
    try:
        form, authorization = await _checked_post(request)
    except ErrorRedirect as exc:
        return _error_redirect(exc)
    values = all_provider_values(form)
    fallback = _fallback(form, authorization)
    chosen = sorted(
        (v for v in values.values() if v.filled),
        key=lambda v: (v.priority, PROVIDERS.index(v.provider)),
    )
    problems = [problem for v in chosen for problem in problems_of(v)]
    if not chosen:
        problems = ["Enter at least one key, or your self-hosted server's URL."]
    if problems:
        return consent_page(
            request,
            authorization,
            status=400,
            values=values,
            problems=problems,
            fallback_to_default=fallback,
        )
    try:
        issued = await bus_of(request).request(
            cn.AUTHORIZE,
            cn.AuthorizationGrant(
                client_id=authorization.app.client_id,
                redirect_uri=authorization.redirect_uri,
                code_challenge=authorization.code_challenge,
                providers=[v.credential() for v in chosen],
                fallback_to_default=fallback,
                code_ttl_s=settings_of(request).code_ttl_s,
            ),
        )
    except ByoError as exc:
        if exc.status == 400:
            return consent_page(
                request,
                authorization,
                status=400,
                values=values,
                problems=[exc.message],
                fallback_to_default=fallback,
            )
        raise unavailable(exc) from None
    # 303, never 307/308: the browser must not re-send the form (and its keys) to the app.
    return RedirectResponse(
        authorization.redirect_url(code=issued.code.get_secret_value()),
        status_code=303,
        headers={"Content-Security-Policy": authorization.csp},
    )


@router.post("/authorize/cancel")
async def cancel(request: Request) -> Response:
    """Cancel: back to the app with error=access_denied and its state; nothing is stored."""
    try:
        _, authorization = await _checked_post(request)
    except ErrorRedirect as exc:
        return _error_redirect(exc)
    return _error_redirect(
        ErrorRedirect(authorization, "access_denied", "The user did not connect their keys.")
    )
