"""The consent page: `/authorize`, where a person connects their own AI keys to an app.

The request is checked by `authorization` (RFC 9700); here are the page, its Test buttons, and
Connect, which stores the keys through keystore and sends the browser back with a code (303).
With the tunnel option the 303 waits: the page first shows the tunnel's token and command
(once) and its live status, and its "Continue" form carries the code back for the redirect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from fastapi import APIRouter, Request
from pydantic import SecretStr
from starlette.responses import JSONResponse, Response

from byorouter_common.contracts import router as rt
from byorouter_common.contracts import tunnel as tn
from byorouter_common.contracts.keystore import PROVIDERS, ProviderName
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from byorouter_connect import tunnels
from byorouter_connect.authorization import (
    Authorization,
    ErrorRedirect,
    back_to_app,
    check_authorization,
    checked_post,
    error_redirect,
    query_params,
    unavailable,
    well_formed_code,
)
from byorouter_connect.deps import bus_of, settings_of
from byorouter_connect.forms import ProviderValues, all_provider_values, problems_of
from byorouter_connect.limits import limits_of
from byorouter_connect.pages import PROVIDER_FORMS, PageError, render
from byorouter_connect.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    consent_csrf_token,
    set_cookie,
)
from byorouter_connect.user_limits import LIMIT_FIELDS, limits_from_form

log = logging.getLogger(__name__)

router = APIRouter()

__all__ = ["router", "run_test", "unavailable"]


def consent_page(
    request: Request,
    authorization: Authorization,
    *,
    status: int = 200,
    values: Mapping[ProviderName, ProviderValues] | None = None,
    results: Mapping[str, rt.ProviderTestResult] | None = None,
    problems: list[str] | None = None,
    fallback_to_default: bool = False,
    form: Mapping[str, str] | None = None,
) -> Response:
    csrf, new = consent_csrf_token(request)
    # What the person typed in the limits section, shown again as typed.
    limits = {name: (form or {}).get(name, "") for name in LIMIT_FIELDS}
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
        # Only what the app's provider policy (narrowed by a pushed request) allows.
        providers=[
            form
            for form in PROVIDER_FORMS
            if authorization.allows(form.provider)
            or (form.provider == "selfhosted" and authorization.allows("tunnel"))
        ],
        offer_tunnel=authorization.allows("tunnel"),
        offer_direct_url=authorization.allows("selfhosted"),
        shown=shown,
        results=results or {},
        problems=problems or [],
        fallback_to_default=fallback_to_default,
        priorities=range(1, len(PROVIDERS) + 1),
        limits=limits,
    )
    if new:
        set_cookie(
            response, request, CSRF_COOKIE, csrf, force_secure=settings_of(request).cookie_secure
        )
    return response


@router.get("/authorize")
async def authorize(request: Request) -> Response:
    try:
        authorization = await check_authorization(request, query_params(request), opening=True)
    except ErrorRedirect as exc:
        return error_redirect(exc)
    return consent_page(request, authorization)


def _fallback(form: Mapping[str, str], authorization: Authorization) -> bool:
    return authorization.app.offers_default_provider and form.get("fallback_to_default") == "on"


@router.post("/authorize/test")
async def test_provider(request: Request) -> Response:
    """A Test button: try one provider's key and show the answer (JSON for the page's script)."""
    try:
        form, authorization = await checked_post(request)
    except ErrorRedirect as exc:
        return error_redirect(exc)
    values = all_provider_values(form)
    provider = form.get("test", "")
    result = await run_test(
        request, chosen_provider(values, provider), app_id=authorization.app.app_id
    )
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(result.model_dump(mode="json"))
    return consent_page(
        request,
        authorization,
        values=values,
        results={provider: result},
        fallback_to_default=_fallback(form, authorization),
        form=form,
    )


def chosen_provider(
    values: Mapping[ProviderName, ProviderValues], provider: str
) -> ProviderValues | None:
    for name, provider_values in values.items():
        if name == provider:
            return provider_values
    return None


async def run_test(
    request: Request, values: ProviderValues | None, *, app_id: str | None = None
) -> rt.ProviderTestResult:
    """Ask the router to try the key; problems with the fields are answered without it.

    Every press counts against the client's and the app's Test budget (`TooManyTests`, 429).
    """
    limits_of(request).take(request, app_id)
    if values is None:
        return rt.ProviderTestResult(ok=False, message="Choose a provider to test.")
    problems = problems_of(values)
    if problems:
        return rt.ProviderTestResult(ok=False, message=" ".join(problems))
    try:
        return await bus_of(request).request(
            rt.PROVIDER_TEST,
            rt.ProviderTest(
                provider=values.provider,
                api_key=SecretStr(values.api_key) if values.api_key else None,
                base_url=values.base_url or None,
            ),
            timeout_s=settings_of(request).provider_test_timeout_s,
        )
    except ByoError as exc:
        log.warning("provider test failed to run", extra={"code": exc.code})
        return rt.ProviderTestResult(
            ok=False, message="The test could not run right now; try again in a minute."
        )


@router.post("/authorize")
async def connect(request: Request) -> Response:
    """Connect: store the keys, issue a code, and send the browser back to the app (303)."""
    try:
        form, authorization = await checked_post(request)
    except ErrorRedirect as exc:
        return error_redirect(exc)
    values = all_provider_values(form)
    fallback = _fallback(form, authorization)
    chosen = sorted(
        (v for v in values.values() if v.filled),
        key=lambda v: (v.priority, PROVIDERS.index(v.provider)),
    )
    problems = [problem for v in chosen for problem in problems_of(v)]
    if not chosen:
        problems = ["Enter at least one key, or your self-hosted server's URL."]
    typed = limits_from_form(form)
    limits = None if isinstance(typed, list) or not typed.any else typed
    if isinstance(typed, list):
        problems = problems + typed
    if problems:
        return consent_page(
            request,
            authorization,
            status=400,
            values=values,
            problems=problems,
            fallback_to_default=fallback,
            form=form,
        )
    tunnel = values["selfhosted"].filled and values["selfhosted"].tunnel
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
                selfhosted_tunnel=tunnel,
                request_uri=SecretStr(authorization.request_uri)
                if authorization.request_uri is not None
                else None,
                limits=limits,
            ),
        )
    except ByoError as exc:
        # 403: a provider the app's policy does not allow, posted although the page hid it.
        if exc.status in (400, 403):
            return consent_page(
                request,
                authorization,
                status=400,
                values=values,
                problems=[exc.message],
                fallback_to_default=fallback,
                form=form,
            )
        raise unavailable(exc) from None
    if tunnel:
        return await _tunnel_setup(request, authorization, issued)
    return back_to_app(authorization, issued.code.get_secret_value())


@router.post("/authorize/cancel")
async def cancel(request: Request) -> Response:
    """Cancel: back to the app with error=access_denied and its state; nothing is stored."""
    try:
        _, authorization = await checked_post(request)
    except ErrorRedirect as exc:
        return error_redirect(exc)
    return error_redirect(
        ErrorRedirect(authorization, "access_denied", "The user did not connect their keys.")
    )


# --- the tunnel option: the token page, its status, and the way back to the app ----------------

# A consent page's status check answers only while its code could still be waiting: after that
# the person sees their tunnel on the manage page.
_STATUS_WINDOW: Final = timedelta(seconds=cn.MAX_CODE_TTL_S + 300)


def _code_expiry(raw: str | None) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw or "")
    except ValueError:
        return datetime.now(UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _tunnel_forms(
    request: Request, authorization: Authorization, code: str, expires_at: datetime, tunnel_id: str
) -> tuple[tunnels.StatusSource, tunnels.ContinueForm]:
    carried = {**authorization.hidden_fields(), CSRF_FIELD: consent_csrf_token(request)[0]}
    carried["code"] = code
    status_fields = {**carried, "tunnel_id": tunnel_id, "code_expires_at": expires_at.isoformat()}
    return (
        tunnels.StatusSource("/authorize/tunnel/status", "post", status_fields),
        tunnels.ContinueForm(authorization.app.name, carried, expires_at),
    )


async def _tunnel_setup(
    request: Request, authorization: Authorization, issued: cn.AuthorizationCode
) -> Response:
    """The connection exists and its code is issued: register its tunnel, show the token once."""
    code = issued.code.get_secret_value()
    registered = None
    problems = []
    if issued.connection_id is None:
        problems = [
            "The tunnel could not be set up right now. Continue, then set it up from "
            "Manage API Keys in the app."
        ]
    else:
        try:
            registered = await tunnels.register(
                request, authorization.app.app_id, issued.connection_id
            )
        except ByoError as exc:
            problems = [
                tunnels.failure(exc) + " Continue, then set up the tunnel from Manage "
                "API Keys in the app."
            ]
    tunnel_id = registered.tunnel_id if registered is not None else ""
    source, back = _tunnel_forms(request, authorization, code, issued.expires_at, tunnel_id)
    return tunnels.token_page(
        request,
        page_title="Run this on your server",
        tunnel_id=tunnel_id,
        token=registered.token.get_secret_value() if registered is not None else None,
        status=tunnels.offline_status(tunnel_id),
        source=source,
        headers={"Content-Security-Policy": authorization.csp},
        continue_form=back,
        problems=problems,
    )


@router.post("/authorize/tunnel/status")
async def consent_tunnel_status(request: Request) -> Response:
    """The token page's status: JSON for its script, the page again (without the token) for
    the "Check status" button."""
    try:
        form, authorization = await checked_post(request)
    except ErrorRedirect as exc:
        return error_redirect(exc)
    wants_json = "application/json" in request.headers.get("accept", "")
    tunnel_id = form.get("tunnel_id", "")
    code = well_formed_code(form.get("code"))
    if code is None or not tn.is_tunnel_id(tunnel_id):
        raise PageError(400, "This page has expired", "Go back to the app and start again.")
    expired = "This page is no longer current: open Manage API Keys in the app to see your tunnel."
    try:
        info = await tunnels.tunnel_info(request, authorization.app.app_id, tunnel_id)
    except ByoError as exc:
        if wants_json:
            return JSONResponse({"error": tunnels.failure(exc)}, status_code=exc.status)
        raise unavailable(exc) from None
    if datetime.now(UTC) - info.created_at > _STATUS_WINDOW:
        if wants_json:
            return JSONResponse({"error": expired}, status_code=410)
        raise PageError(410, "This page has expired", expired)
    status = await tunnels.tunnel_status(request, info)
    if wants_json:
        return JSONResponse(status.model_dump(mode="json"), headers=tunnels.NO_STORE)
    expires_at = _code_expiry(form.get("code_expires_at"))
    source, back = _tunnel_forms(request, authorization, code, expires_at, tunnel_id)
    return tunnels.token_page(
        request,
        page_title="Run this on your server",
        tunnel_id=tunnel_id,
        token=None,
        status=status,
        source=source,
        headers={"Content-Security-Policy": authorization.csp},
        continue_form=back,
    )


@router.post("/authorize/continue")
async def continue_to_app(request: Request) -> Response:
    """ "Continue to <app>" on the token page: the 303 with the code the connect step issued."""
    try:
        form, authorization = await checked_post(request)
    except ErrorRedirect as exc:
        return error_redirect(exc)
    code = well_formed_code(form.get("code"))
    if code is None:
        raise PageError(400, "This page has expired", "Go back to the app and start again.")
    return back_to_app(authorization, code)
