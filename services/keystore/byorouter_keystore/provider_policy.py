"""Provider policy: which kinds of provider an app's users may connect, and pushed authorization
requests (RFC 9126) through which the app's server narrows it for one connect flow.

A credential's kinds: its provider, except that a self-hosted one is `selfhosted` when it has a
direct URL and `tunnel` when it goes through a tunnel (both when it has both). The policy in
force for a connection is the app's current one narrowed by the connection's own copy (set by
the pushed request it was made through): a narrowed flow can never widen the app's policy, and a
policy change reaches existing connections at the next credentials look-up.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import SecretStr
from sqlalchemy import delete, func, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts import events
from byorouter_common.contracts.keystore import ProviderCredentialInput
from byorouter_common.contracts.keystore import provider_policy as pp
from byorouter_common.contracts.keystore.names import PROVIDER_KINDS
from byorouter_common.errors import ByoError
from byorouter_keystore.connect_flow.one_time import expires_in, new_one_time_secret, secret_hash
from byorouter_keystore.shared import Handlers, audit, get_app
from byorouter_keystore.tables import App, Connection, PushedAuthorization, Tunnel

# Pushed requests are deleted this long after they expired, when new ones are pushed.
_KEEP_EXPIRED = timedelta(hours=1)

Kinds = frozenset[str]
ALL_KINDS: Kinds = frozenset(PROVIDER_KINDS)


def policy_of(app: App, connection_narrowed: Sequence[str] | None = None) -> Kinds:
    """The kinds allowed now: the app's policy, narrowed by the connection's own copy."""
    allowed = ALL_KINDS if app.allowed_providers is None else frozenset(app.allowed_providers)
    if connection_narrowed is not None:
        allowed &= frozenset(connection_narrowed)
    return allowed


def in_order(kinds: Iterable[str]) -> list[str]:
    chosen = set(kinds)
    return [k for k in PROVIDER_KINDS if k in chosen]


def not_allowed(kind: str, *, param: str | None = None) -> ByoError:
    what = "a self-hosted server through a tunnel" if kind == "tunnel" else f"{kind} providers"
    if kind == "selfhosted":
        what = "a self-hosted server at its own URL"
    return ByoError(
        403,
        "provider_not_allowed",
        f"This app does not let its users connect {what}.",
        param=param,
    )


def check_allowed(
    providers: Sequence[ProviderCredentialInput], allowed: Kinds, *, tunnel_pending: bool = False
) -> None:
    """Refuse (403) a provider whose kind the policy does not allow."""
    for index, p in enumerate(providers):
        param = f"providers[{index}].provider"
        if p.provider != "selfhosted":
            if p.provider not in allowed:
                raise not_allowed(p.provider, param=param)
            continue
        if p.base_url and "selfhosted" not in allowed:
            raise not_allowed("selfhosted", param=f"providers[{index}].base_url")
        if (p.tunnel_id is not None or tunnel_pending) and "tunnel" not in allowed:
            raise not_allowed("tunnel", param=param)


def routable(
    provider: str, base_url: str | None, tunnel: Tunnel | None, allowed: Kinds
) -> tuple[str | None, Tunnel | None] | None:
    """(direct URL, tunnel) the policy still lets the router use, or None if nothing is left.

    A self-hosted provider loses only the route that is no longer allowed: its tunnel keeps
    working when direct URLs are refused, and the other way round.
    """
    if provider != "selfhosted":
        return (base_url, tunnel) if provider in allowed else None
    base_url = base_url if "selfhosted" in allowed else None
    kept_tunnel = tunnel if "tunnel" in allowed else None
    if base_url is None and kept_tunnel is None:
        return None
    return base_url, kept_tunnel


async def connection_policy(session: AsyncSession, connection: Connection) -> Kinds:
    app = await session.get(App, connection.app_id)
    if app is None:
        raise errors.not_found("App not found.", code="app_not_found")
    return policy_of(app, connection.allowed_providers)


async def set_app_policy(
    session: AsyncSession, client_id: str, allowed: Sequence[str] | None
) -> App:
    app = await get_app(session, client_id)
    app.allowed_providers = in_order(allowed) if allowed is not None else None
    audit(session, "app.policy_set", app.id, app.id, allowed_providers=app.allowed_providers)
    return app


# --- pushed authorization requests (RFC 9126) ---------------------------------------------------


def _request_token(request_uri: str) -> str | None:
    if not request_uri.startswith(pp.REQUEST_URI_PREFIX):
        return None
    token = request_uri.removeprefix(pp.REQUEST_URI_PREFIX)
    return token if 16 <= len(token) <= 128 else None


def par_not_usable() -> ByoError:
    # One answer for every reason: unknown, another app's, expired, already opened or used.
    return errors.bad_request(
        "request_uri is unknown, expired or already used, or was pushed by another app.",
        code="invalid_request_uri",
        param="request_uri",
    )


async def push_authorization(
    session: AsyncSession, request: pp.PushedAuthorization
) -> tuple[str, int]:
    """Store the app's request; returns its request_uri and how long it may be opened."""
    app = await session.get(App, request.app_id)
    if app is None:
        raise errors.not_found("App not found.", code="app_not_found")
    if request.redirect_uri not in app.redirect_uris:
        raise errors.bad_request(
            "redirect_uri is not registered for this app.",
            code="invalid_redirect_uri",
            param="redirect_uri",
        )
    state = None
    if request.state_b64 is not None:
        try:
            state = base64.urlsafe_b64decode(request.state_b64.encode())
        except (binascii.Error, ValueError):
            raise errors.bad_request("state is not valid.", param="state") from None
    narrowed = None
    if request.allowed_providers is not None:
        app_policy = policy_of(app)
        wider = [k for k in in_order(request.allowed_providers) if k not in app_policy]
        if wider:
            raise errors.bad_request(
                "allowed_providers may only narrow the app's provider policy, which does not "
                f"allow: {', '.join(wider)}.",
                param="allowed_providers",
            )
        narrowed = in_order(request.allowed_providers)
    await session.execute(
        delete(PushedAuthorization).where(
            PushedAuthorization.expires_at < func.now() - _KEEP_EXPIRED
        )
    )
    token = new_one_time_secret()
    await session.execute(
        insert(PushedAuthorization).values(
            request_hash=secret_hash(token),
            app_id=app.id,
            redirect_uri=request.redirect_uri,
            state=state,
            code_challenge=request.code_challenge,
            allowed_providers=narrowed,
            expires_at=expires_in(request.ttl_s),
        )
    )
    audit(session, "par.pushed", app.id, app.id, allowed_providers=narrowed)
    return pp.REQUEST_URI_PREFIX + token, request.ttl_s


