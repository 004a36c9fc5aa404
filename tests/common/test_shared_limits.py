"""Rate limits shared by copies through JetStream key-value, on a real NATS: two copies together
admit what one limit allows, a busy key touches the bucket a few times a second, and an
unreachable bucket leaves each copy enforcing the limit alone."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from byorouter_cli.backends import NatsServer
from byorouter_common.contracts.base import KeyValueBucket
from byorouter_common.shared_limits import Limit, SharedTokenBuckets

LIMIT = Limit(per_s=50.0, burst=50)


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    running = NatsServer().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def bucket() -> KeyValueBucket:
    return KeyValueBucket(f"TEST_LIMITS_{secrets.token_hex(4)}", "test", ttl_s=60, max_bytes=2**20)


async def connected(url: str) -> NatsClient:
    # Reconnects quickly and without end, as the services' own connections do.
    return await nats.connect(url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)


@pytest.fixture
async def copies(
    server: NatsServer, bucket: KeyValueBucket
) -> AsyncIterator[list[SharedTokenBuckets]]:
    clients = [await connected(server.url) for _ in range(2)]
    limiters = []
    for nc in clients:
        limiter = SharedTokenBuckets(lambda nc=nc: nc, bucket)
        await limiter.start()
        limiters.append(limiter)
    yield limiters
    for nc in clients:
        await nc.close()


async def hammer(limiter: SharedTokenBuckets, key: str, until: float) -> tuple[int, list[float]]:
    """Ask for a token about every millisecond until `until`: (admitted, retry-afters)."""
    admitted, waits = 0, []
    while time.monotonic() < until:
        wait = await limiter.take(key, LIMIT)
        if wait is None:
            admitted += 1
        else:
            waits.append(wait)
        await asyncio.sleep(0.001)
    return admitted, waits


async def test_two_copies_together_admit_one_limit(copies: list[SharedTokenBuckets]) -> None:
    key = f"app.app_{secrets.token_hex(6)}"
    started = time.monotonic()
    results = await asyncio.gather(*(hammer(c, key, started + 4.0) for c in copies))
    elapsed = time.monotonic() - started
    admitted = sum(count for count, _ in results)
    allowed = LIMIT.burst + LIMIT.per_s * elapsed
    # Never more than the limit; at most a chunk per copy fewer (unspent leases when it stops).
    chunk = copies[0].chunk(LIMIT)
    assert allowed - 2 * chunk - 0.03 * allowed <= admitted <= allowed + 1, (admitted, allowed)
    # Both copies got a share, and what they refused says when to come back.
    assert all(count > 0 for count, _ in results)
    waits = [w for _, ws in results for w in ws]
    assert waits
    assert all(0 < w <= 1.0 for w in waits)


async def test_a_busy_key_touches_the_bucket_a_few_times_a_second(
    copies: list[SharedTokenBuckets],
) -> None:
    key = f"app.app_{secrets.token_hex(6)}"
    started = time.monotonic()
    results = await asyncio.gather(*(hammer(c, key, started + 3.0) for c in copies))
    elapsed = time.monotonic() - started
    writes = sum(c.kv_writes for c in copies)
    admitted = sum(count for count, _ in results)
    # One write per chunk taken: a tenth of the requests or fewer, about 1 / lease_s a second.
    assert writes <= admitted / copies[0].chunk(LIMIT) + 1
    assert writes <= elapsed / copies[0].lease_s + LIMIT.burst / copies[0].chunk(LIMIT) + 2


async def test_a_key_seen_by_one_copy_gets_the_whole_limit_and_an_idle_key_costs_nothing(
    copies: list[SharedTokenBuckets],
) -> None:
    key = f"conn.app_x.conn_{secrets.token_hex(6)}"
    admitted = 0
    for _ in range(LIMIT.burst):
        admitted += await copies[0].take(key, LIMIT) is None
    # Leases are whole chunks: the burst's last partial chunk comes with the next refill.
    assert LIMIT.burst - copies[0].chunk(LIMIT) < admitted <= LIMIT.burst
    # The burst is spent: the next one waits, and the other copy sees the same empty bucket
    # once the few requests it lets through on credit (before its first lease) are spent.
    assert await copies[0].take(key, LIMIT) is not None
    on_credit = copies[1].credit(LIMIT)
    assert [await copies[1].take(key, LIMIT) is None for _ in range(on_credit + 1)] == [
        *[True] * on_credit,
        False,
    ]
    writes = copies[0].kv_writes + copies[1].kv_writes
    await asyncio.sleep(0.3)
    assert copies[0].kv_writes + copies[1].kv_writes == writes


async def test_users_sending_now_and_then_cost_the_bucket_nothing(
    copies: list[SharedTokenBuckets],
) -> None:
    limit = Limit(per_s=20.0, burst=100)  # the gateway's default per connection
    for copy in copies:
        for n in range(200):
            assert await copy.take(f"conn.app_x.conn_{n:08d}", limit) is None
    assert copies[0].kv_writes + copies[1].kv_writes == 0


async def test_a_limit_that_is_off_admits_everything(copies: list[SharedTokenBuckets]) -> None:
    key = f"app.app_{secrets.token_hex(6)}"
    for limit in (Limit(0, 100), Limit(10, 0)):
        assert all([await copies[0].take(key, limit) is None for _ in range(500)])
    assert copies[0].kv_writes == 0


async def test_a_copy_whose_clock_is_wrong_gains_at_most_one_burst_and_then_the_rate_holds(
    server: NatsServer, bucket: KeyValueBucket, copies: list[SharedTokenBuckets]
) -> None:
    nc = await connected(server.url)
    try:
        behind = SharedTokenBuckets(lambda: nc, bucket, wall_clock=lambda: time.time() - 30.0)
        await behind.start()
        key = f"app.app_{secrets.token_hex(6)}"
        started = time.monotonic()
        first = await asyncio.gather(
            hammer(copies[0], key, started + 1.5), hammer(behind, key, started + 1.5)
        )
        steady_from = time.monotonic()
        then = await asyncio.gather(
            hammer(copies[0], key, steady_from + 3.0), hammer(behind, key, steady_from + 3.0)
        )
        steady = time.monotonic() - steady_from
    finally:
        await nc.close()
    elapsed = time.monotonic() - started
    admitted = sum(count for count, _ in (*first, *then))
    assert admitted <= 2 * LIMIT.burst + LIMIT.per_s * elapsed + 1
    # Past that one extra burst the copies share the rate: skew does not keep adding tokens.
    chunk = copies[0].chunk(LIMIT)
    assert sum(count for count, _ in then) <= LIMIT.per_s * steady + 2 * chunk


async def test_an_unreachable_bucket_leaves_each_copy_its_own_limit_and_says_so(
    bucket: KeyValueBucket, caplog: pytest.LogCaptureFixture
) -> None:
    own = NatsServer().start()
    nc = await connected(own.url)
    try:
        limiter = SharedTokenBuckets(lambda: nc, bucket, retry_s=0.5)
        await limiter.start()
        key = f"app.app_{secrets.token_hex(6)}"
        assert await limiter.take(key, LIMIT) is None
        own.stop()
        with caplog.at_level(logging.WARNING, logger="byorouter_common.shared_limits"):
            # Tokens already leased are spent first, then the copy counts on its own.
            started = time.monotonic()
            admitted = 0
            while time.monotonic() < started + 1.0:
                admitted += await limiter.take(key, LIMIT) is None
                await asyncio.sleep(0.001)
            elapsed = time.monotonic() - started
        assert not limiter.shared
        assert "cannot reach their shared bucket" in caplog.text
        # Failing open, but to the limit itself, per copy: not to no limit at all.
        chunk = limiter.chunk(LIMIT)
        assert LIMIT.burst / 2 <= admitted <= LIMIT.burst + chunk + LIMIT.per_s * elapsed + 1

        # The bus comes back (its in-memory bucket gone): limits are shared again.
        own.start()
        deadline = time.monotonic() + 15.0
        while not (limiter.shared and limiter.kv_writes > 1):
            assert time.monotonic() < deadline, "limits never went back to the shared bucket"
            await limiter.take(key, LIMIT)
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
        own.stop()
