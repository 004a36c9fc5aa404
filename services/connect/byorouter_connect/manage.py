"""The manage pages: a person opens the app's manage link and changes or ends their connection.

`GET /manage/start?token=...` only asks: it names the app and the connection and spends nothing,
so a link scanner fetching every link cannot burn it, and a person sent someone else's link sees
whose it is before they act. Its form POSTs the token (CSRF-checked like the consent page) to
spend it for a browser session of our own (an HttpOnly cookie) and redirects to the clean
`/manage`. Every change is one form, CSRF-protected with a token bound to that session, answered
with 303 back to `/manage` (or `/manage/done`), except setting up or rotating a tunnel: that
answer is the page showing the new token, once.

Over 500 lines for now: the start/confirm pages, the provider forms and the tunnel forms are one
session's pages; the tunnel forms are the next to move out (as consent's are in `tunnels.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from pydantic import SecretStr
from starlette.responses import JSONResponse, RedirectResponse, Response

from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.contracts.base import Endpoint, Req
from byorouter_common.contracts.keystore import PROVIDERS, ProviderInfo, ProviderName
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from byorouter_connect import tunnels
from byorouter_connect.consent import run_test, unavailable
from byorouter_connect.deps import bus_of, settings_of
from byorouter_connect.forms import ProviderValues, problems_of, provider_values
from byorouter_connect.pages import FORMS_BY_PROVIDER, PROVIDER_FORMS, PageError, render, title_of
from byorouter_connect.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    consent_csrf_token,
    read_form,
    session_csrf_token,
    set_cookie,
    tokens_match,
    well_formed_token,
)
from byorouter_connect.user_limits import limits_from_form

log = logging.getLogger(__name__)

router = APIRouter()

_COOKIE_PATH: Final = "/manage"
_NOTICES: Final = {
    "key_replaced": "{title}: key replaced. The connection id stays the same.",
    "updated": "{title}: settings saved.",
    "added": "{title} added.",
    "removed": "{title} removed.",
    "preferences": "Preferences saved.",
    "limits": "Limits saved. They apply to this app's next request.",
    "tunnel_revoked": "Tunnel revoked: its clients were disconnected and its tokens refused.",
}


def _session_ended() -> PageError:
    return PageError(
        401,
        "Your session has ended",
        "This page is open only for a short while after you choose Manage API Keys in the app. "
        "Go back to the app and choose Manage API Keys again.",
    )


def _session(request: Request) -> str:
    session = well_formed_token(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise _session_ended()
    return session


def _keystore_failure(exc: ByoError) -> PageError:
    if exc.status == 401:
        return _session_ended()
    return unavailable(exc)


async def _view(request: Request, session: str) -> cn.ManageView:
    try:
        return await bus_of(request).request(
            cn.MANAGE_SESSION_GET, cn.ManageSessionGet(session=SecretStr(session))
        )
    except ByoError as exc:
        raise _keystore_failure(exc) from None


def _form_expired() -> PageError:
    return PageError(
        403,
        "This form has expired",
        "For your safety this form could not be accepted (its security token is missing or "
        "wrong). Reload the page and try again.",
    )


async def _checked_form(request: Request) -> tuple[dict[str, str], str]:
    form = await read_form(request)
    session = _session(request)
    if not tokens_match(session_csrf_token(session), form.get(CSRF_FIELD)):
        raise _form_expired()
    return form, session


def _provider(name: str) -> ProviderName | None:
    for provider in PROVIDERS:
        if provider == name:
            return provider
    return None


def _sorted(providers: list[ProviderInfo]) -> list[ProviderInfo]:
    return sorted(providers, key=lambda p: p.priority)


def manage_page(
    request: Request,
    session: str,
    view: cn.ManageView,
    *,
    status: int = 200,
    notice: str | None = None,
    problems: list[str] | None = None,
    results: Mapping[str, rt.ProviderTestResult] | None = None,
    typed: Mapping[str, ProviderValues] | None = None,
    tunnel: tunnels.TunnelStatus | None = None,
) -> Response:
    connected = _sorted(view.connection.providers)
    connected_names = {p.provider for p in connected}
    return render(
        "manage.html",
        status,
        page_title=f"Your AI keys for {view.app_name}",
        view=view,
        connected=connected,
        # What the app's provider policy still lets this connection add.
        addable=[
            form
            for form in PROVIDER_FORMS
            if form.provider not in connected_names
            and (
                form.provider in view.allowed_providers
                or (form.provider == "selfhosted" and "tunnel" in view.allowed_providers)
            )
        ],
        forms=FORMS_BY_PROVIDER,
        csrf_token=session_csrf_token(session),
        notice=notice,
        problems=problems or [],
        results=results or {},
        typed={name: values.shown() for name, values in (typed or {}).items()},
        priorities=range(1, len(connected) + 1),
        tunnel_id=_tunnel_id(view),
        tunnel=tunnel,
        tunnel_overlap_minutes=tunnels.ROTATION_OVERLAP_S // 60,
        tunnel_source=tunnels.StatusSource("/manage/tunnel/status", "get"),
    )


def _link_token(value: str | None) -> str:
    token = well_formed_token(value)
    if token is None:
        raise _link_unusable()
    return token


def _link_failure(exc: ByoError) -> PageError:
    return _link_unusable() if exc.status == 400 else unavailable(exc)


def _link_unusable() -> PageError:
    return PageError(
        400,
        "This link has expired",
        "This link has expired or was already used: manage links work once and only for a few "
        "minutes. Go back to the app and choose Manage API Keys again.",
    )


def _listed(titles: list[str]) -> str:
    if len(titles) <= 1:
        return "".join(titles)
    return f"{', '.join(titles[:-1])} and {titles[-1]}"


@router.get("/manage/start")
async def confirm_start(request: Request) -> Response:
    """Say whose connection the link opens and ask; the link stays unspent until the POST."""
    token = _link_token(request.query_params.get("token"))
    try:
        preview = await bus_of(request).request(
            cn.MANAGE_LINK_PEEK, cn.ManageLinkPeek(token=SecretStr(token))
        )
    except ByoError as exc:
        raise _link_failure(exc) from None
    # A double-submit cookie, as on the consent page: there is no session to bind a token to
    # yet, and another site cannot post its own link into this browser without the cookie.
    csrf, new = consent_csrf_token(request)
    titles = [title_of(provider) for provider in preview.providers]
    connected = preview.connected_at
    response = render(
        "manage_start.html",
        page_title=f"Manage your AI keys for {preview.app_name}?",
        preview=preview,
        providers=f"{_listed(titles)} {'key' if len(titles) == 1 else 'keys'}",
        connected_on=f"{connected.day} {connected:%B %Y}",
        token=token,
        csrf_token=csrf,
    )
    if new:
        set_cookie(
            response,
            request,
            CSRF_COOKIE,
            csrf,
            force_secure=settings_of(request).cookie_secure,
        )
    return response


@router.post("/manage/start")
async def start(request: Request) -> Response:
    """The person confirmed: spend the link for a session cookie, then go to /manage."""
    form = await read_form(request)
    if not tokens_match(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
        raise _form_expired()
    token = _link_token(form.get("token"))
    settings = settings_of(request)
    try:
        opened = await bus_of(request).request(
            cn.MANAGE_LINK_REDEEM,
            cn.ManageLinkRedeem(
                token=SecretStr(token), session_ttl_s=settings.manage_session_ttl_s
            ),
        )
    except ByoError as exc:
        raise _link_failure(exc) from None
    response = RedirectResponse("/manage", status_code=303)
    set_cookie(
        response,
        request,
        SESSION_COOKIE,
        opened.session.get_secret_value(),
        path=_COOKIE_PATH,
        max_age=settings.manage_session_ttl_s,
        force_secure=settings.cookie_secure,
    )
    return response


@router.get("/manage")
async def manage(request: Request) -> Response:
    session = _session(request)
    view = await _view(request, session)
    if view.connection.status != "active":
        return RedirectResponse("/manage/done", status_code=303)
    notice = None
    done = request.query_params.get("done", "")
    provider = _provider(request.query_params.get("provider", ""))
    if done in _NOTICES:
        notice = _NOTICES[done].format(title=title_of(provider) if provider else "")
    return manage_page(
        request, session, view, notice=notice, tunnel=await _tunnel_status(request, view)
    )


def _submitted_provider(form: Mapping[str, str]) -> ProviderValues | None:
    provider = _provider(form.get("provider", ""))
    if provider is None:
        return None
    # The add and replace forms name their fields plainly: api_key, base_url, model.
    return provider_values({f"{provider}_{k}": v for k, v in form.items()}, provider)


def _form_id(form: Mapping[str, str]) -> str:
    return "add" if form.get("form") == "add" else f"replace-{form.get('provider', '')}"


@router.post("/manage/test")
async def test_key(request: Request) -> Response:
    """A Test button on the replace or add form: try the key typed there."""
    form, session = await _checked_form(request)
    values = _submitted_provider(form)
    result = await run_test(request, values)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(result.model_dump(mode="json"))
    view = await _view(request, session)
    form_id = _form_id(form)
    return manage_page(
        request,
        session,
        view,
        results={form_id: result},
        typed={form_id: values} if values is not None else None,
    )


async def _change(
    request: Request, endpoint: Endpoint[Req, cn.ManageView], payload: Req
) -> cn.ManageView | list[str]:
    """Run a change; a refusal a person can fix comes back as problems to show."""
    try:
        view = await bus_of(request).request(endpoint, payload)
    except ByoError as exc:
        if exc.status in (400, 404):
            return [exc.message]
        raise _keystore_failure(exc) from None
    return view


async def _with_problems(
    request: Request, session: str, problems: list[str], form: Mapping[str, str]
) -> Response:
    view = await _view(request, session)
    values = _submitted_provider(form)
    form_id = _form_id(form)
    return manage_page(
        request,
        session,
        view,
        status=400,
        problems=problems,
        typed={form_id: values} if values is not None else None,
        tunnel=await _tunnel_status(request, view),
    )


def _back(done: str, provider: str | None = None) -> Response:
    query = {"done": done} | ({"provider": provider} if provider else {})
    return RedirectResponse(f"/manage?{urlencode(query)}", status_code=303)


@router.post("/manage/providers")
async def set_provider(request: Request) -> Response:
    """Add a provider, or replace one's key (the connection id stays the same)."""
    form, session = await _checked_form(request)
    values = _submitted_provider(form)
    if values is None:
        return await _with_problems(request, session, ["Choose a provider."], form)
    view = await _view(request, session)
    # A self-hosted server with a tunnel needs no direct URL (keystore keeps its tunnel).
    values.tunnel = _tunnel_id(view) is not None and values.provider == "selfhosted"
    problems = problems_of(values)
    if problems:
        return await _with_problems(request, session, problems, form)
    existed = any(p.provider == values.provider for p in view.connection.providers)
    changed = await _change(
        request,
        cn.PROVIDER_SET,
        cn.ProviderSet(session=SecretStr(session), credential=values.credential()),
    )
    if isinstance(changed, list):
        return await _with_problems(request, session, changed, form)
    if not existed:
        return _back("added", values.provider)
    return _back("updated" if values.provider == "selfhosted" else "key_replaced", values.provider)


