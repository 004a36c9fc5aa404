"""Key-encryption keys: rotating to a new KEK, re-wrapping data keys onto it, pruning, status.

Rotation re-wraps data keys in small batches, one transaction each, so no long lock blocks live
traffic; only the data keys change, never a ciphertext.

Every running copy confirms in `keystore_copies`, each heartbeat and at once on a rotation, the
KEK version it seals with; it seals nothing once that confirmation is older than the lease. Prune
removes a KEK only when every copy confirmed within the lease holds the newest version, so a copy
that missed a rotation can never be left sealing under a key that no longer exists.

Over 500 lines for now: rotation, prune and the copies' confirmations share one lock and one
keyring store; the confirmations (`keystore_copies`) are the next to move into their own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common.bus import serve, subscribe_event
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Empty
from byorouter_common.errors import ByoError
from byorouter_keystore.crypto import (
    KeyringStore,
    SealedSecret,
    UnknownKekVersion,
    keyring_behind,
    rewrap,
)
from byorouter_keystore.shared import Handlers, audit, rowcount
from byorouter_keystore.tables import (
    AppDefaultProvider,
    Credential,
    KeystoreCopy,
    app_default_owner,
)
from byorouter_keystore.webhooks import rewrap_webhook_secrets, webhook_kek_versions_in_use

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
    _, webhooks_undecryptable = await rewrap_webhook_secrets(sessions, keyring, batch_size)
    result = RewrapResult(
        result.rewrapped,
        result.undecryptable + defaults.undecryptable + webhooks_undecryptable,
        defaults.rewrapped,
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


# --- which KEK every running copy seals with ------------------------------------------------


# One PostgreSQL advisory lock: copies confirm under it shared, prune holds it alone, so no copy
# can confirm an old keyring it read before a prune while that prune decides.
_KEYRING_LOCK = 0x6B65_7972_696E_67  # "keyring"
_PRUNE_LOCK_WAIT_S = 3.0


@dataclass(frozen=True)
class CopyIdentity:
    """This keystore process as `keystore_copies` names it (its discovery id)."""

    copy_id: str
    host: str
    pid: int

    @classmethod
    def of_this_process(cls, copy_id: str) -> CopyIdentity:
        return cls(copy_id, socket.gethostname()[:255], os.getpid())


async def confirm_copy(session: AsyncSession, copy: CopyIdentity, keyring: KeyringStore) -> int:
    """Re-read the keyring, record the version this copy holds, learn the newest any copy holds.

    Returns the version recorded. The caller extends the copy's lease only after commit.
    """
    await session.execute(select(func.pg_advisory_xact_lock_shared(_KEYRING_LOCK)))
    keyring.reload()
    active = keyring.loaded.active
    await _record_copy(session, copy, active)
    newest = await session.scalar(select(func.max(KeystoreCopy.active_kek_version)))
    keyring.saw_version(newest or active)
    return active


async def _record_copy(session: AsyncSession, copy: CopyIdentity, active: int) -> None:
    row = {"copy_id": copy.copy_id, "host": copy.host, "pid": copy.pid}
    await session.execute(
        insert(KeystoreCopy)
        .values(**row, active_kek_version=active)
        .on_conflict_do_update(
            index_elements=[KeystoreCopy.copy_id],
            set_={"active_kek_version": active, "seen_at": func.now()},
        )
    )


async def forget_copy(session: AsyncSession, copy: CopyIdentity) -> None:
    """A copy stopping cleanly: it seals nothing more, so it must not hold prune back."""
    await session.execute(delete(KeystoreCopy).where(KeystoreCopy.copy_id == copy.copy_id))


async def known_copies(session: AsyncSession) -> Sequence[KeystoreCopy]:
    return (await session.scalars(select(KeystoreCopy).order_by(KeystoreCopy.started_at))).all()


async def newest_version(session: AsyncSession, keyring: KeyringStore) -> int:
    """The newest KEK version in this keyring or confirmed by any copy."""
    confirmed = await session.scalar(select(func.max(KeystoreCopy.active_kek_version)))
    return max(keyring.loaded.active, confirmed or 0)


async def copies_behind(
    session: AsyncSession, newest: int, lease_s: float
) -> tuple[list[KeystoreCopy], int]:
    """The live copies (confirmed within the lease) still on an older KEK, and how many live."""
    live = (
        await session.scalars(
            select(KeystoreCopy)
            .where(KeystoreCopy.seen_at > func.now() - timedelta(seconds=lease_s))
            .order_by(KeystoreCopy.started_at)
        )
    ).all()
    return [c for c in live if c.active_kek_version < newest], len(live)


def copies_behind_error(behind: list[KeystoreCopy], live: int, newest: int) -> ByoError:
    named = ", ".join(f"{c.host} pid {c.pid} on v{c.active_kek_version}" for c in behind[:3]) + (
        ", ..." if len(behind) > 3 else ""
    )
    return ByoError(
        409,
        "keystore_copies_behind",
        f"Prune removed nothing: {len(behind)} of {live} keystore copies have not confirmed "
        f"key-encryption key v{newest} ({named}). A copy confirms within one heartbeat once it "
        "can read the new keyring file; give the lagging copies that file, or stop them, then "
        "prune again. `byorouter keys status` lists every copy.",
    )


def keyring_busy() -> ByoError:
    return ByoError(
        409,
        "keyring_busy",
        "Prune removed nothing: a keystore copy kept confirming its keyring for more than "
        f"{_PRUNE_LOCK_WAIT_S:.0f} s (one that is paused or stuck blocks prune); try again.",
        retry_after=_PRUNE_LOCK_WAIT_S,
    )


async def _lock_out_confirmations(session: AsyncSession) -> None:
    # Never an unbounded wait: a copy paused mid-confirmation would hang the operator's prune.
    deadline = time.monotonic() + _PRUNE_LOCK_WAIT_S
    while not await session.scalar(select(func.pg_try_advisory_xact_lock(_KEYRING_LOCK))):
        if time.monotonic() >= deadline:
            raise keyring_busy()
        await asyncio.sleep(0.1)


async def prune_keys(
    session: AsyncSession,
    keyring: KeyringStore,
    *,
    lease_s: float,
    copy: CopyIdentity | None = None,
) -> list[int]:
    """Forget KEK versions no stored credential is wrapped with; the active one always stays.

    Refuses (409) unless every live copy confirmed the newest version; `copy`, when prune runs
    inside a keystore, is confirmed first (it holds the newest keyring once it has re-read it).
    """
    await _lock_out_confirmations(session)
    keyring.reload()
    if copy is not None:
        await _record_copy(session, copy, keyring.loaded.active)
    newest = await newest_version(session, keyring)
    behind, live = await copies_behind(session, newest, lease_s)
    if behind:
        raise copies_behind_error(behind, live, newest)
    if keyring.loaded.active < newest:
        raise keyring_behind(keyring.loaded.active, newest)
    # Copies unheard of for a whole lease seal nothing until they confirm again (and re-read).
    await session.execute(
        delete(KeystoreCopy).where(KeystoreCopy.seen_at <= func.now() - timedelta(seconds=lease_s))
    )
    in_use = set(await kek_versions_in_use(session))
    # Apps' default provider keys are stored credentials too.
    in_use |= set(await app_default_kek_versions_in_use(session))
    # So are webhook signing secrets.
    in_use |= set(await webhook_kek_versions_in_use(session))
    removed = await keyring.prune(in_use)
    if removed:
        audit(
            session, "keys.pruned", None, f"kek:{keyring.loaded.active}", removed_versions=removed
        )
    return removed


# --- bus handlers -------------------------------------------------------------------------------


@dataclass
class KeyHandlers(Handlers):
    """The operator's rotate, prune and status endpoints; every copy's confirmation of its KEK."""

    rewrap_batch_size: int
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def copy(self) -> CopyIdentity:
        return CopyIdentity.of_this_process(self.runtime.discovery.id)

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.KEYS_ROTATE, self.keys_rotate, discovery=discovery)
        serve(broker, ks.KEYS_PRUNE, self.keys_prune, discovery=discovery)
        serve(broker, ks.KEYS_STATUS, self.keys_status, discovery=discovery)
        subscribe_event(broker, events.KEYRING_ROTATED, self.on_keyring_rotated)
        self.keyring.require_confirmation()

        async def start_confirming() -> None:
            self._tasks.append(asyncio.create_task(self._confirm_forever(), name="kek-confirm"))

        async def stop_confirming() -> None:
            for task in self._tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Unregistered, this copy is invisible to prune: it must not seal anything after.
            self.keyring.confirmed(until_monotonic=0.0)
            try:
                async with self.sessions.begin() as session:
                    await forget_copy(session, self.copy)
            except Exception as exc:  # its row then runs out with the lease instead
                log.warning("could not unregister this keystore copy", extra={"error": str(exc)})

        self.runtime.on_started(start_confirming)
        self.runtime.on_stop(stop_confirming)

    async def confirm(self) -> None:
        """Confirm this copy's KEK in the database and extend its lease from before the write."""
        started = time.monotonic()
        async with self.sessions.begin() as session:
            await confirm_copy(session, self.copy, self.keyring)
        self.keyring.confirmed(started + self.runtime.settings.kek_lease_s)

    async def confirm_first(self) -> None:
        """Before serving: a copy answers nothing until the database knows which KEK it holds."""
        try:
            await self.confirm()
        except Exception as exc:  # the database away at start: the heartbeat keeps trying
            log.warning("could not confirm this copy's keyring yet", extra={"error": str(exc)})

    async def _confirm_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.runtime.settings.kek_heartbeat_s)
            self._wake.clear()
            try:
                await self.confirm()
            except Exception as exc:  # the lease covers several misses before the copy stops
                log.warning("confirming this copy's keyring failed", extra={"error": str(exc)})

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
        await self.confirm()
        await self._announce(active_version)

    async def _announce(self, active_version: int) -> None:
        await self.runtime.bus.publish_event(
            events.KEYRING_ROTATED, events.KeyringRotatedEvent(active_version=active_version)
        )

    async def keys_prune(self, _: Empty) -> ks.KeysPruned:
        await self._give_stragglers_a_moment()
        async with self.sessions.begin() as session:
            removed = await prune_keys(
                session, self.keyring, lease_s=self.runtime.settings.kek_lease_s, copy=self.copy
            )
        return ks.KeysPruned(active_version=self.keyring.loaded.active, removed_versions=removed)

    async def _give_stragglers_a_moment(self) -> None:
        """Announce the newest KEK again and wait briefly for copies behind it to confirm.

        A copy whose rotation event was lost confirms at once on this one; the decision itself
        is made afterwards, under the lock, by `prune_keys`.
        """
        settings = self.runtime.settings
        deadline = time.monotonic() + min(2 * settings.kek_heartbeat_s, 5.0)
        announced = False
        while True:
            self.keyring.reload()
            async with self.sessions.begin() as session:
                newest = await newest_version(session, self.keyring)
                behind, _ = await copies_behind(session, newest, settings.kek_lease_s)
            if not behind or time.monotonic() >= deadline:
                return
            if not announced:
                await self._announce(newest)
                announced = True
            await asyncio.sleep(0.2)

    async def keys_status(self, _: Empty) -> ks.KeysStatus:
        self.keyring.reload()
        lease_s = self.runtime.settings.kek_lease_s
        async with self.sessions.begin() as session:
            counts = await kek_versions_in_use(session)
            defaults = await app_default_kek_versions_in_use(session)
            now = await session.scalar(select(func.now()))
            copies = await known_copies(session)
        assert now is not None
        return ks.KeysStatus(
            active_version=self.keyring.loaded.active,
            versions=self.keyring.loaded.versions,
            credentials_by_version={str(v): n for v, n in sorted(counts.items())},
            app_defaults_by_version={str(v): n for v, n in sorted(defaults.items())},
            copies=[
                ks.KeystoreCopyStatus(
                    copy_id=c.copy_id,
                    host=c.host,
                    pid=c.pid,
                    active_version=c.active_kek_version,
                    seen_seconds_ago=max(0.0, round((now - c.seen_at).total_seconds(), 1)),
                    live=(now - c.seen_at).total_seconds() < lease_s,
                )
                for c in copies
            ],
        )

    async def on_keyring_rotated(self, event: events.KeyringRotatedEvent) -> None:
        # Every copy, including the one that rotated: cheap, and it keeps them all identical.
        self.keyring.saw_version(event.active_version)
        self._wake.set()
