"""Manage links and sessions: how a person later changes or disconnects a connection they made.

An app hands its user a short-lived, single-use link; redeeming it opens a manage session (its
token lives in a browser cookie) that may change only that one connection. Peeking at a link
(for Connect's confirmation page) spends nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts.keystore import ProviderCredentialInput
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from byorouter_common.redact import mask_key
from byorouter_keystore import ids
from byorouter_keystore.app_default import offers_default_provider
from byorouter_keystore.connect_flow.one_time import (
    expires_in,
    new_one_time_secret,
    purge_expired,
    secret_hash,
)
from byorouter_keystore.connections import delete_connection, validate_providers
from byorouter_keystore.crypto import Destination, KeyringStore
from byorouter_keystore.provider_policy import check_allowed, in_order, policy_of
from byorouter_keystore.shared import (
    Handlers,
    app_not_found,
    audit,
    connection_info,
    credentials_of,
    owned_connection,
    provider_name,
    seal_api_key,
    store_sealed,
)
from byorouter_keystore.tables import (
    App,
    Connection,
    Credential,
    ManageLink,
    ManageSession,
    Tunnel,
)
from byorouter_keystore.tunnels import check_tunnel_of
from byorouter_keystore.user_limits import limits_status, set_limits
from byorouter_keystore.webhooks import enqueue_connection_event


def session_expired() -> ByoError:
    return ByoError(
        401,
        "session_expired",
        "This manage session has ended. Go back to the app and choose Manage API Keys again.",
    )


def link_not_usable() -> ByoError:
    return ByoError(
        400,
        "link_expired",
        "This link has expired or was already used. Go back to the app and choose Manage API "
        "Keys again.",
    )


# --- manage links and sessions ------------------------------------------------------------------


def _check_return_url(app: App, return_url: str) -> None:
    """A return link must be a redirect-URI-like URL on the origin of one of the app's URIs."""
    problem = cn.redirect_uri_problem(return_url)
    origins = {cn.origin_of(uri) for uri in app.redirect_uris}
    if problem is not None or cn.origin_of(return_url) not in origins:
        raise errors.bad_request(
            "return_url must be an https URL (http only on localhost) on the same origin as one "
            "of the app's redirect URIs, without user info or fragment.",
            param="return_url",
        )


async def create_manage_link(
    session: AsyncSession, request: cn.ManageLinkCreate
) -> tuple[str, datetime]:
    connection = await owned_connection(session, request.app_id, request.connection_id)
    if request.return_url is not None:
        app = await session.get(App, request.app_id)
        if app is None:
            raise app_not_found()
        _check_return_url(app, request.return_url)
    await purge_expired(session)
    token = new_one_time_secret()
    expires_at = await session.scalar(
        insert(ManageLink)
        .values(
            token_hash=secret_hash(token),
            app_id=request.app_id,
            connection_id=connection.id,
            return_url=request.return_url,
            expires_at=expires_in(request.ttl_s),
        )
        .returning(ManageLink.expires_at)
    )
    assert expires_at is not None
    audit(session, "manage_link.created", request.app_id, connection.id)
    return token, expires_at


async def peek_manage_link(session: AsyncSession, token: str) -> cn.ManageLinkPreview:
    """What an unspent, unexpired link would open, leaving it unspent.

    Opening a link only asks the person; a link scanner fetching it must not burn it.
    """
    row = (
        await session.execute(
            select(ManageLink, App, Connection)
            .join(App, App.id == ManageLink.app_id)
            .join(
                Connection,
                (Connection.id == ManageLink.connection_id) & (Connection.app_id == App.id),
            )
            .where(
                ManageLink.token_hash == secret_hash(token),
                ManageLink.used_at.is_(None),
                ManageLink.expires_at > func.now(),
                Connection.status == "active",
            )
        )
    ).first()
    if row is None:
        raise link_not_usable()
    link, app, connection = row
    return cn.ManageLinkPreview(
        app_name=app.name,
        providers=[provider_name(c) for c in await credentials_of(session, connection.id)],
        connected_at=connection.created_at,
        expires_at=link.expires_at,
        return_url=link.return_url,
    )