@router.post("/manage/providers/remove")
async def remove_provider(request: Request) -> Response:
    form, session = await _checked_form(request)
    provider = _provider(form.get("provider", ""))
    if provider is None:
        return await _with_problems(request, session, ["Choose a provider."], form)
    changed = await _change(
        request,
        cn.PROVIDER_REMOVE,
        cn.ProviderRemove(session=SecretStr(session), provider=provider),
    )
    if isinstance(changed, list):
        return await _with_problems(request, session, changed, {})
    return _back("removed", provider)


@router.post("/manage/preferences")
async def set_preferences(request: Request) -> Response:
    """Provider order, preferred models and fallback to the app's AI."""
    form, session = await _checked_form(request)
    view = await _view(request, session)
    connected = _sorted(view.connection.providers)
    order = sorted(
        connected,
        key=lambda p: (provider_values(form, p.provider).priority, p.priority),
    )
    models: dict[ProviderName, str | None] = {}
    for p in connected:
        if FORMS_BY_PROVIDER[p.provider].has_model:
            model = form.get(f"{p.provider}_model", "").strip()
            if len(model) > 200:
                return await _with_problems(
                    request, session, ["A model id is at most 200 characters."], {}
                )
            models[p.provider] = model or None
    changed = await _change(
        request,
        cn.PREFERENCES_SET,
        cn.PreferencesSet(
            session=SecretStr(session),
            order=[p.provider for p in order],
            preferred_models=models,
            fallback_to_default=view.offers_default_provider
            and form.get("fallback_to_default") == "on",
        ),
    )
    if isinstance(changed, list):
        return await _with_problems(request, session, changed, {})
    return _back("preferences")


