"""Usage: every request the router reports, summed per connection, provider, model and day.

Reports come from the durable usage stream (`events.USAGE_STREAM`), shared by every keystore copy
through one consumer; each is acked only after its transaction commits, and a request id already
recorded adds nothing, so a report delivered twice is counted once.
"""

from __future__ import annotations

import logging
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common.bus import DurableRecorder, serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_keystore.shared import Handlers, owned_connection
from byorouter_keystore.tables import UsageDaily, UsageRequest

log = logging.getLogger(__name__)

# Column width: a longer model id is cut, never refused.
_MAX_MODEL = 200


async def record_usage(session: AsyncSession, event: events.UsageEvent) -> bool:
    """Add one request to its connection's row for that provider, model and day, unless its
    request id was recorded already; whether it was added."""
    day = event.at.astimezone(UTC).date()
    first_time = await session.scalar(
        pg_insert(UsageRequest)
        .values(
            request_id=event.request_id,
            connection_id=event.connection_id,
            day=day,
            partial=event.partial,
            estimated=event.estimated,
        )
        .on_conflict_do_nothing(index_elements=[UsageRequest.request_id])
        .returning(UsageRequest.request_id)
    )
    if first_time is None:
        return False
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
        cached_tokens=event.cached_tokens,
        cache_write_tokens=event.cache_write_tokens,
        reasoning_tokens=event.reasoning_tokens,
        partial_requests=1 if event.partial else 0,
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
                "cached_tokens": UsageDaily.cached_tokens + added.cached_tokens,
                "cache_write_tokens": UsageDaily.cache_write_tokens + added.cache_write_tokens,
                "reasoning_tokens": UsageDaily.reasoning_tokens + added.reasoning_tokens,
                "partial_requests": UsageDaily.partial_requests + added.partial_requests,
            },
        )
    )
    return True


async def usage_of(session: AsyncSession, app_id: str, connection_id: str) -> list[UsageDaily]:
    """The connection's usage rows, newest day first; another app's connection is a 404."""
    connection = await owned_connection(session, app_id, connection_id)
    rows = await session.scalars(
        select(UsageDaily)
        .where(UsageDaily.connection_id == connection.id)
        .order_by(UsageDaily.day.desc(), UsageDaily.provider, UsageDaily.model)
    )
    return list(rows)


def usage_row(row: UsageDaily) -> ks.UsageRow:
    return ks.UsageRow(
        day=row.day,
        provider=row.provider,
        model=row.model,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
        cached_tokens=row.cached_tokens,
        cache_write_tokens=row.cache_write_tokens,
        reasoning_tokens=row.reasoning_tokens,
        partial_requests=row.partial_requests,
    )


# --- bus handlers -------------------------------------------------------------------------------


class UsageHandlers(Handlers):
    """Recording the router's usage reports and answering an app's usage query."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.USAGE_GET, self.usage_get, discovery=discovery)
        self.runtime.on_started(self._start_recording)

    async def _start_recording(self) -> None:
        # Reports the router made while no keystore ran are waiting in the stream.
        recorder = DurableRecorder(
            self.runtime.bus.nc,
            events.USAGE_RECORDER,
            events.USAGE,
            self.on_usage,
            replicas=self.runtime.settings.jetstream_replicas,
        )
        recorder.start()
        # Registered last, so it stops first: before the database engine is disposed of.
        self.runtime.on_stop(recorder.stop)

    async def on_usage(self, event: events.UsageEvent) -> None:
        """Record one report; raising (the database is down) has it delivered again."""
        try:
            async with self.sessions.begin() as session:
                added = await record_usage(session, event)
            if not added:
                log.debug("usage already recorded", extra={"request_id": event.request_id})
        except IntegrityError:
            # The connection is gone (its app was deleted): there is nobody to bill.
            log.warning(
                "usage for an unknown connection dropped",
                extra={"connection_id": event.connection_id, "request_id": event.request_id},
            )

    async def usage_get(self, request: ks.ConnectionRef) -> ks.UsageReport:
        async with self.sessions.begin() as session:
            rows = await usage_of(session, request.app_id, request.connection_id)
        return ks.UsageReport(
            connection_id=request.connection_id, rows=[usage_row(r) for r in rows]
        )
