"""The keystore's domain: apps and their keys, connections and their encrypted credentials, usage.

Plain async functions over an `AsyncSession`; the caller owns the transaction (one per bus
request, so a request either fully happens or not at all). Key rotation is the exception: it
re-wraps data keys in small batches, one transaction each, so no long lock blocks live traffic.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from sqlalchemy import CursorResult, Result, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common import errors
from byorouter_common.contracts.events import UsageEvent
from byorouter_common.contracts.keystore import ProviderCredentialInput, ProviderName
from byorouter_common.errors import ByoError
from byorouter_common.redact import mask_key
from byorouter_keystore import ids
from byorouter_keystore.app_default_models import AppDefaultProvider, app_default_owner
from byorouter_keystore.crypto import (
    KeyringStore,
    SealedSecret,
    UnknownKekVersion,
    rewrap,
    seal,
    undecryptable,
    unseal,
)
from byorouter_keystore.models import (
    App,
    AppKey,
    AuditEntry,
    Connection,
    Credential,
    UsageDaily,
)

log = logging.getLogger(__name__)

# Providers that cannot be called without the user's own key.
_KEY_REQUIRED: frozenset[str] = frozenset({"openai", "anthropic", "openrouter"})
# Compared against when a key id is unknown, so every refusal costs the same work.
_NO_SUCH_KEY_HASH = bytes(32)
# Column widths: a longer provider message or model id is cut, never refused.
_MAX_LAST_ERROR = 500
_MAX_MODEL = 200


def connection_not_found() -> ByoError:
    # The same answer for missing, revoked and another app's connection: ids are not probeable.
    return errors.not_found("Connection not found.", code="connection_not_found")


def app_not_found() -> ByoError:
    return errors.not_found("App not found.", code="app_not_found")


def _audit(
    session: AsyncSession, action: str, app_id: str | None, subject_id: str, **detail: Any
) -> None:
    session.add(AuditEntry(action=action, app_id=app_id, subject_id=subject_id, detail=detail))


# --- apps and app keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedAppKey:
    """A freshly issued key: `key` is shown to the developer once and never stored."""

    key_id: str
    label: str
    key: str


async def _issue_app_key(session: AsyncSession, app: App) -> IssuedAppKey:
    key_id, key = ids.new_app_key()
    label = ids.app_key_label(key_id, key)
    session.add(
        AppKey(
            key_id=key_id, app_id=app.id, key_hash=bytes.fromhex(ids.hash_app_key(key)), label=label
        )
    )
    _audit(session, "app_key.created", app.id, key_id)
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
    _audit(session, "app.created", app.id, app.id, client_id=app.client_id)
    return app, await _issue_app_key(session, app)


async def get_app(session: AsyncSession, client_id: str) -> App:
    app = await session.scalar(select(App).where(App.client_id == client_id))
    if app is None:
        raise app_not_found()
    return app


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
    if _rowcount(revoked):
        _audit(session, "app_key.revoked", app_id, key_id)
    return app_id


# --- connections --------------------------------------------------------------------------------


def _is_plain_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host and no user:password part."""
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def validate_providers(providers: Sequence[ProviderCredentialInput]) -> None:
    """Refuse what could never work; messages name the field, never the value given."""
    seen: set[str] = set()
    for index, p in enumerate(providers):
        field = f"providers[{index}]"
        if p.provider in seen:
            raise errors.bad_request(
                f"{field}: provider {p.provider} is listed more than once.",
                param=f"{field}.provider",
            )
        seen.add(p.provider)
        key = p.api_key.get_secret_value().strip() if p.api_key is not None else ""
        if p.provider in _KEY_REQUIRED and not key:
            raise errors.bad_request(
                f"{field}.api_key is required for {p.provider}.", param=f"{field}.api_key"
            )
        if p.provider == "selfhosted" and not p.base_url:
            raise errors.bad_request(
                f"{field}.base_url is required for selfhosted.", param=f"{field}.base_url"
            )
        if p.base_url is not None and not _is_plain_http_url(p.base_url):
            raise errors.bad_request(
                f"{field}.base_url must be an absolute http(s) URL without user or password.",
                param=f"{field}.base_url",
            )


def _secret_document(api_key: str | None) -> bytes:
    # A small JSON document rather than the bare key, so keyless rows look like any other and
    # later secret fields need no schema change.
    return orjson.dumps({"api_key": api_key})