@router.post("/manage/limits")
async def set_limits(request: Request) -> Response:
    """What this app may use of the person's keys: requests a day, tokens a month, models."""
    form, session = await _checked_form(request)
    limits = limits_from_form(form)
    if isinstance(limits, list):
        return await _with_problems(request, session, limits, {})
    changed = await _change(
        request, cn.LIMITS_SET, cn.LimitsSet(session=SecretStr(session), limits=limits)
    )
    if isinstance(changed, list):
        return await _with_problems(request, session, changed, {})
    return _back("limits")


@router.get("/manage/disconnect")
async def confirm_disconnect(request: Request) -> Response:
    session = _session(request)
    view = await _view(request, session)
    if view.connection.status != "active":
        return RedirectResponse("/manage/done", status_code=303)
    return render(
        "disconnect.html",
        page_title=f"Disconnect from {view.app_name}?",
        view=view,
        csrf_token=session_csrf_token(session),
    )


@router.post("/manage/disconnect")
async def disconnect(request: Request) -> Response:
    """Disconnect: the connection is revoked and its keys erased; the app is refused at once."""
    _, session = await _checked_form(request)
    changed = await _change(
        request, cn.MANAGE_DISCONNECT, cn.ManageDisconnect(session=SecretStr(session))
    )
    if isinstance(changed, list):
        raise _session_ended()
    return RedirectResponse("/manage/done", status_code=303)


