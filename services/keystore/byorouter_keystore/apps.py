"""Apps and their API keys: registration, issuing and revoking keys, authenticating a key.

An app API key is shown to the developer once and stored only as `sha256(full key)`; the gateway
authenticates with the key id and that digest (see `ids`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_keystore import ids
from byorouter_keystore.app_default import default_of
from byorouter_keystore.shared import (
    Handlers,
    app_not_found,
    audit,
    get_app,
    provider_name,
    rowcount,
)
from byorouter_keystore.tables import App, AppDefaultProvider, AppKey

# Compared against when a key id is unknown, so every refusal costs the same work.
_NO_SUCH_KEY_HASH = bytes(32)


@dataclass(frozen=True)
class IssuedAppKey:
    """A freshly issued key: `key` is shown to the developer once and never stored."""

    key_id: str
    label: str
    key: str


def check_redirect_uris(uris: Sequence[str]) -> None:
    """Refuse an app registration whose redirect URIs break the rules (`redirect_uri_problem`)."""
    for index, uri in enumerate(uris):
        problem = cn.redirect_uri_problem(uri)
        if problem is not None:
            raise errors.bad_request(
                f"redirect_uris[{index}] {problem}.",
                code="invalid_redirect_uri",
                param=f"redirect_uris[{index}]",
            )


async def _issue_app_key(session: AsyncSession, app: App) -> IssuedAppKey:
    key_id, key = ids.new_app_key()
    label = ids.app_key_label(key_id, key)
    session.add(
        AppKey(
            key_id=key_id, app_id=app.id, key_hash=bytes.fromhex(ids.hash_app_key(key)), label=label
        )
    )
    audit(session, "app_key.created", app.id, key_id)
    return IssuedAppKey(key_id, label, key)


async def create_app(
    session: AsyncSession, name: str, redirect_uris: Sequence[str]
) -> tuple[App, IssuedAppKey]:
    app = App(
        id=ids.new_app_id(),
        client_id=ids.new_client_id(),
        name=name,
        redirect_uris=list(redirect_uris),
    )
    session.add(app)
    await session.flush()
    audit(session, "app.created", app.id, app.id, client_id=app.client_id)
    return app, await _issue_app_key(session, app)


async def authenticate_app(session: AsyncSession, key_id: str, key_hash_hex: str) -> App:
    """The app owning a live key whose SHA-256 matches; any failure is the same 401."""
    row = (
        await session.execute(
            select(AppKey, App).join(App, App.id == AppKey.app_id).where(AppKey.key_id == key_id)
        )
    ).first()
    stored = row[0].key_hash if row is not None else _NO_SUCH_KEY_HASH
    matches = hmac.compare_digest(stored, bytes.fromhex(key_hash_hex))
    if row is None or not matches or row[0].revoked_at is not None:
        raise errors.unauthorized()
    return row[1]


async def create_app_key(session: AsyncSession, client_id: str) -> tuple[App, IssuedAppKey]:
    app = await get_app(session, client_id)
    return app, await _issue_app_key(session, app)


async def revoke_app_key(session: AsyncSession, key_id: str) -> str:
    """Revoke a key (idempotent); returns its app id."""
    app_id = await session.scalar(select(AppKey.app_id).where(AppKey.key_id == key_id))
    if app_id is None:
        raise errors.not_found("App API key not found.", code="app_key_not_found")
    revoked = await session.execute(
        update(AppKey)
        .where(AppKey.key_id == key_id, AppKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    if rowcount(revoked):
        audit(session, "app_key.revoked", app_id, key_id)
    return app_id


def rate_limits_of(app: App) -> ks.AppRateLimits:
    return ks.AppRateLimits(
        rps=app.rate_limit_rps,
        burst=app.rate_limit_burst,
        connection_rps=app.connection_rate_limit_rps,
        connection_burst=app.connection_rate_limit_burst,
    )


async def set_rate_limits(session: AsyncSession, request: ks.AppLimitsSet) -> App:
    """Apply the limits `request` gives to the app it names by id or client id."""
    by_id = request.app.startswith("app_")
    app = await session.scalar(
        select(App).where(App.id == request.app if by_id else App.client_id == request.app)
    )
    if app is None:
        raise app_not_found()
    before = rate_limits_of(app)
    if request.reset:
        app.rate_limit_rps = app.rate_limit_burst = None
        app.connection_rate_limit_rps = app.connection_rate_limit_burst = None
    given = request.limits
    if given.rps is not None:
        app.rate_limit_rps = given.rps
    if given.burst is not None:
        app.rate_limit_burst = given.burst
    if given.connection_rps is not None:
        app.connection_rate_limit_rps = given.connection_rps
    if given.connection_burst is not None:
        app.connection_rate_limit_burst = given.connection_burst
    after = rate_limits_of(app)
    if after != before:
        audit(session, "app.rate_limits_changed", app.id, app.id, **after.model_dump())
    return app


def app_info(app: App, default: AppDefaultProvider | None = None) -> ks.AppInfo:
    return ks.AppInfo(
        app_id=app.id,
        client_id=app.client_id,
        name=app.name,
        redirect_uris=app.redirect_uris,
        created_at=app.created_at,
        has_default_provider=default is not None,
        default_provider=provider_name(default) if default is not None else None,
        default_provider_label=default.label if default is not None else None,
        headless=app.headless,
    )


# --- bus handlers -------------------------------------------------------------------------------


class AppHandlers(Handlers):
    """Registering apps and managing their API keys, and the gateway's key check."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.APP_CREATE, self.app_create, discovery=discovery)
        serve(broker, ks.APP_GET, self.app_get, discovery=discovery)
        serve(broker, ks.APP_AUTHENTICATE, self.app_authenticate, discovery=discovery)
        serve(broker, ks.APP_KEY_CREATE, self.app_key_create, discovery=discovery)
        serve(broker, ks.APP_KEY_REVOKE, self.app_key_revoke, discovery=discovery)
        serve(broker, ks.APP_LIMITS_SET, self.app_limits_set, discovery=discovery)

    async def app_create(self, request: ks.AppCreate) -> ks.AppCreated:
        check_redirect_uris(request.redirect_uris)
        async with self.sessions.begin() as session:
            app, key = await create_app(session, request.name, request.redirect_uris)
        return ks.AppCreated(
            app_id=app.id,
            client_id=app.client_id,
            name=app.name,
            redirect_uris=app.redirect_uris,
            key_id=key.key_id,
            key_label=key.label,
            app_api_key=SecretStr(key.key),
        )

    async def app_get(self, request: ks.AppGet) -> ks.AppInfo:
        async with self.sessions.begin() as session:
            app = await get_app(session, request.client_id)
            return app_info(app, await default_of(session, app.id))

    async def app_authenticate(self, request: ks.AppAuthenticate) -> ks.AppPrincipal:
        async with self.sessions.begin() as session:
            app = await authenticate_app(session, request.key_id, request.key_hash)
        return ks.AppPrincipal(
            app_id=app.id,
            client_id=app.client_id,
            name=app.name,
            key_id=request.key_id,
            limits=rate_limits_of(app),
        )

    async def app_key_create(self, request: ks.AppKeyCreate) -> ks.AppKeyCreated:
        async with self.sessions.begin() as session:
            app, key = await create_app_key(session, request.client_id)
        return ks.AppKeyCreated(
            client_id=app.client_id,
            key_id=key.key_id,
            key_label=key.label,
            app_api_key=SecretStr(key.key),
        )

    async def app_key_revoke(self, request: ks.AppKeyRevoke) -> ks.AppKeyRevoked:
        async with self.sessions.begin() as session:
            app_id = await revoke_app_key(session, request.key_id)
        await self.runtime.bus.publish_event(
            events.APP_KEY_REVOKED, events.AppKeyRevokedEvent(key_id=request.key_id, app_id=app_id)
        )
        return ks.AppKeyRevoked(key_id=request.key_id, app_id=app_id)

    async def app_limits_set(self, request: ks.AppLimitsSet) -> ks.AppLimits:
        async with self.sessions.begin() as session:
            app = await set_rate_limits(session, request)
            limits = ks.AppLimits(
                app_id=app.id, client_id=app.client_id, limits=rate_limits_of(app)
            )
        if request.reset or request.limits != ks.AppRateLimits():
            # Every gateway copy asks again on the app's next request: milliseconds, not the
            # key cache's 30 s.
            await self.runtime.bus.publish_event(
                events.APP_LIMITS_CHANGED, events.AppLimitsChangedEvent(app_id=app.id)
            )
        return limits
