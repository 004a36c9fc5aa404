"""What keeps Connect's pages safe in a browser: response headers, cookies, CSRF, form bodies.

Every response gets a strict Content-Security-Policy (our own scripts and styles only, no
framing), `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` (a manage link's token never
leaks to another site) and `no-store`. Forms carry a CSRF token: on the consent page a
double-submit cookie, on the manage pages an HMAC of the browser's session token. Form bodies are
parsed here, by hand, so no framework error page can ever echo a submitted key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byorouter_common.contracts.keystore.connect_flow import is_loopback_host

CSRF_COOKIE: Final = "byo_csrf"
SESSION_COOKIE: Final = "byo_manage"
CSRF_FIELD: Final = "csrf_token"
MAX_FORM_BYTES: Final = 64 * 1024
MAX_FORM_FIELDS: Final = 100
_TOKEN_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_CSRF_LABEL: Final = b"byorouter-connect/csrf/v1"


def content_security_policy(form_targets: Iterable[str] = ()) -> str:
    """Our CSP; `form_targets` are origins a form may end up at (the app's redirect URI)."""
    form_action = " ".join(("'self'", *form_targets))
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    )


_HEADERS: Final = (
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
_DEFAULT_CSP: Final = content_security_policy().encode()


class SecurityHeadersMiddleware:
    """Adds the security headers to every response (a route may set its own CSP first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(_HEADERS)
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", _DEFAULT_CSP))
                if not static and b"cache-control" not in present:
                    # Pages hold CSRF tokens and masked keys: no cache, no back-button copy.
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- cookies ------------------------------------------------------------------------------------


def cookies_secure(request: Request, force: bool) -> bool:
    """Secure cookies everywhere except plain http on a loopback host (local development)."""
    if force or request.url.scheme == "https":
        return True
    return not is_loopback_host(request.url.hostname or "")


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    path: str = "/",
    max_age: int | None = None,
    force_secure: bool = False,
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=cookies_secure(request, force_secure),
        httponly=True,
        samesite="lax",
    )


def well_formed_token(value: str | None) -> str | None:
    """`value` if it looks like one of our 256-bit URL-safe tokens, else None."""
    if value is None or not 32 <= len(value) <= 128 or not set(value) <= _TOKEN_CHARS:
        return None
    return value


def new_token() -> str:
    return secrets.token_urlsafe(32)


# --- CSRF -----------------------------------------------------------------------------------


def consent_csrf_token(request: Request) -> tuple[str, bool]:
    """The browser's double-submit token, and whether it is new (and so must be set)."""
    existing = well_formed_token(request.cookies.get(CSRF_COOKIE))
    if existing is not None:
        return existing, False
    return new_token(), True


def session_csrf_token(session_token: str) -> str:
    """A CSRF token bound to the manage session: useless without the session's cookie."""
    mac = hmac.new(session_token.encode(), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# --- form bodies ----------------------------------------------------------------------------


class FormRefused(Exception):
    """A form body we will not read: too large, not form-encoded, or not UTF-8."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form as {name: first value}; never quotes the body in an error."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormRefused(415, "This page accepts only its own forms.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise FormRefused(413, "The form is too large.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused(413, "The form is too large.")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise FormRefused(400, "The form could not be read.") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form
