"""What several keystore resources share: audit, lookups, sealed secrets and the handlers' base.

Domain functions here, as in every resource module, are plain async functions over an
`AsyncSession`; the caller owns the transaction (one per bus request, so a request either fully
happens or not at all).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from sqlalchemy import CursorResult, Result, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common import errors
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import ProviderName
from byorouter_common.errors import ByoError
from byorouter_common.service import ServiceRuntime
from byorouter_keystore.crypto import (
    Destination,
    KeyringStore,
    SealedSecret,
    UnknownKekVersion,
    seal,
    undecryptable,
    unseal,
)
from byorouter_keystore.settings import KeystoreSettings
from byorouter_keystore.tables import (
    App,
    AppDefaultProvider,
    AuditEntry,
    Connection,
    Credential,
    Tunnel,
)

log = logging.getLogger(__name__)

# Providers that cannot be called without a key; a self-hosted server may need none.
KEY_REQUIRED: frozenset[str] = frozenset({"openai", "anthropic", "openrouter"})


def connection_not_found() -> ByoError:
    # The same answer for missing, revoked and another app's connection: ids are not probeable.
    return errors.not_found("Connection not found.", code="connection_not_found")


def app_not_found() -> ByoError:
    return errors.not_found("App not found.", code="app_not_found")


def audit(
    session: AsyncSession, action: str, app_id: str | None, subject_id: str, **detail: Any
) -> None:
    """Record who did what to which app or connection; `detail` must never hold a secret."""
    session.add(AuditEntry(action=action, app_id=app_id, subject_id=subject_id, detail=detail))


def rowcount(result: Result[Any]) -> int:
    # UPDATE and DELETE return a CursorResult, which knows how many rows it touched.
    return cast(CursorResult[Any], result).rowcount


# The refusal names the rule, never the URL: what it refuses is what would leak.
BASE_URL_RULE = (
    "must be an absolute http(s) URL with no user:password@, query string (?...) or "
    "fragment (#...); send a key as api_key, never inside the URL"
)


def is_plain_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host and nowhere to carry a secret.

    A base URL is stored in the clear and shown back to the app and the user, so a key put in its
    user-info, query string (`?api_key=...`) or fragment would be too: any of them is refused.
    """
    if any(c.isspace() or ord(c) < 0x20 for c in url) or "?" in url or "#" in url:
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def provider_name(row: Credential | AppDefaultProvider) -> ProviderName:
    """The stored provider as the contract's literal type (the column only ever holds these)."""
    return cast(ProviderName, row.provider)


# --- lookups ------------------------------------------------------------------------------------


async def get_app(session: AsyncSession, client_id: str) -> App:
    app = await session.scalar(select(App).where(App.client_id == client_id))
    if app is None:
        raise app_not_found()
    return app


async def owned_connection(
    session: AsyncSession, app_id: str, connection_id: str, *, for_update: bool = False
) -> Connection:
    """The app's active connection; a 404 for a missing, revoked or another app's connection."""
    query = select(Connection).where(
        Connection.id == connection_id, Connection.app_id == app_id, Connection.status == "active"
    )
    if for_update:
        query = query.with_for_update()
    connection = await session.scalar(query)
    if connection is None:
        raise connection_not_found()
    return connection


async def credentials_of(session: AsyncSession, connection_id: str) -> list[Credential]:
    """The connection's credentials in the order they are tried."""
    rows = await session.scalars(
        select(Credential)
        .where(Credential.connection_id == connection_id)
        .order_by(Credential.priority)
    )
    return list(rows)


# --- sealed secrets -----------------------------------------------------------------------------


def secret_document(api_key: str | None) -> bytes:
    # A small JSON document rather than the bare key, so keyless rows look like any other and
    # later secret fields need no schema change.
    return orjson.dumps({"api_key": api_key})


def seal_api_key(
    keyring: KeyringStore,
    api_key: str | None,
    owner: str,
    provider: str,
    destination: Destination,
) -> SealedSecret:
    """Seal `api_key` (None: the provider needs none) under a fresh data key, bound to its owner,
    provider and destination: a row whose address changes afterwards no longer opens."""
    return seal(keyring.current, secret_document(api_key), owner, provider, destination)