async def redeem_manage_link(
    session: AsyncSession, token: str, session_ttl_s: int
) -> tuple[str, datetime]:
    """Spend a link (once, before it expires) and open a manage session in its place."""
    claimed = (
        await session.execute(
            update(ManageLink)
            .where(
                ManageLink.token_hash == secret_hash(token),
                ManageLink.used_at.is_(None),
                ManageLink.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(ManageLink.app_id, ManageLink.connection_id, ManageLink.return_url)
        )
    ).first()
    if claimed is None:
        raise link_not_usable()
    try:
        await owned_connection(session, claimed.app_id, claimed.connection_id)
    except ByoError:
        raise link_not_usable() from None
    manage_session = new_one_time_secret()
    expires_at = await session.scalar(
        insert(ManageSession)
        .values(
            session_hash=secret_hash(manage_session),
            app_id=claimed.app_id,
            connection_id=claimed.connection_id,
            return_url=claimed.return_url,
            expires_at=expires_in(session_ttl_s),
        )
        .returning(ManageSession.expires_at)
    )
    assert expires_at is not None
    audit(session, "manage_session.opened", claimed.app_id, claimed.connection_id)
    return manage_session, expires_at


@dataclass(frozen=True)
class ManageContext:
    """A live manage session and what it may change."""

    app: App
    connection: Connection
    return_url: str | None
    expires_at: datetime


async def manage_context(
    session: AsyncSession, manage_session: str, *, for_update: bool = False, active: bool = True
) -> ManageContext:
    """The session's app and connection; 401 once it expired, or (`active`) once disconnected."""
    row = (
        await session.execute(
            select(ManageSession, App)
            .join(App, App.id == ManageSession.app_id)
            .where(
                ManageSession.session_hash == secret_hash(manage_session),
                ManageSession.expires_at > func.now(),
            )
        )
    ).first()
    if row is None:
        raise session_expired()
    manage, app = row
    query = select(Connection).where(
        Connection.id == manage.connection_id, Connection.app_id == app.id
    )
    if for_update:
        query = query.with_for_update()
    connection = await session.scalar(query)
    if connection is None or (active and connection.status != "active"):
        raise session_expired()
    return ManageContext(app, connection, manage.return_url, manage.expires_at)


# --- what a manage session may change -----------------------------------------------------------


async def set_provider(
    session: AsyncSession, keyring: KeyringStore, context: ManageContext, p: ProviderCredentialInput
) -> None:
    """Add a provider, or replace one: a new data key seals the new key; the id stays.

    A self-hosted provider keeps its tunnel unless another tunnel of this connection is named.
    """
    connection = context.connection
    existing = {c.provider: c for c in await credentials_of(session, connection.id)}
    kept = existing.get(p.provider)
    if p.tunnel_id is None and kept is not None and kept.tunnel_id is not None:
        p = p.model_copy(update={"tunnel_id": kept.tunnel_id})
    validate_providers([p])
    check_allowed([p], policy_of(context.app, connection.allowed_providers))
    if p.tunnel_id is not None and (kept is None or p.tunnel_id != kept.tunnel_id):
        await check_tunnel_of(session, connection.id, p.tunnel_id)
    key = p.api_key.get_secret_value().strip() if p.api_key is not None else ""
    # Re-sealed with every change, so the new base URL and tunnel are the ones bound to the key.
    sealed = seal_api_key(
        keyring, key or None, connection.id, p.provider, Destination(p.base_url, p.tunnel_id)
    )
    current = existing.get(p.provider)
    if current is None:
        session.add(
            Credential(
                id=ids.new_credential_id(),
                connection_id=connection.id,
                provider=p.provider,
                priority=max((c.priority for c in existing.values()), default=-1) + 1,
                base_url=p.base_url,
                preferred_model=p.preferred_model,
                label=mask_key(key) if key else None,
                kek_version=sealed.kek_version,
                wrapped_dek=sealed.wrapped_dek,
                ciphertext=sealed.ciphertext,
                binding_version=sealed.binding_version,
                status="ok",
                tunnel_id=p.tunnel_id,
            )
        )
        action = "provider.added"
    else:
        current.base_url = p.base_url
        current.tunnel_id = p.tunnel_id
        if p.preferred_model is not None:
            current.preferred_model = p.preferred_model
        current.label = mask_key(key) if key else None
        store_sealed(current, sealed)
        # A new key deserves a fresh verdict from the provider.
        current.status = "ok"
        current.last_error = None
        action = "provider.key_replaced"
    await session.flush()
    audit(session, action, context.app.id, connection.id, provider=p.provider)


async def remove_provider(session: AsyncSession, context: ManageContext, provider: str) -> None:
    connection = context.connection
    credentials = await credentials_of(session, connection.id)
    if not any(c.provider == provider for c in credentials):
        raise errors.not_found("This connection has no such provider.", code="provider_not_found")
    if len(credentials) == 1:
        raise errors.bad_request(
            "A connection needs at least one provider: add another first, or disconnect.",
            code="last_provider",
        )
    await session.execute(
        delete(Credential).where(
            Credential.connection_id == connection.id, Credential.provider == provider
        )
    )
    remaining = [c for c in credentials if c.provider != provider]
    for priority, credential in enumerate(remaining):
        credential.priority = priority
    await session.flush()
    audit(session, "provider.removed", context.app.id, connection.id, provider=provider)


async def set_preferences(
    session: AsyncSession, context: ManageContext, request: cn.PreferencesSet
) -> None:
    connection = context.connection
    credentials = {c.provider: c for c in await credentials_of(session, connection.id)}
    if len(set(request.order)) != len(request.order) or set(request.order) != set(credentials):
        raise errors.bad_request(
            "order must list every provider of the connection exactly once.", param="order"
        )
    for priority, provider in enumerate(request.order):
        credentials[provider].priority = priority
    for provider, model in request.preferred_models.items():
        if provider in credentials:
            model = (model or "").strip()
            if len(model) > 200:
                raise errors.bad_request(
                    "A preferred model id is at most 200 characters.", param="preferred_models"
                )
            credentials[provider].preferred_model = model or None
    connection.fallback_to_default = request.fallback_to_default and (
        await offers_default_provider(session, context.app)
    )
    await session.flush()
    audit(session, "connection.preferences_changed", context.app.id, connection.id)


async def disconnect(session: AsyncSession, context: ManageContext) -> list[Tunnel]:
    """Revoke the connection and erase its keys; the session stays only to show the done page.

    Returns the tunnels revoked with it, to announce once committed.
    """
    tunnels = await delete_connection(session, context.app.id, context.connection.id)
    await session.execute(
        update(ManageLink)
        .where(ManageLink.connection_id == context.connection.id, ManageLink.used_at.is_(None))
        .values(used_at=func.now())
    )
    return tunnels


# --- bus handlers -------------------------------------------------------------------------------

_Change = Callable[[AsyncSession, ManageContext], Awaitable[None]]


class ManageHandlers(Handlers):
    """Manage links for the app, and the manage page's view and changes for the person."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, cn.MANAGE_LINK_CREATE, self.manage_link_create, discovery=discovery)
        serve(broker, cn.MANAGE_LINK_PEEK, self.manage_link_peek, discovery=discovery)
        serve(broker, cn.MANAGE_LINK_REDEEM, self.manage_link_redeem, discovery=discovery)
        serve(broker, cn.MANAGE_SESSION_GET, self.manage_session_get, discovery=discovery)
        serve(broker, cn.PROVIDER_SET, self.provider_set, discovery=discovery)
        serve(broker, cn.PROVIDER_REMOVE, self.provider_remove, discovery=discovery)
        serve(broker, cn.PREFERENCES_SET, self.preferences_set, discovery=discovery)
        serve(broker, cn.MANAGE_DISCONNECT, self.manage_disconnect, discovery=discovery)
        serve(broker, cn.LIMITS_SET, self.limits_set, discovery=discovery)

    async def manage_link_create(self, request: cn.ManageLinkCreate) -> cn.ManageLink:
        async with self.sessions.begin() as session:
            token, expires_at = await create_manage_link(session, request)
        return cn.ManageLink(token=SecretStr(token), expires_at=expires_at)

    async def manage_link_peek(self, request: cn.ManageLinkPeek) -> cn.ManageLinkPreview:
        async with self.sessions.begin() as session:
            return await peek_manage_link(session, request.token.get_secret_value())

    async def manage_link_redeem(self, request: cn.ManageLinkRedeem) -> cn.ManageSessionOpened:
        async with self.sessions.begin() as session:
            opened, expires_at = await redeem_manage_link(
                session, request.token.get_secret_value(), request.session_ttl_s
            )
        return cn.ManageSessionOpened(session=SecretStr(opened), expires_at=expires_at)

    async def _view(self, session: AsyncSession, context: ManageContext) -> cn.ManageView:
        credentials = await credentials_of(session, context.connection.id)
        return cn.ManageView(
            app_name=context.app.name,
            offers_default_provider=await offers_default_provider(session, context.app),
            allowed_providers=in_order(
                policy_of(context.app, context.connection.allowed_providers)
            ),
            return_url=context.return_url,
            expires_at=context.expires_at,
            connection=connection_info(context.connection, credentials).model_copy(
                update={"limits": await limits_status(session, context.connection)}
            ),
        )

    async def manage_session_get(self, request: cn.ManageSessionGet) -> cn.ManageView:
        # A disconnected connection still shows (as revoked): the done page names the app.
        async with self.sessions.begin() as session:
            context = await manage_context(
                session, request.session.get_secret_value(), active=False
            )
            return await self._view(session, context)

    async def _change(self, manage_session: SecretStr, change: _Change) -> cn.ManageView:
        async with self.sessions.begin() as session:
            context = await manage_context(
                session, manage_session.get_secret_value(), for_update=True
            )
            await change(session, context)
            # Reloaded: the change may have deleted rows or revoked the connection.
            await session.refresh(context.connection)
            await enqueue_connection_event(
                session,
                context.app.id,
                context.connection.id,
                disconnected=context.connection.status == "revoked",
            )
            view = await self._view(session, context)
        await self.connection_changed(
            context.connection.id,
            context.app.id,
            deleted=view.connection.status == "revoked",
        )
        return view

    async def provider_set(self, request: cn.ProviderSet) -> cn.ManageView:
        async def change(session: AsyncSession, context: ManageContext) -> None:
            await set_provider(session, self.keyring, context, request.credential)

        return await self._change(request.session, change)

    async def provider_remove(self, request: cn.ProviderRemove) -> cn.ManageView:
        async def change(session: AsyncSession, context: ManageContext) -> None:
            await remove_provider(session, context, request.provider)

        return await self._change(request.session, change)

    async def preferences_set(self, request: cn.PreferencesSet) -> cn.ManageView:
        async def change(session: AsyncSession, context: ManageContext) -> None:
            await set_preferences(session, context, request)

        return await self._change(request.session, change)

    async def limits_set(self, request: cn.LimitsSet) -> cn.ManageView:
        async def change(session: AsyncSession, context: ManageContext) -> None:
            set_limits(session, context.connection, request.limits)
            await session.flush()

        return await self._change(request.session, change)

    async def manage_disconnect(self, request: cn.ManageDisconnect) -> cn.ManageView:
        revoked: list[Tunnel] = []

        async def change(session: AsyncSession, context: ManageContext) -> None:
            revoked.extend(await disconnect(session, context))

        view = await self._change(request.session, change)
        await self.tunnels_revoked(revoked)
        return view
