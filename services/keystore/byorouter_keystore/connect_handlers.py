"""Bus handlers of the Connect flow: contract in, one transaction of `connect_repository`, out.

As in `handlers`, a change is announced (`CONNECTION_CHANGED`) only after its transaction has
committed, so every router and gateway copy drops its cached copy of a connection at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common.bus import serve
from byorouter_common.contracts import connect as cn
from byorouter_common.contracts import events
from byorouter_common.contracts.keystore import ConnectionInfo
from byorouter_common.service import ServiceRuntime
from byorouter_keystore import connect_repository as flow
from byorouter_keystore.crypto import KeyringStore
from byorouter_keystore.handlers import _connection_info as connection_info
from byorouter_keystore.models import App

_Change = Callable[[AsyncSession, flow.ManageContext], Awaitable[None]]


async def _consent_app(session: AsyncSession, app: App) -> cn.ConsentApp:
    return cn.ConsentApp(
        app_id=app.id,
        client_id=app.client_id,
        name=app.name,
        redirect_uris=app.redirect_uris,
        offers_default_provider=await flow.offers_default_provider(session, app),
    )


@dataclass
class ConnectFlowHandlers:
    """Keystore's half of the Connect flow, sharing the keystore's sessions and keyring."""

    runtime: ServiceRuntime[Any]
    sessions: async_sessionmaker[AsyncSession]
    keyring: KeyringStore

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, cn.CONSENT_APP_GET, self.consent_app, discovery=discovery)
        serve(broker, cn.AUTHORIZE, self.authorize, discovery=discovery)
        serve(broker, cn.CODE_EXCHANGE, self.exchange_code, discovery=discovery)
        serve(broker, cn.MANAGE_LINK_CREATE, self.create_manage_link, discovery=discovery)
        serve(broker, cn.MANAGE_LINK_REDEEM, self.redeem_manage_link, discovery=discovery)
        serve(broker, cn.MANAGE_SESSION_GET, self.manage_view, discovery=discovery)
        serve(broker, cn.PROVIDER_SET, self.set_provider, discovery=discovery)
        serve(broker, cn.PROVIDER_REMOVE, self.remove_provider, discovery=discovery)
        serve(broker, cn.PREFERENCES_SET, self.set_preferences, discovery=discovery)
        serve(broker, cn.MANAGE_DISCONNECT, self.disconnect, discovery=discovery)

    async def _connection_changed(self, connection_id: str, app_id: str, *, deleted: bool) -> None:
        await self.runtime.bus.publish_event(
            events.CONNECTION_CHANGED,
            events.ConnectionChangedEvent(
                connection_id=connection_id, app_id=app_id, deleted=deleted
            ),
        )

    # --- consent and codes ---

    async def consent_app(self, request: cn.ConsentAppGet) -> cn.ConsentApp:
        async with self.sessions.begin() as session:
            return await _consent_app(session, await flow.consent_app(session, request.client_id))

    async def authorize(self, request: cn.AuthorizationGrant) -> cn.AuthorizationCode:
        async with self.sessions.begin() as session:
            issued = await flow.authorize(session, self.keyring, request)
        await self._connection_changed(
            issued.connection.id, issued.connection.app_id, deleted=False
        )
        return cn.AuthorizationCode(code=SecretStr(issued.code), expires_at=issued.expires_at)

    async def exchange_code(self, request: cn.CodeExchange) -> ConnectionInfo:
        async with self.sessions.begin() as session:
            outcome = await flow.exchange_code(
                session,
                request.app_id,
                request.code.get_secret_value(),
                request.redirect_uri,
                request.code_verifier.get_secret_value(),
            )
        if outcome.revoked_connection_id is not None:
            await self._connection_changed(
                outcome.revoked_connection_id, request.app_id, deleted=True
            )
        if outcome.connection is None:
            raise flow.invalid_grant()
        return connection_info(*outcome.connection)

    # --- manage links and sessions ---

    async def create_manage_link(self, request: cn.ManageLinkCreate) -> cn.ManageLink:
        async with self.sessions.begin() as session:
            token, expires_at = await flow.create_manage_link(session, request)
        return cn.ManageLink(token=SecretStr(token), expires_at=expires_at)

    async def redeem_manage_link(self, request: cn.ManageLinkRedeem) -> cn.ManageSessionOpened:
        async with self.sessions.begin() as session:
            opened, expires_at = await flow.redeem_manage_link(
                session, request.token.get_secret_value(), request.session_ttl_s
            )
        return cn.ManageSessionOpened(session=SecretStr(opened), expires_at=expires_at)

    async def _view(self, session: AsyncSession, context: flow.ManageContext) -> cn.ManageView:
        credentials = await flow.credentials_of(session, context.connection.id)
        return cn.ManageView(
            app_name=context.app.name,
            offers_default_provider=await flow.offers_default_provider(session, context.app),
            return_url=context.return_url,
            expires_at=context.expires_at,
            connection=connection_info(context.connection, credentials),
        )

    async def manage_view(self, request: cn.ManageSessionGet) -> cn.ManageView:
        # A disconnected connection still shows (as revoked): the done page names the app.
        async with self.sessions.begin() as session:
            context = await flow.manage_context(
                session, request.session.get_secret_value(), active=False
            )
            return await self._view(session, context)

    async def _change(self, manage_session: SecretStr, change: _Change) -> cn.ManageView:
        async with self.sessions.begin() as session:
            context = await flow.manage_context(
                session, manage_session.get_secret_value(), for_update=True
            )
            await change(session, context)
            # Reloaded: the change may have deleted rows or revoked the connection.
            await session.refresh(context.connection)
            view = await self._view(session, context)
        await self._connection_changed(
            context.connection.id,
            context.app.id,
            deleted=view.connection.status == "revoked",
        )
        return view

    async def set_provider(self, request: cn.ProviderSet) -> cn.ManageView:
        async def change(session: AsyncSession, context: flow.ManageContext) -> None:
            await flow.set_provider(session, self.keyring, context, request.credential)

        return await self._change(request.session, change)

    async def remove_provider(self, request: cn.ProviderRemove) -> cn.ManageView:
        async def change(session: AsyncSession, context: flow.ManageContext) -> None:
            await flow.remove_provider(session, context, request.provider)

        return await self._change(request.session, change)

    async def set_preferences(self, request: cn.PreferencesSet) -> cn.ManageView:
        async def change(session: AsyncSession, context: flow.ManageContext) -> None:
            await flow.set_preferences(session, context, request)

        return await self._change(request.session, change)

    async def disconnect(self, request: cn.ManageDisconnect) -> cn.ManageView:
        return await self._change(request.session, flow.disconnect)