async def create_connection(
    session: AsyncSession,
    keyring: KeyringStore,
    app_id: str,
    providers: Sequence[ProviderCredentialInput],
    fallback_to_default: bool,
) -> tuple[Connection, list[Credential]]:
    validate_providers(providers)
    if await session.get(App, app_id) is None:
        raise app_not_found()
    connection = Connection(
        id=ids.new_connection_id(),
        app_id=app_id,
        status="active",
        fallback_to_default=fallback_to_default,
    )
    session.add(connection)
    await session.flush()
    credentials = []
    for priority, p in enumerate(providers):
        key = p.api_key.get_secret_value().strip() if p.api_key is not None else ""
        sealed = seal(keyring.current, _secret_document(key or None), connection.id, p.provider)
        credential = Credential(
            id=ids.new_credential_id(),
            connection_id=connection.id,
            provider=p.provider,
            priority=priority,
            base_url=p.base_url,
            preferred_model=p.preferred_model,
            label=mask_key(key) if key else None,
            kek_version=sealed.kek_version,
            wrapped_dek=sealed.wrapped_dek,
            ciphertext=sealed.ciphertext,
            status="ok",
        )
        session.add(credential)
        credentials.append(credential)
    await session.flush()
    _audit(
        session,
        "connection.created",
        app_id,
        connection.id,
        providers=[p.provider for p in providers],
    )
    return connection, credentials


async def _owned_connection(
    session: AsyncSession, app_id: str, connection_id: str, *, for_update: bool = False
) -> Connection:
    query = select(Connection).where(
        Connection.id == connection_id, Connection.app_id == app_id, Connection.status == "active"
    )
    if for_update:
        query = query.with_for_update()
    connection = await session.scalar(query)
    if connection is None:
        raise connection_not_found()
    return connection


async def _credentials_of(session: AsyncSession, connection_id: str) -> list[Credential]:
    rows = await session.scalars(
        select(Credential)
        .where(Credential.connection_id == connection_id)
        .order_by(Credential.priority)
    )
    return list(rows)


async def get_connection(
    session: AsyncSession, app_id: str, connection_id: str
) -> tuple[Connection, list[Credential]]:
    connection = await _owned_connection(session, app_id, connection_id)
    return connection, await _credentials_of(session, connection.id)


async def delete_connection(session: AsyncSession, app_id: str, connection_id: str) -> None:
    """Revoke the connection and erase the user's keys; a second delete is a 404."""
    connection = await _owned_connection(session, app_id, connection_id, for_update=True)
    connection.status = "revoked"
    erased = await session.execute(
        delete(Credential).where(Credential.connection_id == connection.id)
    )
    _audit(
        session, "connection.deleted", app_id, connection.id, credentials_erased=_rowcount(erased)
    )


@dataclass(frozen=True)
class ResolvedCredential:
    credential: Credential
    api_key: str | None


def _sealed(credential: Credential) -> SealedSecret:
    return SealedSecret(credential.kek_version, credential.wrapped_dek, credential.ciphertext)


def _open(keyring: KeyringStore, credential: Credential) -> bytes:
    sealed = _sealed(credential)
    try:
        return unseal(keyring.current, sealed, credential.connection_id, credential.provider)
    except UnknownKekVersion:
        # Another copy rotated and we have not seen its event yet: read the file and retry once.
        keyring.reload()
        return unseal(keyring.current, sealed, credential.connection_id, credential.provider)


def _unseal(keyring: KeyringStore, credential: Credential) -> str | None:
    try:
        plaintext = _open(keyring, credential)
    except (UnknownKekVersion, ByoError) as exc:
        # A row that will not open was tampered with or outlived its KEK: worth an operator's
        # attention, and the log line names the row, never its contents.
        log.warning(
            "stored credential cannot be decrypted",
            extra={
                "credential_id": credential.id,
                "connection_id": credential.connection_id,
                "reason": type(exc).__name__,
            },
        )
        raise undecryptable() from None
    api_key = orjson.loads(plaintext).get("api_key")
    return api_key if isinstance(api_key, str) else None


async def resolve_credentials(
    session: AsyncSession, keyring: KeyringStore, app_id: str, connection_id: str
) -> tuple[Connection, list[ResolvedCredential]]:
    connection, credentials = await get_connection(session, app_id, connection_id)
    resolved = [ResolvedCredential(c, _unseal(keyring, c)) for c in credentials]
    return connection, resolved