@router.get("/manage/done")
async def done(request: Request) -> Response:
    session = _session(request)
    view = await _view(request, session)
    if view.connection.status == "active":
        return RedirectResponse("/manage", status_code=303)
    return render(
        "done.html",
        page_title="Disconnected",
        view=view,
        return_link=disconnected_return_url(view.return_url),
    )


def disconnected_return_url(return_url: str | None) -> str | None:
    """The app's return URL telling it what happened, as an authorization error would.

    The app learns at once that the connection its session holds is gone, instead of at the
    next chat. No connection id: ids stay out of URLs a browser opens (history, logs).
    """
    if return_url is None:
        return None
    outcome = urlencode({"byorouter": "disconnected"})
    base, hash_mark, fragment = return_url.partition("#")
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}{outcome}{hash_mark}{fragment}"


# --- the tunnel to the person's own server ----------------------------------------------------


def _tunnel_id(view: cn.ManageView) -> str | None:
    """The connection's tunnel, from keystore's view of it (never from the browser)."""
    return next((p.tunnel_id for p in view.connection.providers if p.tunnel_id), None)


async def _tunnel_status(request: Request, view: cn.ManageView) -> tunnels.TunnelStatus | None:
    tunnel_id = _tunnel_id(view)
    if tunnel_id is None:
        return None
    try:
        info = await tunnels.tunnel_info(request, view.connection.app_id, tunnel_id)
    except ByoError as exc:
        tunnels.failure(exc)
        return None
    return await tunnels.tunnel_status(request, info)


