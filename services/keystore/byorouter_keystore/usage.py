"""Usage: every finished request the router reports, summed per connection, provider, model, day."""

from __future__ import annotations

import logging
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common.bus import consume_event, serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_keystore.shared import Handlers, owned_connection
from byorouter_keystore.tables import UsageDaily

log = logging.getLogger(__name__)

# Column width: a longer model id is cut, never refused.
_MAX_MODEL = 200


async def record_usage(session: AsyncSession, event: events.UsageEvent) -> None:
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
    )


# --- bus handlers -------------------------------------------------------------------------------


class UsageHandlers(Handlers):
    """Recording the router's usage reports and answering an app's usage query."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.USAGE_GET, self.usage_get, discovery=discovery)
        # A report the router makes: one copy records each, however many copies run.
        consume_event(broker, events.USAGE, self.on_usage, queue=ks.SERVICE)

    async def on_usage(self, event: events.UsageEvent) -> None:
        try:
            async with self.sessions.begin() as session:
                await record_usage(session, event)
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
