"""Headless connections: an app's server stores and changes its users' keys without Connect.

Nothing here validates, seals or masks a key itself: a new connection goes through
`create_connection` and a change through the manage page's own functions, so a key stored
headless is stored exactly as one typed on the Connect page. The app stands in for the manage
session; only an app the operator allowed (`apps.headless`) gets that far.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common.bus import serve
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.contracts.keystore import headless as hl
from byorouter_common.errors import ByoError
from byorouter_keystore.app_default import default_of, offers_default_provider
from byorouter_keystore.apps import app_info
from byorouter_keystore.connect_flow.manage import (
    ManageContext,
    remove_provider,
    set_preferences,
    set_provider,
)
from byorouter_keystore.connections import create_connection
from byorouter_keystore.crypto import KeyringStore
from byorouter_keystore.shared import (
    Handlers,
    app_not_found,
    audit,
    connection_info,
    credentials_of,
    get_app,
    owned_connection,
    provider_name,
)
from byorouter_keystore.tables import App, Connection, Credential
from byorouter_keystore.webhooks import enqueue_connection_event


def headless_not_enabled() -> ByoError:
    return ByoError(
        403,
        "headless_not_enabled",
        "This app may not store its users' keys itself: headless connections are off for it. "
        "Send the user to the Connect page, or ask the operator to run "
        "`byorouter app headless --client-id <client id>`.",
    )


async def set_headless(session: AsyncSession, client_id: str, enabled: bool) -> App:
    app = await get_app(session, client_id)
    if app.headless != enabled:
        app.headless = enabled
        audit(
            session, "app.headless_enabled" if enabled else "app.headless_disabled", app.id, app.id
        )
    return app


async def headless_app(session: AsyncSession, app_id: str) -> App:
    """The app, if the operator allowed it to handle its users' keys; 403 otherwise."""
    app = await session.get(App, app_id)
    if app is None:
        raise app_not_found()
    if not app.headless:
        raise headless_not_enabled()
    return app


async def create_headless_connection(
    session: AsyncSession, keyring: KeyringStore, request: hl.HeadlessConnectionCreate
) -> tuple[Connection, list[Credential]]:
    app = await headless_app(session, request.app_id)
    # As at consent: a fallback to the app's own AI only if it has one.
    fallback = request.fallback_to_default and await offers_default_provider(session, app)
    connection, credentials = await create_connection(
        session, keyring, app.id, request.providers, fallback
    )
    audit(session, "connection.created_headless", app.id, connection.id)
    return connection, credentials


async def update_headless_connection(
    session: AsyncSession, keyring: KeyringStore, request: hl.HeadlessConnectionUpdate
) -> tuple[Connection, list[Credential]]:
    """Apply every change of `request` or none (the caller's transaction); the id stays."""
    app = await headless_app(session, request.app_id)
    connection = await owned_connection(session, app.id, request.connection_id, for_update=True)
    # The manage page's changes, made by the app instead of a manage session.
    context = ManageContext(app, connection, return_url=None, expires_at=datetime.now(UTC))
    for index, credential in enumerate(request.providers):
        try:
            await set_provider(session, keyring, context, credential)
        except ByoError as exc:
            raise _at(exc, f"providers[{index}]") from None
    for provider in request.remove_providers:
        await remove_provider(session, context, provider)
    current = await credentials_of(session, connection.id)
    order = request.order or [provider_name(c) for c in current]
    if (
        request.order is not None
        or request.preferred_models
        or request.fallback_to_default is not None
    ):
        fallback = (
            request.fallback_to_default
            if request.fallback_to_default is not None
            else connection.fallback_to_default
        )
        await set_preferences(
            session,
            context,
            # The app's key, not a session, authorizes this; the field is never read.
            cn.PreferencesSet(
                session=SecretStr("headless"),
                order=order,
                preferred_models=request.preferred_models,
                fallback_to_default=fallback,
            ),
        )
    await session.refresh(connection)
    # In the change's transaction, as for the manage page: the app's other servers hear of it.
    await enqueue_connection_event(session, app.id, connection.id, disconnected=False)
    return connection, await credentials_of(session, connection.id)


def _at(exc: ByoError, field: str) -> ByoError:
    """A refusal of one listed provider, its message and param naming where it is in the list."""
    if exc.param is None or exc.param.startswith("providers["):
        message = exc.message.replace("providers[0]", field)
        param = exc.param.replace("providers[0]", field) if exc.param else field
        return ByoError(exc.status, exc.code, message, param=param)
    return exc


# --- bus handlers -------------------------------------------------------------------------------


class HeadlessHandlers(Handlers):
    """The operator's switch, and what an allowed app's server may do through the gateway."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, hl.APP_HEADLESS_SET, self.app_headless_set, discovery=discovery)
        serve(broker, hl.HEADLESS_CHECK, self.headless_check, discovery=discovery)
        serve(
            broker,
            hl.HEADLESS_CONNECTION_CREATE,
            self.headless_connection_create,
            discovery=discovery,
        )
        serve(
            broker,
            hl.HEADLESS_CONNECTION_UPDATE,
            self.headless_connection_update,
            discovery=discovery,
        )

    async def app_headless_set(self, request: hl.AppHeadlessSet) -> ks.AppInfo:
        async with self.sessions.begin() as session:
            app = await set_headless(session, request.client_id, request.enabled)
            return app_info(app, await default_of(session, app.id))

    async def headless_check(self, request: hl.HeadlessCheck) -> hl.HeadlessAllowed:
        async with self.sessions.begin() as session:
            app = await headless_app(session, request.app_id)
        return hl.HeadlessAllowed(app_id=app.id)

    async def headless_connection_create(
        self, request: hl.HeadlessConnectionCreate
    ) -> ks.ConnectionInfo:
        async with self.sessions.begin() as session:
            connection, credentials = await create_headless_connection(
                session, self.keyring, request
            )
        await self.connection_changed(connection.id, connection.app_id, deleted=False)
        return connection_info(connection, credentials)

    async def headless_connection_update(
        self, request: hl.HeadlessConnectionUpdate
    ) -> ks.ConnectionInfo:
        async with self.sessions.begin() as session:
            connection, credentials = await update_headless_connection(
                session, self.keyring, request
            )
        # Every router copy drops its cached keys, so the next chat uses the new ones.
        await self.connection_changed(connection.id, connection.app_id, deleted=False)
        return connection_info(connection, credentials)