async def open_authorization(
    session: AsyncSession, client_id: str, request_uri: str, *, first: bool
) -> tuple[PushedAuthorization, App]:
    """The pushed request for `client_id`: opened once (`first`, which starts the consent
    window), then read again by each form post of that consent while its window lasts."""
    token = _request_token(request_uri)
    if token is None:
        raise par_not_usable()
    app = await get_app(session, client_id)
    query = (
        update(PushedAuthorization)
        .where(
            PushedAuthorization.request_hash == secret_hash(token),
            PushedAuthorization.app_id == app.id,
            PushedAuthorization.expires_at > func.now(),
        )
        .returning(PushedAuthorization)
    )
    if first:
        query = query.where(PushedAuthorization.opened_at.is_(None)).values(
            opened_at=func.now(), expires_at=expires_in(pp.PAR_CONSENT_WINDOW_S)
        )
    else:
        query = query.where(PushedAuthorization.opened_at.is_not(None)).values(
            expires_at=PushedAuthorization.expires_at
        )
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise par_not_usable()
    return row, app


async def spend_authorization(
    session: AsyncSession, app: App, request_uri: str
) -> PushedAuthorization:
    """Spend an opened pushed request for the consent it ends in; a second consent fails."""
    token = _request_token(request_uri)
    if token is None:
        raise par_not_usable()
    row = (
        await session.execute(
            update(PushedAuthorization)
            .where(
                PushedAuthorization.request_hash == secret_hash(token),
                PushedAuthorization.app_id == app.id,
                PushedAuthorization.expires_at > func.now(),
                PushedAuthorization.opened_at.is_not(None),
                PushedAuthorization.used_at.is_(None),
            )
            .values(used_at=func.now())
            .returning(PushedAuthorization)
        )
    ).scalar_one_or_none()
    if row is None:
        raise par_not_usable()
    return row


def view_of(row: PushedAuthorization, app: App) -> pp.PushedAuthorizationView:
    expires_at: datetime = row.expires_at
    return pp.PushedAuthorizationView(
        redirect_uri=row.redirect_uri,
        state_b64=base64.urlsafe_b64encode(row.state).decode() if row.state is not None else None,
        code_challenge=row.code_challenge,
        allowed_providers=in_order(policy_of(app, row.allowed_providers)),
        expires_at=expires_at,
    )


# --- bus handlers -------------------------------------------------------------------------------


class ProviderPolicyHandlers(Handlers):
    """The operator's policy setting, the app server's pushed requests and Connect's reads."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, pp.APP_POLICY_SET, self.app_policy_set, discovery=discovery)
        serve(broker, pp.PAR_CREATE, self.par_create, discovery=discovery)
        serve(broker, pp.PAR_OPEN, self.par_open, discovery=discovery)

    async def app_policy_set(self, request: pp.AppPolicySet) -> pp.AppPolicy:
        async with self.sessions.begin() as session:
            app = await set_app_policy(session, request.client_id, request.allowed_providers)
            policy = pp.AppPolicy(
                client_id=app.client_id,
                app_id=app.id,
                allowed_providers=app.allowed_providers,
            )
        # Every router copy drops the app's cached connections: the next request sees the policy.
        await self.runtime.bus.publish_event(
            events.APP_POLICY_CHANGED, events.AppPolicyChangedEvent(app_id=policy.app_id)
        )
        return policy

    async def par_create(self, request: pp.PushedAuthorization) -> pp.PushedAuthorizationCreated:
        async with self.sessions.begin() as session:
            request_uri, expires_in_s = await push_authorization(session, request)
        return pp.PushedAuthorizationCreated(
            request_uri=SecretStr(request_uri), expires_in=expires_in_s
        )

    async def par_open(self, request: pp.PushedAuthorizationOpen) -> pp.PushedAuthorizationView:
        async with self.sessions.begin() as session:
            row, app = await open_authorization(
                session,
                request.client_id,
                request.request_uri.get_secret_value(),
                first=request.open,
            )
            return view_of(row, app)
