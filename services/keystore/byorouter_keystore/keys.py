"""Key-encryption keys: rotating to a new KEK, re-wrapping data keys onto it, pruning, status.

Rotation re-wraps data keys in small batches, one transaction each, so no long lock blocks live
traffic; only the data keys change, never a ciphertext.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common.bus import serve, subscribe_event
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Empty
from byorouter_common.errors import ByoError
from byorouter_keystore.crypto import KeyringStore, SealedSecret, UnknownKekVersion, rewrap
from byorouter_keystore.shared import Handlers, audit, rowcount
from byorouter_keystore.tables import AppDefaultProvider, Credential, app_default_owner

log = logging.getLogger(__name__)


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
                    rewrapped += rowcount(result)
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
    keyring: KeyringStore, version: int, wrapped_dek: bytes, owner: str, provider: str
) -> bytes | None:
    sealed = SealedSecret(version, wrapped_dek, b"")
    try:
        return rewrap(keyring.current, sealed, owner, provider)
    except UnknownKekVersion:
        return None
    except ByoError:
        return None


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
                rewrapped += rowcount(result)
    if failed:
        log.warning(
            "key rotation left app default providers it could not decrypt",
            extra={"undecryptable": failed},
        )
    return RewrapResult(rewrapped, failed)


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
        audit(
            session,
            "keys.rotated",
            None,
            f"kek:{new.active}",
            rewrapped=result.rewrapped,
            app_defaults_rewrapped=result.app_defaults_rewrapped,
            undecryptable=result.undecryptable,
        )
    return new.active, result


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
        audit(
            session, "keys.pruned", None, f"kek:{keyring.current.active}", removed_versions=removed
        )
    return removed


# --- bus handlers -------------------------------------------------------------------------------


@dataclass
class KeyHandlers(Handlers):
    """The operator's rotate, prune and status endpoints, and every copy's reload on rotation."""

    rewrap_batch_size: int

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.KEYS_ROTATE, self.keys_rotate, discovery=discovery)
        serve(broker, ks.KEYS_PRUNE, self.keys_prune, discovery=discovery)
        serve(broker, ks.KEYS_STATUS, self.keys_status, discovery=discovery)
        subscribe_event(broker, events.KEYRING_ROTATED, self.on_keyring_rotated)

    async def keys_rotate(self, _: Empty) -> ks.KeysRotated:
        active, result = await rotate_keys(
            self.sessions, self.keyring, self.rewrap_batch_size, self._keyring_rotated
        )
        return ks.KeysRotated(
            active_version=active,
            rewrapped=result.rewrapped,
            app_defaults_rewrapped=result.app_defaults_rewrapped,
        )

    async def _keyring_rotated(self, active_version: int) -> None:
        await self.runtime.bus.publish_event(
            events.KEYRING_ROTATED, events.KeyringRotatedEvent(active_version=active_version)
        )

    async def keys_prune(self, _: Empty) -> ks.KeysPruned:
        async with self.sessions.begin() as session:
            removed = await prune_keys(session, self.keyring)
        return ks.KeysPruned(active_version=self.keyring.current.active, removed_versions=removed)

    async def keys_status(self, _: Empty) -> ks.KeysStatus:
        self.keyring.reload()
        async with self.sessions.begin() as session:
            counts = await kek_versions_in_use(session)
            defaults = await app_default_kek_versions_in_use(session)
        return ks.KeysStatus(
            active_version=self.keyring.current.active,
            versions=self.keyring.current.versions,
            credentials_by_version={str(v): n for v, n in sorted(counts.items())},
            app_defaults_by_version={str(v): n for v, n in sorted(defaults.items())},
        )

    async def on_keyring_rotated(self, event: events.KeyringRotatedEvent) -> None:
        # Every copy, including the one that rotated: cheap, and it keeps them all identical.
        if event.active_version != self.keyring.current.active:
            self.keyring.reload()
