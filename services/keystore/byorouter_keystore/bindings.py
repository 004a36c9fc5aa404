"""Re-sealing secrets stored before binding v2, whose base URL and tunnel were not yet sealed.

Migration 0012 holds no keyring, so it can only mark the rows already there as v1; every keystore
copy re-seals the v1 rows it finds when it starts and every few minutes after, which also catches
rows a copy not yet upgraded wrote during a rolling upgrade (decision 0016). A v1 row opens with
the address it has at that moment, and from then on only with that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common.errors import ByoError
from byorouter_keystore.app_default import open_default
from byorouter_keystore.crypto import BINDING_V1, KeyringStore
from byorouter_keystore.shared import (
    Handlers,
    destination_of,
    open_credential,
    seal_api_key,
)
from byorouter_keystore.tables import AppDefaultProvider, Credential

log = logging.getLogger(__name__)

# Rows stay on v1 only while a copy not yet upgraded still writes them: minutes, not longer.
RESEAL_INTERVAL_S: Final = 300.0


@dataclass(frozen=True)
class ResealResult:
    credentials: int
    app_defaults: int
    # v1 rows that did not open (tampered, or their KEK is gone): left as they are, and logged.
    undecryptable: int


async def reseal_legacy_credentials(
    sessions: async_sessionmaker[AsyncSession], keyring: KeyringStore, batch_size: int
) -> tuple[int, int]:
    """Re-seal every v1 credential to v2, a batch per transaction: (re-sealed, undecryptable).

    Rows are locked while re-sealed and ones locked by a live edit are skipped (the next pass
    takes them), so no request waits on this.
    """
    resealed = failed = 0
    last_id = ""
    while True:
        async with sessions.begin() as session:
            rows = list(
                await session.scalars(
                    select(Credential)
                    .where(Credential.binding_version == BINDING_V1, Credential.id > last_id)
                    .order_by(Credential.id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return resealed, failed
            last_id = rows[-1].id
            for row in rows:
                try:
                    api_key = open_credential(keyring, row)
                except ByoError:
                    failed += 1
                    continue
                sealed = seal_api_key(
                    keyring, api_key, row.connection_id, row.provider, destination_of(row)
                )
                await session.execute(
                    update(Credential)
                    .where(Credential.id == row.id)
                    # Nothing a person sees changed: keep updated_at.
                    .values(
                        kek_version=sealed.kek_version,
                        wrapped_dek=sealed.wrapped_dek,
                        ciphertext=sealed.ciphertext,
                        binding_version=sealed.binding_version,
                        updated_at=Credential.updated_at,
                    )
                )
                resealed += 1


async def reseal_legacy_app_defaults(
    sessions: async_sessionmaker[AsyncSession], keyring: KeyringStore, batch_size: int
) -> tuple[int, int]:
    """As `reseal_legacy_credentials`, for apps' default providers."""
    resealed = failed = 0
    last_id = ""
    while True:
        async with sessions.begin() as session:
            rows = list(
                await session.scalars(
                    select(AppDefaultProvider)
                    .where(
                        AppDefaultProvider.binding_version == BINDING_V1,
                        AppDefaultProvider.app_id > last_id,
                    )
                    .order_by(AppDefaultProvider.app_id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return resealed, failed
            last_id = rows[-1].app_id
            for row in rows:
                try:
                    api_key = open_default(keyring, row)
                except ByoError:
                    failed += 1
                    continue
                sealed = seal_api_key(
                    keyring, api_key, row.owner, row.provider, destination_of(row)
                )
                await session.execute(
                    update(AppDefaultProvider)
                    .where(AppDefaultProvider.app_id == row.app_id)
                    .values(
                        kek_version=sealed.kek_version,
                        wrapped_dek=sealed.wrapped_dek,
                        ciphertext=sealed.ciphertext,
                        binding_version=sealed.binding_version,
                        updated_at=AppDefaultProvider.updated_at,
                    )
                )
                resealed += 1


async def reseal_legacy(
    sessions: async_sessionmaker[AsyncSession], keyring: KeyringStore, batch_size: int
) -> ResealResult:
    """One pass over both tables; what it re-sealed is logged by count, never by content."""
    credentials, failed_credentials = await reseal_legacy_credentials(sessions, keyring, batch_size)
    defaults, failed_defaults = await reseal_legacy_app_defaults(sessions, keyring, batch_size)
    result = ResealResult(credentials, defaults, failed_credentials + failed_defaults)
    if result.credentials or result.app_defaults or result.undecryptable:
        log.info(
            "re-sealed stored keys to binding v2",
            extra={
                "credentials": result.credentials,
                "app_defaults": result.app_defaults,
                "undecryptable": result.undecryptable,
            },
        )
    return result


# --- the background pass ------------------------------------------------------------------------


@dataclass
class BindingHandlers(Handlers):
    """No endpoints: each copy re-seals v1 rows once started, and every `RESEAL_INTERVAL_S`."""

    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def register(self) -> None:
        async def start() -> None:
            self._tasks.append(asyncio.create_task(self._reseal_forever(), name="reseal-v1"))

        async def stop() -> None:
            for task in self._tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        self.runtime.on_started(start)
        self.runtime.on_stop(stop)

    async def _reseal_forever(self) -> None:
        while True:
            try:
                await reseal_legacy(
                    self.sessions, self.keyring, self.runtime.settings.rewrap_batch_size
                )
            except Exception as exc:  # database away, or this copy may not seal yet: next time
                log.warning("re-sealing stored keys failed", extra={"error": str(exc)})
            await asyncio.sleep(RESEAL_INTERVAL_S)
