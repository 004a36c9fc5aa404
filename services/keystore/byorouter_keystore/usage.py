"""Usage: every request the router reports, summed per connection, provider, model and day.

Reports come from the durable usage stream (`events.USAGE_STREAM`), shared by every keystore copy
through one consumer. A copy lets them gather for about a second and records up to 500 of
them in one transaction: request ids already recorded add nothing, the rest are summed per row
and each row is written once. The batch's reports are acked only after that commit, so a report
delivered twice is counted once and one a copy fetched but never committed comes back
(decision 0025).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common.bus import DurableRecorder, serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_keystore.metrics import USAGE_RECORDED
from byorouter_keystore.shared import Handlers, owned_connection
from byorouter_keystore.tables import Connection, UsageDaily

log = logging.getLogger(__name__)

# Column width: a longer model id is cut, never refused.
_MAX_MODEL = 200

# One statement per batch, whatever its size: the reports travel as arrays (a handful of
# parameters), which costs PostgreSQL and psycopg far less than a row of parameters each.
_NEW_REQUESTS = text(
    """
    INSERT INTO usage_requests (request_id, connection_id, day, partial, estimated)
    SELECT * FROM unnest(
        CAST(:request_ids AS text[]), CAST(:connection_ids AS text[]), CAST(:days AS date[]),
        CAST(:partial AS boolean[]), CAST(:estimated AS boolean[])
    )
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """
)
_TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# The counted columns in the order _ADD_TO_DAILY takes them.
_COUNTS = ("requests", *_TOKENS, "partial_requests")
_ADD_TO_DAILY = text(
    """
    INSERT INTO usage_daily (
        connection_id, app_id, provider, model, day, requests, prompt_tokens, completion_tokens,
        total_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, partial_requests
    )
    SELECT * FROM unnest(
        CAST(:connection_ids AS text[]), CAST(:app_ids AS text[]), CAST(:providers AS text[]),
        CAST(:models AS text[]), CAST(:days AS date[]), CAST(:requests AS bigint[]),
        CAST(:prompt_tokens AS bigint[]), CAST(:completion_tokens AS bigint[]),
        CAST(:total_tokens AS bigint[]), CAST(:cached_tokens AS bigint[]),
        CAST(:cache_write_tokens AS bigint[]), CAST(:reasoning_tokens AS bigint[]),
        CAST(:partial_requests AS bigint[])
    )
    ON CONFLICT ON CONSTRAINT pk_usage_daily DO UPDATE SET
        requests = usage_daily.requests + excluded.requests,
        prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
        total_tokens = usage_daily.total_tokens + excluded.total_tokens,
        cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens,
        cache_write_tokens = usage_daily.cache_write_tokens + excluded.cache_write_tokens,
        reasoning_tokens = usage_daily.reasoning_tokens + excluded.reasoning_tokens,
        partial_requests = usage_daily.partial_requests + excluded.partial_requests
    """
)

# A usage_daily row: (connection, provider, model, day).
DailyKey = tuple[str, str, str, date]


@dataclass
class UsageRecorded:
    """What one batch added: requests new to the tables, and reports dropped because their
    connection no longer exists (per connection id)."""

    added: int = 0
    unknown_connections: Counter[str] = field(default_factory=Counter)


async def record_usage(
    session: AsyncSession, reports: Sequence[events.UsageEvent]
) -> UsageRecorded:
    """Add each request to its connection's row for that provider, model and day, unless its
    request id was recorded already (in an earlier batch, by another copy, or twice in this
    one): one row write per (connection, provider, model, day) however many requests it had.
    """
    recorded = UsageRecorded()
    # The first report per request id, in id order: two copies inserting overlapping ids
    # then wait on each other in the same order, never in a cycle.
    by_id: dict[str, events.UsageEvent] = {}
    for report in reports:
        by_id.setdefault(report.request_id, report)
    wanted = {report.connection_id for report in by_id.values()}
    known = set(await session.scalars(select(Connection.id).where(Connection.id.in_(wanted))))
    fresh: list[events.UsageEvent] = []
    for request_id in sorted(by_id):
        report = by_id[request_id]
        if report.connection_id in known:
            fresh.append(report)
        else:
            # Its app was deleted: there is nobody to bill.
            recorded.unknown_connections[report.connection_id] += 1
    if not fresh:
        return recorded
    days = [report.at.astimezone(UTC).date() for report in fresh]
    new_ids = set(
        await session.scalars(
            _NEW_REQUESTS,
            {
                "request_ids": [report.request_id for report in fresh],
                "connection_ids": [report.connection_id for report in fresh],
                "days": days,
                "partial": [report.partial for report in fresh],
                "estimated": [report.estimated for report in fresh],
            },
        )
    )
    recorded.added = len(new_ids)
    if not new_ids:
        return recorded
    # Summed here, so the busiest connection's row is written once per batch.
    rows: dict[DailyKey, tuple[str, list[int]]] = {}
    for report, day in zip(fresh, days, strict=True):
        if report.request_id not in new_ids:
            continue
        key = (report.connection_id, report.provider, report.model[:_MAX_MODEL], day)
        _, counts = rows.setdefault(key, (report.app_id, [0] * len(_COUNTS)))
        counts[0] += 1
        for i, kind in enumerate(_TOKENS, start=1):
            counts[i] += getattr(report, kind)
        counts[-1] += report.partial
    keys = sorted(rows)  # the same lock order in every copy
    columns: dict[str, list[Any]] = {
        "connection_ids": [k[0] for k in keys],
        "app_ids": [rows[k][0] for k in keys],
        "providers": [k[1] for k in keys],
        "models": [k[2] for k in keys],
        "days": [k[3] for k in keys],
    }
    for i, column in enumerate(_COUNTS):
        columns[column] = [rows[k][1][i] for k in keys]
    await session.execute(_ADD_TO_DAILY, columns)
    return recorded


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
        settings = self.runtime.settings
        recorder = DurableRecorder(
            self.runtime.bus.nc,
            events.USAGE_RECORDER,
            events.USAGE,
            self.on_usage,
            flush_events=settings.usage_flush_events,
            flush_interval_s=settings.usage_flush_interval_s,
            ack_wait_s=settings.usage_ack_wait_s,
            replicas=settings.jetstream_replicas,
        )
        recorder.start()
        # Registered last, so it stops first: before the database engine is disposed of.
        self.runtime.on_stop(recorder.stop)

    async def on_usage(self, reports: list[events.UsageEvent]) -> None:
        """Record a batch of reports in one transaction; raising (the database is down) has the
        whole batch delivered again."""
        try:
            async with self.sessions.begin() as session:
                recorded = await record_usage(session, reports)
        except (IntegrityError, DataError):
            # A report the tables refuse (its connection deleted meanwhile, a value too long)
            # must not hold back the rest: each on its own, and only the refused one dropped.
            recorded = await self._record_one_by_one(reports)
        for connection_id, count in recorded.unknown_connections.items():
            log.warning(
                "usage for an unknown connection dropped",
                extra={"connection_id": connection_id, "count": count},
            )
        USAGE_RECORDED.inc(recorded.added)
        log.debug("usage recorded", extra={"count": len(reports), "added": recorded.added})

    async def _record_one_by_one(self, reports: list[events.UsageEvent]) -> UsageRecorded:
        recorded = UsageRecorded()
        for report in reports:
            try:
                async with self.sessions.begin() as session:
                    one = await record_usage(session, [report])
            except (IntegrityError, DataError) as exc:
                log.warning(
                    "usage the database refuses dropped",
                    extra={
                        "connection_id": report.connection_id,
                        "request_id": report.request_id,
                        "error": type(exc).__name__,
                    },
                )
                continue
            recorded.added += one.added
            recorded.unknown_connections.update(one.unknown_connections)
        return recorded

    async def usage_get(self, request: ks.ConnectionRef) -> ks.UsageReport:
        async with self.sessions.begin() as session:
            rows = await usage_of(session, request.app_id, request.connection_id)
        return ks.UsageReport(
            connection_id=request.connection_id, rows=[usage_row(r) for r in rows]
        )