async def set_credential_status(
    session: AsyncSession,
    app_id: str,
    connection_id: str,
    provider: str,
    status: str,
    last_error: str | None,
) -> bool:
    """Record that a provider rejected (or accepted again) a key; True if anything changed.

    Only a credential of a connection the app owns is touched. `updated_at` stays: it says when
    the person last changed the credential, and a status is the provider's verdict, not theirs.
    """
    last_error = last_error[:_MAX_LAST_ERROR] if last_error is not None else None
    owned = select(Connection.id).where(Connection.id == connection_id, Connection.app_id == app_id)
    result = await session.execute(
        update(Credential)
        .where(
            Credential.connection_id.in_(owned),
            Credential.provider == provider,
            or_(Credential.status != status, Credential.last_error.is_distinct_from(last_error)),
        )
        .values(status=status, last_error=last_error, updated_at=Credential.updated_at)
    )
    return _rowcount(result) > 0


# --- usage --------------------------------------------------------------------------------------


async def record_usage(session: AsyncSession, event: UsageEvent) -> None:
    """Add one finished request to its connection's row for that provider, model and day."""
    day = event.at.astimezone(UTC).date()
    insert = pg_insert(UsageDaily).values(
        connection_id=event.connection_id,
        app_id=event.app_id,
        provider=event.provider,
        model=event.model[:_MAX_MODEL],
        day=day,
        requests=1,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.total_tokens,
    )
    added = insert.excluded
    await session.execute(
        insert.on_conflict_do_update(
            constraint="pk_usage_daily",
            set_={
                "requests": UsageDaily.requests + added.requests,
                "prompt_tokens": UsageDaily.prompt_tokens + added.prompt_tokens,
                "completion_tokens": UsageDaily.completion_tokens + added.completion_tokens,
                "total_tokens": UsageDaily.total_tokens + added.total_tokens,
            },
        )
    )


async def usage_of(session: AsyncSession, app_id: str, connection_id: str) -> list[UsageDaily]:
    """The connection's usage rows, newest day first; another app's connection is a 404."""
    connection = await _owned_connection(session, app_id, connection_id)
    rows = await session.scalars(
        select(UsageDaily)
        .where(UsageDaily.connection_id == connection.id)
        .order_by(UsageDaily.day.desc(), UsageDaily.provider, UsageDaily.model)
    )
    return list(rows)


# --- key-encryption keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class RewrapResult:
    rewrapped: int
    # Rows whose data key could not be unwrapped (tampered or copied); left as they were.
    undecryptable: int
    # Apps' default providers, re-wrapped after the connections' credentials.
    app_defaults_rewrapped: int = 0


async def rewrap_credentials(
    sessions: async_sessionmaker[AsyncSession], keyring: KeyringStore, batch_size: int
) -> RewrapResult:
    """Move every data key onto the active KEK, a batch per transaction, readers never blocked.

    Each row is updated only if it is still on the version it was read with, so a credential
    deleted or rewritten meanwhile is left alone. Passes repeat while they find work, which
    picks up rows another copy sealed with the old KEK before it heard of the rotation.
    """
    rewrapped_total = 0
    failed: set[str] = set()
    for _ in range(5):
        rewrapped = 0
        last_id = ""
        while True:
            async with sessions.begin() as session:
                rows = (
                    await session.execute(
                        select(
                            Credential.id,
                            Credential.connection_id,
                            Credential.provider,
                            Credential.kek_version,
                            Credential.wrapped_dek,
                        )
                        .where(
                            Credential.kek_version != keyring.current.active,
                            Credential.id > last_id,
                        )
                        .order_by(Credential.id)
                        .limit(batch_size)
                    )
                ).all()
                if not rows:
                    break
                last_id = rows[-1].id
                for row in rows:
                    if row.id in failed:
                        continue
                    new_wrapped = _rewrap_one(
                        keyring, row.kek_version, row.wrapped_dek, row.connection_id, row.provider
                    )
                    if new_wrapped is None:
                        failed.add(row.id)
                        continue
                    result = await session.execute(
                        update(Credential)
                        .where(Credential.id == row.id, Credential.kek_version == row.kek_version)
                        # Re-wrapping changes nothing a person sees: keep updated_at.
                        .values(
                            kek_version=keyring.current.active,
                            wrapped_dek=new_wrapped,
                            updated_at=Credential.updated_at,
                        )
                    )
                    rewrapped += _rowcount(result)
        rewrapped_total += rewrapped
        if rewrapped == 0:
            break
    if failed:
        log.warning(
            "key rotation left credentials it could not decrypt",
            extra={"undecryptable": len(failed)},
        )
    return RewrapResult(rewrapped_total, len(failed))


def _rewrap_one(
    keyring: KeyringStore, version: int, wrapped_dek: bytes, connection_id: str, provider: str
) -> bytes | None:
    sealed = SealedSecret(version, wrapped_dek, b"")
    try:
        return rewrap(keyring.current, sealed, connection_id, provider)
    except UnknownKekVersion:
        return None
    except ByoError:
        return None