def _token_page(
    request: Request,
    view: cn.ManageView,
    issued: ks.TunnelToken,
    *,
    page_title: str,
) -> Response:
    return tunnels.token_page(
        request,
        page_title=page_title,
        tunnel_id=issued.tunnel_id,
        token=issued.token.get_secret_value(),
        status=tunnels.offline_status(issued.tunnel_id),
        source=tunnels.StatusSource("/manage/tunnel/status", "get"),
        previous_valid_until=issued.previous_valid_until,
        back_to_manage=view.app_name,
    )


@router.post("/manage/tunnel")
async def set_up_tunnel(request: Request) -> Response:
    """A tunnel for the self-hosted provider (created if there is none); a tunnel it had before
    is revoked. The answer shows the token once."""
    _, session = await _checked_form(request)
    view = await _view(request, session)
    if view.connection.status != "active":
        return RedirectResponse("/manage/done", status_code=303)
    try:
        issued = await tunnels.register(
            request, view.connection.app_id, view.connection.connection_id
        )
    except ByoError as exc:
        return await _with_problems(request, session, [tunnels.failure(exc)], {})
    return _token_page(request, view, issued, page_title="Run this on your server")


@router.post("/manage/tunnel/rotate")
async def rotate_tunnel_token(request: Request) -> Response:
    """A new token, shown once; the old one opens new sockets for a few more minutes and the
    clients already connected stay up."""
    _, session = await _checked_form(request)
    view = await _view(request, session)
    tunnel_id = _tunnel_id(view)
    if tunnel_id is None:
        return await _with_problems(request, session, ["This connection has no tunnel."], {})
    try:
        issued = await tunnels.rotate(request, view.connection.app_id, tunnel_id)
    except ByoError as exc:
        return await _with_problems(request, session, [tunnels.failure(exc)], {})
    return _token_page(request, view, issued, page_title="Your new tunnel token")


@router.get("/manage/tunnel/status")
async def tunnel_status(request: Request) -> Response:
    """The tunnel's status as JSON, for the page's script (polled every 2 s)."""
    session = _session(request)
    view = await _view(request, session)
    status = await _tunnel_status(request, view)
    if status is None:
        return JSONResponse({"error": "This connection has no tunnel."}, status_code=404)
    return JSONResponse(status.model_dump(mode="json"), headers=tunnels.NO_STORE)


@router.get("/manage/tunnel/revoke")
async def confirm_revoke_tunnel(request: Request) -> Response:
    session = _session(request)
    view = await _view(request, session)
    if _tunnel_id(view) is None:
        return RedirectResponse("/manage", status_code=303)
    return render(
        "revoke_tunnel.html",
        page_title="Revoke your tunnel?",
        view=view,
        csrf_token=session_csrf_token(session),
    )


@router.post("/manage/tunnel/revoke")
async def revoke_tunnel(request: Request) -> Response:
    """Revoke now: every token and session refused, every connected client closed."""
    _, session = await _checked_form(request)
    view = await _view(request, session)
    tunnel_id = _tunnel_id(view)
    if tunnel_id is None:
        return RedirectResponse("/manage", status_code=303)
    try:
        await tunnels.revoke(request, view.connection.app_id, tunnel_id)
    except ByoError as exc:
        return await _with_problems(request, session, [tunnels.failure(exc)], {})
    return _back("tunnel_revoked")
