"""An app's own default provider: set and cleared by the operator, its key sealed like users' keys.

The key is envelope-encrypted with the same code as connections' credentials (a fresh data key
per secret), but sealed to the app (`app_default_owner`) rather than to a connection, so a row
copied between apps, or between an app default and a connection's credential, does not decrypt.
"""

from __future__ import annotations

import logging
from typing import cast

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.contracts.keystore import AppDefaultSet, ProviderName
from byorouter_common.errors import ByoError
from byorouter_common.redact import mask_key
from byorouter_keystore import repository as repo
from byorouter_keystore.app_default_models import AppDefaultProvider, app_default_owner
from byorouter_keystore.crypto import (
    KeyringStore,
    SealedSecret,
    UnknownKekVersion,
    seal,
    undecryptable,
    unseal,
)
from byorouter_keystore.models import App

log = logging.getLogger(__name__)

# Providers that cannot be called without a key; a self-hosted server may need none.
_KEY_REQUIRED: frozenset[str] = frozenset({"openai", "anthropic", "openrouter"})


def validate(request: AppDefaultSet) -> None:
    """Refuse a default that could never work; messages name the field, never the value."""
    key = request.api_key.get_secret_value().strip() if request.api_key is not None else ""
    if request.provider in _KEY_REQUIRED and not key:
        raise errors.bad_request(f"api_key is required for {request.provider}.", param="api_key")
    if request.provider == "selfhosted" and not request.base_url:
        raise errors.bad_request("base_url is required for selfhosted.", param="base_url")
    if request.base_url is not None and not repo._is_plain_http_url(request.base_url):
        raise errors.bad_request(
            "base_url must be an absolute http(s) URL without user or password.",
            param="base_url",
        )
    if request.model is not None and not request.model.strip():
        raise errors.bad_request("model must not be empty.", param="model")


async def set_default(
    session: AsyncSession, keyring: KeyringStore, request: AppDefaultSet
) -> tuple[App, AppDefaultProvider]:
    """Store (or replace) the app's default provider, its key sealed under a fresh data key."""
    validate(request)
    app = await repo.get_app(session, request.client_id)
    key = request.api_key.get_secret_value().strip() if request.api_key is not None else ""
    owner_row = await session.get(AppDefaultProvider, app.id, with_for_update=True)
    sealed = seal(
        keyring.current,
        repo._secret_document(key or None),
        app_default_owner(app.id),
        request.provider,
    )
    row = owner_row or AppDefaultProvider(app_id=app.id)
    row.provider = request.provider
    row.base_url = request.base_url
    row.model = request.model.strip() if request.model is not None else None
    row.label = mask_key(key) if key else None
    row.kek_version = sealed.kek_version
    row.wrapped_dek = sealed.wrapped_dek
    row.ciphertext = sealed.ciphertext
    if owner_row is None:
        session.add(row)
    await session.flush()
    await session.refresh(row)
    repo._audit(session, "app_default.set", app.id, app.id, provider=request.provider)
    return app, row


async def clear_default(session: AsyncSession, client_id: str) -> tuple[App, bool]:
    """Erase the app's default provider; True if it had one (clearing twice is fine)."""
    app = await repo.get_app(session, client_id)
    erased = await session.execute(
        delete(AppDefaultProvider).where(AppDefaultProvider.app_id == app.id)
    )
    cleared = repo._rowcount(erased) > 0
    if cleared:
        repo._audit(session, "app_default.cleared", app.id, app.id)
    return app, cleared


async def default_of(session: AsyncSession, app_id: str) -> AppDefaultProvider | None:
    return await session.scalar(
        select(AppDefaultProvider).where(AppDefaultProvider.app_id == app_id)
    )


def open_default(keyring: KeyringStore, row: AppDefaultProvider) -> str | None:
    """The default's API key (None when it has none); a 500 if the row will not decrypt."""
    sealed = SealedSecret(row.kek_version, row.wrapped_dek, row.ciphertext)
    try:
        try:
            plaintext = unseal(keyring.current, sealed, row.owner, row.provider)
        except UnknownKekVersion:
            # Another copy rotated and we have not seen its event yet: read the file, retry once.
            keyring.reload()
            plaintext = unseal(keyring.current, sealed, row.owner, row.provider)
    except (UnknownKekVersion, ByoError) as exc:
        # Tampered with, copied from another app, or outlived its KEK: the log names the app,
        # never anything of the row's contents.
        log.warning(
            "app default provider cannot be decrypted",
            extra={"app_id": row.app_id, "reason": type(exc).__name__},
        )
        raise undecryptable() from None
    api_key = orjson.loads(plaintext).get("api_key")
    return api_key if isinstance(api_key, str) else None


def provider_name(row: AppDefaultProvider) -> ProviderName:
    """The stored provider as the contract's literal type (the column only ever holds these)."""
    return cast(ProviderName, row.provider)
