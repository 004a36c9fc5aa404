"""Rows that have done their job are deleted, so tables grow with use, not with time.

- `usage_requests` only has to outlive a redelivery of the same report: the usage stream keeps
  a report at most 7 days (decision 0010), so a day past that is enough.
- `limit_counters` count one UTC day each; only today's is read.
- `webhook_deliveries` that were delivered, or given up on, are kept a week for `webhooks list`
  and support questions; pending ones are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_keystore.shared import Handlers
from byorouter_keystore.tables import LimitCounter, UsageRequest, WebhookDelivery

log = logging.getLogger("byorouter.keystore.housekeeping")

KEEP_USAGE_REQUESTS: Final = timedelta(days=8)
KEEP_LIMIT_COUNTERS: Final = timedelta(days=2)
KEEP_FINISHED_DELIVERIES: Final = timedelta(days=7)


@dataclass(frozen=True)
class Pruned:
    usage_requests: int
    limit_counters: int
    webhook_deliveries: int


async def prune_finished_rows(session: AsyncSession, now: datetime | None = None) -> Pruned:
    now = now or datetime.now(UTC)
    usage = await session.execute(
        delete(UsageRequest).where(UsageRequest.recorded_at < now - KEEP_USAGE_REQUESTS)
    )
    counters = await session.execute(
        delete(LimitCounter).where(LimitCounter.day < (now - KEEP_LIMIT_COUNTERS).date())
    )
    deliveries = await session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status.in_(("delivered", "failed")),
            WebhookDelivery.created_at < now - KEEP_FINISHED_DELIVERIES,
        )
    )
    return Pruned(
        usage.rowcount,  # type: ignore[attr-defined]
        counters.rowcount,  # type: ignore[attr-defined]
        deliveries.rowcount,  # type: ignore[attr-defined]
    )


class HousekeepingHandlers(Handlers):
    """Every copy prunes on its own schedule; the deletes are idempotent, so copies may overlap."""

    def register(self) -> None:
        tasks: list[asyncio.Task[None]] = []

        async def start() -> None:
            tasks.append(asyncio.create_task(self._prune_forever(), name="housekeeping"))

        async def stop() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        self.runtime.on_started(start)
        self.runtime.on_stop(stop)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.settings.housekeeping_interval_s)
            try:
                async with self.sessions.begin() as session:
                    pruned = await prune_finished_rows(session)
            except Exception as exc:  # the database away for a while: next time
                log.warning("housekeeping failed", extra={"error": type(exc).__name__})
                continue
            if any(vars(pruned).values()):
                log.info("pruned finished rows", extra=vars(pruned))