def open_api_key(
    keyring: KeyringStore,
    sealed: SealedSecret,
    owner: str,
    provider: str,
    destination: Destination,
) -> str | None:
    """The API key a sealed secret holds (None when it has none), if `destination` is where it
    was sealed to go.

    Raises `UnknownKekVersion` or `ByoError` if it will not open, for the caller to log (naming
    the row, never its contents) and answer with `undecryptable`.
    """
    try:
        plaintext = unseal(keyring.current, sealed, owner, provider, destination)
    except UnknownKekVersion:
        # Another copy rotated and we have not seen its event yet: read the file and retry once.
        keyring.reload()
        plaintext = unseal(keyring.current, sealed, owner, provider, destination)
    api_key = orjson.loads(plaintext).get("api_key")
    return api_key if isinstance(api_key, str) else None


def sealed_of(row: Credential | AppDefaultProvider) -> SealedSecret:
    return SealedSecret(row.kek_version, row.wrapped_dek, row.ciphertext, row.binding_version)


def destination_of(row: Credential | AppDefaultProvider) -> Destination:
    """Where the row says its key goes; only trustworthy once the key opened with it."""
    tunnel_id = row.tunnel_id if isinstance(row, Credential) else None
    return Destination(row.base_url, tunnel_id)


def store_sealed(row: Credential | AppDefaultProvider, sealed: SealedSecret) -> None:
    """Put a freshly sealed secret on its row (every column `sealed_of` reads back)."""
    row.kek_version = sealed.kek_version
    row.wrapped_dek = sealed.wrapped_dek
    row.ciphertext = sealed.ciphertext
    row.binding_version = sealed.binding_version


def open_credential(keyring: KeyringStore, credential: Credential) -> str | None:
    """The credential's key, if its row still names the destination it was sealed to; else a 500
    `undecryptable` (logged, naming the row)."""
    try:
        return open_api_key(
            keyring,
            sealed_of(credential),
            credential.connection_id,
            credential.provider,
            destination_of(credential),
        )
    except (UnknownKekVersion, ByoError) as exc:
        # A row that will not open was tampered with (pointed elsewhere, say) or outlived its
        # KEK: worth an operator's attention, and the log line names the row, never its contents.
        log.warning(
            "stored credential cannot be decrypted",
            extra={
                "credential_id": credential.id,
                "connection_id": credential.connection_id,
                "reason": type(exc).__name__,
            },
        )
        raise undecryptable() from None


# --- what the bus sees --------------------------------------------------------------------------


def connection_info(connection: Connection, credentials: list[Credential]) -> ks.ConnectionInfo:
    return ks.ConnectionInfo(
        connection_id=connection.id,
        app_id=connection.app_id,
        status="active" if connection.status == "active" else "revoked",
        fallback_to_default=connection.fallback_to_default,
        created_at=connection.created_at,
        providers=[
            ks.ProviderInfo(
                provider=provider_name(c),
                label=c.label,
                base_url=c.base_url,
                preferred_model=c.preferred_model,
                priority=c.priority,
                status="failing" if c.status == "failing" else "ok",
                last_error=c.last_error,
                updated_at=c.updated_at,
                tunnel_id=c.tunnel_id,
            )
            for c in credentials
        ],
    )


@dataclass
class Handlers:
    """Base of each resource's bus handlers, sharing one session factory and one keyring.

    Each handler is thin: contract model in, domain call in one transaction, contract model out.
    It is named after the endpoint it serves (`ks.APP_CREATE` is `app_create`), or `on_<event>`.
    Events go out only after the transaction has committed, so a cache never drops an entry for
    a change that was then rolled back.
    """

    runtime: ServiceRuntime[KeystoreSettings]
    sessions: async_sessionmaker[AsyncSession]
    keyring: KeyringStore

    def register(self) -> None:
        """Subscribe this resource's endpoints and events on the runtime's broker."""
        raise NotImplementedError

    async def connection_changed(self, connection_id: str, app_id: str, *, deleted: bool) -> None:
        """Tell every router and gateway copy to drop its cached copy of the connection."""
        await self.runtime.bus.publish_event(
            events.CONNECTION_CHANGED,
            events.ConnectionChangedEvent(
                connection_id=connection_id, app_id=app_id, deleted=deleted
            ),
        )

    async def tunnel_changed(self, tunnel: Tunnel, *, revoked: bool) -> None:
        """Tell every tunnel copy a tunnel was rotated or revoked (it closes a revoked one's
        sockets at once)."""
        await self.runtime.bus.publish_event(
            events.TUNNEL_CHANGED,
            events.TunnelChangedEvent(
                tunnel_id=tunnel.id,
                connection_id=tunnel.connection_id,
                app_id=tunnel.app_id,
                revoked=revoked,
            ),
        )

    async def tunnels_revoked(self, tunnels: list[Tunnel]) -> None:
        for tunnel in tunnels:
            await self.tunnel_changed(tunnel, revoked=True)
