"""An app's own default provider: set and cleared by the operator, its key sealed like users' keys.

The key is envelope-encrypted with the same code as connections' credentials (a fresh data key
per secret), but sealed to the app (`app_default_owner`) rather than to a connection, so a row
copied between apps, or between an app default and a connection's credential, does not decrypt;
its base URL is sealed with it, so neither does a row pointed at another server.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_common.redact import mask_key
from byorouter_keystore.crypto import Destination, KeyringStore, UnknownKekVersion, undecryptable
from byorouter_keystore.shared import (
    BASE_URL_RULE,
    KEY_REQUIRED,
    Handlers,
    audit,
    destination_of,
    get_app,
    is_plain_http_url,
    open_api_key,
    provider_name,
    rowcount,
    seal_api_key,
    sealed_of,
    store_sealed,
)
from byorouter_keystore.tables import App, AppDefaultProvider, app_default_owner

log = logging.getLogger(__name__)


def validate(request: ks.AppDefaultSet) -> None:
    """Refuse a default that could never work; messages name the field, never the value."""
    key = request.api_key.get_secret_value().strip() if request.api_key is not None else ""
    if request.provider in KEY_REQUIRED and not key:
        raise errors.bad_request(f"api_key is required for {request.provider}.", param="api_key")
    if request.provider == "selfhosted" and not request.base_url:
        raise errors.bad_request("base_url is required for selfhosted.", param="base_url")
    if request.base_url is not None and not is_plain_http_url(request.base_url):
        raise errors.bad_request(f"base_url {BASE_URL_RULE}.", param="base_url")
    if request.model is not None and not request.model.strip():
        raise errors.bad_request("model must not be empty.", param="model")


async def set_default(
    session: AsyncSession, keyring: KeyringStore, request: ks.AppDefaultSet
) -> tuple[App, AppDefaultProvider]:
    """Store (or replace) the app's default provider, its key sealed under a fresh data key."""
    validate(request)
    app = await get_app(session, request.client_id)
    key = request.api_key.get_secret_value().strip() if request.api_key is not None else ""
    owner_row = await session.get(AppDefaultProvider, app.id, with_for_update=True)
    sealed = seal_api_key(
        keyring,
        key or None,
        app_default_owner(app.id),
        request.provider,
        Destination(request.base_url),
    )
    row = owner_row or AppDefaultProvider(app_id=app.id)
    row.provider = request.provider
    row.base_url = request.base_url
    row.model = request.model.strip() if request.model is not None else None
    row.label = mask_key(key) if key else None
    store_sealed(row, sealed)
    if owner_row is None:
        session.add(row)
    await session.flush()
    await session.refresh(row)
    audit(session, "app_default.set", app.id, app.id, provider=request.provider)
    return app, row


async def clear_default(session: AsyncSession, client_id: str) -> tuple[App, bool]:
    """Erase the app's default provider; True if it had one (clearing twice is fine)."""
    app = await get_app(session, client_id)
    erased = await session.execute(
        delete(AppDefaultProvider).where(AppDefaultProvider.app_id == app.id)
    )
    cleared = rowcount(erased) > 0
    if cleared:
        audit(session, "app_default.cleared", app.id, app.id)
    return app, cleared


async def default_of(session: AsyncSession, app_id: str) -> AppDefaultProvider | None:
    return await session.scalar(
        select(AppDefaultProvider).where(AppDefaultProvider.app_id == app_id)
    )


async def offers_default_provider(session: AsyncSession, app: App) -> bool:
    """The app runs an AI of its own that a connection may fall back to."""
    return await default_of(session, app.id) is not None


def open_default(keyring: KeyringStore, row: AppDefaultProvider) -> str | None:
    """The default's API key (None when it has none); a 500 if the row will not decrypt, or no
    longer names the base URL it was sealed to."""
    try:
        return open_api_key(keyring, sealed_of(row), row.owner, row.provider, destination_of(row))
    except (UnknownKekVersion, ByoError) as exc:
        # Tampered with, copied from another app, or outlived its KEK: the log names the app,
        # never anything of the row's contents.
        log.warning(
            "app default provider cannot be decrypted",
            extra={"app_id": row.app_id, "reason": type(exc).__name__},
        )
        raise undecryptable() from None


def app_default_info(app: App, default: AppDefaultProvider) -> ks.AppDefaultInfo:
    return ks.AppDefaultInfo(
        client_id=app.client_id,
        provider=provider_name(default),
        label=default.label,
        base_url=default.base_url,
        model=default.model,
        updated_at=default.updated_at,
    )


# --- bus handlers -------------------------------------------------------------------------------


class AppDefaultHandlers(Handlers):
    """The operator's endpoints to set and clear an app's default provider."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.APP_DEFAULT_SET, self.app_default_set, discovery=discovery)
        serve(broker, ks.APP_DEFAULT_CLEAR, self.app_default_clear, discovery=discovery)

    async def app_default_set(self, request: ks.AppDefaultSet) -> ks.AppDefaultInfo:
        async with self.sessions.begin() as session:
            app, default = await set_default(session, self.keyring, request)
        await self._app_default_changed(app.id)
        return app_default_info(app, default)

    async def app_default_clear(self, request: ks.AppDefaultClear) -> ks.AppDefaultCleared:
        async with self.sessions.begin() as session:
            app, cleared = await clear_default(session, request.client_id)
        if cleared:
            await self._app_default_changed(app.id)
        return ks.AppDefaultCleared(client_id=app.client_id, cleared=cleared)

    async def _app_default_changed(self, app_id: str) -> None:
        # Every connection of the app resolves differently now: routers drop them all.
        await self.runtime.bus.publish_event(
            events.APP_DEFAULT_CHANGED, events.AppDefaultChangedEvent(app_id=app_id)
        )