async def rotate_keys(
    sessions: async_sessionmaker[AsyncSession],
    keyring: KeyringStore,
    batch_size: int,
    announce: Callable[[int], Awaitable[None]],
) -> tuple[int, RewrapResult]:
    """Add and activate a new KEK (persisted first), announce it, then re-wrap every data key.

    Announcing before the re-wrap makes the other copies seal new credentials with the new KEK
    at once, so the re-wrap has fewer stragglers to chase.
    """
    new = await keyring.rotate()
    await announce(new.active)
    result = await rewrap_credentials(sessions, keyring, batch_size)
    defaults = await rewrap_app_defaults(sessions, keyring, batch_size)
    result = RewrapResult(
        result.rewrapped, result.undecryptable + defaults.undecryptable, defaults.rewrapped
    )
    async with sessions.begin() as session:
        _audit(
            session,
            "keys.rotated",
            None,
            f"kek:{new.active}",
            rewrapped=result.rewrapped,
            app_defaults_rewrapped=result.app_defaults_rewrapped,
            undecryptable=result.undecryptable,
        )
    return new.active, result


async def rewrap_app_defaults(
    sessions: async_sessionmaker[AsyncSession], keyring: KeyringStore, batch_size: int
) -> RewrapResult:
    """Move apps' default provider keys onto the active KEK, as `rewrap_credentials` does.

    There is at most one row per app, so one pass of batches is enough; a row sealed with the
    old KEK after this pass (by a copy that had not heard of the rotation) is picked up by the
    next rotation, and stays readable meanwhile because prune keeps every version in use.
    """
    rewrapped = 0
    failed = 0
    last_app_id = ""
    while True:
        async with sessions.begin() as session:
            rows = (
                await session.execute(
                    select(
                        AppDefaultProvider.app_id,
                        AppDefaultProvider.provider,
                        AppDefaultProvider.kek_version,
                        AppDefaultProvider.wrapped_dek,
                    )
                    .where(
                        AppDefaultProvider.kek_version != keyring.current.active,
                        AppDefaultProvider.app_id > last_app_id,
                    )
                    .order_by(AppDefaultProvider.app_id)
                    .limit(batch_size)
                )
            ).all()
            if not rows:
                break
            last_app_id = rows[-1].app_id
            for row in rows:
                owner = app_default_owner(row.app_id)
                new_wrapped = _rewrap_one(
                    keyring, row.kek_version, row.wrapped_dek, owner, row.provider
                )
                if new_wrapped is None:
                    failed += 1
                    continue
                result = await session.execute(
                    update(AppDefaultProvider)
                    .where(
                        AppDefaultProvider.app_id == row.app_id,
                        AppDefaultProvider.kek_version == row.kek_version,
                    )
                    .values(
                        kek_version=keyring.current.active,
                        wrapped_dek=new_wrapped,
                        updated_at=AppDefaultProvider.updated_at,
                    )
                )
                rewrapped += _rowcount(result)
    if failed:
        log.warning(
            "key rotation left app default providers it could not decrypt",
            extra={"undecryptable": failed},
        )
    return RewrapResult(rewrapped, failed)


async def kek_versions_in_use(session: AsyncSession) -> dict[int, int]:
    rows = await session.execute(
        select(Credential.kek_version, func.count()).group_by(Credential.kek_version)
    )
    return dict(rows.tuples().all())


async def app_default_kek_versions_in_use(session: AsyncSession) -> dict[int, int]:
    rows = await session.execute(
        select(AppDefaultProvider.kek_version, func.count()).group_by(
            AppDefaultProvider.kek_version
        )
    )
    return dict(rows.tuples().all())


async def prune_keys(session: AsyncSession, keyring: KeyringStore) -> list[int]:
    """Forget KEK versions no stored credential is wrapped with; the active one always stays."""
    in_use = set(await kek_versions_in_use(session))
    # Apps' default provider keys are stored credentials too.
    in_use |= set(await app_default_kek_versions_in_use(session))
    removed = await keyring.prune(in_use)
    if removed:
        _audit(
            session, "keys.pruned", None, f"kek:{keyring.current.active}", removed_versions=removed
        )
    return removed


def provider_name(credential: Credential) -> ProviderName:
    """The stored provider as the contract's literal type (the column only ever holds these)."""
    return cast(ProviderName, credential.provider)


def _rowcount(result: Result[Any]) -> int:
    # UPDATE and DELETE return a CursorResult, which knows how many rows it touched.
    return cast(CursorResult[Any], result).rowcount
