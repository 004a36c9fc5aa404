"""Usage reports recorded in batches: exact sums whatever arrives twice, nothing lost when a copy
dies before its commit, one bad report never holds back the rest, and a busy connection's daily
row written once per batch rather than once per request (decision 0025)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime, timedelta

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from byorouter_cli.backends import NatsServer
from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from tests.conftest import StartKeystore
from tests.keystore.conftest import (
    KeystoreEnv,
    KeystoreProcess,
    new_app,
    new_connection,
    provider_key,
    wait_until_serving,
)

pytestmark = pytest.mark.usefixtures("keystore")

COUNTS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "partial_requests",
)
# A usage_daily row: (connection, provider, model, day) -> its counts in COUNTS order.
Rows = dict[tuple[str, str, str, date], tuple[int, ...]]


def random_report(
    rng: random.Random, app_id: str, connection_id: str, *, provider: str = "openai", model: str
) -> events.UsageEvent:
    prompt, completion = rng.randint(0, 5000), rng.randint(0, 2000)
    partial = rng.random() < 0.1
    return events.UsageEvent(
        request_id="req_" + secrets.token_hex(12),
        app_id=app_id,
        connection_id=connection_id,
        provider=provider,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=rng.randint(0, prompt),
        cache_write_tokens=rng.randint(0, 50),
        reasoning_tokens=rng.randint(0, completion),
        partial=partial,
        estimated=partial and rng.random() < 0.5,
        # Some finished just before midnight UTC yesterday: another day's row.
        at=datetime.now(UTC) - timedelta(days=rng.random() < 0.2),
    )


def expected_rows(reports: Iterable[events.UsageEvent]) -> Rows:
    """What the tables must hold: each request id counted once."""
    sums: dict[tuple[str, str, str, date], list[int]] = defaultdict(lambda: [0] * len(COUNTS))
    for report in {r.request_id: r for r in reports}.values():
        key = (report.connection_id, report.provider, report.model, report.at.date())
        row = sums[key]
        row[0] += 1
        for i, column in enumerate(COUNTS[1:-1], start=1):
            row[i] += getattr(report, column)
        row[-1] += report.partial
    return {key: tuple(row) for key, row in sums.items()}


async def stored_rows(db: AsyncEngine, connection_ids: Iterable[str]) -> Rows:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT connection_id, provider, model, day, " + ", ".join(COUNTS) + " "
                "FROM usage_daily WHERE connection_id = ANY(:ids)"
            ),
            {"ids": list(connection_ids)},
        )
        return {tuple(r[:4]): tuple(r[4:]) for r in rows}


async def stored_flags(db: AsyncEngine, request_ids: list[str]) -> dict[str, tuple[bool, bool]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT request_id, partial, estimated FROM usage_requests "
                "WHERE request_id = ANY(:ids)"
            ),
            {"ids": request_ids},
        )
        return {r.request_id: (r.partial, r.estimated) for r in rows}


async def publish(nc: NatsClient, reports: Iterable[events.UsageEvent], tag: str = "") -> None:
    """As the router does: the request id as message id (`tag` makes a redelivery past the
    stream's duplicate window, which JetStream cannot drop)."""
    js = nc.jetstream()
    for report in reports:
        await js.publish(
            events.USAGE.subject,
            report.model_dump_json().encode(),
            headers={"Nats-Msg-Id": report.request_id + tag},
        )


async def consumer_state(nc: NatsClient) -> tuple[int, int]:
    """(reports fetched by a copy and not yet acked, reports not yet fetched)."""
    info = await nc.jetstream().consumer_info(events.USAGE_STREAM.name, events.USAGE_RECORDER.name)
    return info.num_ack_pending, info.num_pending


async def until_settled(
    nc: NatsClient, db: AsyncEngine, want: Rows, within_s: float = 30.0
) -> None:
    """Until every report was acked and the rows hold `want` (they must then stay so)."""
    connections = {key[0] for key in want}
    deadline = time.monotonic() + within_s
    while await consumer_state(nc) != (0, 0) or await stored_rows(db, connections) != want:
        assert time.monotonic() < deadline, (
            await consumer_state(nc),
            sum(row[0] for row in (await stored_rows(db, connections)).values()),
            sum(row[0] for row in want.values()),
        )
        await asyncio.sleep(0.1)


async def test_a_thousand_reports_with_duplicates_mixed_in_are_summed_exactly(
    bus: Bus, nc: NatsClient, db: AsyncEngine
) -> None:
    rng = random.Random(11)
    app = await new_app(bus)
    connections = [
        (await new_connection(bus, app.app_id, openai=provider_key())).connection_id
        for _ in range(3)
    ]
    models = ["gpt-4o-mini", "gpt-4o", "o3-mini"]
    reports = [
        random_report(rng, app.app_id, rng.choice(connections), model=rng.choice(models))
        for _ in range(1000)
    ]
    # Redeliveries past the duplicate window (JetStream keeps both) and a retried publish
    # within it (JetStream keeps one), interleaved with the originals.
    await publish(nc, reports[:500])
    await publish(nc, rng.sample(reports[:500], 150), tag="-again")
    await publish(nc, reports[500:])
    await publish(nc, rng.sample(reports, 100))
    await publish(nc, rng.sample(reports[500:], 150), tag="-again")

    want = expected_rows(reports)
    assert len(want) > 9  # several rows per connection: models and days
    await until_settled(nc, db, want)
    flags = await stored_flags(db, [r.request_id for r in reports])
    assert flags == {r.request_id: (r.partial, r.estimated) for r in reports}


async def test_reports_for_an_unknown_connection_or_unstorable_do_not_lose_the_rest_of_a_batch(
    bus: Bus, nc: NatsClient, db: AsyncEngine, keystore: KeystoreProcess
) -> None:
    rng = random.Random(12)
    app = await new_app(bus)
    connection = (await new_connection(bus, app.app_id, openai=provider_key())).connection_id
    gone = "conn_" + secrets.token_hex(12)  # its app deleted after the request
    good = [random_report(rng, app.app_id, connection, model="gpt-4o") for _ in range(200)]
    orphans = [random_report(rng, app.app_id, gone, model="gpt-4o") for _ in range(20)]
    # Longer than the provider column: the database refuses the whole batch's statement.
    unstorable = random_report(rng, app.app_id, connection, provider="p" * 40, model="gpt-4o")
    mixed = good[:100] + orphans[:10] + [unstorable] + good[100:] + orphans[10:]
    await publish(nc, mixed)

    await until_settled(nc, db, expected_rows(good))
    dropped = [r.request_id for r in [*orphans, unstorable]]
    assert await stored_flags(db, dropped) == {}
    log = keystore.log_text()
    assert "usage for an unknown connection dropped" in log
    assert "usage the database refuses dropped" in log


async def test_two_copies_consuming_the_same_stream_record_each_report_once(
    bus: Bus, nc: NatsClient, db: AsyncEngine, keystore_env: KeystoreEnv
) -> None:
    rng = random.Random(13)
    app = await new_app(bus)
    connections = [
        (await new_connection(bus, app.app_id, openai=provider_key())).connection_id
        for _ in range(2)
    ]
    second = KeystoreProcess(keystore_env, "keystore-usage-second")
    try:
        await wait_until_serving(nc, second, copies=2)
        reports = [
            random_report(rng, app.app_id, rng.choice(connections), model="gpt-4o-mini")
            for _ in range(1500)
        ]
        # Each also delivered a second time, so both copies may meet the same request id.
        for start in range(0, len(reports), 100):
            await publish(nc, reports[start : start + 100])
            await publish(nc, reports[start : start + 100], tag="-again")
        await until_settled(nc, db, expected_rows(reports))
    finally:
        second.stop()


@pytest.fixture
async def row_writes(db: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """Every INSERT or UPDATE of a usage_daily row, counted by a trigger while the test runs."""
    async with db.begin() as conn:
        await conn.execute(
            text("CREATE TABLE test_usage_daily_writes (connection_id text NOT NULL)")
        )
        await conn.execute(
            text(
                "CREATE FUNCTION test_count_usage_daily_write() RETURNS trigger AS $$ BEGIN "
                "INSERT INTO test_usage_daily_writes VALUES (NEW.connection_id); RETURN NEW; "
                "END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER test_count_usage_daily_writes AFTER INSERT OR UPDATE ON "
                "usage_daily FOR EACH ROW EXECUTE FUNCTION test_count_usage_daily_write()"
            )
        )
    try:
        yield db
    finally:
        async with db.begin() as conn:
            await conn.execute(text("DROP TRIGGER test_count_usage_daily_writes ON usage_daily"))
            await conn.execute(text("DROP FUNCTION test_count_usage_daily_write()"))
            await conn.execute(text("DROP TABLE test_usage_daily_writes"))


async def test_a_busy_connections_daily_row_is_written_once_per_batch_not_per_request(
    bus: Bus, nc: NatsClient, row_writes: AsyncEngine
) -> None:
    rng = random.Random(14)
    app = await new_app(bus)
    hot = (await new_connection(bus, app.app_id, openai=provider_key())).connection_id
    # One row: one model, one day.
    reports = [
        random_report(rng, app.app_id, hot, model="gpt-4o-mini").model_copy(
            update={"at": datetime.now(UTC)}
        )
        for _ in range(3000)
    ]
    started = time.monotonic()
    await publish(nc, reports)
    await until_settled(nc, row_writes, expected_rows(reports), within_s=60)
    took_s = time.monotonic() - started
    async with row_writes.connect() as conn:
        writes = await conn.scalar(
            text("SELECT count(*) FROM test_usage_daily_writes WHERE connection_id = :id"),
            {"id": hot},
        )
    # A batch closes at 500 reports or one second after its first: one row write each
    # (recording per request would be 3,000 writes).
    assert writes is not None
    assert 1 <= writes <= len(reports) // 500 + int(took_s) + 2, (writes, took_s)


@pytest.mark.slow
async def test_a_copy_killed_between_fetch_and_commit_loses_nothing_and_counts_nothing_twice(
    start_keystore: StartKeystore,
) -> None:
    # Its own bus and database: this test owns the stream's consumer and its ack wait.
    server = NatsServer().start()
    try:
        first = await start_keystore(server.url)
        env = first.env
        nc = await nats.connect(server.url)
        db = create_async_engine(env.database_url)
        try:
            await killed_between_fetch_and_commit(nc, Bus(nc, timeout_s=10), db, first)
        finally:
            await db.dispose()
            await nc.close()
    finally:
        server.stop()


async def killed_between_fetch_and_commit(
    nc: NatsClient, bus: Bus, db: AsyncEngine, first: KeystoreProcess
) -> None:
    rng = random.Random(15)
    app = await new_app(bus)
    connection = (await new_connection(bus, app.app_id, openai=provider_key())).connection_id
    recorded = [random_report(rng, app.app_id, connection, model="gpt-4o") for _ in range(300)]
    await publish(nc, recorded)
    await until_settled(nc, db, expected_rows(recorded))
    first.stop()

    ack_wait = {"BYOROUTER_USAGE_ACK_WAIT_S": "10"}
    doomed = KeystoreProcess(
        first.env, "keystore-doomed", BYOROUTER_USAGE_FLUSH_EVENTS="10000", **ack_wait
    )
    try:
        await wait_until_serving(nc, doomed)
        # The connection's rows locked: the copy's transaction waits before it can commit.
        async with db.connect() as lock:
            await lock.execute(
                text("SELECT 1 FROM usage_daily WHERE connection_id = :id FOR UPDATE"),
                {"id": connection},
            )
            fresh = [random_report(rng, app.app_id, connection, model="gpt-4o") for _ in range(700)]
            again = rng.sample(recorded, 100)  # redelivered: counted already
            await publish(nc, fresh)
            await publish(nc, again, tag="-again")
            deadline = time.monotonic() + 15
            while await consumer_state(nc) != (800, 0):
                assert time.monotonic() < deadline, await consumer_state(nc)
                await asyncio.sleep(0.05)
            # All of it fetched, none of it committed: now the copy dies.
            assert await stored_rows(db, [connection]) == expected_rows(recorded)
            os.kill(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait(10)
            await lock.rollback()
    finally:
        doomed.stop()

    survivor = KeystoreProcess(first.env, "keystore-survivor", **ack_wait)
    try:
        await wait_until_serving(nc, survivor)
        # JetStream hands the unacked reports over once the ack wait has passed.
        await until_settled(nc, db, expected_rows([*recorded, *fresh]))
    finally:
        survivor.stop()
