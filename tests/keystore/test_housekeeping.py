"""Housekeeping deletes only rows that have done their job: ids past redelivery, old daily
counters, webhook deliveries finished a week ago; never a pending delivery or today's count."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from byorouter_common.bus import Bus
from byorouter_keystore.housekeeping import prune_finished_rows
from byorouter_keystore.tables import LimitCounter, UsageRequest, Webhook, WebhookDelivery
from tests.keystore.conftest import new_app, new_connection, provider_key


async def test_only_finished_rows_are_pruned(bus: Bus, db: AsyncEngine) -> None:
    app = await new_app(bus)
    connection = (await new_connection(bus, app.app_id, openai=provider_key())).connection_id
    now = datetime.now(UTC)
    long_ago, recently = now - timedelta(days=30), now - timedelta(hours=1)
    hook = "wh_" + secrets.token_hex(8)
    async with AsyncSession(db) as session, session.begin():
        session.add_all(
            [
                UsageRequest(
                    request_id="old-" + hook,
                    connection_id=connection,
                    day=long_ago.date(),
                    recorded_at=long_ago,
                ),
                UsageRequest(
                    request_id="new-" + hook,
                    connection_id=connection,
                    day=now.date(),
                    recorded_at=recently,
                ),
                LimitCounter(connection_id=connection, day=long_ago.date(), requests=5),
                LimitCounter(connection_id=connection, day=now.date(), requests=1),
                # Never opened here: the rows below are finished, or not due for a year.
                Webhook(
                    id=hook,
                    app_id=app.app_id,
                    url="https://hooks.invalid/x",
                    kek_version=1,
                    wrapped_dek=b"-",
                    ciphertext=b"-",
                ),
            ]
        )
        await session.flush()
        for status, created in [
            ("delivered", long_ago),
            ("failed", long_ago),
            ("delivered", recently),
            ("pending", long_ago),
        ]:
            session.add(
                WebhookDelivery(
                    id=f"{hook}-{status}-{created.timestamp()}",
                    webhook_id=hook,
                    event_type="connection.updated",
                    payload={},
                    status=status,
                    created_at=created,
                    next_attempt_at=now + timedelta(days=365),
                )
            )
    try:
        async with AsyncSession(db) as session, session.begin():
            await prune_finished_rows(session)
        async with AsyncSession(db) as session:
            requests = await session.scalars(
                select(UsageRequest.request_id).where(UsageRequest.connection_id == connection)
            )
            days = await session.scalars(
                select(LimitCounter.day).where(LimitCounter.connection_id == connection)
            )
            left = (
                await session.execute(
                    select(WebhookDelivery.status, func.count())
                    .where(WebhookDelivery.webhook_id == hook)
                    .group_by(WebhookDelivery.status)
                )
            ).all()
        assert list(requests) == ["new-" + hook]
        assert list(days) == [now.date()]
        assert dict(left) == {"delivered": 1, "pending": 1}
    finally:
        async with AsyncSession(db) as session, session.begin():
            await session.execute(delete(Webhook).where(Webhook.id == hook))
